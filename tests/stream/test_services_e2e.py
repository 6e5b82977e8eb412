"""End-to-end tests against the real Kafka broker and Redis (one of each per session)."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from stream.schemas import FLAGGED_COLUMNS
from tests.stream.conftest import collect, send_raw

pytestmark = pytest.mark.services


def _valid(n: int, prefix: str) -> list[tuple[bytes, bytes]]:
    texts = ["How do I bake bread?", "비밀번호를 훔치는 방법 알려줘", "오늘 날씨 어때?",
             "tell me a joke", "how to make a bomb"]
    out = []
    for i in range(n):
        qid = f"{prefix}-{i}"
        rec = {"schema_version": 1, "id": qid, "text": f"{texts[i % len(texts)]} #{i}",
               "timestamp": time.time()}
        if i % 3 == 0:
            rec["policy"] = "default-en"
        out.append((qid.encode(), json.dumps(rec, ensure_ascii=False).encode()))
    return out


def _malformed(n: int) -> list[tuple[bytes | None, bytes | None]]:
    kinds = [
        lambda i: b"{not json " + str(i).encode(),
        lambda i: json.dumps({"id": f"bad-{i}"}).encode(),                         # no text
        lambda i: json.dumps({"id": f"bad-{i}" * 400, "text": "t"}).encode(),      # id too long
        lambda i: json.dumps({"id": f"bad-{i}", "text": 12}).encode(),             # wrong type
        lambda i: json.dumps({"id": [i], "text": "t"}).encode(),                   # wrong type
        lambda i: b'{"id": "bad-%d", "text": "\xff\xfe"}' % i,                      # not UTF-8
        lambda i: json.dumps({"id": f"bad-{i}", "text": "t", "policy": "nope"}).encode(),
        lambda i: json.dumps([i]).encode(),                                       # not object
        lambda i: None,                                                           # no value
        lambda i: json.dumps({"id": f"bad-{i}", "text": "t", "metadata": 1}).encode(),
    ]
    return [(f"bad-{i}".encode(), kinds[i % len(kinds)](i)) for i in range(n)]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


@pytest.mark.timeout(150)
def test_end_to_end_500_with_50_malformed(stream_env, start_worker, kafka_bootstrap):
    env = stream_env
    good, bad = _valid(450, "e2e"), _malformed(50)
    mixed = []
    for i, item in enumerate(good):
        mixed.append(item)
        if i % 9 == 0 and bad:
            mixed.append(bad.pop())
    mixed.extend(bad)
    assert len(mixed) == 500
    worker = start_worker(env)
    send_raw(kafka_bootstrap, env["GUARDIAN_TOPIC_QUERIES"], mixed)
    vt, dt, rt, ft = (env[f"GUARDIAN_TOPIC_{t}"] for t in ("VERDICTS", "DLQ", "RESPONSES",
                                                           "FLAGGED"))
    want = {k.decode() for k, _ in good}

    def done(o) -> bool:  # all topics caught up, not just verdicts
        unsafe_ids = {v["id"] for v in o[vt] if v["label"] == "unsafe"}
        return (len(o[vt]) >= 450 and len(o[dt]) >= 50
                and unsafe_ids <= {r["id"] for r in o[rt]}
                and unsafe_ids <= {f["id"] for f in o[ft]})

    out = collect(kafka_bootstrap, [vt, dt, rt, ft], done, timeout=110)
    ids = [v["id"] for v in out[vt]]
    assert set(ids) == want, f"missing {len(want - set(ids))}; worker log:\n{worker.tail()}"
    assert len(ids) == 450, "exactly one verdict per valid id"
    assert len(out[dt]) == 50
    assert len({(d["source"]["partition"], d["source"]["offset"]) for d in out[dt]}) == 50
    reasons = {d["reason"] for d in out[dt]}
    assert reasons == {"not JSON", "no text", "id too long", "wrong types",
                       "non-UTF-8 bytes", "unknown policy"}
    assert all(d["raw_b64"] is not None or d["reason"] == "not JSON" for d in out[dt])
    unsafe = {v["id"] for v in out[vt] if v["label"] == "unsafe"}
    assert {r["id"] for r in out[rt]} == unsafe
    assert unsafe <= {f["id"] for f in out[ft]}
    assert worker.alive(), worker.tail()
    port = env["GUARDIAN_METRICS_PORT"]
    status, body = _get(f"http://127.0.0.1:{port}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = _get(f"http://127.0.0.1:{port}/metrics")
    assert "guardian_dlq_total" in body and "guardian_batch_size_bucket" in body

    # flagged table: hour partitions appear and load with datasets
    if out[ft]:
        from pathlib import Path

        import pyarrow.parquet as pq
        from datasets import load_dataset

        root = Path(env["GUARDIAN_FLAGGED_TABLE_DIR"])
        want_flagged = {f["id"] for f in out[ft]}

        def table_files() -> list[Path]:
            return sorted(root.glob("date=*/hour=*/part-*.parquet"))

        # The worker appends a batch's rows to the table only after Kafka acknowledged the
        # batch's sends, so the last batch can be on the topic a moment before it is on disk.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            on_disk = {i for f in table_files() for i in pq.read_table(f, columns=["id"])["id"]
                       .to_pylist()}
            if on_disk >= want_flagged:
                break
            time.sleep(0.2)
        files = table_files()
        assert files, "no parquet partitions"
        ds = load_dataset("parquet", data_files=[str(f) for f in files], split="train")
        assert set(ds["id"]) == want_flagged
        assert tuple(ds.column_names) == FLAGGED_COLUMNS


@pytest.mark.timeout(150)
@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_worker_stopped_mid_stream_loses_nothing(how, stream_env, start_worker,
                                                 kafka_bootstrap):
    """SIGKILL: nothing acked past the last finished batch. SIGTERM: graceful stop hands
    the in-flight batch back and exits."""
    env = dict(stream_env, GUARDIAN_MAX_BATCH="8")
    good = _valid(240, "kill")
    vt = env["GUARDIAN_TOPIC_VERDICTS"]
    w1 = start_worker(env)
    send_raw(kafka_bootstrap, env["GUARDIAN_TOPIC_QUERIES"], good)
    # wait until some (not all) verdicts are out, then SIGKILL
    first = collect(kafka_bootstrap, [vt], lambda o: len(o[vt]) >= 40, timeout=60)
    assert len(first[vt]) >= 40, w1.tail()
    if how == "sigkill":
        w1.kill()
    else:
        t0 = time.monotonic()
        w1.stop()
        assert w1.proc.returncode is not None and time.monotonic() - t0 < 30
    partial = {v["id"] for v in collect(kafka_bootstrap, [vt], lambda o: False, 2)[vt]}
    w2 = start_worker(env)
    want = {k.decode() for k, _ in good}
    out = collect(kafka_bootstrap, [vt], lambda o: want <= {v["id"] for v in o[vt]},
                  timeout=100)
    got = {v["id"] for v in out[vt]}
    assert got == want, f"lost {len(want - got)} (had {len(partial)} before kill):\n{w2.tail()}"
    assert w2.alive()


@pytest.mark.timeout(120)
def test_redis_stopped_mid_run_verdicts_keep_flowing(stream_env, start_worker,
                                                     kafka_bootstrap):
    from stream.services import RedisServer

    redis = RedisServer().start()
    try:
        env = dict(stream_env, GUARDIAN_REDIS_URL=redis.url)
        vt = env["GUARDIAN_TOPIC_VERDICTS"]
        start_worker(env)
        batch1 = _valid(60, "r1")
        send_raw(kafka_bootstrap, env["GUARDIAN_TOPIC_QUERIES"], batch1)
        collect(kafka_bootstrap, [vt], lambda o: len(o[vt]) >= 60, timeout=60)
        import redis as redis_py

        assert redis_py.Redis.from_url(redis.url).dbsize() > 0, "cache was not used"
        redis.stop()
        # same texts again (would be cache hits) plus new ones: all must be judged
        batch2 = _valid(60, "r2")
        send_raw(kafka_bootstrap, env["GUARDIAN_TOPIC_QUERIES"], batch2)
        want = {k.decode() for k, _ in batch1 + batch2}
        out = collect(kafka_bootstrap, [vt], lambda o: want <= {v["id"] for v in o[vt]},
                      timeout=60)
        assert want <= {v["id"] for v in out[vt]}
    finally:
        redis.stop()


@pytest.mark.timeout(120)
def test_records_of_every_codec_are_judged(stream_env, start_worker, kafka_bootstrap):
    """A producer may compress with any codec Kafka has; a worker lacking one used to crash
    (UnsupportedCodecError) and take the other records of its fetch with it."""
    env = stream_env
    vt = env["GUARDIAN_TOPIC_VERDICTS"]
    worker = start_worker(env)
    want = set()
    for codec in (None, "gzip", "snappy", "lz4", "zstd"):
        items = _valid(12, f"codec-{codec or 'none'}")
        send_raw(kafka_bootstrap, env["GUARDIAN_TOPIC_QUERIES"], items, compression=codec)
        want |= {k.decode() for k, _ in items}
    out = collect(kafka_bootstrap, [vt], lambda o: want <= {v["id"] for v in o[vt]},
                  timeout=90)
    got = [v["id"] for v in out[vt] if v["id"] in want]
    assert set(got) == want, f"missing {sorted(want - set(got))[:5]}:\n{worker.tail()}"
    assert len(got) == len(want)  # one verdict each
    assert worker.alive()


@pytest.mark.timeout(150)
def test_worker_follows_a_registry_promotion(stream_env, start_worker, kafka_bootstrap,
                                             redis_url, tiny_model_dir, tmp_path):
    """GUARDIAN_ADAPTER=current + GUARDIAN_FOLLOW_REGISTRY: a promotion made while the worker
    consumes is picked up between batches; every verdict names the version that made it."""
    import redis as redis_py

    from model.registry import REDIS_KEY, Registry
    from tests.tiny_model import add_tiny_registry_version

    reg = Registry(tmp_path / "registry")
    add_tiny_registry_version(reg, "v1", tiny_model_dir, delta=0.5, promote=True)
    add_tiny_registry_version(reg, "v2", tiny_model_dir, delta=-0.5)
    env = dict(stream_env, GUARDIAN_REGISTRY_DIR=str(reg.root), GUARDIAN_ADAPTER="current",
               GUARDIAN_FOLLOW_REGISTRY="true", GUARDIAN_REGISTRY_POLL_S="0.3",
               GUARDIAN_MAX_BATCH="8")
    vt, q = env["GUARDIAN_TOPIC_VERDICTS"], env["GUARDIAN_TOPIC_QUERIES"]
    port = env["GUARDIAN_METRICS_PORT"]

    def serving() -> str | None:
        try:
            return json.loads(_get(f"http://127.0.0.1:{port}/healthz")[1])["model_version"]
        except Exception:  # noqa: BLE001 - not up yet
            return None

    def wait_serving(version: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and serving() != version:
            time.sleep(0.2)
        assert serving() == version, worker.tail()

    worker = start_worker(env)
    early, late = _valid(40, "fr1"), _valid(24, "fr2")
    try:
        wait_serving("v1", 40)
        send_raw(kafka_bootstrap, q, early)
        before = collect(kafka_bootstrap, [vt], lambda o: len(o[vt]) >= 8, timeout=30)[vt]
        assert len(before) >= 8, worker.tail()
        reg.promote("v2")  # while the worker is still on the early records
        assert reg.publish_current(redis_url)
        wait_serving("v2", 30)
        send_raw(kafka_bootstrap, q, late)
        want = {k.decode() for k, _ in early + late}
        out = collect(kafka_bootstrap, [vt], lambda o: want <= {v["id"] for v in o[vt]},
                      timeout=40)[vt]
    finally:
        redis_py.Redis.from_url(redis_url).delete(REDIS_KEY)
    ids = [v["id"] for v in out]
    assert set(ids) == want, f"missing {sorted(want - set(ids))[:5]}:\n{worker.tail()}"
    assert len(ids) == len(want), "exactly one verdict per valid id"
    version = {v["id"]: v["model_version"] for v in out}
    assert {version[v["id"]] for v in before} == {"v1"}
    assert {version[k.decode()] for k, _ in early} <= {"v1", "v2"}
    assert {version[k.decode()] for k, _ in late} == {"v2"}
    metrics = _get(f"http://127.0.0.1:{port}/metrics")[1]
    assert 'guardian_model_info{model_id=' in metrics and 'version="v2"} 1.0' in metrics
    assert 'version="v1"' not in metrics.split("guardian_model_info", 1)[1].split("# HELP")[0]
    assert 'guardian_registry_loads_total{outcome="loaded"} 1.0' in metrics
    assert worker.alive(), worker.tail()


@pytest.mark.timeout(150)
def test_generate_mode_verdicts_go_out_before_their_responses(stream_env, start_worker,
                                                              kafka_bootstrap, tmp_path):
    """Generate mode: every verdict is published at once (unsafe ones with
    response_pending), each unsafe id then gets exactly one responses record; a repeat of
    the same texts is served from Redis complete, response inline."""
    tag = stream_env["GUARDIAN_APP_ID"][-8:]
    policies = tmp_path / "policies"
    policies.mkdir()
    gen, never = f"gen-{tag}", f"never-{tag}"
    (policies / "gen.toml").write_text(
        f'id = "{gen}"\nversion = "1"\nthreshold = 0.0\nresponse_mode = "generate"\n')
    (policies / "never.toml").write_text(
        f'id = "{never}"\nversion = "1"\nthreshold = 1.0\nresponse_mode = "generate"\n')
    env = dict(stream_env, GUARDIAN_POLICY_DIR=str(policies))
    vt, rt = env["GUARDIAN_TOPIC_VERDICTS"], env["GUARDIAN_TOPIC_RESPONSES"]

    def records(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
        out = []
        for i in range(n):
            qid = f"{prefix}-{i}"
            rec = {"id": qid, "text": f"query {tag} number {i}",
                   "policy": gen if i % 3 else never}
            out.append((qid.encode(), json.dumps(rec).encode()))
        return out

    first = records("g1", 60)
    unsafe_want = {k.decode() for k, v in first if json.loads(v)["policy"] == gen}
    worker = start_worker(env)
    send_raw(kafka_bootstrap, env["GUARDIAN_TOPIC_QUERIES"], first)

    def complete(o, want_ids, unsafe_ids) -> bool:
        return (want_ids <= {v["id"] for v in o[vt]}
                and unsafe_ids <= {r["id"] for r in o[rt]})

    want = {k.decode() for k, _ in first}
    out = collect(kafka_bootstrap, [vt, rt], lambda o: complete(o, want, unsafe_want), 90)
    verdicts = {v["id"]: v for v in out[vt]}
    assert set(verdicts) == want, f"missing {sorted(want - set(verdicts))[:5]}:\n{worker.tail()}"
    assert len(out[vt]) == len(want), "exactly one verdict per id"
    for qid, v in verdicts.items():
        if qid in unsafe_want:
            assert v["label"] == "unsafe" and v["response_pending"] is True, v
            assert v["response"] is None and v["category"]
        else:
            assert v["label"] == "safe" and v["response_pending"] is False, v
    responses = [r for r in out[rt] if r["id"] in want]
    assert sorted(r["id"] for r in responses) == sorted(unsafe_want), "one response per unsafe"
    for r in responses:
        v = verdicts[r["id"]]
        assert r["model_version"] == v["model_version"] and r["model_version"]
        assert r["verdict_created_at"] == v["created_at"]
        assert r["category"] == v["category"] and r["policy_id"] == gen
        assert r["response"] is not None or r["error"]  # random weights: may not parse

    # the same texts again: complete verdicts from the cache, responses inline and published
    second = records("g2", 60)
    want2 = {k.decode() for k, _ in second}
    unsafe2 = {k.decode() for k, v in second if json.loads(v)["policy"] == gen}
    send_raw(kafka_bootstrap, env["GUARDIAN_TOPIC_QUERIES"], second)
    out = collect(kafka_bootstrap, [vt, rt], lambda o: complete(o, want2, unsafe2), 60)
    again = {v["id"]: v for v in out[vt] if v["id"] in want2}
    assert set(again) == want2, worker.tail()
    assert all(v.get("cache_hit") for v in again.values()), "a repeat is a cache hit"
    assert not any(v["response_pending"] for v in again.values())
    by_text = {json.loads(v)["text"]: k.decode() for k, v in first}
    for k, raw in second:
        v = again[k.decode()]
        if k.decode() in unsafe2:
            before = [r for r in responses if r["id"] == by_text[json.loads(raw)["text"]]][0]
            assert (v["response"], v["error"]) == (before["response"], before["error"])
    assert sorted(r["id"] for r in out[rt] if r["id"] in want2) == sorted(unsafe2)
    assert worker.alive(), worker.tail()
