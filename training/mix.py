"""The curated training mix: every seed row, public sources capped, forced-harm copies.

Training on every Korean news comment spends most of an epoch on two categories the model
already knows; per-source caps keep an epoch short and the categories and languages in
proportion. Which rows a cap keeps is decided by a hash of the text, so the mix is the
same on every machine and after every resume.
"""

from __future__ import annotations

from training.dedupe import stable_hash
from training.seeds import TEACHER_SOURCES

#: Rows per source kept in one epoch (sources not listed: all). Seeds are never capped.
DEFAULT_CAPS: dict[str, int] = {
    "kmhas": 1200,
    "kocohub": 1500,
    "kosbi": 1000,
    "square": 1800,
    "korquad": 1200,
    "chatbotdata": 2000,
    "nq_open": 1200,
    "webquestions": 800,
    "arena_hard": 600,
    "openai_moderation": 1500,
    "toxigen": 500,
}
#: Seed rows (written for the gaps) appear this many times per epoch.
SEED_REPEAT = 2


def curated_mix(
    rows: list[dict], caps: dict[str, int] | None = None, seed_repeat: int = SEED_REPEAT
) -> list[dict]:
    """The rows of one epoch (before shuffling). Unsafe and safe rows of a source are capped
    in their own proportion, so a cap never changes a source's label balance."""
    caps = DEFAULT_CAPS if caps is None else caps
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    out: list[dict] = []
    for source, items in sorted(by_source.items()):
        if source in TEACHER_SOURCES:
            out.extend(items * max(1, seed_repeat))
            continue
        cap = caps.get(source)
        if cap is None or len(items) <= cap:
            out.extend(items)
            continue
        ranked = sorted(items, key=lambda r: stable_hash(source + "\x00" + r["text"]))
        out.extend(ranked[:cap])
    return out
