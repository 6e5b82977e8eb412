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
model, only about the plumbing). The worker runs in the shipped GUARDIAN_DTYPE (auto: bf16
where the CPU has native bf16, else float32) unless the variable is set.

After the naive run the same backend judges the same queries again without Kafka, one a
call and GUARDIAN_MAX_BATCH a call: their ratio is what batching buys the model itself, and
naive's time per query over the batched model time per query bounds the pipeline/naive
ratio on this machine (a pipeline whose only cost were its model calls).

    python benchmarks/stream_throughput.py --n 300

Open loop (`--rate R`): a search backend does not wait for the guardian, so queries are
produced at a fixed arrival rate for `--duration` seconds while verdicts and responses are
read as they come; it prints p50/p95/p99 of produce-to-verdict latency for safe and for
unsafe verdicts separately, and of produce-to-response latency. `--rate find` steps the
rate up (x1.5) until the worker falls behind (verdicts arrive at under 95% of the arrival
rate, or p99 exceeds `--max-p99-s`), calls the last rate it kept up with sustainable, and
then measures at half of it:

    python benchmarks/stream_throughput.py --rate 20 --duration 30
    python benchmarks/stream_throughput.py --rate find
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


def start_worker(env: dict[str, str]) -> subprocess.Popen:
    """`guardian worker` as a subprocess, returned once healthy and assigned."""
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
    except BaseException:
        proc.terminate()
        raise
    return proc


def run_pipeline(env: dict[str, str], n: int, timeout: float) -> dict:
    s = GuardianSettings()
    proc = start_worker(env)
    try:
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
    res = summarise("naive", sent, got)
    res["model_only"] = model_ceiling(backend, store, settings, items)
    return res


def model_ceiling(backend, store, settings: GuardianSettings, items) -> dict:
    """The model's own share: the same queries judged one per call and max_batch per call.

    No Kafka, no Faust: only the backend calls either consumer makes. A pipeline that cost
    nothing but its batched model calls would reach naive's time per query over the batched
    model time per query; that bound says what batching can buy on this machine.
    """
    from model.engine import Query

    texts = [json.loads(v)["text"] for _, v in items]
    groups: dict[str, tuple[object, list[Query]]] = {}  # policy id -> (policy, queries)
    for i, t in enumerate(texts):
        policy = store.for_text(settings.default_policy, t)
        groups.setdefault(policy.id, (policy, []))[1].append(Query(str(i), t))
    single = [(q, policy) for policy, g in groups.values() for q in g][:64]
    t0 = time.perf_counter()
    for q, policy in single:
        backend.judge([q], policy)
    one = (time.perf_counter() - t0) / len(single)
    t0 = time.perf_counter()
    for policy, g in groups.values():
        for k in range(0, len(g), settings.max_batch):
            backend.judge(g[k:k + settings.max_batch], policy)
    batched = (time.perf_counter() - t0) / len(texts)
    out = {"single_ms": one * 1000, "batched_ms": batched * 1000, "ratio": one / batched}
    print(f"model only (the same backend calls, no Kafka): one query a call "
          f"{out['single_ms']:.1f} ms, {settings.max_batch} a call {out['batched_ms']:.1f} "
          f"ms a query: x{out['ratio']:.2f}", flush=True)
    return out


# --- open loop ---------------------------------------------------------------------------


