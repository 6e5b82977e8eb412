"""Topic re-scoring (stream/rescore_topic.py): range planning, validation and the diff
without Kafka, and one run of `guardian rescore --topic` on the real broker."""

from __future__ import annotations

import asyncio
import json

import pytest

from model.policy import PolicyStore
from stream.rescore_topic import (
    RangeSpec,
    Record,
    RescoreTopicError,
    diff_markdown,
    diff_verdicts,
    last_verdicts,
    parse_offsets,
    parse_time,
    plan_ranges,
    select_queries,
)


def test_parse_time_iso_and_epoch():
    assert parse_time("1700000000") == 1_700_000_000_000
    assert parse_time("1700000000.25") == 1_700_000_000_250
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000_000  # no zone: UTC
    assert parse_time("2023-11-15T07:13:20+09:00") == 1_700_000_000_000
    with pytest.raises(RescoreTopicError, match="ISO-8601"):
        parse_time("yesterday")


def test_parse_offsets():
    assert parse_offsets("42") == {None: 42}
    assert parse_offsets("0:10, 2:30") == {0: 10, 2: 30}
    for bad in ("x", "0:a", "-1", "0:1,0:2"):
        with pytest.raises(RescoreTopicError):
            parse_offsets(bad)


def test_range_spec_rejects_conflicts():
    with pytest.raises(RescoreTopicError, match="not both"):
        RangeSpec(from_ms=1, from_offsets={None: 0})
    with pytest.raises(RescoreTopicError, match="later"):
        RangeSpec(from_ms=5, to_ms=5)


def test_plan_ranges_times_offsets_and_clamping():
    begin, end = {0: 0, 1: 5, 2: 0}, {0: 10, 1: 20, 2: 0}
    # times: no record at/after from -> empty (start = end); none at/after to -> up to the end
    plan = plan_ranges(RangeSpec(from_ms=100, to_ms=200), begin, begin, end,
                       {0: 3, 1: None, 2: None}, {0: None, 1: None, 2: None})
    assert plan == {0: (3, 10), 1: (20, 20), 2: (0, 0)}
    # global offsets are clamped to what the partition holds
    plan = plan_ranges(RangeSpec(from_offsets={None: 2}, to_offsets={None: 15}), begin, begin,
                       end)
    assert plan == {0: (2, 10), 1: (5, 15), 2: (0, 0)}
    # per-partition offsets read only the named partitions; the other bound defaults
    plan = plan_ranges(RangeSpec(from_offsets={1: 7}), begin, begin, end)
    assert plan == {1: (7, 20)}
    plan = plan_ranges(RangeSpec(from_ms=100, to_offsets={0: 4}), begin, begin, end, {0: 6})
    assert plan == {0: (6, 6)}  # stop below start: nothing
    with pytest.raises(RescoreTopicError, match="do not exist"):
        plan_ranges(RangeSpec(to_offsets={7: 1}), begin, begin, end)


def _rec(offset, value, ts=1000, partition=0):
    if isinstance(value, dict):
        value = json.dumps(value).encode()
    return Record(partition, offset, ts, None, value)


