"""The worker's Redis verdict cache (stream.cache) in front of the API's batcher."""

from __future__ import annotations

import httpx
import pytest

from stream.services import RedisServer, ServiceError, free_port


def _judge(url: str, text: str, policy: str = "test-force") -> dict:
    r = httpx.post(url + "/v1/judge", json={"text": text, "policy": policy}, timeout=20)
    assert r.status_code == 200, r.text
    return r.json()["verdicts"][0]


@pytest.mark.services
def test_repeat_is_served_from_redis(serve, counting):
    redis = RedisServer()
    try:
        redis.start()
    except ServiceError as exc:
        pytest.fail(f"could not start redis: {exc}", pytrace=False)
    try:
        url = serve(counting, redis_url=redis.url)
        first = _judge(url, "hack  the bank")
        assert "cache_hit" not in first and len(counting.calls) == 1
        again = _judge(url, "hack the bank")  # same normalised text, policy and model
        assert again["cache_hit"] is True and len(counting.calls) == 1
        assert (again["label"], again["category"]) == (first["label"], first["category"])
        assert httpx.get(url + "/healthz").json()["cache"] == "on"
        _judge(url, "hack the bank", policy="test-allow")  # another policy: a miss
        assert len(counting.calls) == 2
    finally:
        redis.stop()


def test_redis_down_is_no_outage(serve, counting):
    url = serve(counting, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert _judge(url, "hack the bank")["label"] == "unsafe"
    assert _judge(url, "hack the bank")["label"] == "unsafe"
    assert len(counting.calls) == 2
    assert "guardian_cache_errors_total" in httpx.get(url + "/metrics").text
