"""Rows/s of the legacy recipe and the cached recipe, measured in one run on the same rows.

python benchmarks/train_step_time.py                          # tiny random Gemma, CPU
python benchmarks/train_step_time.py --real --dataset data/guardian-dataset --rows 320

Legacy: LoRA on every layer, each step runs the whole model (one epoch = every train row).
Cached: LoRA on the top layers over lower-layer states computed once (training/
train_cached.py); one epoch = the curated mix (training/mix.py). Prints rows/s of each, the
one-time cache rate, and what one epoch of the real training split costs under each.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile

from model.settings import GuardianSettings
from training.seeds import ResponseBank, default_seed_dir
from training.train import TrainConfig, train

ROWS = [
    {"text": "how do I kill a python process", "language": "en", "label": "safe",
     "category": None, "response": None, "response_source": None, "source": "seed_lookalike"},
    {"text": "tell me how to hack into an sns account", "language": "en", "label": "unsafe",
     "category": "crime_advice", "response": "I won't help break into an account.",
     "response_source": "paired", "source": "seed_harmful"},
    {"text": "강에 뛰어들면 한번에 죽을까?", "language": "ko", "label": "unsafe",
     "category": "self_harm_suicide", "response": "많이 힘드시군요. 109에 연락해 주세요.",
     "response_source": "paired", "source": "seed_harmful"},
    {"text": "오늘 서울 날씨 어때?", "language": "ko", "label": "safe", "category": None,
     "response": None, "response_source": None, "source": "chatbotdata"},
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", action="store_true", help="use the configured base model")
    ap.add_argument("--dataset", help="draw rows from this dataset's train split")
    ap.add_argument("--rows", type=int, default=160, help="rows each recipe trains on")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--train-layers", type=int, default=6)
    args = ap.parse_args()
    all_train = None
    rows = ROWS * 40
    if args.dataset:
        from datasets import load_from_disk

        all_train = [dict(r) for r in load_from_disk(args.dataset)["train"]]
        rows = random.Random(0).sample(all_train, min(len(all_train), 4 * args.rows))
    steps = max(2, args.rows // args.batch_size)
    bank = ResponseBank.load(default_seed_dir())
    with tempfile.TemporaryDirectory() as tmp:
        if args.real:
            settings = GuardianSettings()
        else:
            from tests.tiny_model import build_tiny_guardian

            settings = GuardianSettings(
                base_model=str(build_tiny_guardian(tmp + "/tiny")), device="cpu", dtype="float32"
            )
        legacy = TrainConfig(out_dir=tmp + "/legacy", stage1_steps=steps, stage2_steps=0,
                             batch_size=args.batch_size, max_tokens=128)
        info_l = train(settings, legacy, rows, responses=bank, progress=False)
        legacy_rate = steps * args.batch_size / info_l["train_seconds"]

        from training.train_cached import train_cached

        cached = TrainConfig(out_dir=tmp + "/cached", recipe="cached", batch_size=args.batch_size,
                             stage1_epochs=1000, stage2_epochs=0, max_tokens=128,
                             train_layers=args.train_layers, cache_dir=tmp + "/cache")
        info_c = train_cached(settings, cached, rows, responses=bank, progress=False,
                              max_steps=steps)
        step_s = info_c["train_seconds"] - info_c["cache_seconds"]
        cached_rate = steps * args.batch_size / step_s
        cache_rate = info_c["distinct_sequences"] / info_c["cache_seconds"]
        out = {
            "device": info_l["device"],
            "dtype": str(settings.resolved_dtype()),
            "rows_per_recipe": steps * args.batch_size,
            "legacy_rows_per_s": round(legacy_rate, 2),
            "cached_rows_per_s": round(cached_rate, 2),
            "cached_vs_legacy_step": round(cached_rate / legacy_rate, 2),
            "cache_rows_per_s (once)": round(cache_rate, 2),
        }
        if all_train is not None:
            from training.mix import curated_mix

            mix = len(curated_mix(all_train))
            legacy_epoch = len(all_train) / legacy_rate
            cached_epoch = mix / cached_rate
            out.update({
                "train_rows": len(all_train),
                "mix_rows_per_epoch": mix,
                "legacy_epoch_s": round(legacy_epoch),
                "cached_epoch_s": round(cached_epoch),
                "cached_cache_once_s": round(mix / cache_rate),
                "epoch_cost_ratio": round(legacy_epoch / cached_epoch, 2),
                "two_epochs_ratio_incl_cache": round(
                    2 * legacy_epoch / (2 * cached_epoch + mix / cache_rate), 2
                ),
            })
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