def test_select_queries_validates_like_the_worker():
    store = PolicyStore()
    recs = [
        _rec(0, {"id": "a", "text": "how do I bake bread", "policy": "default-en"}),
        _rec(1, b"{not json"),
        _rec(2, {"id": "b", "text": "  "}),
        _rec(3, {"id": "c", "text": "hello", "policy": "nope"}),
        _rec(4, None),
        _rec(5, b'{"id": "d", "text": "\xff"}'),
        _rec(6, {"id": "a", "text": "the second a", "policy": "default-en"}, ts=1001),
        _rec(7, {"id": "e", "text": "x" * 50}),
        _rec(8, {"id": "late", "text": "out of order"}, ts=5000),
        _rec(9, {"id": "f", "text": "오늘 날씨 어때?"}),
    ]
    sel = select_queries(recs, store=store, max_text_chars=20, default_policy="auto",
                         from_ms=0, to_ms=2000)
    assert list(sel.valid) == ["e", "f", "a"]  # in order of their (last) records
    assert sel.valid["a"][0].text == "the second a" and sel.duplicates == 1
    assert sel.valid["e"][0].text == "x" * 20  # judged on its first max_text_chars, as the worker
    assert sel.record_fields["e"] == {"text_chars": 50, "query_truncated": True}
    assert sel.record_fields["a"] == {"text_chars": len("the second a")}  # the last record's
    assert sel.valid["f"][1].id == "default-ko"  # auto: the language's default
    assert sel.out_of_time == 1
    reasons = {(i.offset, i.reason) for i in sel.invalid}
    assert reasons == {(1, "not JSON"), (2, "no text"), (3, "unknown policy"), (4, "not JSON"),
                       (5, "non-UTF-8 bytes")}
    assert next(i for i in sel.invalid if i.offset == 3).id == "c"
    forced = store.get("default-en")
    sel = select_queries(recs, store=store, max_text_chars=20, default_policy="auto",
                         policy=forced)
    assert {p.id for _, p, _ in sel.valid.values()} == {"default-en"}
    assert "c" in sel.valid and "late" in sel.valid  # a forced policy; no time filter


def test_last_verdicts_takes_the_last_per_id():
    recs = [
        _rec(0, {"id": "a", "label": "unsafe", "category": "crime_advice"}, ts=50),
        _rec(1, {"id": "a", "label": "safe"}, ts=10),  # later offset wins, whatever its time
        _rec(2, b"garbage"),
        _rec(3, {"id": "b", "label": "safe"}),
        _rec(0, {"id": "b", "label": "unsafe"}, ts=2000, partition=1),  # other partition: time
        _rec(4, {"id": "zzz", "label": "safe"}),
        _rec(5, {"id": "c"}),  # no label
    ]
    prior, unreadable = last_verdicts(recs, {"a", "b", "c"})
    assert prior["a"]["label"] == "safe" and prior["b"]["label"] == "unsafe"
    assert set(prior) == {"a", "b"} and unreadable == 2


def _v(vid, label, category=None, score=0.5):
    return {"id": vid, "label": label, "category": category, "unsafe_score": score}


def test_diff_counts_flips_categories_and_examples():
    prior = {
        "s1": _v("s1", "safe"), "s2": _v("s2", "safe"), "s3": _v("s3", "safe"),
        "u1": _v("u1", "unsafe", "crime_advice"), "u2": _v("u2", "unsafe", "self_harm_suicide"),
        "u3": _v("u3", "unsafe", "crime_advice"), "u4": _v("u4", "unsafe", "crime_advice"),
        "gone": _v("gone", "safe"),
    }
    new = {
        "s1": _v("s1", "unsafe", "crime_advice", 0.9),
        "s2": _v("s2", "unsafe", "privacy_violation"),
        "s3": _v("s3", "safe"), "u1": _v("u1", "safe", None, 0.1),
        "u2": _v("u2", "unsafe", "crime_advice"), "u3": _v("u3", "unsafe", "crime_advice"),
        "u4": _v("u4", "unsafe", "self_harm_suicide"),
        "fresh": _v("fresh", "unsafe", "crime_advice"),
    }
    texts = {"s1": "a | pipe\nand a newline", "u1": "y" * 500}
    d = diff_verdicts(new, prior, texts=texts, examples=1)
    assert d["judged"] == 8 and d["compared"] == 7
    assert d["no_prior_verdict"] == {"count": 1, "ids": ["fresh"]}
    assert d["safe_to_unsafe"]["count"] == 2 and d["unsafe_to_safe"]["count"] == 1
    assert d["unchanged_label"] == 4
    assert d["labels"] == {"prior": {"safe": 3, "unsafe": 4}, "new": {"unsafe": 5, "safe": 2}}
    ex = d["safe_to_unsafe"]["examples"]
    assert len(ex) == 1 and ex[0]["id"] == "s1" and ex[0]["prior_label"] == "safe"
    assert ex[0]["new_category"] == "crime_advice" and ex[0]["new_score"] == 0.9
    assert d["unsafe_to_safe"]["examples"][0]["text"].endswith("…")
    assert d["unsafe_per_category"] == {
        "crime_advice": {"prior": 3, "new": 3, "delta": 0},
        "privacy_violation": {"prior": 0, "new": 1, "delta": 1},
        "self_harm_suicide": {"prior": 1, "new": 1, "delta": 0},
    }
    assert d["category_changes"]["count"] == 2
    assert d["category_changes"]["by_pair"] == {"self_harm_suicide -> crime_advice": 1,
                                                "crime_advice -> self_harm_suicide": 1}
    md = diff_markdown(d, {"topic": "q"})
    assert "| safe -> unsafe | 2 |" in md and "| unsafe -> safe | 1 |" in md
    assert "| privacy_violation | 0 | 1 | +1 |" in md
    assert "a \\| pipe and a newline" in md  # a cell never breaks the table
    assert "## Examples: safe -> unsafe (1 of 2)" in md


