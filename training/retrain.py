"""`guardian retrain`: learn from flagged traffic, promote only when nothing regresses.

1. Read the flagged table the stream writes (partitioned Parquet,
   `date=YYYY-MM-DD/hour=HH/*.parquet`, extra columns tolerated), optionally only the rows
   flagged since a time (`--since`).
2. Labels: a reviewer file (JSONL `id,label,category`) wins; rows without a review are
   relabelled by the teacher endpoint when one is configured; otherwise they are left out
   (the model's own verdicts are never trusted as labels).
3. Mix with base training data: `retrain_base_ratio` base examples per flagged example.
4. Fine-tune from the current registry version into `versions/vN` (continuing its adapter),
   within a step budget (`--steps`) and a time budget (`--max-minutes`): a nightly job must
   end before the morning whatever the table holds.
5. Re-score that recent traffic with the candidate and diff it against the verdicts that
   were served (flips either way, per category, examples: `traffic_diff.json` / `.md`), so
   a reviewer sees what the promotion would change for real users, not only test scores.
6. Evaluate old and new on the same held-out sets; promote (atomic `current` pointer) only
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


#: Columns of the flagged table the job reads (the served verdict and where it came from).
FLAGGED_COLUMNS = (
    "id", "text", "label", "category", "response", "unsafe_score", "policy_id",
    "model_version", "created_at", "near_threshold",
)
TRAFFIC_DIFF_JSON = "traffic_diff.json"
TRAFFIC_DIFF_MD = "traffic_diff.md"


def read_flagged(table_dir: str | Path, since: float | None = None) -> list[dict]:
    """Rows of the flagged table; with `since` (epoch seconds) only those flagged since then
    (by the row's `created_at`; whole partitions older than the hour of `since` are not read)."""
    root = Path(table_dir)
    # the stream's sink writes dot-prefixed temp files and os.replace()s them: skip those
    files = sorted(
        p for p in root.glob("date=*/hour=*/*.parquet") if not p.name.startswith(".")
    )
    if since is not None:
        first = time.strftime("date=%Y-%m-%d/hour=%H", time.gmtime(since))
        files = [p for p in files if f"{p.parent.parent.name}/{p.parent.name}" >= first]
    if not files:
        return []
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=[str(p) for p in files], split="train")
    keep = [c for c in FLAGGED_COLUMNS if c in ds.column_names]
    rows = [{k: r.get(k) for k in keep} for r in ds.select_columns(keep)]
    if since is not None:
        rows = [r for r in rows if float(r.get("created_at") or 0.0) >= since]
    return rows


def served_verdicts(flagged: list[dict]) -> dict[str, dict]:
    """The last served verdict per id in the flagged rows (a record can be flagged again
    after a restart: at-least-once), as verdict dicts for model.verdict_diff."""
    out: dict[str, dict] = {}
    for r in sorted(flagged, key=lambda r: float(r.get("created_at") or 0.0)):
        if r.get("text") and r.get("label") in ("safe", "unsafe"):
            out[str(r["id"])] = r
    return out


def traffic_diff(
    flagged: list[dict], judge: Callable[[list[dict]], dict[str, dict]], *, examples: int = 10
) -> dict:
    """Re-judge the recent flagged traffic with the candidate (`judge`: rows -> id ->
    verdict dict) and diff it against what was served."""
    from model.verdict_diff import diff_verdicts

    served = served_verdicts(flagged)
    new = judge(list(served.values())) if served else {}
    texts = {vid: r["text"] for vid, r in served.items()}
    return diff_verdicts(new, served, texts=texts, examples=examples)


def candidate_judge(settings: GuardianSettings, adapter: Path) -> Callable:
    """rows -> {id: verdict dict}: the candidate under each row's served policy (the
    language default when that policy is gone), in the model's batches."""
    from model.backends import create_backend
    from model.engine import Query
    from model.policy import PolicyError, PolicyStore
    from model.rescore import judged_batches

    # verdicts only (labels, categories, scores): the diff reads no response
    backend = create_backend(
        settings.model_copy(update={"adapter": str(adapter), "max_new_tokens": 0}))
    store = PolicyStore.from_settings(settings)

    def judge(rows: list[dict]) -> dict[str, dict]:
        def policy_for(r: dict):
            try:
                return store.for_text(r.get("policy_id") or None, r["text"])
            except PolicyError:
                return store.for_text(None, r["text"])

        items = ((Query(str(r["id"]), r["text"]), policy_for(r)) for r in rows)
        return {q.id: v.to_dict() | {"id": q.id}
                for done in judged_batches(backend, items, batch_size=settings.batch_size)
                for q, v in done}

    return judge


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


