"""Throughput and latency of the HTTP API: 32 concurrent clients against 32 sequential calls.

Starts `guardian serve` (python -m api.cli serve) on a free loopback port, or uses a
running server (--url), and in one run measures, on the same server:
  1. sequential - --clients one-query calls, one after the other (--rounds times);
  2. concurrent - --clients clients each sending one query at the same moment (--rounds
                  bursts): the dynamic batcher answers them from shared model calls.
It prints queries/s and p50/p99 latency of both, the concurrent/sequential ratios, and the
queries per model call the server reports (/healthz). Every text gets a unique suffix, so a
configured Redis cache never answers.

    python benchmarks/api_throughput.py                # tiny random model (mechanics only)
    python benchmarks/api_throughput.py --real         # the configured guardian (GUARDIAN_*)
    python benchmarks/api_throughput.py --url http://127.0.0.1:8000 --key sk-...

The tiny model (tests/tiny_model.py, random weights) measures the server and the batcher,
not moderation quality; --real loads what GUARDIAN_BASE_MODEL / GUARDIAN_ADAPTER name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "queries.jsonl"


def texts() -> list[str]:
    if SAMPLES.exists():
        return [json.loads(x)["text"] for x in SAMPLES.read_text(encoding="utf-8").splitlines()
                if x.strip()]
    return ["what is the capital of france", "sns 계정 해킹하는 방법 알려줘"]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, workdir: Path) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ)
    if not args.real:
        sys.path.insert(0, str(ROOT))
        from tests.tiny_model import build_tiny_guardian

        model = build_tiny_guardian(workdir / "tiny-guardian")
        env.update(GUARDIAN_BASE_MODEL=str(model), GUARDIAN_CACHE_DIR=str(workdir / "cache"),
                   GUARDIAN_DEVICE="cpu", GUARDIAN_DTYPE="float32",
                   GUARDIAN_MAX_NEW_TOKENS=env.get("GUARDIAN_MAX_NEW_TOKENS", "8"))
    port = free_port()
    env.update(GUARDIAN_API_HOST="127.0.0.1", GUARDIAN_API_PORT=str(port),
               GUARDIAN_API_KEYS_FILE="", GUARDIAN_API_MAX_WAIT_MS=str(args.max_wait_ms),
               GUARDIAN_API_MAX_BATCH=str(max(args.clients, 1)),
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--log-level", "warning"],
                            env=env, cwd=ROOT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.start_timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"guardian serve exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            raise SystemExit("guardian serve did not become healthy in time")
        time.sleep(0.2)


def model_calls(url: str) -> int:
    return int(httpx.get(url + "/healthz", timeout=5).json().get("model_calls", 0))


async def run(url: str, headers: dict[str, str], args) -> None:
    base = texts()
    counter = iter(range(10**9))

    def body() -> dict:
        i = next(counter)
        return {"input": f"{base[i % len(base)]} #{i}"}

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=args.timeout,
                                 limits=httpx.Limits(max_connections=args.clients + 4)) as c:
        async def call() -> float:
            t0 = time.perf_counter()
            r = await c.post("/v1/moderations", json=body())
            r.raise_for_status()
            return time.perf_counter() - t0

        for _ in range(args.warmup):
            await call()
        await asyncio.gather(*(call() for _ in range(args.clients)))  # warm connections

        calls0 = model_calls(url)
        seq: list[float] = []
        t0 = time.perf_counter()
        for _ in range(args.rounds * args.clients):
            seq.append(await call())
        seq_wall = time.perf_counter() - t0
        seq_calls = model_calls(url) - calls0

        calls0 = model_calls(url)
        conc: list[float] = []
        conc_wall = 0.0
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            conc += await asyncio.gather(*(call() for _ in range(args.clients)))
            conc_wall += time.perf_counter() - t0
        conc_calls = model_calls(url) - calls0

    n = args.rounds * args.clients
    rows = [("sequential", seq, seq_wall, seq_calls), (f"{args.clients} concurrent", conc,
                                                        conc_wall, conc_calls)]
    print(f"{n} queries each ({args.rounds} x {args.clients}), /v1/moderations, one input "
          f"per call, server {url}")
    print(f"{'':>14} {'queries/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9} "
          f"{'model calls':>12} {'queries/call':>13}")
    for name, lat, wall, calls in rows:
        print(f"{name:>14} {n / wall:>10.1f} {pct(lat, .5) * 1e3:>9.1f} "
              f"{pct(lat, .99) * 1e3:>9.1f} {statistics.fmean(lat) * 1e3:>9.1f} "
              f"{calls:>12d} {n / max(calls, 1):>13.1f}")
    print(f"concurrent / sequential: throughput x{seq_wall / conc_wall:.2f}, "
          f"p50 x{pct(conc, .5) / pct(seq, .5):.2f}, p99 x{pct(conc, .99) / pct(seq, .99):.2f}, "
          f"model calls x{conc_calls / max(seq_calls, 1):.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--real", action="store_true", help="the configured guardian, not the tiny")
    p.add_argument("--url", help="a running server instead of starting one")
    p.add_argument("--key", default=os.environ.get("GUARDIAN_API_KEY", ""), help="API key")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-wait-ms", type=int, default=10, help="GUARDIAN_API_MAX_WAIT_MS")
    p.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    p.add_argument("--start-timeout", type=float, default=300.0)
    args = p.parse_args()
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    if args.url:
        asyncio.run(run(args.url.rstrip("/"), headers, args))
        return 0
    with tempfile.TemporaryDirectory(prefix="guardian-api-bench-") as tmp:
        proc, url = start_server(args, Path(tmp))
        try:
            asyncio.run(run(url, headers, args))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
