"""Message schemas of the guardian topics and the validator for input records.

Pure functions only (no Kafka, no Redis) so every rejection rule is unit-testable.

Topics (names come from settings, `GUARDIAN_TOPIC_*`); every value is UTF-8 JSON with a
`schema_version`:

- queries   (input)  {schema_version?, id: str, text: str, policy?: str, locale?: str,
                      timestamp?: number|str, metadata?: object}; key: id or a session id,
                      whatever the producer chooses (ordering is per key). A text longer
                      than max_text_chars is judged on its first max_text_chars characters.
- verdicts  one `model.verdict.Verdict` per input id, key = id (the audit log); a
            generate-mode unsafe one is published before its response is decoded, with
            `response: null, response_pending: true`.
- responses unsafe only, one per unsafe verdict: {schema_version, id, response, category,
            language, error, model_id, model_version, policy_id, policy_version,
            verdict_created_at}, key = id (see `response_record`).
- flagged   unsafe and near-threshold verdicts with the query text (see `flagged_record`).
- dlq       every input that could not be judged: {schema_version, reason, detail, id?,
            raw_b64, key_b64, source: {topic, partition, offset, timestamp}, failed_at,
            raw_truncated?/key_truncated?: {size, sha256, kept} when the bytes were cut}.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1

# DLQ reasons: stable strings so consumers of the DLQ can count and route them.
NOT_UTF8 = "non-UTF-8 bytes"
NOT_JSON = "not JSON"
WRONG_TYPES = "wrong types"
NO_TEXT = "no text"
TOO_LONG = "text too long"  # only a record over MAX_RECORD_BYTES: a long text is cut
ID_TOO_LONG = "id too long"
UNKNOWN_POLICY = "unknown policy"
MODEL_ERROR = "model error"


#: A record value above this is not parsed (DLQ, TOO_LONG): a bound on the JSON parse done on
#: the worker's event loop. Kafka's default limits (1 MB) keep records far below it; it only
#: bites on a broker configured for bigger messages.
MAX_RECORD_BYTES = 4 * 1024 * 1024
#: Longest id accepted: the id is the key and part of every output record, so an unbounded
#: one could make an output too big for Kafka (a send that can never succeed).
MAX_ID_CHARS = 1024

_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class QueryMessage:
    """A validated input record.

    `text` is what gets judged: the record's text, or for a text longer than max_text_chars
    its first max_text_chars characters (after collapsing whitespace runs, so padding cannot
    push the query out of the judged part); `text_chars` is the record's text length.
    """

    id: str
    text: str
    policy: str
    locale: str | None = None
    timestamp: float | str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    text_chars: int = -1  # -1: len(text)

    def __post_init__(self) -> None:
        if self.text_chars < 0:
            object.__setattr__(self, "text_chars", len(self.text))

    @property
    def truncated(self) -> bool:
        """Whether `text` is a prefix of a longer record text."""
        return self.text_chars > len(self.text)

    def verdict_fields(self) -> dict[str, Any]:
        """What a verdict for this record says about the record beside the model's fields:
        its text length and, when only a prefix was judged, `query_truncated`."""
        fields: dict[str, Any] = {"text_chars": self.text_chars}
        if self.truncated:
            fields["query_truncated"] = True
        return fields


def _lone_surrogate(value: Any) -> bool:
    """JSON escapes such as "\\ud800" parse to strings that cannot be encoded as UTF-8."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def bounded_text(text: str, max_text_chars: int) -> str:
    """The part of `text` that is judged: all of it, or of a longer one (whitespace runs
    collapsed first) the first `max_text_chars` characters."""
    if len(text) <= max_text_chars:
        return text
    text = _WS.sub(" ", text).strip()
    return text[:max(1, max_text_chars)]


@dataclass(frozen=True)
class Rejection:
    """Why an input record cannot be judged; becomes one DLQ record."""

    reason: str
    detail: str
    id: str | None = None


