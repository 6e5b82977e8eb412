"""Cheap exact and near-duplicate detection: normalised text keys and character-shingle MinHash.

Near duplicates: MinHash over character 4-grams of the normalised text (64 permutations,
16 LSH bands of 4 rows), candidates confirmed by exact Jaccard >= threshold. Numpy does the
hashing, so ~50k short texts take a couple of seconds.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections import defaultdict

import numpy as np

_PUNCT = re.compile(r"[\W_]+", re.UNICODE)
_MERSENNE = np.uint64((1 << 61) - 1)


def normalize(text: str) -> str:
    """NFKC, lower case, punctuation and whitespace collapsed: the exact-duplicate key."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _PUNCT.sub(" ", text).strip()


def stable_hash(text: str) -> int:
    """A process-independent hash of the normalised text (splits must never move)."""
    return int.from_bytes(hashlib.blake2b(normalize(text).encode(), digest_size=8).digest(), "big")


def shingles(text: str, k: int = 4) -> set[str]:
    t = normalize(text).replace(" ", "")
    if len(t) <= k:
        return {t} if t else set()
    return {t[i : i + k] for i in range(len(t) - k + 1)}


class MinHasher:
    def __init__(self, num_perm: int = 64, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 1 << 61, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, 1 << 61, size=num_perm, dtype=np.uint64)
        self.num_perm = num_perm

    def signature(self, sh: set[str]) -> np.ndarray:
        if not sh:
            return np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        x = np.fromiter((zlib.crc32(s.encode()) for s in sh), dtype=np.uint64, count=len(sh))
        # (a*x + b) mod p, with wrap-around multiply: fine as a hash family for dedupe.
        h = (x[:, None] * self.a[None, :] + self.b[None, :]) % _MERSENNE
        return h.min(axis=0)


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def find_duplicates(texts: list[str], *, threshold: float = 0.8, bands: int = 16) -> list[int]:
    """For each text, the index of the earlier text it duplicates, or -1 if it is kept.

    Earlier texts win, so callers order texts by priority (seeds first, then public sets).
    """
    keep_of: list[int] = [-1] * len(texts)
    exact: dict[str, int] = {}
    hasher = MinHasher()
    rows = hasher.num_perm // bands
    buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    sh_cache: dict[int, set[str]] = {}
    for i, text in enumerate(texts):
        key = normalize(text)
        if key in exact:
            keep_of[i] = exact[key]
            continue
        exact[key] = i
        sh = shingles(text)
        sh_cache[i] = sh
        sig = hasher.signature(sh)
        cands: set[int] = set()
        band_keys = []
        for b in range(bands):
            bk = (b, sig[b * rows : (b + 1) * rows].tobytes())
            band_keys.append(bk)
            cands.update(buckets.get(bk, ()))
        dup = next((j for j in sorted(cands) if jaccard(sh, sh_cache[j]) >= threshold), -1)
        if dup >= 0:
            keep_of[i] = dup
            continue
        for bk in band_keys:
            buckets[bk].append(i)
    return keep_of
