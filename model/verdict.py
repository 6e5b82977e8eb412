"""The verdict: the one record a decision leaves behind.

It goes on the verdicts topic, into audit logs, into re-scoring output files and into the
flagged table, so it carries everything needed to attribute a decision later: which model
and policy version made it, how confident it was, and why the label is what it is.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

VERDICT_SCHEMA_VERSION = 1


@dataclass
class Verdict:
    id: str
    #: "safe" or "unsafe": the decision after the policy was applied.
    label: str
    #: Probability of `<|unsafe|>` against `<|safe|>` at the label position.
    unsafe_score: float
    #: Harm category id the model chose (also kept when the policy allowed it).
    category: str | None = None
    #: Safety response to show instead of search results; only for unsafe verdicts.
    response: str | None = None
    #: True while the response is still being generated (the stream worker publishes a
    #: generate-mode unsafe verdict before its response; the response follows on the
    #: responses topic). False on every complete verdict, and always outside the stream.
    response_pending: bool = False
    #: Why the label is what it is: "score", "forced_harm", "category_allowed", "below_threshold".
    reason: str = "score"
    #: The policy's force-harm rule that matched, if any.
    forced_by: str | None = None
    language: str | None = None
    response_language: str | None = None
    query_truncated: bool = False
    #: Set when the model's output could not be read as the guardian format.
    error: str | None = None
    policy_id: str = ""
    policy_version: str = ""
    model_id: str = ""
    model_version: str = ""
    backend: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    schema_version: int = VERDICT_SCHEMA_VERSION

    @property
    def unsafe(self) -> bool:
        return self.label == "unsafe"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, **extra: Any) -> str:
        """One JSON line; `extra` fields (what a caller knows about the record, not the
        model) are written beside the verdict's own."""
        return json.dumps({**self.to_dict(), **extra}, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})