def validate_query(
    raw: bytes | None, *, max_text_chars: int, default_policy: str,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> QueryMessage | Rejection:
    """Parse and check one raw input value; never raises on any input.

    A text longer than `max_text_chars` is not an error: the message carries its first
    `max_text_chars` characters (see `bounded_text`) and its full length in `text_chars`.
    """
    if raw is None:
        return Rejection(NOT_JSON, "empty record (no value)")
    if isinstance(raw, str):  # tolerate an already-decoded value
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > max_record_bytes:
        return Rejection(TOO_LONG, f"record of {len(raw)} bytes > {max_record_bytes}")
    try:
        decoded = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(NOT_UTF8, str(exc)[:200])
    try:
        data = json.loads(decoded)
    except (ValueError, RecursionError) as exc:
        return Rejection(NOT_JSON, str(exc)[:200])
    if not isinstance(data, dict):
        return Rejection(WRONG_TYPES, f"expected a JSON object, got {type(data).__name__}")
    qid = data.get("id")
    if isinstance(qid, bool) or not isinstance(qid, str | int) or qid == "":
        return Rejection(WRONG_TYPES, "id must be a non-empty string")
    if _lone_surrogate(qid):
        return Rejection(NOT_UTF8, "id has a lone surrogate (not encodable as UTF-8)")
    qid = str(qid)
    if len(qid) > MAX_ID_CHARS:
        return Rejection(ID_TOO_LONG, f"id of {len(qid)} chars > {MAX_ID_CHARS}")
    text = data.get("text")
    if text is None or (isinstance(text, str) and not text.strip()):
        return Rejection(NO_TEXT, "text is missing or blank", qid)
    if not isinstance(text, str):
        return Rejection(WRONG_TYPES, f"text must be a string, got {type(text).__name__}", qid)
    if _lone_surrogate(text):
        return Rejection(NOT_UTF8, "text has a lone surrogate (not encodable as UTF-8)", qid)
    policy = data.get("policy")
    if policy is None or policy == "":
        policy = default_policy
    if not isinstance(policy, str):
        return Rejection(WRONG_TYPES, "policy must be a string", qid)
    locale = data.get("locale")
    if locale is not None and not isinstance(locale, str):
        return Rejection(WRONG_TYPES, "locale must be a string", qid)
    if _lone_surrogate(policy) or _lone_surrogate(locale):
        return Rejection(NOT_UTF8, "policy or locale has a lone surrogate", qid)
    ts = data.get("timestamp")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float | str)):
        return Rejection(WRONG_TYPES, "timestamp must be a number or a string", qid)
    metadata = data.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        return Rejection(WRONG_TYPES, "metadata must be an object", qid)
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        return Rejection(WRONG_TYPES, f"unsupported schema_version {version!r}", qid)
    return QueryMessage(qid, bounded_text(text, max_text_chars), policy, locale, ts, metadata,
                        text_chars=len(text))


