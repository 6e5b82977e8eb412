"""`guardian eval`: the paper's table per dataset, plus the metrics DESIGN.md asks for.

Input: a saved DatasetDict folder (its test split, one table per source plus "all") or a
CSV / JSONL file with a `prompt` or `text` column and a `label` column (safe/unsafe, 0/1,
true/false). The model judges every query through the normal backend with an evaluation
policy that blocks every category, so the labels are the model's own. Writes
`eval.json`, `EVAL.md` and `pr_curve.png` into the output folder.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from model.engine import Query
from model.language import detect_language
from model.policy import policy_from_dict
from training import metrics

EVAL_POLICY = {"id": "eval", "version": "1", "blocked": "all", "threshold": 0.5}
_TRUE = {"unsafe", "1", "true", "yes", "harmful", "toxic", "1.0"}
_FALSE = {"safe", "0", "false", "no", "harmless", "benign", "0.0", "none"}


@dataclass
class EvalExample:
    text: str
    label: str
    category: str | None = None
    language: str | None = None


def parse_label(value) -> str:
    s = str(value).strip().lower()
    if s in _TRUE:
        return "unsafe"
    if s in _FALSE:
        return "safe"
    raise ValueError(f"cannot read label {value!r} as safe/unsafe")


def _rows_to_examples(rows: list[dict], where: str) -> list[EvalExample]:
    out = []
    for i, row in enumerate(rows):
        text = row.get("prompt") if row.get("prompt") is not None else row.get("text")
        if text is None or "label" not in row:
            raise ValueError(f"{where} row {i}: needs a 'prompt' or 'text' and a 'label' column")
        out.append(
            EvalExample(
                text=str(text),
                label=parse_label(row["label"]),
                category=row.get("category") or None,
                language=row.get("language") or None,
            )
        )
    return out


def load_eval_sets(path: str | Path, split: str = "test") -> dict[str, list[EvalExample]]:
    """name -> examples. A DatasetDict folder gives one set per source and "all"."""
    p = Path(path)
    if p.is_dir():
        from datasets import load_from_disk

        ds = load_from_disk(str(p))
        part = ds[split] if hasattr(ds, "keys") else ds
        rows = [dict(r) for r in part]
        sets: dict[str, list[EvalExample]] = {}
        for r in rows:
            sets.setdefault(r.get("source") or "data", []).append(r)
        out = {k: _rows_to_examples(v, f"{p}:{k}") for k, v in sorted(sets.items())}
        out["all"] = [e for v in out.values() for e in v]
        return out
    if p.suffix == ".csv":
        with open(p, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    elif p.suffix in (".jsonl", ".json"):
        rows = [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
    else:
        raise ValueError(f"{p}: give a DatasetDict folder, a .csv or a .jsonl file")
    return {p.stem: _rows_to_examples(rows, str(p))}


RESPONSE_SAMPLES = 5


def judge_all(
    backend, examples: Sequence[EvalExample], batch_size: int, bar=None
) -> tuple[list, list]:
    """Verdicts and per-query latency (ms, batch wall time / batch size)."""
    policy = policy_from_dict(EVAL_POLICY)
    verdicts, latency = [], []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        t0 = time.perf_counter()
        out = backend.judge([Query(str(i + j), e.text) for j, e in enumerate(chunk)], policy)
        dt = (time.perf_counter() - t0) * 1000 / max(len(chunk), 1)
        verdicts.extend(out)
        latency.extend([dt] * len(chunk))
        if bar is not None:
            bar.update(len(chunk))
    return verdicts, latency


def score_set(
    examples: Sequence[EvalExample], verdicts: Sequence, latency: Sequence[float]
) -> dict:
    y_true = [e.label for e in examples]
    y_pred = [v.label for v in verdicts]
    scores = [float(v.unsafe_score) for v in verdicts]
    report = metrics.classification_report(y_true, y_pred)
    sweep = metrics.threshold_sweep(y_true, scores)
    best = metrics.best_threshold(sweep)
    flagged = [(e, v) for e, v in zip(examples, verdicts) if v.label == "unsafe"]
    with_resp = [(e, v) for e, v in flagged if v.response]
    lang_ok = sum(
        detect_language(v.response) == (e.language or detect_language(e.text)) for e, v in with_resp
    )
    return {
        "n": len(examples),
        **report,
        "best_threshold": best.get("threshold"),
        "best_threshold_f1": best.get("f1", 0.0),
        "average_precision": metrics.average_precision(y_true, scores),
        "category_recall": metrics.category_recall(
            y_true, [e.category for e in examples], y_pred, [v.category for v in verdicts]
        ),
        "sweep": sweep,
        "latency_ms": {
            "mean": sum(latency) / len(latency) if latency else 0.0,
            "p50": metrics.percentile(latency, 0.5),
            "p95": metrics.percentile(latency, 0.95),
        },
        "responses": {
            "unsafe_predicted": len(flagged),
            "response_present": len(with_resp),
            # None, not 1.0, when nothing was flagged: there is nothing to rate
            "response_present_rate": len(with_resp) / len(flagged) if flagged else None,
            "language_match_rate": lang_ok / len(with_resp) if with_resp else None,
            # a few to read by eye: on topic, no harmful content
            "samples": [
                {"text": e.text, "category": v.category, "response": v.response}
                for e, v in with_resp[:RESPONSE_SAMPLES]
            ],
        },
    }


def _responses_line(r: dict) -> list[str]:
    def rate(x):
        return "n/a" if x is None else _f(x)

    lines = [
        f"Responses: {r['response_present']} of {r['unsafe_predicted']} flagged have one "
        f"(rate {rate(r['response_present_rate'])}); in the query's language: "
        f"{rate(r['language_match_rate'])}"
    ]
    for s in r.get("samples", []):
        text = s["text"].replace("|", "/").replace("\n", " ")[:80]
        resp = (s["response"] or "").replace("|", "/").replace("\n", " ")[:160]
        lines.append(f"- `{s['category']}` {text} -> {resp}")
    return lines


def _f(x: float) -> str:
    return f"{x:.2f}"


def markdown_report(result: dict) -> str:
    lines = [
        f"# Guardian evaluation: {result.get('model_id', '')} {result.get('model_version', '')}",
        "",
        "| dataset | n | Safe P / R / F1 | Unsafe P / R / F1 | Weighted P / R / F1 | "
        "unsafe F1 | best-thr F1 (thr) | FPR safe | ms/query |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["datasets"].items():
        s, u, w = r["safe"], r["unsafe"], r["weighted"]
        lines.append(
            f"| {name} | {r['n']} | {_f(s['precision'])} / {_f(s['recall'])} / {_f(s['f1'])} "
            f"| {_f(u['precision'])} / {_f(u['recall'])} / {_f(u['f1'])} "
            f"| {_f(w['precision'])} / {_f(w['recall'])} / {_f(w['f1'])} "
            f"| {_f(r['unsafe_f1'])} | {_f(r['best_threshold_f1'])} ({r['best_threshold']:.2f}) "
            f"| {_f(r['fpr_safe'])} | {r['latency_ms']['mean']:.1f} |"
        )
    for name, r in result["datasets"].items():
        cm = r["confusion"]
        lines += [
            "",
            f"## {name}",
            "",
            "Confusion (rows true, columns predicted): "
            f"safe->safe {cm['safe']['safe']}, safe->unsafe {cm['safe']['unsafe']}, "
            f"unsafe->safe {cm['unsafe']['safe']}, unsafe->unsafe {cm['unsafe']['unsafe']}",
            "",
        ]
        lines += (
            _responses_line(r["responses"])
            if result.get("responses_generated", True)
            else ["Responses: not generated (labels-only run)"]
        )
        if r["category_recall"]:
            lines += [
                "",
                "| category | support | recall | category accuracy |",
                "|---|---|---|---|",
            ]
            for c, row in r["category_recall"].items():
                lines.append(
                    f"| {c} | {row['support']} | {_f(row['recall'])} "
                    f"| {_f(row['category_accuracy'])} |"
                )
    return "\n".join(lines) + "\n"


def plot_pr(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, r in result["datasets"].items():
        pts = sorted((x["recall"], x["precision"]) for x in r["sweep"])
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            label=f"{name} (AP {r['average_precision']:.2f})",
        )
    ax.set_xlabel("recall (unsafe)")
    ax.set_ylabel("precision (unsafe)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate(
    backend,
    sets: dict[str, list[EvalExample]],
    *,
    batch_size: int = 16,
    out_dir: str | Path | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Judge every set once ("all" reuses its parts' verdicts) and score it."""
    from tqdm import tqdm

    engine = getattr(backend, "engine", None)
    result = {
        "model_id": getattr(backend, "model_id", ""),
        "model_version": getattr(backend, "model_version", ""),
        "responses_generated": getattr(engine, "max_new_tokens", 1) > 0,
        "datasets": {},
    }
    cache: dict[int, tuple] = {}
    for name in [k for k in sets if k != "all"]:
        sets[name] = sets[name][:limit] if limit else sets[name]
    total = sum(len(v) for k, v in sets.items() if k != "all")
    with tqdm(total=total, disable=not progress, desc="eval", unit="q") as bar:
        for name, examples in sets.items():
            if name == "all":
                continue
            bar.set_postfix_str(name)
            verdicts, lat = judge_all(backend, examples, batch_size, bar)
            for e, v, t in zip(examples, verdicts, lat):
                cache[id(e)] = (v, t)
            result["datasets"][name] = score_set(examples, verdicts, lat)
    ex = [e for k, v in sets.items() if k != "all" for e in v]
    pooled = {"all": ex} if "all" in sets and len(sets) > 2 else {}
    if "all" in sets:
        # per language, over every set: the paper reports Korean and English separately
        langs = sorted({e.language or detect_language(e.text) for e in ex})
        if len(langs) > 1:
            for lang in langs:
                pooled[f"all/{lang}"] = [
                    e for e in ex if (e.language or detect_language(e.text)) == lang
                ]
    for name, part in pooled.items():
        result["datasets"][name] = score_set(
            part, [cache[id(e)][0] for e in part], [cache[id(e)][1] for e in part]
        )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        (out / "EVAL.md").write_text(markdown_report(result))
        plot_pr(result, out / "pr_curve.png")
    return result
