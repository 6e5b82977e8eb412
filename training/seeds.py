"""The seed data written in the teacher's role (data/seeds/*.jsonl) and response lookup."""

from __future__ import annotations

import json
from pathlib import Path

from model.language import detect_language
from model.taxonomy import CATEGORY_IDS
from training.dedupe import stable_hash
from training.sources import RawExample

HARMFUL_FILE = "harmful_questions.jsonl"
#: Later rounds: one file per slice, every row {"text","language","label","category","kind",
#: "response"?}; "kind" lookalike / everyday marks the two kinds of benign row.
ROUND_GLOB = "round*/*.jsonl"
#: Sources of rows written in the teacher's role (here, or by `data synth`): they win
#: duplicate clusters in the build and are never capped in the training mix.
TEACHER_SOURCES = (
    "seed_harmful", "seed_lookalike", "seed_everyday", "synth_harmful", "synth_lookalike",
)
LOOKALIKE_FILE = "lookalike_questions.jsonl"
RESPONSES_FILE = "safety_responses.jsonl"


def default_seed_dir() -> Path:
    """data/seeds of the checkout this package runs from; outside a checkout (an installed
    wheel) the copy the wheel ships as the package `guardian_seeds`. Never a machine path."""
    checkout = Path(__file__).resolve().parent.parent / "data" / "seeds"
    if (checkout / RESPONSES_FILE).is_file():
        return checkout
    from importlib.util import find_spec

    # a data-only package (no __init__.py): its folder is a search location, not a file
    spec = find_spec("guardian_seeds")
    for where in (spec.submodule_search_locations or []) if spec else []:
        if (Path(where) / RESPONSES_FILE).is_file():
            return Path(where)
    return checkout  # neither: the readers then find no files and say so


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def read_seed_examples(seed_dir: str | Path) -> list[RawExample]:
    root = Path(seed_dir)
    out = []
    for row in _jsonl(root / HARMFUL_FILE):
        if row["category"] not in CATEGORY_IDS:
            raise ValueError(f"seed with unknown category {row['category']!r}: {row['text']}")
        out.append(
            RawExample(row["text"], "unsafe", row["category"], "seed_harmful", row["language"])
        )
    for row in _jsonl(root / LOOKALIKE_FILE):
        out.append(RawExample(row["text"], "safe", None, "seed_lookalike", row["language"]))
    for path in sorted(root.glob(ROUND_GLOB)):
        for i, row in enumerate(_jsonl(path)):
            out.append(_round_row(row, f"{path.name}:{i + 1}"))
    return out


def _round_row(row: dict, where: str) -> RawExample:
    text = str(row.get("text") or "").strip()
    lang = row.get("language")
    if not text or lang not in ("ko", "en"):
        raise ValueError(f"seed {where}: needs a text and language ko/en")
    # A mostly-Latin "mixed" query is what inference will detect as English: train it so.
    detected = detect_language(text, default=lang)
    response = (row.get("response") or "").strip() or None
    if detected != lang:
        lang, response = detected, None  # its response is in the other language
    if row.get("label") == "unsafe":
        if row.get("category") not in CATEGORY_IDS:
            raise ValueError(f"seed {where}: unknown category {row.get('category')!r}")
        return RawExample(
            text, "unsafe", row["category"], "seed_harmful", lang,
            response=response,
        )
    if row.get("label") != "safe":
        raise ValueError(f"seed {where}: label must be safe or unsafe")
    source = "seed_everyday" if row.get("kind") == "everyday" else "seed_lookalike"
    ex = RawExample(text, "safe", None, source, lang)
    # the category whose surface words a look-alike shares, for per-cell counts
    ex.near_category = row.get("category") if row.get("category") in CATEGORY_IDS else None
    return ex


class ResponseBank:
    """Safety responses per (category, language); picks one deterministically per text."""

    def __init__(self, rows: list[dict]):
        self.bank: dict[tuple[str, str], list[str]] = {}
        for r in rows:
            self.bank.setdefault((r["category"], r["language"]), []).append(r["response"])

    @classmethod
    def load(cls, seed_dir: str | Path) -> ResponseBank:
        return cls(_jsonl(Path(seed_dir) / RESPONSES_FILE))

    def pick(self, category: str, language: str, text: str) -> str | None:
        options = self.bank.get((category, language)) or self.bank.get((category, "en"))
        if not options:
            return None
        return options[stable_hash(text) % len(options)]

    def coverage(self) -> dict[str, int]:
        return {f"{c}/{lang}": len(v) for (c, lang), v in sorted(self.bank.items())}
