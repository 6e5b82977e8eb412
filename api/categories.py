"""The guardian's ten categories in OpenAI's moderation vocabulary.

`/v1/moderations` answers in OpenAI's shape, so every result carries all thirteen OpenAI
category keys (the official client requires them) plus the guardian's ten under their own
ids. A guardian category maps to the OpenAI categories that describe the same harm; three
have no OpenAI counterpart and appear under their own ids only. The table is in
api/README.md; keep them in sync.
"""

from __future__ import annotations

from model.taxonomy import CATEGORY_IDS

#: Every category key of OpenAI's moderation result, in the order of its docs.
OPENAI_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

#: guardian category id -> the OpenAI categories it sets (empty: no counterpart).
GUARDIAN_TO_OPENAI: dict[str, tuple[str, ...]] = {
    "crime_advice": ("illicit",),
    "privacy_violation": ("illicit",),
    "copyright_infringement": ("illicit",),
    "discrimination_hate": ("hate",),
    "insult_offensiveness": ("harassment",),
    # the guardian's 선정성/청소년 유해 covers sexual content and content harmful to minors
    # in one category: both OpenAI keys are set, the model cannot tell them apart
    "sexual_minors": ("sexual", "sexual/minors"),
    "self_harm_suicide": ("self-harm",),
    "uncertain_prediction": (),
    "sensitive_topic": (),
    "malicious_personification": (),
}

assert set(GUARDIAN_TO_OPENAI) == set(CATEGORY_IDS), "mapping must cover the taxonomy"


def openai_result(verdict: dict) -> dict:
    """One OpenAI moderation result (plus the guardian's own fields) from a verdict dict.

    flagged = the policy's decision (label unsafe). categories: the predicted category and
    its OpenAI counterparts are true when flagged. category_scores: the unsafe score under
    the predicted category and its counterparts, 0 elsewhere (no category was read for a
    query under the threshold, so all its scores are 0; its score is in guardian.unsafe_score).
    """
    flagged = verdict.get("label") == "unsafe"
    category = verdict.get("category")
    score = float(verdict.get("unsafe_score") or 0.0)
    hit = {category, *GUARDIAN_TO_OPENAI.get(category, ())} if category else set()
    keys = (*OPENAI_CATEGORIES, *CATEGORY_IDS)
    return {
        "flagged": flagged,
        "categories": {k: flagged and k in hit for k in keys},
        "category_scores": {k: score if k in hit else 0.0 for k in keys},
        # every score is computed from the text input (OpenAI's shape for a text input)
        "category_applied_input_types": {k: ["text"] for k in OPENAI_CATEGORIES},
        "guardian": {
            "label": verdict.get("label"),
            "category": category,
            "unsafe_score": score,
            "reason": verdict.get("reason"),
            "response": verdict.get("response"),
            "language": verdict.get("language"),
            "policy_id": verdict.get("policy_id"),
            "policy_version": verdict.get("policy_version"),
            "error": verdict.get("error"),
        },
    }
