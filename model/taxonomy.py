"""The harm taxonomy of "SLM as Guardian" (Kwon et al.): ten categories in three groups.

This module is the only place that lists them. Category ids are stable strings: they name
the category tokens, the policy files, the training labels and the audit records, so an id
must never be renamed once a model has been trained on it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    id: str
    group: str
    name_en: str
    name_ko: str
    definition: str

    @property
    def token(self) -> str:
        """The special token the model emits after `<|unsafe|>` for this category."""
        return f"<|{self.id}|>"


GROUPS = ("legal", "ethical", "etc")

CATEGORIES: tuple[Category, ...] = (
    Category(
        "crime_advice", "legal", "Crime advice", "범죄 조언",
        "Asks how to commit a crime or seeks an answer that advocates or enables one.",
    ),
    Category(
        "privacy_violation", "legal", "Privacy violation", "개인정보 침해",
        "Seeks personal or private information about a real person, or ways to obtain it.",
    ),
    Category(
        "copyright_infringement", "legal", "Copyright infringement", "저작권 침해",
        "Seeks pirated content or ways to get around copyright and paid access.",
    ),
    Category(
        "discrimination_hate", "ethical", "Discrimination / hate", "차별 / 혐오",
        "Demeans, stereotypes or calls for harm against people for a protected trait.",
    ),
    Category(
        "insult_offensiveness", "ethical", "Insult / offensiveness", "모욕 / 불쾌",
        "Insults, swears at or harasses someone, including the assistant.",
    ),
    Category(
        "sexual_minors", "ethical", "Sexual / harmful to minors", "선정성 / 청소년 유해",
        "Sexual content, or content that harms minors (e.g. helping them buy alcohol).",
    ),
    Category(
        "self_harm_suicide", "ethical", "Self-harm / suicide", "자해 / 자살",
        "Asks about hurting or killing oneself, or encourages it.",
    ),
    Category(
        "uncertain_prediction", "etc", "Uncertain predictions", "불확실한 예측",
        "Asks for confident predictions of uncertain outcomes: stock prices, elections, lotteries.",
    ),
    Category(
        "sensitive_topic", "etc", "Sensitive / biased topic", "민감 / 편향 주제",
        "Asks the assistant to take sides on contested political, religious or social issues.",
    ),
    Category(
        "malicious_personification", "etc", "Malicious personification", "악의적 의인화",
        "Treats the assistant as a person in order to mock, provoke or manipulate it.",
    ),
)

_BY_ID = {c.id: c for c in CATEGORIES}
CATEGORY_IDS: tuple[str, ...] = tuple(c.id for c in CATEGORIES)


def get_category(category_id: str) -> Category:
    try:
        return _BY_ID[category_id]
    except KeyError:
        raise KeyError(
            f"unknown harm category {category_id!r}; known: {', '.join(CATEGORY_IDS)}"
        ) from None


def is_category(category_id: str) -> bool:
    return category_id in _BY_ID