def test_diff_of_nothing():
    d = diff_verdicts({}, {})
    assert d["compared"] == 0 and d["safe_to_unsafe"]["count"] == 0
    assert "none" in diff_markdown(d)


# --- on the real broker ------------------------------------------------------------------

ALL_UNSAFE = """id = "all-unsafe"
version = "1"
description = "test: every query is unsafe"
blocked = "all"
threshold = 0.0
response_mode = "none"
"""


async def _produce(bootstrap: str, topic: str, items: list[tuple[str, bytes, int, int]]):
    """items: (key, value, timestamp_ms, partition)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futs = [await producer.send(topic, value=v, key=k.encode(), timestamp_ms=ts,
                                    partition=p) for k, v, ts, p in items]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


def _summary(err: str) -> dict:
    return json.loads([x for x in err.splitlines() if x.startswith("{")][-1])


@pytest.mark.services
@pytest.mark.timeout(120)
def test_rescore_topic_range_diff_and_resume(stream_env, kafka_bootstrap, tmp_path, monkeypatch,
                                             capsys):
    import time

    from stream.app import ensure_topics
    from stream.cli import main
    from tests.stream.conftest import settings_from

    env = dict(stream_env, GUARDIAN_TOPIC_PARTITIONS="3")
    for k, v in env.items():
        if k.startswith("GUARDIAN_"):
            monkeypatch.setenv(k, v)
    asyncio.run(ensure_topics(settings_from(env)))
    qt, vt = env["GUARDIAN_TOPIC_QUERIES"], env["GUARDIAN_TOPIC_VERDICTS"]
    base = (int(time.time()) - 3600) * 1000
    queries = []
    for i in range(12):
        rec = {"id": f"q{i}", "text": f"tell me a joke number {i}", "policy": "default-en"}
        queries.append((f"q{i}", json.dumps(rec).encode(), base + i * 1000, i % 3))
    # after q9 in its partition yet in range: found although its timestamp is out of order
    queries.append(("bad1", b"{not json", base + 3500, 0))
    queries.append(("bad2", json.dumps({"id": "bad2", "text": ""}).encode(), base + 4500, 1))
    queries.append(("bad3", b"{late", base + 11_500, 2))                         # out of range
    asyncio.run(_produce(kafka_bootstrap, qt, queries))

    def prior(qid, label, category=None, dt=500):
        i = int(qid[1:])
        v = {"id": qid, "label": label, "category": category, "unsafe_score": 0.2,
             "model_version": "old"}
        return (qid, json.dumps(v).encode(), base + i * 1000 + dt, i % 3)

    priors = [prior(f"q{i}", "safe") for i in range(12) if i not in (3, 5, 8)]
    priors += [prior("q3", "unsafe", "crime_advice"),
               prior("q5", "unsafe", "crime_advice", dt=300), prior("q5", "safe", dt=600)]
    asyncio.run(_produce(kafka_bootstrap, vt, priors))   # q8: no prior verdict

    policy = tmp_path / "all-unsafe.toml"
    policy.write_text(ALL_UNSAFE)
    out = tmp_path / "rescore"
    argv = ["rescore", "--topic", qt, "--from", str((base + 2000) / 1000),
            "--to", str((base + 9000) / 1000), "--model", "none", "--policy", str(policy),
            "--out", str(out), "--quiet", "--batch-size", "4"]
    t0 = time.monotonic()
    assert main(argv) == 0
    first = _summary(capsys.readouterr().err)
    want = {f"q{i}" for i in range(2, 9)}
    lines = (out / "verdicts.jsonl").read_text().splitlines()
    new = {json.loads(x)["id"]: json.loads(x) for x in lines}
    assert set(new) == want and len(lines) == 7, "exactly the in-range ids, once each"
    assert {v["label"] for v in new.values()} == {"unsafe"}
    # as the worker's verdicts: the record's text length beside the model's fields
    assert all(v["text_chars"] == len(f"tell me a joke number {k[1:]}") for k, v in new.items())
    assert {v["policy_id"] for v in new.values()} == {"all-unsafe"}
    assert first["judged"] == 7 and first["invalid"] == 2 and first["records"] == 9
    assert first["read"] == 15 and first["out_of_time"] == 6
    assert first["invalid_reasons"] == {"not JSON": 1, "no text": 1}
    invalid = [json.loads(x) for x in (out / "invalid.jsonl").read_text().splitlines()]
    assert sorted(i["reason"] for i in invalid) == ["no text", "not JSON"]

    diff = json.loads((out / "diff.json").read_text())
    assert diff["compared"] == 6 and diff["no_prior_verdict"]["ids"] == ["q8"]
    assert diff["safe_to_unsafe"]["count"] == 5  # q2 q4 q5 (its last prior is safe) q6 q7
    assert {e["id"] for e in diff["safe_to_unsafe"]["examples"]} == {"q2", "q4", "q5", "q6",
                                                                      "q7"}
    assert diff["unsafe_to_safe"]["count"] == 0
    q3_changed = new["q3"]["category"] != "crime_advice"
    assert diff["category_changes"]["count"] == int(q3_changed)
    cats: dict[str, int] = {}
    for vid in want - {"q8"}:
        cats[new[vid]["category"]] = cats.get(new[vid]["category"], 0) + 1
    assert {c: n["new"] for c, n in diff["unsafe_per_category"].items() if n["new"]} == cats
    assert diff["unsafe_per_category"]["crime_advice"]["prior"] == 1
    md = (out / "diff.md").read_text()
    assert "| safe -> unsafe | 5 |" in md and "q4" in md
    state = json.loads((out / "state.json").read_text())
    assert state["complete"] and set(state["partitions"]) == {"0", "1", "2"}

    # interrupted after three verdicts: the rerun judges only the four missing ones
    (out / "verdicts.jsonl").write_text("\n".join(lines[:3]) + '\n{"id": "q', encoding="utf-8")
    assert main(argv) == 0
    second = _summary(capsys.readouterr().err)
    assert second["resumed"] and second["judged"] == 4 and second["skipped_existing"] == 3
    again = [json.loads(x)["id"] for x in (out / "verdicts.jsonl").read_text().splitlines()]
    assert sorted(again) == sorted(want)
    assert json.loads((out / "diff.json").read_text())["safe_to_unsafe"]["count"] == 5
    # other arguments in the same folder are refused
    other = [x if x != str(policy) else "default-en" for x in argv]
    assert main(other) == 2
    assert "other arguments" in capsys.readouterr().err
    assert time.monotonic() - t0 < 40
