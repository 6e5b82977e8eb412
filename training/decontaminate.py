"""Drop rows that are prompts of the public benchmarks the guardian is scored on elsewhere.

`../shared/heldout/heldout-sha256.txt` lists sha256 digests of those prompts after the
normalisation in that folder's README; the texts themselves never enter this project.
Every split is filtered (train, dev, test and held-out sources), so no reported figure
and no training step touches a benchmark prompt.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

HELDOUT_FILE = "heldout-sha256.txt"
_WS = re.compile(r"\s+")


def fingerprint(text: str) -> str:
    """The held-out folder's rule: strip, lower case, collapse whitespace, sha256 of UTF-8."""
    return hashlib.sha256(_WS.sub(" ", text.strip().lower()).encode("utf-8")).hexdigest()


def default_heldout_file(data_dir: str | Path) -> Path:
    """The fingerprints sit beside the data folder (`../shared/heldout/`)."""
    return Path(data_dir).resolve().parent / "heldout" / HELDOUT_FILE


def load_fingerprints(path: str | Path | None) -> frozenset[str]:
    if path is None or not Path(path).is_file():
        return frozenset()
    lines = Path(path).read_text(encoding="ascii").split()
    return frozenset(x.strip().lower() for x in lines if x.strip())


def is_contaminated(text: str, fingerprints: frozenset[str]) -> bool:
    return bool(fingerprints) and fingerprint(text) in fingerprints
