"""`guardian worker | produce | demo | rescore`: the streaming subcommands.

Registered through the `guardian.commands` entry point (`register`), and runnable without
the top-level command as `python -m stream.cli ...` (the tests do that).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from model.settings import GuardianSettings


def register(subparsers) -> None:
    p = subparsers.add_parser("worker", help="run the Faust moderation worker")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_worker)

    p = subparsers.add_parser("produce", help="send queries (JSONL) to the queries topic")
    p.add_argument("file", nargs="?", default="-", help="JSONL file of {id, text, ...}; - = stdin")
    p.add_argument("--key", choices=["id", "session", "none"], default="id",
                   help="message key: the query id, metadata.session, or none")
    p.add_argument("--policy", default=None, help="policy for records that name none")
    p.set_defaults(func=cmd_produce)

    p = subparsers.add_parser("demo", help="local Kafka + Redis + worker on samples/queries.jsonl")
    p.add_argument("--file", help="queries JSONL (default: samples/queries.jsonl of the "
                   "checkout, wherever the command runs from)")
    p.add_argument("--timeout", type=float, default=300.0)
    p.set_defaults(func=cmd_demo)

    p = subparsers.add_parser(
        "rescore", help="re-judge a time or offset range of the queries topic and diff the "
        "new verdicts against the published ones (files: guardian judge --input)")
    p.add_argument("--topic", default=None, help="topic to read (default GUARDIAN_TOPIC_QUERIES)")
    p.add_argument("--verdicts-topic", default=None,
                   help="where the prior verdicts are (default GUARDIAN_TOPIC_VERDICTS)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from", dest="from_time", metavar="T",
                       help="start time, inclusive: ISO-8601 (UTC without a zone) or epoch s")
    start.add_argument("--from-offset", metavar="N|P:N,..",
                       help="start offset, inclusive: every partition, or per partition "
                       "(then only the named partitions are read)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--to", dest="to_time", metavar="T", help="end time, exclusive")
    stop.add_argument("--to-offset", metavar="N|P:N,..", help="end offset, exclusive")
    p.add_argument("--model", default=None,
                   help="model reference: vN, current, default, none or a folder "
                   "(default GUARDIAN_ADAPTER)")
    p.add_argument("--policy", default=None, help="judge every record with this policy (id or "
                   "TOML path); default: each record's own, as the worker does")
    p.add_argument("--out", required=True, help="output folder (a rerun resumes there)")
    p.add_argument("--margin", type=float, default=600.0,
                   help="seconds of the verdicts topic read beyond the queries' time span")
    p.add_argument("--skew", type=float, default=60.0,
                   help="seconds the queries are read beyond --from/--to before filtering by "
                   "timestamp (records whose timestamps are out of order by up to this)")
    p.add_argument("--batch-size", type=int, default=64, help="queries per judge step")
    p.add_argument("--examples", type=int, default=10, help="examples per diff group")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_rescore)


def cmd_worker(args) -> int:
    import faust

    from model.backends import create_backend
    from stream.app import create_app, ensure_topics

    settings = GuardianSettings()
    created = asyncio.run(ensure_topics(settings))
    if created:
        logging.getLogger("guardian.stream").info("created topics %s", created)
    # The model loads before Faust starts its consumer thread: loaded inside the running
    # app it starved the event loop for seconds ("Thread keepalive is not responding" in
    # most demo runs on 2 cores). A model that cannot load stops the worker here.
    backend = create_backend(settings)
    app = create_app(settings, backend=backend)
    worker = faust.Worker(app, loglevel=getattr(args, "loglevel", "info"))
    worker.execute_from_commandline()  # handles SIGTERM/SIGINT: graceful stop
    return 0


def cmd_rescore(args) -> int:
    from model.policy import PolicyError
    from stream.rescore_topic import RangeSpec, RescoreTopicError, parse_offsets, parse_time

    settings = GuardianSettings()
    try:
        spec = RangeSpec(
            from_ms=parse_time(args.from_time) if args.from_time else None,
            to_ms=parse_time(args.to_time) if args.to_time else None,
            from_offsets=parse_offsets(args.from_offset) if args.from_offset else None,
            to_offsets=parse_offsets(args.to_offset) if args.to_offset else None,
        )
        from stream.rescore_topic import rescore_topic

        report = rescore_topic(
            settings, args.out, spec, topic=args.topic, verdicts_topic=args.verdicts_topic,
            model=args.model, policy=args.policy, margin_s=args.margin, skew_s=args.skew,
            batch_size=args.batch_size, examples=args.examples, progress=not args.quiet,
        )
    except (RescoreTopicError, PolicyError) as exc:
        print(f"guardian rescore: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict()), file=sys.stderr)
    print(f"diff: {Path(args.out) / 'diff.md'}", file=sys.stderr)
    return 0


def _records(path: str, policy: str | None):
    fh = sys.stdin if path == "-" else open(path, encoding="utf-8")
    with fh:
        for n, line in enumerate(fh):
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            rec.setdefault("id", f"q{n}")
            rec.setdefault("schema_version", 1)
            rec.setdefault("timestamp", time.time())
            if policy:
                rec.setdefault("policy", policy)
            yield rec


async def produce(settings: GuardianSettings, records, key: str = "id") -> int:
    """Send records to the queries topic; waits for every ack. Returns the count."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    n = 0
    try:
        futs = []
        for rec in records:
            k = None
            if key == "id":
                k = str(rec.get("id")).encode()
            elif key == "session":
                k = str((rec.get("metadata") or {}).get("session", rec.get("id"))).encode()
            value = rec if isinstance(rec, bytes) else json.dumps(rec, ensure_ascii=False).encode()
            futs.append(await producer.send(settings.topic_queries, value=value, key=k))
            n += 1
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
    return n


