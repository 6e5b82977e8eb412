"""Fault tests: the worker under model failures, failed sends, garbage input, a broker
restart, a rebalance and a SIGKILL, against real Kafka and Redis (tests/stream/conftest.py).

Every test checks the same contract: each valid input id gets a verdict (exactly one after
dedupe by id), each invalid record is on the DLQ once with its reason, and a worker that was
not killed publishes no output twice for the same input record. Codecs are covered by
test_services_e2e.py::test_records_of_every_codec_are_judged; the fuzz test below sends its
records through every codec too. The model-level retry logic is also tested without Kafka
(the first tests, on the tiny guardian in-process).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
import urllib.request
import uuid
from collections import Counter

import faust
import pytest

from stream import schemas as s
from stream.services import KafkaBroker, ServiceError, free_port
from tests.stream.conftest import collect, read_all, send_raw, settings_from
from tests.stream.fault_worker import FlakyBackend, parse_fail_sends

FAULT_WORKER = "tests.stream.fault_worker"


# -- the retry / split logic, in-process (no Kafka) ---------------------------------------

def _flaky_pipeline(tiny_settings, tmp_path, *, fail_calls=0, fail_text="", retries=2,
                    backoff=0.01):
    from stream.app import Pipeline

    settings = tiny_settings.model_copy(update={
        "batch_retries": retries, "retry_backoff_s": backoff, "redis_url": "",
        "flagged_table_dir": str(tmp_path / "fl")})
    backend = FlakyBackend.from_settings(settings)
    backend.fail_calls, backend.fail_text = fail_calls, fail_text
    app = faust.App(f"faults-{uuid.uuid4().hex[:8]}", broker="kafka://localhost:1")
    return Pipeline(app, settings, backend), backend


def _group(pipeline, texts):
    from model.engine import Query

    policy = pipeline.policies.get("default-en")
    queries = [Query(f"q{i}", t) for i, t in enumerate(texts)]
    return asyncio.run(pipeline._judge_group(pipeline.backend, queries, policy))


def test_a_transient_model_failure_is_retried_with_backoff(tiny_settings, tmp_path):
    pipeline, backend = _flaky_pipeline(tiny_settings, tmp_path, fail_calls=2, backoff=0.05)
    t0 = time.monotonic()
    verdicts, pending, errors = _group(pipeline, ["what is the capital of france"] * 4)
    assert time.monotonic() - t0 >= 0.05 + 0.1  # backoff, then twice that
    assert backend.calls == 3 and errors == [None] * 4
    assert [v.id for v in verdicts] == ["q0", "q1", "q2", "q3"] and pending == []


def test_after_the_retries_each_query_is_judged_alone(tiny_settings, tmp_path):
    pipeline, backend = _flaky_pipeline(tiny_settings, tmp_path, fail_text="poison")
    verdicts, _, errors = _group(pipeline, ["hello there", "poison pill", "write a poem"])
    assert backend.calls == 3 + 3  # the batch three times (retries=2), then one by one
    assert verdicts[1] is None and "injected failure on 'poison'" in errors[1]
    assert errors[1].startswith("RuntimeError: ")
    assert [v.id for v in verdicts if v] == ["q0", "q2"] and errors[0] is errors[2] is None


def test_no_retries_split_at_once(tiny_settings, tmp_path):
    pipeline, backend = _flaky_pipeline(tiny_settings, tmp_path, fail_calls=1, retries=0)
    verdicts, _, errors = _group(pipeline, ["hello there", "write a poem"])
    assert backend.calls == 1 + 2 and errors == [None, None] and all(verdicts)


def test_records_delivered_again_are_recognised(tiny_settings, tmp_path):
    from types import SimpleNamespace

    pipeline, _ = _flaky_pipeline(tiny_settings, tmp_path)

    def evs(partition, *offsets):
        return [SimpleNamespace(message=SimpleNamespace(topic="q", partition=partition,
                                                        offset=o)) for o in offsets]

    first = evs(0, 10, 11, 12) + evs(1, 5)
    assert pipeline.fresh(first) == first
    pipeline.mark_done(first)
    pipeline.mark_done(evs(0, 13, 14))  # the next batch continues the span
    again = evs(0, 11, 12, 13, 14, 15) + evs(1, 5, 6)  # after a rebalance: from the commit
    assert [e.message.offset for e in pipeline.fresh(again)] == [15, 6]
    pipeline.mark_done(evs(0, 15))
    pipeline.mark_done(evs(0, 100))  # elsewhere in the meantime: a new span
    assert [e.message.offset for e in pipeline.fresh(evs(0, 12, 100, 101))] == [12, 101]
    pipeline.mark_done(evs(1, 20, 21, 30))  # a gap in a batch: only what was published
    assert [e.message.offset for e in pipeline.fresh(evs(1, 5, 21, 25, 30))] == [5, 21, 25]
    assert [e.message.offset for e in pipeline.fresh(evs(2, 7, 8, 7))] == [7, 8]


def test_the_worker_producer_is_idempotent():
    """A send aiokafka retries (the broker's answer lost in a restart) is written once."""
    from model.settings import GuardianSettings
    from stream.app import create_app

    app = create_app(GuardianSettings(kafka_bootstrap="localhost:1", app_id="idem-test"))
    assert app.producer._settings_extra() == {"acks": "all", "enable_idempotence": True}


def test_the_worker_commits_before_a_rebalance_forgets_its_acks(monkeypatch):
    """Faust drops the acked offsets of revoked partitions at a rebalance: the worker's
    consumer commits them first, so the partition's next owner does not judge them again."""
    from faust.types import TP

    from model.settings import GuardianSettings
    from stream.app import create_app

    app = create_app(GuardianSettings(kafka_bootstrap="localhost:1", app_id="revoke-test"))
    consumer = app.consumer
    tp = TP("queries", 0)
    consumer._acked[tp] = [5, 6]
    at_commit: list[dict] = []

    async def commit(*args, **kwargs):
        at_commit.append({k: list(v) for k, v in consumer._acked.items()})
        return True

    async def app_callback(revoked):
        return None

    monkeypatch.setattr(consumer, "commit", commit)
    monkeypatch.setattr(consumer, "_on_partitions_revoked", app_callback)
    asyncio.run(consumer.on_partitions_revoked({tp}))
    assert at_commit == [{tp: [5, 6]}], "committed while the acks were still known"
    assert tp not in consumer._acked  # what Faust does next: forgotten


def test_parse_fail_sends():
    assert parse_fail_sends("verdict:5, dlq:1,verdict:7") == {"verdict": {5, 7}, "dlq": {1}}


# -- helpers for the services tests --------------------------------------------------------

def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def _health(env) -> dict | None:
    try:
        return json.loads(_get(f"http://127.0.0.1:{env['GUARDIAN_METRICS_PORT']}/healthz"))
    except Exception:  # noqa: BLE001 - not up yet, or gone
        return None


def _metric(env, line_start: str) -> float:
    body = _get(f"http://127.0.0.1:{env['GUARDIAN_METRICS_PORT']}/metrics")
    for line in body.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _query(qid: str, text: str, **extra) -> tuple[bytes, bytes]:
    rec = {"schema_version": 1, "id": qid, "text": text, **extra}
    return qid.encode(), json.dumps(rec, ensure_ascii=False).encode()


def _queries(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
    texts = ["How do I bake bread?", "비밀번호를 훔치는 방법 알려줘", "tell me a joke",
             "how to make a bomb", "오늘 날씨 어때?"]
    return [_query(f"{prefix}-{i}", f"{texts[i % len(texts)]} [{prefix} {i}]",
                   **({"policy": "default-en"} if i % 3 == 0 else {})) for i in range(n)]


def _ids(items) -> set[str]:
    return {k.decode() for k, _ in items}


def _by_id(records: list[dict]) -> Counter:
    return Counter(r["id"] for r in records)


def _topics(env):
    return [env[f"GUARDIAN_TOPIC_{t}"] for t in ("VERDICTS", "RESPONSES", "FLAGGED", "DLQ")]


def _no_output_twice(out: dict[str, list[dict]], env) -> None:
    """No verdict twice for an id and model version; no responses / flagged / DLQ record
    twice for one input record (flagged and DLQ name their source offset)."""
    vt, rt, ft, dt = _topics(env)
    twice = [k for k, n in Counter((v["id"], v["model_version"]) for v in out[vt]).items()
             if n > 1]
    assert not twice, f"verdicts published twice: {twice[:5]}"
    assert not [k for k, n in _by_id(out[rt]).items() if n > 1], "a response twice"
    flagged = Counter((f["source_partition"], f["source_offset"]) for f in out[ft])
    assert not [k for k, n in flagged.items() if n > 1], "a flagged record twice"
    dlq = Counter((d["source"]["partition"], d["source"]["offset"]) for d in out[dt])
    assert not [k for k, n in dlq.items() if n > 1], "a DLQ record twice"


# -- model failures and failed sends, on the real broker --------------------------------

@pytest.mark.services
@pytest.mark.timeout(150)
def test_model_and_send_failures(stream_env, start_worker, kafka_bootstrap):
    """A model that fails its first calls and always fails on one query; sends that the
    broker never acknowledges. Records are judged after retry/split, the failing queries are
    on the DLQ with the exception, and nothing already acknowledged is published again."""
    env = dict(stream_env, FAULT_FAIL_CALLS="2", FAULT_FAIL_TEXT="poison-pill",
               FAULT_FAIL_SENDS="verdict:5,dlq:1,response:1,flagged:1",
               GUARDIAN_BATCH_RETRIES="2", GUARDIAN_RETRY_BACKOFF_S="0.05")
    tag = env["GUARDIAN_APP_ID"][-8:]
    good = _queries(f"ok{tag}", 120)
    poison = [_query(f"poison{tag}-{i}", f"please poison-pill number {i} {tag}")
              for i in range(3)]
    bad = [(f"bad{tag}-{i}".encode(), v) for i, v in enumerate(
        [b"{not json", json.dumps({"id": f"bad{tag}-1"}).encode(),
         json.dumps({"id": f"bad{tag}-2", "text": 3}).encode(), None,
         json.dumps({"id": f"bad{tag}-4", "text": "t", "policy": "nope"}).encode(),
         b'{"id": "x", "text": "\xff"}'])]
    mixed = good[:50] + poison[:1] + bad[:3] + good[50:90] + poison[1:] + bad[3:] + good[90:]
    worker = start_worker(env, module=FAULT_WORKER)
    send_raw(kafka_bootstrap, env["GUARDIAN_TOPIC_QUERIES"], mixed)
    vt, rt, ft, dt = _topics(env)
    want = _ids(good)

    def done(o) -> bool:
        return want <= {v["id"] for v in o[vt]} and len(o[dt]) >= len(poison) + len(bad)

    out = collect(kafka_bootstrap, [vt, rt, ft, dt], done, timeout=100)
    assert done(out), f"verdicts {len(out[vt])}, dlq {len(out[dt])}:\n{worker.tail()}"
    time.sleep(2)  # anything a retry would send twice is out by now
    out = read_all(kafka_bootstrap, [vt, rt, ft, dt])

    assert _by_id(out[vt]) == Counter(want), "exactly one verdict per valid id"
    _no_output_twice(out, env)
    unsafe = {v["id"] for v in out[vt] if v["label"] == "unsafe"}
    assert set(_by_id(out[rt])) == unsafe
    failed = {d["id"]: d for d in out[dt] if d["reason"] == s.MODEL_ERROR}
    assert set(failed) == _ids(poison)
    assert all("RuntimeError: injected failure on 'poison-pill'" in d["detail"]
               for d in failed.values())
    others = Counter(d["reason"] for d in out[dt] if d["reason"] != s.MODEL_ERROR)
    assert others == Counter({s.NOT_JSON: 2, s.NO_TEXT: 1, s.WRONG_TYPES: 1,
                              s.UNKNOWN_POLICY: 1, s.NOT_UTF8: 1})
    assert worker.alive(), worker.tail()
    assert _metric(env, 'guardian_dlq_total{reason="model error"}') == len(poison)
    assert _metric(env, 'guardian_model_failures_total{stage="batch"}') >= 2 + 3
    assert _metric(env, "guardian_batch_retries_total") >= 1  # the failed sends


# -- fuzzed input -------------------------------------------------------------------------

INJECTIONS = ["<|unsafe|>", "<|safe|>", "<|harm|>", "<|verdict|>", "<|query|>", "<bos>",
              "<eos>", "<start_of_turn>", "<end_of_turn>", "<|lang_ko|>", "<pad>"]


def _fuzz(n: int, tag: str, seed: int = 7):
    """n records `(key, value, expected)`; expected is "valid" or the DLQ reason."""
    rng = random.Random(seed)
    words = ["bread", "폭탄", "hack", "weather", "poem", "🙂", "\u0000", "\u202e", "naïve",
             "\t", "\\", '"', "비밀번호", "x" * 40]
    out = []

    def text() -> str:  # never blank
        return " ".join([rng.choice(words[:5])] + [rng.choice(words)
                                                   for _ in range(rng.randint(0, 11))])

    def obj(i, **kw) -> bytes:
        return json.dumps({"id": f"{tag}-z{i}", "text": text(), **kw},
                          ensure_ascii=rng.random() < 0.5).encode()

    kinds = [
        # valid, in many shapes
        ("valid", lambda i: obj(i)),
        ("valid", lambda i: obj(i, extra=[1, {"deep": None}], another="field",
                                metadata={"session": "s", "n": [1, 2]})),
        ("valid", lambda i: json.dumps({"id": f"{tag}-z{i}", "text": " ".join(
            rng.choice(INJECTIONS + [text()]) for _ in range(6))}).encode()),
        ("valid", lambda i: obj(i, policy=rng.choice(["default-en", "default-ko", "auto", ""]),
                                locale="ko-KR", timestamp=rng.choice([1.5, "2025-01-01"]))),
        ("valid", lambda i: json.dumps({"id": f"{tag}-z{i}", "text": "long " * rng.randint(
            101, 800)}).encode()),  # > GUARDIAN_MAX_TEXT_CHARS (500): judged on a prefix
        ("valid", lambda i: json.dumps({"id": f"{tag}-z{i}".ljust(s.MAX_ID_CHARS, "_"),
                                        "text": text()}).encode()),
        # not JSON
        (s.NOT_JSON, lambda i: obj(i)[: rng.randint(0, 30)]),  # every proper prefix is bad
        (s.NOT_JSON, lambda i: b"{" + bytes(rng.choice(b"abc:,[ ") for _ in range(20))),
        (s.NOT_JSON, lambda i: None),
        (s.NOT_JSON, lambda i: b"[" * rng.randint(5_000, 50_000)),
        # not UTF-8: raw bytes, and JSON escapes of lone surrogates
        (s.NOT_UTF8, lambda i: bytes(rng.randrange(256) for _ in range(30)) + b"\xff"),
        (s.NOT_UTF8, lambda i: b'{"id": "%s-z%d", "text": "caf\xe9"}' % (tag.encode(), i)),
        (s.NOT_UTF8, lambda i: b'{"id": "%s-z%d", "text": "a\\ud800b"}' % (tag.encode(), i)),
        (s.NOT_UTF8, lambda i: b'{"id": "%s-z%d\\udfff", "text": "t"}' % (tag.encode(), i)),
        # missing fields, empty text
        (s.WRONG_TYPES, lambda i: json.dumps({"text": text()}).encode()),
        (s.NO_TEXT, lambda i: json.dumps({"id": f"{tag}-z{i}"}).encode()),
        (s.NO_TEXT, lambda i: json.dumps({"id": f"{tag}-z{i}", "text": rng.choice(
            ["", " ", "\n\t ", None])}).encode()),
        # wrong types
        (s.WRONG_TYPES, lambda i: json.dumps({"id": rng.choice([[1], 1.5, True, None, {}, ""]),
                                              "text": "t"}).encode()),
        (s.WRONG_TYPES, lambda i: json.dumps({"id": f"{tag}-z{i}", "text": rng.choice(
            [3, [text()], {"t": 1}, True, 1.5])}).encode()),
        (s.WRONG_TYPES, lambda i: obj(i, **rng.choice([{"policy": 3}, {"locale": ["ko"]},
                                                       {"timestamp": {}}, {"metadata": "m"},
                                                       {"schema_version": 2}]))),
        (s.WRONG_TYPES, lambda i: json.dumps(rng.choice([[1, 2], "text", 3, None])).encode()),
        # huge ids
        (s.ID_TOO_LONG, lambda i: json.dumps({"id": f"{tag}-z{i}-" + "i" * rng.randint(
            s.MAX_ID_CHARS, 12_000),
                                              "text": "t"}).encode()),
        (s.ID_TOO_LONG, lambda i: b'{"id": %d%s, "text": "t"}' % (i + 1, b"7" * 2_000)),
        (s.UNKNOWN_POLICY, lambda i: obj(i, policy=f"no-such-policy-{i}")),
    ]
    for i in range(n):
        expected, make = kinds[i % len(kinds)]
        out.append((f"{tag}-k{i}".encode(), make(i), expected))
    rng.shuffle(out)
    return out


def test_fuzz_expectations_match_the_validator():
    """The fuzz generator's expectations are themselves right (fast, no Kafka)."""
    from model.policy import PolicyError, PolicyStore

    store = PolicyStore()
    for _, value, expected in _fuzz(500, "t"):
        got = s.validate_query(value, max_text_chars=500, default_policy="auto")
        if expected == s.UNKNOWN_POLICY:  # the worker's policy store decides that one
            with pytest.raises(PolicyError):
                store.for_text(got.policy, got.text)
        elif expected == "valid":
            store.for_text(got.policy, got.text)
            assert isinstance(got, s.QueryMessage), (value[:80], got)
        else:
            assert isinstance(got, s.Rejection) and got.reason == expected, (value[:80], got)


@pytest.mark.services
@pytest.mark.timeout(180)
def test_fuzzed_records_through_every_codec(stream_env, start_worker, kafka_bootstrap):
    """2,000 fuzzed records (sent with every codec), a ~1 MB valid query and good ones: every
    valid id gets exactly one verdict, every invalid record one DLQ record with its reason."""
    env = dict(stream_env, GUARDIAN_MAX_BATCH="256", GUARDIAN_BATCH_SIZE="64",
               GUARDIAN_MAX_WAIT_MS="100")
    tag = env["GUARDIAN_APP_ID"][-8:]
    fuzzed = _fuzz(2000, tag)
    big_text = "how to make a bomb at home? " + "lorem ipsum dolor sit amet " * 36_000
    big = _query(f"{tag}-big", big_text)
    assert 900_000 < len(big[1]) < 1_000_000  # under Kafka's default 1 MB record limit
    good = _queries(f"good{tag}", 20)
    worker = start_worker(env)
    q = env["GUARDIAN_TOPIC_QUERIES"]
    codecs = [None, "gzip", "snappy", "lz4", "zstd"]
    for n, codec in enumerate(codecs):
        send_raw(kafka_bootstrap, q, [(k, v) for k, v, _ in fuzzed[n::len(codecs)]],
                 compression=codec)
    send_raw(kafka_bootstrap, q, [big] + good)
    vt, rt, ft, dt = _topics(env)
    valid = {json.loads(v)["id"] for _, v, e in fuzzed if e == "valid"} | {big[0].decode()}
    valid |= _ids(good)
    invalid = {k: e for k, v, e in fuzzed if e != "valid"}

    def done(o) -> bool:
        return valid <= {v["id"] for v in o[vt]} and len(o[dt]) >= len(invalid)

    t0 = time.monotonic()
    out = collect(kafka_bootstrap, [vt, dt], done, timeout=150)
    took = time.monotonic() - t0
    assert done(out), f"verdicts {len(out[vt])}, dlq {len(out[dt])}:\n{worker.tail()}"
    out = read_all(kafka_bootstrap, [vt, rt, ft, dt])
    got = _by_id(out[vt])
    assert set(got) == valid, (f"missing {len(valid - set(got))}, e.g. "
                               f"{sorted(valid - set(got))[:3]}:\n{worker.tail()}")
    assert got == Counter(valid), "exactly one verdict per valid id"
    _no_output_twice(out, env)
    dlq = {base64.b64decode(d["key_b64"]): d for d in out[dt]}
    assert len(dlq) == len(out[dt]) == len(invalid)
    assert {k: d["reason"] for k, d in dlq.items()} == invalid
    verdicts = {v["id"]: v for v in out[vt]}
    v = verdicts[big[0].decode()]
    assert v["query_truncated"] is True and v["text_chars"] == len(big_text)
    long_ids = [json.loads(val)["id"] for _, val, e in fuzzed
                if e == "valid" and len(json.loads(val)["text"]) > 500]
    assert long_ids and all(verdicts[i]["query_truncated"] for i in long_ids)
    short = verdicts[good[0][0].decode()]
    assert short["text_chars"] == len(json.loads(good[0][1])["text"])
    assert worker.alive(), worker.tail()
    print(f"fuzz: {len(valid)} verdicts + {len(invalid)} DLQ records in {took:.1f}s")


# -- the broker stopped and started again ---------------------------------------------------

@pytest.mark.services
@pytest.mark.timeout(240)
def test_broker_restart_mid_stream(stream_env, start_worker):
    """A dedicated broker (the session's stays up for the other tests) is stopped while the
    worker is mid-stream and started again on the same data folder and port; the worker
    carries on without a restart: every id one verdict, nothing published twice."""
    broker = KafkaBroker()
    try:
        broker.start()
    except ServiceError as exc:
        pytest.fail(f"could not start Apache Kafka: {exc}", pytrace=False)
    worker = None
    try:
        env = dict(stream_env, GUARDIAN_KAFKA_BOOTSTRAP=broker.bootstrap, GUARDIAN_MAX_BATCH="8",
                   GUARDIAN_TOPIC_PARTITIONS="4")
        bootstrap = broker.bootstrap
        vt, rt, ft, dt = _topics(env)
        worker = start_worker(env)
        tag = env["GUARDIAN_APP_ID"][-8:]
        before, after = _queries(f"b{tag}", 240), _queries(f"a{tag}", 60)
        send_raw(bootstrap, env["GUARDIAN_TOPIC_QUERIES"], before)
        first = collect(bootstrap, [vt], lambda o: len(o[vt]) >= 24, timeout=60)[vt]
        assert len(first) >= 24, worker.tail()
        broker.stop(keep_data=True)
        time.sleep(3)
        broker.start()
        assert broker.bootstrap == bootstrap
        send_raw(bootstrap, env["GUARDIAN_TOPIC_QUERIES"], after)
        want = _ids(before) | _ids(after)
        collect(bootstrap, [vt], lambda o: want <= {v["id"] for v in o[vt]}, timeout=120)
        out = read_all(bootstrap, [vt, rt, ft, dt])
        got = _by_id(out[vt])
        assert set(got) == want, f"missing {len(want - set(got))}:\n{worker.tail()}"
        dups = {k for k, n in got.items() if n > 1}
        assert not dups, (f"{len(dups)} ids twice: " + "; ".join(
            f"{v['id']} {v['created_at']:.3f} {v.get('cache_hit')}" for v in out[vt]
            if v["id"] in dups) + f"\n{worker.tail()}")
        _no_output_twice(out, env)
        assert not out[dt]
        assert worker.alive(), worker.tail()
        print(f"broker restart: {len(want)} ids, "
              f"{_metric(env, 'guardian_redelivered_total'):.0f} records delivered again")
    finally:
        if worker is not None:
            worker.kill()  # before its broker goes for good
        broker.stop()


# -- a second worker joins, then the first is killed --------------------------------------

@pytest.mark.services
@pytest.mark.timeout(240)
def test_rebalance_then_sigkill(stream_env, start_worker, kafka_bootstrap):
    """Worker B joins while A is consuming (a rebalance), then A is killed with SIGKILL
    mid-stream: no id is lost; an id is repeated at most once (what A had published but not
    committed when it was killed, redone by B: at-least-once; at the join A commits before
    it lets its partitions go), and records sent after the kill get exactly one verdict."""
    env = dict(stream_env, GUARDIAN_MAX_BATCH="8", GUARDIAN_TOPIC_PARTITIONS="4",
               # a killed member leaves the group after its session times out (Faust: 60s)
               BROKER_SESSION_TIMEOUT="8", BROKER_HEARTBEAT_INTERVAL="1")
    env_b = dict(env, GUARDIAN_METRICS_PORT=str(free_port()))
    from stream.app import ensure_topics

    assert asyncio.run(ensure_topics(settings_from(env)))
    q, vt = env["GUARDIAN_TOPIC_QUERIES"], env["GUARDIAN_TOPIC_VERDICTS"]
    tag = env["GUARDIAN_APP_ID"][-8:]
    a = start_worker(env)
    phase1 = _queries(f"p1{tag}", 120)
    send_raw(kafka_bootstrap, q, phase1)
    assert len(collect(kafka_bootstrap, [vt], lambda o: len(o[vt]) >= 16, 60)[vt]) >= 16, \
        a.tail()
    b = start_worker(env_b)
    phase2: list = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ((_health(env_b) or {}).get("batches", 0) > 0):
        chunk = _queries(f"p2{tag}-{len(phase2)}", 8)
        send_raw(kafka_bootstrap, q, chunk)
        phase2 += chunk
        time.sleep(0.2)
    assert (_health(env_b) or {}).get("batches", 0) > 0, f"B never got a batch:\n{b.tail()}"
    # A is mid-stream (a backlog on its partitions) when it is killed
    phase3 = _queries(f"p3{tag}", 160)
    send_raw(kafka_bootstrap, q, phase3)
    batches = (_health(env) or {}).get("batches", 0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (_health(env) or {}).get("batches", 0) < batches + 2:
        time.sleep(0.05)
    a.kill()
    t_kill = time.time()
    phase4 = _queries(f"p4{tag}", 60)
    send_raw(kafka_bootstrap, q, phase4)
    want = _ids(phase1) | _ids(phase2) | _ids(phase3) | _ids(phase4)
    collect(kafka_bootstrap, [vt], lambda o: want <= {v["id"] for v in o[vt]}, timeout=120)
    out = read_all(kafka_bootstrap, [vt])[vt]
    got = _by_id(out)
    assert set(got) >= want, f"lost {len(want - set(got))}:\n{b.tail()}"
    assert all(got[i] == 1 for i in _ids(phase4)), "records sent after the kill: once"
    times: dict[str, list[float]] = {}
    for v in out:
        times.setdefault(v["id"], []).append(v["created_at"])
    repeated = {i: sorted(t) for i, t in times.items() if len(t) > 1}
    # at-least-once across a group change: a record A published but had not committed when
    # its partition moved (to B at the join, or at the kill) is judged again, once
    bad = {i: t for i, t in repeated.items() if len(t) != 2}
    assert not bad, f"repeated more than once: {list(bad.items())[:3]}"
    assert b.alive(), b.tail()
    across_kill = sum(1 for t in repeated.values() if t[0] < t_kill <= t[1])
    print(f"rebalance+kill: {len(want)} ids, {len(repeated)} repeated "
          f"({across_kill} across the kill, {len(repeated) - across_kill} at the join)")
