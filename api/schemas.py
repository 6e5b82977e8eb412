"""Request and response bodies of the HTTP API (they also make the OpenAPI docs at /docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class TextInput(BaseModel):
    """OpenAI's multi-modal input item; only text is judged."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ModerationRequest(BaseModel):
    """OpenAI's `/v1/moderations` body. Unknown fields are ignored, as OpenAI's SDKs and
    gateways may send more than these two."""

    model_config = ConfigDict(extra="ignore")
    input: str | list[str | TextInput] = Field(
        description="One text, or a list of texts (or OpenAI `{type: text, text}` items)"
    )
    model: str | None = Field(
        None, description="Accepted and ignored: the answer names the guardian's version"
    )
    #: guardian extension (extra_body in the OpenAI SDK); a tenant's policy id
    policy: str | None = Field(
        None, description="guardian extension: policy id (default: the language's default)"
    )

    @field_validator("input")
    @classmethod
    def _not_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("input must not be an empty list")
        return v

    def texts(self) -> list[str]:
        items = [self.input] if isinstance(self.input, str) else self.input
        return [x if isinstance(x, str) else x.text for x in items]


class ModerationResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]
    guardian: dict[str, Any] = Field(
        description="label, category, unsafe_score, reason, response, language, policy"
    )


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


class JudgeQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, max_length=256, description="recorded in the verdict")
    text: str
    policy: str | None = Field(None, description="policy id for this query only")


class JudgeRequest(BaseModel):
    """`text` for one query or `queries` for many; `policy` applies to every query that
    names none."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    queries: list[JudgeQuery] | None = None
    policy: str | None = Field(None, description="policy id (default: the language's default)")
    response_mode: Literal["generate", "none"] = Field(
        "generate",
        description="generate: unsafe verdicts carry the safety response; none: labels "
        "and categories only (the response field is dropped)",
    )

    @model_validator(mode="after")
    def _one_of(self):
        if (self.text is None) == (self.queries is None):
            raise ValueError("give exactly one of 'text' or 'queries'")
        if self.queries is not None and not self.queries:
            raise ValueError("queries must not be empty")
        return self

    def items(self) -> list[JudgeQuery]:
        return [JudgeQuery(text=self.text)] if self.text is not None else list(self.queries)


class JudgeResponse(BaseModel):
    id: str
    model: str
    verdicts: list[dict[str, Any]] = Field(description="guardian verdict records (schema 1)")