def _pcts(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    v = sorted(values)
    q = statistics.quantiles(v, n=100, method="inclusive") if len(v) > 1 else [v[0]] * 99
    return {"n": len(v), "p50_ms": q[49], "p95_ms": q[94], "p99_ms": q[98], "max_ms": v[-1]}


async def open_loop(env: dict[str, str], rate: float, duration: float, tag: str,
                    drain_s: float) -> dict:
    """Produce at `rate` q/s for `duration` s (scheduled send times, never waiting on the
    guardian), read verdicts and responses meanwhile; latencies from Kafka timestamps."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    bootstrap = env["GUARDIAN_KAFKA_BOOTSTRAP"]
    n = max(1, int(rate * duration))
    items = queries(n, tag)
    want = {k.decode() for k, _ in items}
    sent: dict[str, float] = {}
    verdicts: dict[str, tuple[float, str]] = {}
    responses: dict[str, float] = {}
    cons = AIOKafkaConsumer(env["GUARDIAN_TOPIC_VERDICTS"], env["GUARDIAN_TOPIC_RESPONSES"],
                            bootstrap_servers=bootstrap, group_id=None,
                            auto_offset_reset="latest")
    await cons.start()
    await cons.seek_to_end()
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0)
    await prod.start()
    done = asyncio.Event()

    async def read() -> None:
        while not done.is_set():
            for tp, msgs in (await cons.getmany(timeout_ms=200)).items():
                for m in msgs:
                    try:
                        v = json.loads(m.value)
                    except ValueError:
                        continue
                    vid = str(v.get("id"))
                    if vid not in want:
                        continue
                    if tp.topic == env["GUARDIAN_TOPIC_VERDICTS"]:
                        verdicts.setdefault(vid, (m.timestamp / 1000, v.get("label")))
                    else:
                        responses.setdefault(vid, m.timestamp / 1000)

    reader = asyncio.create_task(read())
    t0 = time.monotonic()
    acks = []
    for i, (k, v) in enumerate(items):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        acks.append((k.decode(), await prod.send(env["GUARDIAN_TOPIC_QUERIES"], value=v, key=k)))
    for qid, fut in acks:
        sent[qid] = (await fut).timestamp / 1000
    produced_s = time.monotonic() - t0
    deadline = time.monotonic() + drain_s
    while want - verdicts.keys() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # late responses of the last unsafe verdicts
    done.set()
    await reader
    await cons.stop()
    await prod.stop()
    lat = {qid: (ts - sent[qid]) * 1000 for qid, (ts, _) in verdicts.items()}
    last = max((ts for ts, _ in verdicts.values()), default=min(sent.values()))
    span = max(1e-9, last - min(sent.values()))
    unsafe_ids = [q for q, (_, lab) in verdicts.items() if lab == "unsafe"]
    return {
        "rate_qps": rate, "produced": n, "produce_seconds": produced_s,
        "verdicts": len(verdicts), "missing": n - len(verdicts),
        "verdict_qps": len(verdicts) / span,
        "safe": _pcts([lat[q] for q, (_, lab) in verdicts.items() if lab == "safe"]),
        "unsafe": _pcts([lat[q] for q in unsafe_ids]),
        "responses": _pcts([(responses[q] - sent[q]) * 1000 for q in unsafe_ids
                            if q in responses]),
    }


def print_open_loop(r: dict) -> None:
    print(f"rate {r['rate_qps']:.1f} q/s for {r['produce_seconds']:.0f} s: {r['produced']} "
          f"produced, {r['verdicts']} verdicts ({r['missing']} missing), "
          f"verdicts at {r['verdict_qps']:.1f} q/s", flush=True)
    for key in ("safe", "unsafe", "responses"):
        x = r[key]
        if not x["n"]:
            print(f"  {key:<10} n=0")
            continue
        print(f"  {key:<10} n={x['n']:<5} p50 {x['p50_ms']:>7.0f} ms  p95 {x['p95_ms']:>7.0f} ms"
              f"  p99 {x['p99_ms']:>7.0f} ms  max {x['max_ms']:>7.0f} ms", flush=True)


def kept_up(r: dict, max_p99_s: float) -> bool:
    p99 = max(r[k].get("p99_ms", 0.0) for k in ("safe", "unsafe"))
    return r["missing"] == 0 and r["verdict_qps"] >= 0.95 * r["rate_qps"] \
        and p99 <= max_p99_s * 1000


def run_open_loop(env: dict[str, str], args) -> None:
    proc = start_worker(env)
    try:
        # warm the model and the topics before any measured second
        asyncio.run(open_loop(env, 5.0, 2.0, f"warm-{uuid.uuid4().hex[:4]}", 60))
        if args.rate != "find":
            print_open_loop(asyncio.run(open_loop(env, float(args.rate), args.duration,
                                                  f"r-{uuid.uuid4().hex[:4]}",
                                                  args.timeout)))
            return
        rate, best = args.start_rate, None
        while rate <= args.max_rate:
            r = asyncio.run(open_loop(env, rate, args.duration, f"f-{uuid.uuid4().hex[:4]}",
                                      args.timeout))
            print_open_loop(r)
            if not kept_up(r, args.max_p99_s):
                break
            best = rate
            rate *= 1.5
        if best is None:
            print(f"not sustainable even at {args.start_rate} q/s")
            return
        print(f"sustainable rate: {best:.1f} q/s (the next step fell behind or exceeded "
              f"p99 {args.max_p99_s:.0f} s); at half of it:")
        print_open_loop(asyncio.run(open_loop(env, best / 2, args.duration,
                                              f"h-{uuid.uuid4().hex[:4]}", args.timeout)))
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--rate", help="open loop: arrival rate in q/s, or 'find'")
    ap.add_argument("--duration", type=float, default=30.0, help="open loop: seconds per rate")
    ap.add_argument("--start-rate", type=float, default=2.0, help="--rate find: first rate")
    ap.add_argument("--max-rate", type=float, default=2000.0, help="--rate find: last rate")
    ap.add_argument("--max-p99-s", type=float, default=5.0,
                    help="--rate find: a rate whose verdict p99 exceeds this fell behind")
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
        "GUARDIAN_DTYPE": os.environ.get("GUARDIAN_DTYPE", "auto"),  # as shipped
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
        if args.rate:
            print(f"open loop: max_batch={s.max_batch} max_wait_ms={s.max_wait_ms} "
                  f"device={s.device} dtype={s.dtype} -> {s.resolved_dtype()}")
            run_open_loop(dict(os.environ), args)
            return 0
        print(f"n={args.n} max_batch={s.max_batch} max_wait_ms={s.max_wait_ms} "
              f"max_new_tokens={s.max_new_tokens} device={s.device} "
              f"dtype={s.dtype} -> {s.resolved_dtype()}")
        pipe = run_pipeline(dict(os.environ), args.n, args.timeout)
        nai = asyncio.run(naive(s, args.n, f"nq-{tag}", f"nv-{tag}"))
        print(f"pipeline/naive throughput ratio: "
              f"{pipe['throughput_qps'] / nai['throughput_qps']:.2f}x; "
              f"p50 ratio (naive/pipeline): {nai['p50_ms'] / pipe['p50_ms']:.2f}x; "
              f"p99 ratio (naive/pipeline): {nai['p99_ms'] / pipe['p99_ms']:.2f}x")
        bound = 1000 / nai["throughput_qps"] / nai["model_only"]["batched_ms"]
        print(f"bound on the ratio from the model alone (naive's {1000 / nai['throughput_qps']:.1f}"
              f" ms a query / {nai['model_only']['batched_ms']:.1f} ms a query batched): "
              f"x{bound:.2f}")
    finally:
        if broker:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
