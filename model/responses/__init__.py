"""Stock safety responses per (category, language), for policies with response_mode "template".

A template answer is instant and always fluent; it is what a policy uses while the served
model's own responses are not good enough to show (see the model card), or where a tenant
wants fixed wording. The file is ours (written in the teacher's role, like data/seeds).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

STOCK_FILE = Path(__file__).with_name("stock.jsonl")


@lru_cache(maxsize=1)
def _bank() -> dict[tuple[str, str], list[str]]:
    bank: dict[tuple[str, str], list[str]] = {}
    for line in STOCK_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            bank.setdefault((row["category"], row["language"]), []).append(row["response"])
    return bank


def stock_response(category: str, language: str, text: str) -> str | None:
    """One stock response of the category in the language (English if none), picked by a
    hash of the query so the same query always gets the same wording."""
    options = _bank().get((category, language)) or _bank().get((category, "en"))
    if not options:
        return None
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")
    return options[h % len(options)]