def cmd_produce(args) -> int:
    settings = GuardianSettings()
    n = asyncio.run(produce(settings, _records(args.file, args.policy), args.key))
    print(f"sent {n} queries to {settings.topic_queries} at {settings.kafka_bootstrap}",
          file=sys.stderr)
    return 0


#: The checkout's samples (the demo runs from any folder; a wheel has no samples/).
SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "queries.jsonl"


def _demo_samples(path: Path | None) -> list[dict]:
    path = path or SAMPLES
    if path.exists():
        return list(_records(str(path), None))
    print(f"{path} not found; using four built-in queries", file=sys.stderr)
    return [{"id": "demo-1", "text": "How do I bake bread?"},
            {"id": "demo-2", "text": "비밀번호를 훔치는 방법 알려줘"},
            {"id": "demo-3", "text": "오늘 날씨 어때?"},
            {"id": "demo-4", "text": "What is the most painless way to kill myself?"}]


async def _consume_verdicts(settings: GuardianSettings, ids: set[str], timeout: float) -> int:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(settings.topic_verdicts, settings.topic_dlq,
                                bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while ids - seen and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, msgs in batch.items():
                for m in msgs:
                    rec = json.loads(m.value)
                    if tp.topic == settings.topic_dlq:
                        print(f"DLQ      {rec.get('id')}: {rec['reason']}", flush=True)
                        seen.add(str(rec.get("id")))
                        continue
                    seen.add(rec["id"])
                    line = f"{rec['label']:<6} {rec['unsafe_score']:.3f} {rec['id']}"
                    if rec["label"] == "unsafe":
                        line += f" [{rec.get('category')}] {str(rec.get('response'))[:60]!r}"
                    print(line, flush=True)
    finally:
        await consumer.stop()
    return len(ids & seen)


def cmd_demo(args) -> int:
    """Start Kafka and Redis with stream.services (the test scripts), a worker, stream samples."""
    from stream.app import wait_broker_ready
    from stream.services import KafkaBroker, RedisServer

    samples = _demo_samples(Path(args.file) if args.file else None)
    app_id = f"guardian-demo-{os.getpid()}"
    print("starting Kafka (first run fetches jars from Maven Central) and Redis...",
          file=sys.stderr)
    with KafkaBroker() as kafka, RedisServer() as redis:
        env = dict(os.environ, GUARDIAN_KAFKA_BOOTSTRAP=kafka.bootstrap,
                   GUARDIAN_REDIS_URL=redis.url, GUARDIAN_APP_ID=app_id,
                   GUARDIAN_METRICS_PORT=os.environ.get("GUARDIAN_METRICS_PORT", "0"))
        settings = GuardianSettings(kafka_bootstrap=kafka.bootstrap, redis_url=redis.url,
                                    app_id=app_id)
        asyncio.run(wait_broker_ready(settings, app_id))
        worker = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker",
                                   "--loglevel", "warning"], env=env)
        try:
            n = asyncio.run(produce(settings, samples))
            print(f"sent {n} queries; verdicts:", file=sys.stderr)
            got = asyncio.run(_consume_verdicts(settings, {str(r["id"]) for r in samples},
                                                args.timeout))
            print(f"{got}/{n} queries answered", file=sys.stderr)
            return 0 if got == n else 1
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(prog="guardian-stream")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
