"""Cheap script-based language detection for Korean and English queries.

The guardian is trained on Korean and English; the response language is chosen from the
query's script (or forced by a policy), and the evaluator checks responses the same way,
so both use this one function.
"""

from __future__ import annotations

SUPPORTED_LANGUAGES: tuple[str, ...] = ("ko", "en")


def _is_hangul(ch: str) -> bool:
    code = ord(ch)
    return 0xAC00 <= code <= 0xD7A3 or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F


def detect_language(text: str, default: str = "en") -> str:
    """Return "ko" when Hangul makes up a fair share of the letters, "en" for Latin text."""
    hangul = latin = 0
    for ch in text:
        if _is_hangul(ch):
            hangul += 1
        elif ch.isascii() and ch.isalpha():
            latin += 1
    letters = hangul + latin
    if letters == 0:
        return default
    # Korean queries often carry Latin brand names; a third Hangul is already Korean.
    return "ko" if hangul / letters >= 0.3 else "en"
