"""`guardian retrain`: learn from flagged traffic, promote only when nothing regresses.

1. Read the flagged table the stream writes (partitioned Parquet,
   `date=YYYY-MM-DD/hour=HH/*.parquet`, extra columns tolerated).
2. Labels: a reviewer file (JSONL `id,label,category`) wins; rows without a review are
   relabelled by the teacher endpoint when one is configured; otherwise they are left out
   (the model's own verdicts are never trusted as labels).
3. Mix with base training data: `retrain_base_ratio` base examples per flagged example.
4. Fine-tune from the current registry version into `versions/vN` (continuing its adapter).
5. Evaluate old and new on the same held-out sets; promote (atomic `current` pointer) only
   if, on every set, weighted F1 and unsafe F1 do not drop by more than `max_regression`.
   The decision and its reason are written to `versions/vN/retrain_report.json`.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from model.language import detect_language
from model.registry import Registry
from model.settings import GuardianSettings
from model.taxonomy import CATEGORY_IDS

COMPARED = ("weighted_f1", "unsafe_f1")


def read_flagged(table_dir: str | Path) -> list[dict]:
    root = Path(table_dir)
    # the stream's sink writes dot-prefixed temp files and os.replace()s them: skip those
    files = sorted(
        str(p) for p in root.glob("date=*/hour=*/*.parquet") if not p.name.startswith(".")
    )
    if not files:
        return []
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=files, split="train")
    keep = [c for c in ("id", "text", "label", "category", "response") if c in ds.column_names]
    return [{k: r.get(k) for k in keep} for r in ds.select_columns(keep)]


def read_reviews(path: str | Path | None) -> dict[str, dict]:
    if not path or not Path(path).is_file():
        return {}
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            out[str(r["id"])] = r
    return out


def label_flagged(
    flagged: list[dict], reviews: dict[str, dict], relabel: Callable[[str], dict] | None
) -> tuple[list[dict], dict]:
    """Training rows for flagged queries, and counts of where each label came from."""
    rows, counts = [], {"reviewed": 0, "teacher": 0, "skipped_unlabelled": 0, "invalid": 0}
    seen = set()
    for f in flagged:
        fid, text = str(f.get("id")), f.get("text") or ""
        if not text or fid in seen:
            continue
        seen.add(fid)
        if fid in reviews:
            lab, src = reviews[fid], "reviewed"
        elif relabel is not None:
            lab, src = relabel(text), "teacher"
        else:
            counts["skipped_unlabelled"] += 1
            continue
        label = lab.get("label")
        category = lab.get("category") if label == "unsafe" else None
        if label not in ("safe", "unsafe") or (label == "unsafe" and category not in CATEGORY_IDS):
            counts["invalid"] += 1
            continue
        counts[src] += 1
        rows.append(
            {
                "text": text,
                "language": detect_language(text),
                "label": label,
                "category": category,
                "response": lab.get("response"),
                "source": f"flagged_{src}",
            }
        )
    return rows, counts


def mix(flagged_rows: list[dict], base_rows: list[dict], ratio: float, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    k = min(len(base_rows), int(round(ratio * max(len(flagged_rows), 1))))
    return flagged_rows + rng.sample(base_rows, k)


def data_hash(rows: list[dict]) -> str:
    """sha256 of the training rows (order kept), recorded in the registry entry so two
    versions can be told apart by what they learned from."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()


def summarize(result: dict) -> dict[str, dict[str, float]]:
    """eval result -> {set: {weighted_f1, unsafe_f1}} (what the promotion rule compares)."""
    return {
        name: {"weighted_f1": r["weighted"]["f1"], "unsafe_f1": r["unsafe_f1"]}
        for name, r in result["datasets"].items()
    }


def compare(old: dict, new: dict, max_regression: float) -> tuple[bool, list[str]]:
    reasons = []
    for name, o in old.items():
        n = new.get(name)
        if n is None:
            reasons.append(f"{name}: new model not evaluated")
            continue
        for key in COMPARED:
            if n[key] < o[key] - max_regression:
                reasons.append(f"{name}: {key} {o[key]:.4f} -> {n[key]:.4f}")
    return not reasons, reasons


def retrain(
    settings: GuardianSettings,
    *,
    base_rows: list[dict],
    eval_sets: dict,
    relabel: Callable[[str], dict] | None = None,
    train_fn: Callable | None = None,
    eval_fn: Callable[[Path | None], dict] | None = None,
    steps: int | None = None,
    responses=None,
    progress: bool = False,
    eval_limit: int | None = None,
) -> dict:
    """Run one retraining round; returns the decision report."""
    from training.train import TrainConfig, train

    reg = Registry(settings.registry_dir)
    registry_parent = reg.current()
    old_version = registry_parent
    old_path = reg.current_path()
    if old_path is None:
        # An empty registry is not an empty model: continue from and compare against what
        # `guardian judge` serves now (the shipped guardian by default), never the bare base.
        old_path = settings.resolved_adapter()
        # Named by its folder: the report and the new model card must not carry this
        # machine's path (the same rule as training.train._drop_local_base_path).
        old_version = f"serving adapter {old_path.name}" if old_path else None
    flagged = read_flagged(settings.flagged_table_dir)
    new_rows, counts = label_flagged(flagged, read_reviews(settings.review_file), relabel)
    report: dict = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "old_version": old_version,
        "flagged_rows": len(flagged),
        "labels": counts,
    }
    if not new_rows:
        report.update(promoted=False, reason="no labelled flagged examples: nothing to learn")
        return report
    rows = mix(new_rows, base_rows, settings.retrain_base_ratio)
    version = reg.next_version()
    out = reg.path(version)
    if eval_fn is None:

        def eval_fn(adapter: Path | None) -> dict:
            from model.backends import create_backend
            from training.evaluate import evaluate

            s = settings.model_copy(update={"adapter": str(adapter) if adapter else ""})
            sets = {k: list(v) for k, v in eval_sets.items()}
            res = evaluate(
                create_backend(s), sets, batch_size=settings.batch_size, limit=eval_limit
            )
            return summarize(res)

    cfg = TrainConfig.from_settings(
        settings,
        str(out),
        version=version,
        model_id="guardian",
        init_from=str(old_path) if old_path else "",
        data_note=f"Retraining round: {len(new_rows)} flagged examples ({counts}) mixed with "
        f"{len(rows) - len(new_rows)} base examples; continued from {old_version or 'the base'}.",
    )
    if steps is not None:
        cfg.stage1_steps, cfg.stage2_steps = steps // 2, steps - steps // 2
    (train_fn or train)(settings, cfg, rows, responses=responses, progress=progress)
    new_scores = eval_fn(out)
    old_scores = eval_fn(old_path) if old_path else None
    report.update(new_version=version, new_scores=new_scores, old_scores=old_scores)
    if old_scores is None:
        ok, reasons = True, ["no current version: first model"]
    else:
        ok, reasons = compare(old_scores, new_scores, settings.max_regression)
    reg.register(
        version,
        parent=registry_parent,
        data_hash=data_hash(rows),
        eval={"new": new_scores, "old": old_scores, "report": "retrain_report.json"},
    )
    if ok:
        reg.promote(version)
        report.update(promoted=True, reason="; ".join(reasons) or "no regression on any set")
    else:
        report.update(promoted=False, reason="regression: " + "; ".join(reasons))
    (out / "retrain_report.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    )
    if not ok:
        # keep the rejected folder for inspection under a name the registry ignores
        rejected = out.with_name(f"{version}-rejected-{int(time.time())}")
        shutil.move(str(out), str(rejected))
        report["rejected_dir"] = str(rejected)
    return report