def _serving_version(settings: GuardianSettings, adapter: Path | None) -> str | None:
    """The version stamp of what serves outside the registry (the shipped guardian's
    `v3`), so the first registry version is numbered after it, not `v1` again."""
    if adapter is None:
        return None
    from model.resolve import resolve_model

    try:
        return resolve_model(settings, adapter).version
    except Exception:  # noqa: BLE001 - numbering only; the training step reports real errors
        return None


def retrain(
    settings: GuardianSettings,
    *,
    base_rows: list[dict],
    eval_sets: dict,
    relabel: Callable[[str], dict] | None = None,
    train_fn: Callable | None = None,
    eval_fn: Callable[[Path | None], dict] | None = None,
    steps: int | None = None,
    max_seconds: float | None = None,
    since: float | None = None,
    judge_fn: Callable[[Path], Callable] | None = None,
    merge: bool = False,
    responses=None,
    progress: bool = False,
    eval_limit: int | None = None,
) -> dict:
    """Run one retraining round; returns the decision report. `steps` and `max_seconds`
    bound the training; `since` (epoch seconds) limits it to traffic flagged since then."""
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
    serving_version = _serving_version(settings, old_path) if registry_parent is None else None
    flagged = read_flagged(settings.flagged_table_dir, since=since)
    new_rows, counts = label_flagged(flagged, read_reviews(settings.review_file), relabel)
    report: dict = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "old_version": old_version,
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if since else None,
        "flagged_rows": len(flagged),
        "labels": counts,
    }
    if not new_rows:
        report.update(promoted=False, reason="no labelled flagged examples: nothing to learn")
        return report
    rows = mix(new_rows, base_rows, settings.retrain_base_ratio)
    version = reg.next_version(after=serving_version)
    out = reg.path(version)
    if eval_fn is None:

        def eval_fn(adapter: Path | None) -> dict:
            from model.backends import create_backend
            from training.evaluate import evaluate

            # the gate compares label F1s only: no response is decoded (max_new_tokens=0)
            s = settings.model_copy(
                update={"adapter": str(adapter) if adapter else "", "max_new_tokens": 0})
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
    if max_seconds:
        cfg.max_seconds = float(max_seconds)
    info = (train_fn or train)(settings, cfg, rows, responses=responses, progress=progress)
    report["training"] = {
        k: info.get(k) for k in ("steps_run", "train_seconds", "stopped_by_budget")
        if isinstance(info, dict) and k in info
    }
    diff = traffic_diff(flagged, (judge_fn or (lambda a: candidate_judge(settings, a)))(out))
    from model.verdict_diff import diff_markdown

    (out / TRAFFIC_DIFF_JSON).write_text(json.dumps(diff, indent=2, ensure_ascii=False) + "\n")
    (out / TRAFFIC_DIFF_MD).write_text(diff_markdown(diff, {
        "candidate": version, "served by": old_version or "-",
        "traffic": f"flagged table rows since {report['since'] or 'the start'}",
    }))
    report["traffic_diff"] = {
        "file": TRAFFIC_DIFF_MD,
        "judged": diff["judged"],
        "safe_to_unsafe": diff["safe_to_unsafe"]["count"],
        "unsafe_to_safe": diff["unsafe_to_safe"]["count"],
        "category_changed": diff["category_changes"]["count"],
    }
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
        # vLLM workers serve a merged folder: `merge` writes it before the pointer moves
        reg.promote(version, merge=merge, settings=settings)
        # workers that follow the registry through Redis see the new pointer at once
        published = reg.publish_current(settings.redis_url)
        report.update(promoted=True, reason="; ".join(reasons) or "no regression on any set",
                      published=published)
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
