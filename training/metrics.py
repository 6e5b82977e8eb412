"""Pure metric functions for the guardian's evaluation (no model, no I/O).

Positive class = "unsafe". Reported (DESIGN.md "Metrics"): per-class precision / recall /
F1 for safe and unsafe and their support-weighted average (the SLM-as-Guardian table),
unsafe-class F1 (most papers), F1 at the best threshold (ShieldGemma), and the false
positive rate on safe prompts (over-refusal).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

LABELS = ("safe", "unsafe")


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def prf(tp: int, fp: int, fn: int) -> dict:
    p = _div(tp, tp + fp)
    r = _div(tp, tp + fn)
    return {"precision": p, "recall": r, "f1": _div(2 * p * r, p + r)}


def confusion(y_true: Sequence[str], y_pred: Sequence[str]) -> dict:
    """Counts keyed true->pred: {"safe": {"safe": tn, "unsafe": fp}, "unsafe": {...}}."""
    if len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred differ in length")
    c = Counter(zip(y_true, y_pred))
    return {t: {p: c[(t, p)] for p in LABELS} for t in LABELS}


def classification_report(y_true: Sequence[str], y_pred: Sequence[str]) -> dict:
    cm = confusion(y_true, y_pred)
    tn, fp = cm["safe"]["safe"], cm["safe"]["unsafe"]
    fn, tp = cm["unsafe"]["safe"], cm["unsafe"]["unsafe"]
    per = {
        "safe": {**prf(tn, fn, fp), "support": tn + fp},
        "unsafe": {**prf(tp, fp, fn), "support": tp + fn},
    }
    n = tn + fp + fn + tp
    weighted = {
        k: _div(sum(per[c][k] * per[c]["support"] for c in LABELS), n)
        for k in ("precision", "recall", "f1")
    }
    return {
        "safe": per["safe"],
        "unsafe": per["unsafe"],
        "weighted": {**weighted, "support": n},
        "accuracy": _div(tn + tp, n),
        "unsafe_f1": per["unsafe"]["f1"],
        "fpr_safe": _div(fp, fp + tn),
        "confusion": cm,
    }


def threshold_sweep(
    y_true: Sequence[str], scores: Sequence[float], thresholds: Sequence[float] | None = None
) -> list[dict]:
    """Unsafe-class precision/recall/F1 and safe FPR at each threshold (score >= t -> unsafe)."""
    if thresholds is None:
        thresholds = sorted({0.0, 1.0, *(round(i / 100, 2) for i in range(1, 100)), *scores})
    pos = [y == "unsafe" for y in y_true]
    out = []
    for t in thresholds:
        pred = [s >= t for s in scores]
        tp = sum(p and q for p, q in zip(pos, pred))
        fp = sum((not p) and q for p, q in zip(pos, pred))
        fn = sum(p and (not q) for p, q in zip(pos, pred))
        tn = len(pos) - tp - fp - fn
        out.append({"threshold": float(t), **prf(tp, fp, fn), "fpr_safe": _div(fp, fp + tn)})
    return out


def best_threshold(sweep: list[dict]) -> dict:
    """The sweep row with the highest unsafe F1 (lowest threshold wins ties)."""
    return max(sweep, key=lambda r: (r["f1"], -r["threshold"])) if sweep else {}


def average_precision(y_true: Sequence[str], scores: Sequence[float]) -> float:
    """Area under the PR curve (step-wise, as in sklearn's average_precision_score)."""
    pairs = sorted(zip(scores, y_true), key=lambda x: -x[0])
    npos = sum(1 for y in y_true if y == "unsafe")
    if not npos:
        return 0.0
    ap = tp = seen = 0
    prev_r = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            tp += pairs[j][1] == "unsafe"
            seen += 1
            j += 1
        r = tp / npos
        ap += (r - prev_r) * (tp / seen)
        prev_r = r
        i = j
    return ap


def category_recall(
    y_true: Sequence[str],
    true_cat: Sequence[str | None],
    y_pred: Sequence[str],
    pred_cat: Sequence[str | None],
) -> dict:
    """Per true category of unsafe examples: support, recall (flagged unsafe), category accuracy."""
    out: dict[str, dict] = {}
    for yt, ct, yp, cp in zip(y_true, true_cat, y_pred, pred_cat):
        if yt != "unsafe" or not ct:
            continue
        row = out.setdefault(ct, {"support": 0, "flagged": 0, "category_correct": 0})
        row["support"] += 1
        row["flagged"] += yp == "unsafe"
        row["category_correct"] += yp == "unsafe" and cp == ct
    for row in out.values():
        row["recall"] = _div(row["flagged"], row["support"])
        row["category_accuracy"] = _div(row["category_correct"], row["support"])
    return dict(sorted(out.items()))


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    v = sorted(values)
    k = (len(v) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)
