"""Stream test fixtures: ONE real Kafka broker and ONE real Redis per pytest session.

Started with stream.services (the same code `guardian demo` uses) unless
GUARDIAN_KAFKA_BOOTSTRAP / GUARDIAN_REDIS_URL point at running ones. A service that cannot
start fails the tests that need it with the reason; nothing is skipped or faked.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from stream.services import KafkaBroker, RedisServer, ServiceError, free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    env = os.environ.get("GUARDIAN_KAFKA_BOOTSTRAP")
    if env:
        yield env
        return
    broker = KafkaBroker()
    try:
        broker.start()
    except ServiceError as exc:
        pytest.fail(f"could not start Apache Kafka: {exc}", pytrace=False)
    yield broker.bootstrap
    broker.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    env = os.environ.get("GUARDIAN_REDIS_URL")
    if env:
        yield env
        return
    server = RedisServer()
    try:
        server.start()
    except ServiceError as exc:
        pytest.fail(f"could not start redis-server: {exc}", pytrace=False)
    yield server.url
    server.stop()


class Worker:
    """`python -m stream.cli worker` as a subprocess with its own env (SIGKILL-able);
    `module="tests.stream.fault_worker"` runs the same worker with faults injected."""

    def __init__(self, env: dict[str, str], log: Path, module: str = "stream.cli") -> None:
        self.env = env
        self.log = log
        self.module = module
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "worker", "--loglevel", "warning"],
            env=self.env, cwd=REPO, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def stream_env(kafka_bootstrap, redis_url, tiny_model_dir, tmp_path):
    """GUARDIAN_* env for an isolated worker: unique topics and app id per test."""
    tag = uuid.uuid4().hex[:8]
    env = dict(os.environ)
    env.update({
        "GUARDIAN_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "GUARDIAN_REDIS_URL": redis_url,
        "GUARDIAN_APP_ID": f"guardian-test-{tag}",
        "GUARDIAN_TOPIC_QUERIES": f"q-{tag}",
        "GUARDIAN_TOPIC_VERDICTS": f"v-{tag}",
        "GUARDIAN_TOPIC_RESPONSES": f"r-{tag}",
        "GUARDIAN_TOPIC_FLAGGED": f"f-{tag}",
        "GUARDIAN_TOPIC_DLQ": f"d-{tag}",
        "GUARDIAN_BASE_MODEL": str(tiny_model_dir),
        "GUARDIAN_DTYPE": "float32",
        "GUARDIAN_DEVICE": "cpu",
        "GUARDIAN_MAX_NEW_TOKENS": "4",
        "GUARDIAN_BATCH_SIZE": "32",
        "GUARDIAN_MAX_BATCH": "32",
        "GUARDIAN_MAX_WAIT_MS": "50",
        "GUARDIAN_MAX_TEXT_CHARS": "500",
        "GUARDIAN_METRICS_PORT": str(free_port()),
        "GUARDIAN_FLAGGED_TABLE_DIR": str(tmp_path / "flagged"),
        "GUARDIAN_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONUNBUFFERED": "1",
    })
    return env


@pytest.fixture
def start_worker(tmp_path):
    workers: list[Worker] = []

    def _start(env: dict[str, str], module: str = "stream.cli") -> Worker:
        w = Worker(env, tmp_path / f"worker-{len(workers)}.log", module).start()
        workers.append(w)
        return w

    yield _start
    for w in workers:
        w.stop()


def settings_from(env: dict[str, str]):
    from model.settings import GuardianSettings

    keys = {k[len("GUARDIAN_"):].lower(): v for k, v in env.items() if k.startswith("GUARDIAN_")}
    return GuardianSettings(**{k: v for k, v in keys.items()
                               if k in GuardianSettings.model_fields})


async def _send_raw(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes | None]],
                    compression: str | None = None):
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                compression_type=compression)
    await producer.start()
    try:
        futs = [await producer.send(topic, value=v, key=k) for k, v in items]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


def send_raw(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes | None]],
             compression: str | None = None) -> None:
    asyncio.run(_send_raw(bootstrap, topic, items, compression))


async def _collect(bootstrap, topics, done, timeout):
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    out: dict[str, list[dict]] = {t: [] for t in topics}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for tp, msgs in batch.items():
                out[tp.topic].extend(json.loads(m.value) for m in msgs)
            if done(out):
                break
    finally:
        await consumer.stop()
    return out


def collect(bootstrap: str, topics: list[str], done, timeout: float) -> dict[str, list[dict]]:
    """Read topics from the start until done(records_by_topic) or timeout."""
    return asyncio.run(_collect(bootstrap, topics, done, timeout))


async def _read_all(bootstrap, topics, timeout):
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    tps = [TopicPartition(t["topic"], p["partition"]) for t in described
           if t.get("error_code", 0) == 0 for p in t["partitions"]]
    out: dict[str, list[dict]] = {t: [] for t in topics}
    if not tps:
        return out
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        left = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            batch = await consumer.getmany(*left, timeout_ms=300)
            for tp, msgs in batch.items():
                out[tp.topic].extend(json.loads(m.value) for m in msgs if m.offset < ends[tp])
                if msgs and msgs[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
        if left:
            raise TimeoutError(f"could not read {sorted(map(str, left))} to their end")
    finally:
        await consumer.stop()
    return out


def read_all(bootstrap: str, topics: list[str], timeout: float = 60) -> dict[str, list[dict]]:
    """Every record of the topics, up to their end offsets as of the call (not just until a
    condition holds: what a duplicate check needs)."""
    return asyncio.run(_read_all(bootstrap, topics, timeout))
