"""Throughput and latency of `guardian judge` re-scoring a 1,000-query file on this machine.

Runs the same file twice in one process, on the same loaded model:
  1. label only   - a policy whose threshold no score reaches: every query costs one
                    forward pass, no decoding (the guardian's path for safe traffic);
  2. with policy  - the given policy (default: default-ko): queries over the threshold
                    also get a category step and a decoded safety response.
and prints queries/s for each, their ratio, the share of unsafe verdicts, and p50/p99 of
single-query latency. Results depend on the model (GUARDIAN_BASE_MODEL / GUARDIAN_ADAPTER):
an untrained base sends most queries down the decoding path.

    python benchmarks/judge_throughput.py --n 1000
    python benchmarks/judge_throughput.py --n 1000 --dataset data/guardian-dataset

--dataset draws --n queries from the held-out test split (random.Random(--seed)), a mix
of safe and unsafe traffic, instead of cycling the shipped samples.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from model.backends import create_backend
from model.engine import Query
from model.policy import PolicyStore, policy_from_dict
from model.rescore import rescore_file
from model.settings import GuardianSettings

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "queries.jsonl"


def read_texts(path: Path) -> list[str]:
    return [json.loads(x)["text"] for x in path.read_text(encoding="utf-8").splitlines() if x]


def make_file(path: Path, n: int, source: Path) -> None:
    base = read_texts(source)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"b{i}", "text": base[i % len(base)]}, ensure_ascii=False))
            fh.write("\n")


def sample_dataset(path: Path, out: Path, n: int, seed: int) -> None:
    from datasets import load_from_disk

    test = load_from_disk(str(path))["test"]
    idx = random.Random(seed).sample(range(len(test)), min(n, len(test)))
    with out.open("w", encoding="utf-8") as fh:
        for i in idx:
            fh.write(json.dumps({"id": f"t{i}", "text": test[i]["text"]}, ensure_ascii=False))
            fh.write("\n")


def run_file(backend, store, policy, src: Path, out: Path, batch: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    rescore_file(
        backend, src, out, store=store, default_policy=policy, batch_size=batch,
        errors=io.StringIO(), progress=False,
    )
    elapsed = time.perf_counter() - t0
    verdicts = [json.loads(x) for x in out.read_text().splitlines()]
    unsafe = sum(v["label"] == "unsafe" for v in verdicts) / max(1, len(verdicts))
    return len(verdicts) / elapsed, unsafe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--policy", default="default-ko")
    parser.add_argument("--file-batch", type=int, default=64)
    parser.add_argument("--single", type=int, default=50, help="single-query latency samples")
    parser.add_argument("--input", type=Path, default=SAMPLES,
                        help="JSONL with a text field, cycled to --n queries (default: samples)")
    parser.add_argument("--dataset", type=Path, default=None,
                        help="DatasetDict folder: sample --n queries from its test split")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    settings = GuardianSettings()
    store = PolicyStore.from_settings(settings)
    policy = store.resolve(args.policy)
    label_only = policy_from_dict({"id": "label-only", "version": "1", "threshold": 1.0})
    t0 = time.perf_counter()
    backend = create_backend(settings)
    load_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "queries.jsonl"
        if args.dataset:
            sample_dataset(args.dataset, src, args.n, args.seed)
        else:
            make_file(src, args.n, args.input)
        texts = read_texts(src)
        qps_label, _ = run_file(backend, store, label_only, src, Path(tmp) / "a.jsonl",
                                args.file_batch)
        qps_policy, unsafe = run_file(backend, store, policy, src, Path(tmp) / "b.jsonl",
                                      args.file_batch)
    lat = []
    for i in range(args.single):
        t = time.perf_counter()
        backend.judge([Query(str(i), texts[i % len(texts)])], policy)
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    print(f"model: {backend.model_id} {backend.model_version}  backend: {backend.name}  "
          f"device: {settings.resolved_device()}  dtype: {settings.resolved_dtype()}  "
          f"batch_size: {settings.batch_size}  load: {load_s:.1f}s")
    print(f"queries: {args.n} from {args.dataset or args.input.name}")
    print(f"label only (one forward pass each): {qps_label:8.1f} queries/s")
    print(f"policy {policy.key} ({unsafe:.0%} unsafe, decoded): {qps_policy:8.1f} queries/s")
    print(f"ratio label-only / with-policy: {qps_label / qps_policy:.1f}x")
    print(f"single query latency ({args.single} runs, policy {policy.key}): "
          f"p50 {statistics.median(lat):.0f} ms  p99 {p99:.0f} ms")


if __name__ == "__main__":
    main()
