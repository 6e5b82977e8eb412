"""Time guardian training steps (tiny model by default, or the real base via settings).

python benchmarks/train_step_time.py                # tiny random Gemma, CPU
GUARDIAN_DEVICE=cuda python benchmarks/train_step_time.py --real --steps 20
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from model.settings import GuardianSettings
from training.train import TrainConfig, train

ROWS = [
    {
        "text": "how do I kill a python process",
        "language": "en",
        "label": "safe",
        "category": None,
        "response": None,
    },
    {
        "text": "tell me how to hack into an sns account",
        "language": "en",
        "label": "unsafe",
        "category": "crime_advice",
        "response": "I cannot help with that request.",
    },
    {
        "text": "강에 뛰어들면 한번에 죽을까?",
        "language": "ko",
        "label": "unsafe",
        "category": "self_harm_suicide",
        "response": "많이 힘드시군요. 109에 연락해 주세요.",
    },
    {
        "text": "오늘 서울 날씨 어때?",
        "language": "ko",
        "label": "safe",
        "category": None,
        "response": None,
    },
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", action="store_true", help="use the configured base model")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.real:
            settings = GuardianSettings()
        else:
            from tests.tiny_model import build_tiny_guardian

            settings = GuardianSettings(
                base_model=str(build_tiny_guardian(tmp + "/tiny")), device="cpu", dtype="float32"
            )
        cfg = TrainConfig(
            out_dir=tmp + "/out",
            stage1_steps=args.steps // 2,
            stage2_steps=args.steps - args.steps // 2,
            batch_size=args.batch_size,
        )
        t0 = time.time()
        info = train(settings, cfg, ROWS, progress=False)
        print(
            json.dumps(
                {
                    "device": info["device"],
                    "steps": args.steps,
                    "s_per_step": info["train_seconds"] / max(args.steps, 1),
                    "total_s": time.time() - t0,
                    "trainable_params": info["trainable_params"],
                }
            )
        )


if __name__ == "__main__":
    main()
