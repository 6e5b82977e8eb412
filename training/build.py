"""`guardian data build`: public files + seeds -> one deduplicated DatasetDict with fixed splits.

Order of work: read every source through the mapping table, put seeds first (they win
duplicate clusters), drop exact and near duplicates across all sources, assign each kept
example to train or test by a hash of its normalised text (so the test split never moves
and training never sees it), attach a seed safety response to every unsafe example, and
write the dataset plus stats (JSON and Markdown).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from model.taxonomy import CATEGORY_IDS
from training.dedupe import find_duplicates, stable_hash
from training.mapping import mapping_markdown
from training.seeds import ResponseBank, default_seed_dir, read_seed_examples
from training.sources import EXCLUDED_FILES, RawExample, read_public

COLUMNS = ("text", "language", "label", "category", "response", "source", "split")
#: Look-alikes keep a larger held-out share: they are the over-refusal check.
TEST_FRACTION_OVERRIDES = {
    "seed_lookalike": 0.3,
    "seed_harmful": 0.2,
    "synth_lookalike": 0.3,
    "k-dna": 0.25,
}
#: Below this many training examples per (category, language) a category is "thin".
THIN_THRESHOLD = 50
STATS_JSON = "stats.json"
STATS_MD = "STATS.md"


def split_of(text: str, source: str, test_fraction: float) -> str:
    frac = TEST_FRACTION_OVERRIDES.get(source, test_fraction)
    return "test" if (stable_hash(text) % 10_000) < frac * 10_000 else "train"


def curate(
    examples: list[RawExample], responses: ResponseBank, test_fraction: float
) -> tuple[list[dict], dict]:
    """Dedupe, split and attach responses. Returns rows and dedupe/conflict counts."""
    priority = {"seed_harmful": 0, "seed_lookalike": 0, "synth_harmful": 0, "synth_lookalike": 0}
    ordered = sorted(range(len(examples)), key=lambda i: priority.get(examples[i].source, 1))
    ex = [examples[i] for i in ordered]
    keep_of = find_duplicates([e.text for e in ex])
    removed: Counter = Counter()
    conflicts: Counter = Counter()
    rows = []
    for e, dup in zip(ex, keep_of):
        if dup >= 0:
            removed[e.source] += 1
            if ex[dup].label != e.label:
                conflicts[f"{ex[dup].source}<-{e.source}"] += 1
            continue
        response = None
        if e.label == "unsafe":
            response = e.response or responses.pick(e.category, e.language, e.text)
        rows.append(
            {
                "text": e.text,
                "language": e.language,
                "label": e.label,
                "category": e.category,
                "response": response,
                "source": e.source,
                "split": split_of(e.text, e.source, test_fraction),
            }
        )
    return rows, {"duplicates_removed": dict(removed), "label_conflicts": dict(conflicts)}


def compute_stats(rows: list[dict], extra: dict) -> dict:
    by = defaultdict(Counter)
    thin_counts: Counter = Counter()
    for r in rows:
        s = r["split"]
        by["split"][s] += 1
        by[f"{s}/source"][r["source"]] += 1
        by[f"{s}/language"][r["language"]] += 1
        by[f"{s}/label"][r["label"]] += 1
        by["source/label"][f"{r['source']}/{r['label']}"] += 1
        if r["label"] == "unsafe":
            by[f"{s}/category"][r["category"]] += 1
            by[f"{s}/category_language"][f"{r['category']}/{r['language']}"] += 1
            if s == "train":
                thin_counts[(r["category"], r["language"])] += 1
    thin = [
        {"category": c, "language": lang, "train_examples": thin_counts[(c, lang)]}
        for c in CATEGORY_IDS
        for lang in ("ko", "en")
        if thin_counts[(c, lang)] < THIN_THRESHOLD
    ]
    return {
        "total": len(rows),
        "counts": {k: dict(sorted(v.items())) for k, v in sorted(by.items())},
        "thin_threshold": THIN_THRESHOLD,
        "thin": thin,
        **extra,
    }


def stats_markdown(stats: dict) -> str:
    out = ["# Guardian dataset statistics", "", f"Total examples: {stats['total']}", ""]
    for key, counts in stats["counts"].items():
        out += [f"## {key}", "", "| value | count |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in counts.items()]
        out.append("")
    out += [
        f"## Thin categories (< {stats['thin_threshold']} training examples per language)",
        "",
        "| category | language | train examples |",
        "|---|---|---|",
    ]
    out += [f"| {t['category']} | {t['language']} | {t['train_examples']} |" for t in stats["thin"]]
    out += [
        "",
        "## Deduplication",
        "",
        "```",
        json.dumps(
            {k: stats.get(k) for k in ("duplicates_removed", "label_conflicts")},
            indent=2,
            ensure_ascii=False,
        ),
        "```",
        "",
    ]
    out += ["## Missing or excluded files", ""]
    out += [f"- missing: {m}" for m in stats.get("missing_files", [])]
    out += [f"- excluded: {k} ({v})" for k, v in stats.get("excluded_files", {}).items()]
    out += ["", "## Label mapping", "", mapping_markdown()]
    return "\n".join(out)


def to_dataset_dict(rows: list[dict]):
    from datasets import Dataset, DatasetDict, Features, Value

    features = Features({c: Value("string") for c in COLUMNS})
    parts = {}
    for split in ("train", "test"):
        sel = [r for r in rows if r["split"] == split]
        parts[split] = Dataset.from_dict(
            {c: [r[c] for r in sel] for c in COLUMNS}, features=features
        )
    return DatasetDict(parts)


def build(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    seed_dir: str | Path | None = None,
    synth_dir: str | Path | None = None,
    test_fraction: float = 0.1,
    extra_examples: list[RawExample] | None = None,
) -> dict:
    """Build and save the dataset; returns the stats."""
    seed_dir = Path(seed_dir) if seed_dir else default_seed_dir()
    public, missing = read_public(data_dir)
    examples = read_seed_examples(seed_dir) + list(extra_examples or [])
    bank = ResponseBank.load(seed_dir)
    if synth_dir:
        for e in read_seed_examples(synth_dir):
            e.source = e.source.replace("seed_", "synth_")
            examples.append(e)
        for key, more in ResponseBank.load(synth_dir).bank.items():
            bank.bank.setdefault(key, []).extend(more)
    examples += public
    rows, extra = curate(examples, bank, test_fraction)
    extra["missing_files"] = missing
    extra["excluded_files"] = EXCLUDED_FILES
    extra["ambiguous_mapped_examples"] = sum(1 for e in public if e.ambiguous)
    stats = compute_stats(rows, extra)
    out = Path(out_dir)
    to_dataset_dict(rows).save_to_disk(str(out))
    (out / STATS_JSON).write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    (out / STATS_MD).write_text(stats_markdown(stats))
    return stats
