"""What changed between two sets of verdicts for the same ids, as JSON and Markdown.

Auditors ask it of a topic range re-scored with a new model (`guardian rescore --topic`),
and the retrain job asks it of recent traffic before a candidate is promoted; both read
verdict dicts (`model/verdict.py`), so the comparison lives beside them, not in either.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

#: Text kept per example in a diff (a diff is for reading, not a copy of the traffic).
EXAMPLE_TEXT_CHARS = 160


def parse_time_ms(value: str) -> int:
    """ISO-8601 (UTC when no zone is given) or epoch seconds -> epoch milliseconds."""
    text = value.strip()
    try:
        return int(round(float(text) * 1000))
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"time {value!r} is neither ISO-8601 (2025-05-01T12:00:00Z) nor epoch seconds"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(round(dt.timestamp() * 1000))


def _example(vid: str, old: dict | None, new: dict, texts: dict[str, str]) -> dict[str, Any]:
    text = texts.get(vid)
    if text is not None and len(text) > EXAMPLE_TEXT_CHARS:
        text = text[:EXAMPLE_TEXT_CHARS] + "…"
    ex = {"id": vid, "text": text, "new_label": new.get("label"),
          "new_category": new.get("category"), "new_score": new.get("unsafe_score")}
    if old is not None:
        ex.update(prior_label=old.get("label"), prior_category=old.get("category"),
                  prior_score=old.get("unsafe_score"),
                  prior_model_version=old.get("model_version"))
    return ex


def diff_verdicts(new: dict[str, dict], prior: dict[str, dict], *,
                  texts: dict[str, str] | None = None, examples: int = 10) -> dict[str, Any]:
    """New verdicts against prior ones for the same ids (both: id -> verdict dict)."""
    texts = texts or {}
    compared = [vid for vid in new if vid in prior]
    missing = [vid for vid in new if vid not in prior]
    s2u = [v for v in compared if prior[v]["label"] == "safe" and new[v]["label"] == "unsafe"]
    u2s = [v for v in compared if prior[v]["label"] == "unsafe" and new[v]["label"] == "safe"]
    changed = [v for v in compared if prior[v]["label"] == new[v]["label"] == "unsafe"
               and prior[v].get("category") != new[v].get("category")]
    old_cat = Counter(prior[v].get("category") or "unknown" for v in compared
                      if prior[v]["label"] == "unsafe")
    new_cat = Counter(new[v].get("category") or "unknown" for v in compared
                      if new[v]["label"] == "unsafe")
    per_category = {c: {"prior": old_cat[c], "new": new_cat[c], "delta": new_cat[c] - old_cat[c]}
                    for c in sorted(set(old_cat) | set(new_cat))}
    change_counts = Counter(f"{prior[v].get('category')} -> {new[v].get('category')}"
                            for v in changed)

    def group(ids: list[str]) -> dict[str, Any]:
        return {"count": len(ids),
                "examples": [_example(v, prior.get(v), new[v], texts) for v in ids[:examples]]}

    return {
        "judged": len(new),
        "compared": len(compared),
        "no_prior_verdict": {"count": len(missing), "ids": missing[:examples]},
        "unchanged_label": len(compared) - len(s2u) - len(u2s),
        "labels": {
            "prior": dict(Counter(prior[v]["label"] for v in compared)),
            "new": dict(Counter(new[v]["label"] for v in compared)),
        },
        "safe_to_unsafe": group(s2u),
        "unsafe_to_safe": group(u2s),
        "unsafe_per_category": per_category,
        "category_changes": {**group(changed), "by_pair": dict(change_counts.most_common())},
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def diff_markdown(diff: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """The diff as Markdown: a summary table, per-category counts, examples."""
    lines = ["# Re-scoring diff", ""]
    for k, v in (header or {}).items():
        lines.append(f"- {k}: {_cell(v)}")
    if header:
        lines.append("")
    lines += ["| | count |", "|---|---:|"]
    for label, value in (
        ("judged", diff["judged"]), ("with a prior verdict", diff["compared"]),
        ("no prior verdict", diff["no_prior_verdict"]["count"]),
        ("label unchanged", diff["unchanged_label"]),
        ("safe -> unsafe", diff["safe_to_unsafe"]["count"]),
        ("unsafe -> safe", diff["unsafe_to_safe"]["count"]),
        ("unsafe, category changed", diff["category_changes"]["count"]),
    ):
        lines.append(f"| {label} | {value} |")
    lines += ["", "## Unsafe verdicts per category (ids with a prior verdict)", ""]
    if diff["unsafe_per_category"]:
        lines += ["| category | prior | new | delta |", "|---|---:|---:|---:|"]
        for cat, c in diff["unsafe_per_category"].items():
            lines.append(f"| {_cell(cat)} | {c['prior']} | {c['new']} | {c['delta']:+d} |")
    else:
        lines.append("none")
    if diff["category_changes"]["by_pair"]:
        lines += ["", "## Category changes", "", "| prior -> new | count |", "|---|---:|"]
        for pair, n in diff["category_changes"]["by_pair"].items():
            lines.append(f"| {_cell(pair)} | {n} |")
    for key, title in (("safe_to_unsafe", "safe -> unsafe"), ("unsafe_to_safe", "unsafe -> safe"),
                       ("category_changes", "category changes")):
        exs = diff[key]["examples"]
        if not exs:
            continue
        lines += ["", f"## Examples: {title} ({len(exs)} of {diff[key]['count']})", "",
                  "| id | text | prior | prior score | new | new score |",
                  "|---|---|---|---:|---|---:|"]
        for e in exs:
            prior = f"{e.get('prior_label')} {_cell(e.get('prior_category'))}"
            new = f"{e['new_label']} {_cell(e.get('new_category'))}"
            lines.append(f"| {_cell(e['id'])} | {_cell(e.get('text'))} | {prior} | "
                         f"{_cell(e.get('prior_score'))} | {new} | {_cell(e.get('new_score'))} |")
    return "\n".join(lines) + "\n"
