"""Real local services for tests and `guardian demo`: Apache Kafka (KRaft) and redis-server.

Kafka: the pinned release's jars come from Maven Central through Maven
(`mvn dependency:copy-dependencies` on a generated pom) into
`${XDG_CACHE_HOME:-~/.cache}/guardian/kafka-<version>/jars`, once. A broker is then a
single-node KRaft process (`kafka.tools.StorageTool format`, then `kafka.Kafka`) on free
loopback ports with its data in a temporary folder that is removed on stop.
Redis: Debian's `redis-server` (installed with apt-get when missing and we are root) on a
free loopback port without persistence.

Both the pytest session (tests/stream/conftest.py), `guardian demo` and
scripts/services/*.sh use this module, so what the tests exercise is what the demo runs.
Run `python -m stream.services kafka|redis` to keep one up in a terminal.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

KAFKA_VERSION = os.environ.get("GUARDIAN_KAFKA_VERSION", "3.9.1")
SLF4J_VERSION = "1.7.36"



def kraft_cluster_id() -> str:
    """A KRaft cluster id: a base64url uuid without padding, as `kafka-storage random-uuid` prints.

    One in 64 such strings starts with '-', which the storage tool's argument parser reads
    as an option ("--cluster-id: expected one argument"); Kafka's own Uuid.randomUuid
    draws again in that case, and so do we.
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid

class ServiceError(RuntimeError):
    """A service could not be started; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "guardian"


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>guardian.local</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{v}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-server</artifactId>
      <version>{v}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-metadata</artifactId>
      <version>{v}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId>
      <version>{s}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J = """log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaRaftServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
"""


def kafka_jars(version: str = KAFKA_VERSION) -> Path:
    """The folder of Kafka runtime jars, fetched from Maven Central on first use."""
    home = cache_root() / f"kafka-{version}"
    jars = home / "jars"
    if (home / ".complete").exists():
        return jars
    if shutil.which("java") is None or shutil.which("mvn") is None:
        raise ServiceError("java and mvn are needed to fetch and run Kafka (apt-get install "
                           "-y openjdk-17-jre-headless maven)")
    home.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="kafka-pom-", dir=home))
    try:
        (work / "pom.xml").write_text(_POM.format(v=version, s=SLF4J_VERSION))
        out = work / "jars"
        proc = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
             f"-DoutputDirectory={out}", "-DincludeScope=runtime"],
            capture_output=True, text=True, timeout=900,
        )
        if proc.returncode != 0 or not list(out.glob(f"kafka_2.13-{version}.jar")):
            raise ServiceError(
                f"Maven could not fetch Kafka {version} from Maven Central "
                f"(rc={proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
        if jars.exists():
            shutil.rmtree(jars)
        os.replace(out, jars)
        (home / ".complete").write_text(version)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return jars


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"process exited rc={proc.returncode}: {_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise ServiceError(f"port {port} not open after {timeout:.0f}s: {_tail(log)}")


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class KafkaBroker:
    """A single-node KRaft broker+controller on loopback; `with KafkaBroker() as k: k.bootstrap`."""

    def __init__(self, version: str = KAFKA_VERSION, partitions: int = 4) -> None:
        self.version = version
        self.partitions = partitions
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.dir: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> KafkaBroker:
        """Start the broker: a new one, or after `stop(keep_data=True)` the same one again
        (same data folder, cluster id and ports: clients reconnect to the same address)."""
        jars = kafka_jars(self.version)
        if self.dir is not None and (self.dir / "server.properties").is_file():
            return self._launch(self._java(jars), self.dir / "server.properties", timeout)
        self.dir = Path(tempfile.mkdtemp(prefix="guardian-kafka-"))
        self.port, cport = free_port(), free_port()
        props = self.dir / "server.properties"
        props.write_text("\n".join([
            "process.roles=broker,controller", "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{cport}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{cport}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER", "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={self.dir / 'data'}", f"num.partitions={self.partitions}",
            "offsets.topic.replication.factor=1", "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1", "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0", "auto.create.topics.enable=true",
            "log.flush.interval.messages=1000000", "",
        ]))
        (self.dir / "log4j.properties").write_text(_LOG4J)
        java = self._java(jars)
        cluster_id = kraft_cluster_id()
        fmt = subprocess.run(
            java + ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
            capture_output=True, text=True, timeout=120,
        )
        if fmt.returncode != 0:
            raise ServiceError(f"kafka storage format failed: {fmt.stdout}{fmt.stderr}")
        return self._launch(java, props, timeout)

    def _java(self, jars: Path) -> list[str]:
        return ["java", "-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}", "-cp",
                str(jars / "*")]

    def _launch(self, java: list[str], props: Path, timeout: float) -> KafkaBroker:
        log = self.dir / "kafka.log"
        self.proc = subprocess.Popen(
            java + ["kafka.Kafka", str(props)], stdout=open(log, "ab"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            _wait_port(self.port, self.proc, timeout, log)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Port open is not enough: wait until the broker answers a metadata request."""
        import asyncio

        from aiokafka.admin import AIOKafkaAdminClient

        async def probe() -> None:
            client = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap,
                                         request_timeout_ms=5000)
            await client.start()
            try:
                await client.describe_cluster()
            finally:
                await client.close()

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                asyncio.run(probe())
                return
            except Exception as exc:  # noqa: BLE001
                last = exc
                time.sleep(0.5)
        raise ServiceError(f"kafka did not become ready: {last}")

    def stop(self, keep_data: bool = False) -> None:
        """Stop the broker (SIGTERM: a controlled shutdown); `keep_data=True` keeps its data
        folder and ports so that `start()` brings the same broker back."""
        _stop(self.proc)
        self.proc = None
        if self.dir and not keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _stop(proc: subprocess.Popen | None, grace: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "redis-server"], capture_output=True,
                       timeout=600)
        path = shutil.which("redis-server")
        if path:
            return path
    raise ServiceError("redis-server not found (apt-get install -y redis-server)")


class RedisServer:
    """A throwaway redis-server on loopback without persistence."""

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.dir: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> RedisServer:
        binary = redis_server_binary()
        self.dir = Path(tempfile.mkdtemp(prefix="guardian-redis-"))
        self.port = free_port()
        log = self.dir / "redis.log"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            _wait_port(self.port, self.proc, timeout, log)
            import redis

            deadline = time.monotonic() + timeout
            while True:
                try:
                    redis.Redis.from_url(self.url, socket_timeout=1).ping()
                    break
                except Exception as exc:  # noqa: BLE001
                    if time.monotonic() > deadline:
                        raise ServiceError(f"redis did not answer PING: {exc}") from exc
                    time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        _stop(self.proc, grace=5)
        self.proc = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    what = argv[0] if argv else ""
    if what not in ("kafka", "redis", "fetch-kafka"):
        print("usage: python -m stream.services kafka|redis|fetch-kafka", file=sys.stderr)
        return 2
    if what == "fetch-kafka":
        print(kafka_jars())
        return 0
    svc = KafkaBroker() if what == "kafka" else RedisServer()
    svc.start()
    addr = svc.bootstrap if isinstance(svc, KafkaBroker) else svc.url
    print(addr, flush=True)
    try:
        while svc.proc and svc.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        svc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
