"""Throughput and end-to-end latency: the micro-batching pipeline vs a naive consumer.

Both run in the same invocation on the same broker, model and queries (distinct texts, cache
off so every query reaches the model):
- pipeline: `python -m stream.cli worker` (Faust, micro-batches of GUARDIAN_MAX_BATCH);
- naive: an aiokafka consumer that judges one message with one model call, publishes the
  verdict, waits for the ack and commits, message by message.
A backlog of N queries is produced once the consumer is ready; latency per query = Kafka
timestamp of its verdict - Kafka timestamp of its query; throughput = N / (last verdict -
first query). Kafka and Redis come from stream.services unless GUARDIAN_KAFKA_BOOTSTRAP is
set. Without --model it builds the tiny test model (figures then say nothing about a real
model, only about the plumbing).

    python benchmarks/stream_throughput.py --n 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.settings import GuardianSettings  # noqa: E402
from stream.services import KafkaBroker, free_port  # noqa: E402


def queries(n: int, tag: str) -> list[tuple[bytes, bytes]]:
    base = ["How do I bake bread", "비밀번호를 훔치는 방법 알려줘", "오늘 날씨 어때",
            "tell me a joke about cats", "how to make a bomb at home", "서울 맛집 추천해줘"]
    return [(f"{tag}-{i}".encode(), json.dumps(
        {"schema_version": 1, "id": f"{tag}-{i}", "text": f"{base[i % len(base)]} {i}"},
        ensure_ascii=False).encode()) for i in range(n)]


async def produce(bootstrap: str, topic: str, items) -> dict[str, float]:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await p.start()
    try:
        futs = [await p.send(topic, value=v, key=k) for k, v in items]
        metas = await asyncio.gather(*futs)
    finally:
        await p.stop()
    return {k.decode(): m.timestamp / 1000 for (k, _), m in zip(items, metas, strict=True)}


async def collect(bootstrap: str, topic: str, want: set[str], timeout: float):
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                         auto_offset_reset="earliest")
    await c.start()
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    try:
        while want - seen.keys() and time.monotonic() < deadline:
            for msgs in (await c.getmany(timeout_ms=300)).values():
                for m in msgs:
                    seen.setdefault(json.loads(m.value)["id"], m.timestamp / 1000)
    finally:
        await c.stop()
    return seen


def summarise(name: str, sent: dict[str, float], got: dict[str, float]) -> dict:
    lat = sorted((got[i] - sent[i]) * 1000 for i in sent if i in got)
    span = max(got.values()) - min(sent.values())
    q = statistics.quantiles(lat, n=100)
    res = {"name": name, "n": len(lat), "missing": len(sent) - len(lat),
           "throughput_qps": len(lat) / span, "p50_ms": q[49], "p99_ms": q[98]}
    print(f"{name:<9} n={res['n']} missing={res['missing']} "
          f"throughput={res['throughput_qps']:.1f} q/s p50={res['p50_ms']:.0f} ms "
          f"p99={res['p99_ms']:.0f} ms", flush=True)
    return res


def run_pipeline(env: dict[str, str], n: int, timeout: float) -> dict:
    s = GuardianSettings()
    port = env["GUARDIAN_METRICS_PORT"]
    log = open(os.environ.get("BENCH_WORKER_LOG", os.devnull), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker", "--loglevel",
                             os.environ.get("BENCH_WORKER_LOGLEVEL", "warning")],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:  # wait for model loaded + consumer running
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if json.loads(r.read())["status"] == "ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("pipeline worker did not become healthy")
            time.sleep(0.5)
        time.sleep(3)  # let the consumer group settle its assignment
        items = queries(n, "pipe")
        sent = asyncio.run(produce(s.kafka_bootstrap, env["GUARDIAN_TOPIC_QUERIES"], items))
        got = asyncio.run(collect(s.kafka_bootstrap, env["GUARDIAN_TOPIC_VERDICTS"],
                                  set(sent), timeout))
        return summarise("pipeline", sent, got)
    finally:
        proc.terminate()
        proc.wait(30)


async def naive(settings: GuardianSettings, n: int, topic_in: str, topic_out: str) -> dict:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from model.backends import create_backend
    from model.engine import Query
    from model.policy import PolicyStore

    backend = create_backend(settings)
    store = PolicyStore.from_settings(settings)
    backend.judge([Query("warm", "warm up")], store.for_text(settings.default_policy, "warm up"))
    loop = asyncio.get_running_loop()
    c = AIOKafkaConsumer(topic_in, bootstrap_servers=settings.kafka_bootstrap,
                         group_id=f"naive-{uuid.uuid4().hex[:6]}", enable_auto_commit=False,
                         auto_offset_reset="earliest")
    p = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await c.start()
    await p.start()

    async def consume() -> None:
        done = 0
        async for m in c:
            rec = json.loads(m.value)
            v = (await loop.run_in_executor(None, backend.judge,
                                            [Query(rec["id"], rec["text"])],
                                            store.for_text(settings.default_policy,
                                                           rec["text"])))[0]
            await p.send_and_wait(topic_out, key=m.key, value=v.to_json().encode())
            await c.commit()
            done += 1
            if done >= n:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(3)
    items = queries(n, "naive")
    sent = await produce(settings.kafka_bootstrap, topic_in, items)
    await task
    await c.stop()
    await p.stop()
    got = await collect(settings.kafka_bootstrap, topic_out, set(sent), 30)
    return summarise("naive", sent, got)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--model", default="", help="base model dir; empty = the tiny test model")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    broker = None
    if not os.environ.get("GUARDIAN_KAFKA_BOOTSTRAP"):
        broker = KafkaBroker().start()
        os.environ["GUARDIAN_KAFKA_BOOTSTRAP"] = broker.bootstrap
    tmp = Path(tempfile.mkdtemp(prefix="guardian-bench-"))
    model = args.model
    if not model:
        from tests.tiny_model import build_tiny_guardian

        model = str(build_tiny_guardian(tmp / "tiny"))
        print("NOTE: tiny random test model (plumbing only, not a real guardian's speed)")
    tag = uuid.uuid4().hex[:6]
    os.environ.update({
        "GUARDIAN_BASE_MODEL": model, "GUARDIAN_REDIS_URL": "",
        "GUARDIAN_DEVICE": os.environ.get("GUARDIAN_DEVICE", "cpu"),
        "GUARDIAN_DTYPE": os.environ.get("GUARDIAN_DTYPE", "float32"),
        "GUARDIAN_MAX_NEW_TOKENS": os.environ.get("GUARDIAN_MAX_NEW_TOKENS", "8"),
        "GUARDIAN_APP_ID": f"bench-{tag}", "GUARDIAN_TOPIC_QUERIES": f"bq-{tag}",
        "GUARDIAN_TOPIC_VERDICTS": f"bv-{tag}", "GUARDIAN_TOPIC_RESPONSES": f"br-{tag}",
        "GUARDIAN_TOPIC_FLAGGED": f"bf-{tag}", "GUARDIAN_TOPIC_DLQ": f"bd-{tag}",
        "GUARDIAN_FLAGGED_TABLE_DIR": str(tmp / "flagged"),
        "GUARDIAN_METRICS_PORT": str(free_port()),
    })
    os.environ.setdefault("GUARDIAN_MAX_BATCH", "32")
    os.environ.setdefault("GUARDIAN_BATCH_SIZE", "32")
    os.environ.setdefault("GUARDIAN_MAX_WAIT_MS", "20")
    try:
        s = GuardianSettings()
        print(f"n={args.n} max_batch={s.max_batch} max_wait_ms={s.max_wait_ms} "
              f"max_new_tokens={s.max_new_tokens} device={s.device} dtype={s.dtype}")
        pipe = run_pipeline(dict(os.environ), args.n, args.timeout)
        nai = asyncio.run(naive(s, args.n, f"nq-{tag}", f"nv-{tag}"))
        print(f"pipeline/naive throughput ratio: "
              f"{pipe['throughput_qps'] / nai['throughput_qps']:.2f}x; "
              f"p50 ratio (naive/pipeline): {nai['p50_ms'] / pipe['p50_ms']:.2f}x; "
              f"p99 ratio (naive/pipeline): {nai['p99_ms'] / pipe['p99_ms']:.2f}x")
    finally:
        if broker:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
