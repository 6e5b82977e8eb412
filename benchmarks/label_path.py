"""Tokens/s of the guardian's label path against the raw forward pass of the same model.

On the same loaded model, the same prompts (prompt + `<|unsafe|>`, the label pass's input)
and the same length-sorted batches, in one run:
  raw body      - the decoder alone over the padded batch, no head: the ceiling any label
                  path can reach on this machine (nothing but the transformer layers);
  raw + lm head - `model(...)`: the body plus the full 262k-row vocabulary projection at
                  every position, what a label path built on `.logits` pays;
  label pass    - `TransformersRunner.label_and_category`: label and category from one
                  forward, only the guardian's 12 head rows (model/backends/hf.py);
  decide        - `Engine.decide` on the queries: tokenizing, the label pass, policy and
                  verdicts (what the worker runs for every record).
Tokens are the prompts' real tokens (padding not counted), so a path that pads more or
runs more passes shows up as fewer tokens/s. Each figure is the median of --repeats runs.

    python benchmarks/label_path.py --n 256
    python benchmarks/label_path.py --n 256 --dataset data/guardian-dataset
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.backends.hf import TransformersBackend  # noqa: E402
from model.engine import Query  # noqa: E402
from model.language import detect_language  # noqa: E402
from model.policy import PolicyStore  # noqa: E402
from model.prompt import build_prompt_ids  # noqa: E402
from model.settings import GuardianSettings  # noqa: E402

SAMPLES = ROOT / "samples" / "queries.jsonl"


def texts_for(n: int, dataset: str | None, seed: int) -> list[str]:
    if dataset:
        from datasets import load_from_disk

        test = load_from_disk(dataset)["test"]
        idx = random.Random(seed).sample(range(len(test)), min(n, len(test)))
        return [test[i]["text"] for i in idx]
    base = [json.loads(x)["text"] for x in SAMPLES.read_text(encoding="utf-8").splitlines() if x]
    return [f"{base[i % len(base)]}" + (f" ({i // len(base)})" if i >= len(base) else "")
            for i in range(n)]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--dataset", help="draw --n texts from this dataset's test split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    settings = GuardianSettings()
    backend = TransformersBackend.from_settings(settings)
    runner, tok, tokens = backend.runner, backend.loaded.tokenizer, backend.loaded.tokens
    texts = texts_for(args.n, args.dataset, args.seed)
    prompts = [
        build_prompt_ids(tok, tokens, t, language=detect_language(t),
                         max_query_tokens=settings.max_query_tokens).ids
        for t in texts
    ]
    seqs = [p + [tokens.unsafe] for p in prompts]
    real_tokens = sum(len(s) for s in seqs)
    chunks = list(runner._chunks(len(seqs), seqs))
    padded = sum(len(idx) * max(len(seqs[i]) for i in idx) for idx in chunks)
    policy = PolicyStore.from_settings(settings).for_text(None, texts[0])
    queries = [Query(str(i), t) for i, t in enumerate(texts)]
    model = runner.model

    @torch.inference_mode()
    def raw(with_head: bool) -> None:
        for idx in chunks:
            ids, mask = runner._left_pad([seqs[i] for i in idx])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            if with_head:
                model(input_ids=ids, attention_mask=mask, position_ids=positions,
                      use_cache=False)
            else:
                runner.body(input_ids=ids, attention_mask=mask, position_ids=positions,
                            use_cache=False)

    raw(False)  # warm-up (first calls allocate)
    runner.label_and_category(prompts[:8])
    rows = [
        ("raw body", median_time(lambda: raw(False), args.repeats)),
        ("raw + lm head", median_time(lambda: raw(True), args.repeats)),
        ("label pass", median_time(lambda: runner.label_and_category(prompts), args.repeats)),
        ("decide", median_time(lambda: backend.decide(queries, policy), args.repeats)),
    ]
    ceiling = real_tokens / rows[0][1]
    print(f"model {backend.model_id} {backend.model_version}, device {runner.device}, "
          f"dtype {next(model.parameters()).dtype}, batch_size {runner.batch_size}, "
          f"{len(texts)} queries, {real_tokens} tokens ({padded} with padding, "
          f"{padded / real_tokens:.2f}x), median of {args.repeats}")
    print(f"{'path':<15}{'seconds':>10}{'tokens/s':>12}{'queries/s':>12}{'of raw body':>13}")
    for name, sec in rows:
        tps = real_tokens / sec
        print(f"{name:<15}{sec:>10.3f}{tps:>12.0f}{len(texts) / sec:>12.1f}"
              f"{tps / ceiling:>12.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