def query_record(
    id: str, text: str, *, policy: str | None = None, locale: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The input JSON a producer sends."""
    rec: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "id": id, "text": text,
                           "timestamp": time.time()}
    if policy:
        rec["policy"] = policy
    if locale:
        rec["locale"] = locale
    if metadata:
        rec["metadata"] = metadata
    return rec


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(bytes(data)).decode("ascii")


#: Bytes of an input's value kept in its DLQ record (base64 adds a third: ~350 KB, well under
#: Kafka's default 1 MB request limit); keys and ids are cut far shorter.
DLQ_MAX_RAW_BYTES = 256 * 1024
DLQ_MAX_KEY_BYTES = 1024
DLQ_MAX_DETAIL_CHARS = 2000


def _cut(data: bytes | None, limit: int) -> tuple[bytes | None, dict[str, Any] | None]:
    """The first `limit` bytes, and what a reader needs to know that the rest is missing."""
    if data is None or len(data) <= limit:
        return data, None
    data = bytes(data)
    return data[:limit], {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                          "kept": limit}


def dlq_record(
    rejection: Rejection, raw: bytes | None, key: bytes | None, *, topic: str, partition: int,
    offset: int, timestamp: float | None = None, max_raw_bytes: int = DLQ_MAX_RAW_BYTES,
) -> dict[str, Any]:
    """One DLQ value: the exact bytes (base64) so the record can be repaired and replayed.

    A value too big to fit in a DLQ record (its send would fail with MessageSizeTooLarge and
    stall the batch) keeps its first `max_raw_bytes` and says so in `raw_truncated`, with
    the full size and sha256; an oversized key or id likewise.
    """
    raw_kept, raw_cut = _cut(raw, max_raw_bytes)
    key_kept, key_cut = _cut(key, DLQ_MAX_KEY_BYTES)
    rid = rejection.id
    if rid is not None and len(rid) > DLQ_MAX_KEY_BYTES:
        rid = rid[:DLQ_MAX_KEY_BYTES]
    rec = {
        "schema_version": SCHEMA_VERSION,
        "reason": rejection.reason,
        "detail": rejection.detail[:DLQ_MAX_DETAIL_CHARS],
        "id": rid,
        "raw_b64": _b64(raw_kept),
        "key_b64": _b64(key_kept),
        "source": {"topic": topic, "partition": partition, "offset": offset,
                   "timestamp": timestamp},
        "failed_at": time.time(),
    }
    if raw_cut:
        rec["raw_truncated"] = raw_cut
    if key_cut:
        rec["key_truncated"] = key_cut
    return rec


def dlq_key(rejection: Rejection, key: bytes | None) -> bytes | None:
    """The DLQ record's key: the input's id where it has one, else its key; never oversized."""
    out = rejection.id.encode("utf-8") if rejection.id else key
    return bytes(out)[:DLQ_MAX_KEY_BYTES] if out else None


def response_record(verdict: dict[str, Any]) -> dict[str, Any]:
    """The value on the responses topic for an unsafe verdict (complete: not pending).

    `id` and `verdict_created_at` name the verdict it answers (the verdict's `id` and
    `created_at`); `error` is set when the model's output could not be read or the
    generation failed (then `response` is null).
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "id": verdict["id"],
        "response": verdict.get("response"),
        "category": verdict.get("category"),
        "language": verdict.get("response_language") or verdict.get("language"),
        "error": verdict.get("error"),
        "model_id": verdict.get("model_id") or "",
        "model_version": verdict.get("model_version") or "",
        "policy_id": verdict.get("policy_id") or "",
        "policy_version": str(verdict.get("policy_version") or ""),
        "verdict_created_at": verdict.get("created_at"),
    }


#: Columns of the flagged topic and table, in order (see stream/README.md).
FLAGGED_COLUMNS = (
    "id", "text", "label", "category", "unsafe_score", "response", "policy_id",
    "policy_version", "model_id", "model_version", "reason", "created_at", "near_threshold",
    "language", "source_topic", "source_partition", "source_offset", "schema_version",
)


def flagged_record(
    verdict: dict[str, Any], text: str, *, near_threshold: bool, topic: str, partition: int,
    offset: int,
) -> dict[str, Any]:
    """A flagged-topic value / flagged-table row: the verdict plus the query text."""
    return {
        "id": str(verdict["id"]),
        "text": text,
        "label": verdict.get("label"),
        "category": verdict.get("category"),
        "unsafe_score": float(verdict.get("unsafe_score") or 0.0),
        "response": verdict.get("response"),
        "policy_id": verdict.get("policy_id") or "",
        "policy_version": str(verdict.get("policy_version") or ""),
        "model_id": verdict.get("model_id") or "",
        "model_version": verdict.get("model_version") or "",
        "reason": verdict.get("reason") or "",
        "created_at": float(verdict.get("created_at") or time.time()),
        "near_threshold": bool(near_threshold),
        "language": verdict.get("language"),
        "source_topic": topic,
        "source_partition": int(partition),
        "source_offset": int(offset),
        "schema_version": SCHEMA_VERSION,
    }
