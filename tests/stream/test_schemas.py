"""Unit tests for input validation and output records (no services)."""

import base64
import json

import pytest

from stream import schemas as s


def v(raw, **kw):
    return s.validate_query(raw, max_text_chars=kw.get("max", 20), default_policy="default-ko")


def enc(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def test_valid_minimal_gets_default_policy():
    q = v(enc({"id": "a", "text": "안녕하세요"}))
    assert isinstance(q, s.QueryMessage)
    assert (q.id, q.text, q.policy, q.metadata) == ("a", "안녕하세요", "default-ko", {})


def test_valid_full():
    q = v(enc({"schema_version": 1, "id": 7, "text": "hi", "policy": "default-en",
               "locale": "en-US", "timestamp": 1.5, "metadata": {"session": "s"}}))
    assert q.id == "7" and q.policy == "default-en" and q.metadata == {"session": "s"}


@pytest.mark.parametrize("raw,reason", [
    (b"\xff\xfe not utf8", s.NOT_UTF8),
    (b"{not json", s.NOT_JSON),
    (None, s.NOT_JSON),
    (b"", s.NOT_JSON),
    (enc([1, 2]), s.WRONG_TYPES),
    (enc({"text": "no id"}), s.WRONG_TYPES),
    (enc({"id": ["x"], "text": "t"}), s.WRONG_TYPES),
    (enc({"id": True, "text": "t"}), s.WRONG_TYPES),
    (enc({"id": "a"}), s.NO_TEXT),
    (enc({"id": "a", "text": "   "}), s.NO_TEXT),
    (enc({"id": "a", "text": 5}), s.WRONG_TYPES),
    (enc({"id": "i" * (s.MAX_ID_CHARS + 1), "text": "t"}), s.ID_TOO_LONG),
    (b'{"id": "a\\ud800", "text": "t"}', s.NOT_UTF8),
    (b'{"id": "a", "text": "lone \\udc00 surrogate"}', s.NOT_UTF8),
    (b'{"id": "a", "text": "t", "policy": "\\ud800"}', s.NOT_UTF8),
    (enc({"id": "a", "text": "t", "policy": 3}), s.WRONG_TYPES),
    (enc({"id": "a", "text": "t", "locale": 3}), s.WRONG_TYPES),
    (enc({"id": "a", "text": "t", "timestamp": {}}), s.WRONG_TYPES),
    (enc({"id": "a", "text": "t", "metadata": "m"}), s.WRONG_TYPES),
    (enc({"id": "a", "text": "t", "schema_version": 99}), s.WRONG_TYPES),
])
def test_rejections(raw, reason):
    r = v(raw)
    assert isinstance(r, s.Rejection), r
    assert r.reason == reason


def test_a_long_text_is_judged_on_its_first_max_text_chars():
    q = v(enc({"id": "a", "text": "y" * 21}))
    assert isinstance(q, s.QueryMessage)
    assert (q.text, q.text_chars, q.truncated) == ("y" * 20, 21, True)
    short = v(enc({"id": "b", "text": "  two  spaces  "}))
    assert (short.text, short.text_chars, short.truncated) == ("  two  spaces  ", 15, False)
    # whitespace padding cannot push the query out of the judged part
    padded = v(enc({"id": "c", "text": " " * 5000 + "how to make a bomb\n\n\n" + "." * 99}))
    assert padded.text.startswith("how to make a bomb .") and len(padded.text) == 20
    assert padded.text_chars == 5000 + 21 + 99


def test_a_record_over_the_hard_byte_limit_is_rejected():
    raw = enc({"id": "a", "text": "x" * 100})
    r = s.validate_query(raw, max_text_chars=20, default_policy="default-ko",
                         max_record_bytes=len(raw) - 1)
    assert isinstance(r, s.Rejection) and r.reason == s.TOO_LONG
    assert isinstance(s.validate_query(raw, max_text_chars=20, default_policy="default-ko",
                                       max_record_bytes=len(raw)), s.QueryMessage)


def test_never_raises_on_garbage():
    lone_surrogate = "\ud800".encode("utf-8", "surrogatepass")
    for raw in [b"\x00" * 10, b"[" * 100000, b"null", b"1e999", lone_surrogate]:
        assert isinstance(v(raw), s.Rejection)


def test_dlq_record_keeps_raw_bytes():
    raw = b"\xff\x00bad"
    rec = s.dlq_record(s.Rejection(s.NOT_UTF8, "x"), raw, b"k", topic="t", partition=2, offset=9)
    assert base64.b64decode(rec["raw_b64"]) == raw
    assert rec["source"] == {"topic": "t", "partition": 2, "offset": 9, "timestamp": None}
    assert rec["schema_version"] == s.SCHEMA_VERSION
    json.dumps(rec)


def test_dlq_record_of_an_oversized_input_fits_the_producer_limit():
    import hashlib

    raw = json.dumps({"id": "big", "text": "x" * 1_200_000}).encode()
    huge_id = "i" * 50_000
    rec = s.dlq_record(s.Rejection(s.TOO_LONG, "d" * 10_000, id=huge_id), raw, huge_id.encode(),
                       topic="t", partition=0, offset=1)
    value = json.dumps(rec).encode()
    assert len(value) < 1_000_000  # Kafka's default max.request.size is 1 MB
    kept = base64.b64decode(rec["raw_b64"])
    assert kept == raw[: s.DLQ_MAX_RAW_BYTES]
    assert rec["raw_truncated"] == {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
                                    "kept": s.DLQ_MAX_RAW_BYTES}
    assert rec["key_truncated"]["size"] == 50_000 and len(rec["id"]) == s.DLQ_MAX_KEY_BYTES
    assert len(s.dlq_key(s.Rejection(s.TOO_LONG, "", id=huge_id), None)) == s.DLQ_MAX_KEY_BYTES
    small = s.dlq_record(s.Rejection(s.NOT_JSON, "x"), b"{", b"k", topic="t", partition=0,
                         offset=2)
    assert "raw_truncated" not in small and "key_truncated" not in small


def test_flagged_record_columns():
    rec = s.flagged_record({"id": "a", "label": "unsafe", "unsafe_score": 0.9}, "t",
                           near_threshold=False, topic="q", partition=0, offset=1)
    assert tuple(rec) == s.FLAGGED_COLUMNS
