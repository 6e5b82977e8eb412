"""Dynamic batching: concurrent requests share model calls; a full queue answers 429."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from api.batcher import Batcher, Overloaded
from model.engine import Query
from model.policy import PolicyStore
from tests.api.conftest import POLICIES


async def _concurrent(url: str, bodies: list[dict], path: str = "/v1/moderations"):
    async with httpx.AsyncClient(base_url=url, timeout=20) as client:
        return await asyncio.gather(*(client.post(path, json=b) for b in bodies))


def test_concurrent_requests_share_one_forward_pass(serve, counting):
    url = serve(counting, api_max_batch=64, api_max_wait_ms=300)
    n = 16
    bodies = [{"input": f"what is the capital of france {i}"} for i in range(n)]
    responses = asyncio.run(_concurrent(url, bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == n
    # 16 single-query requests, all default-en: far fewer model calls than requests
    assert len(counting.calls) < n / 2, counting.calls
    assert max(size for size, _ in counting.calls) > 1

    verdicts = asyncio.run(_concurrent(
        url, [{"text": f"hello {i}"} for i in range(8)], "/v1/judge"))
    sizes = [r.json()["verdicts"][0]["timings_ms"]["batch_size"] for r in verdicts]
    assert max(sizes) > 1  # the verdicts say they came out of one shared forward pass


def test_queue_full_answers_429(serve, counting):
    url = serve(counting, api_max_queue=2, api_max_wait_ms=0, api_max_batch=1)
    counting.gate = threading.Event()
    results: dict[int, httpx.Response] = {}

    def post(i: int) -> None:
        results[i] = httpx.post(url + "/v1/judge", json={"text": f"query {i}"}, timeout=20)

    first = threading.Thread(target=post, args=(0,))
    first.start()
    assert counting.entered.wait(10)  # request 0 is in the model thread, held at the gate
    waiting = [threading.Thread(target=post, args=(i,)) for i in (1, 2)]
    for t in waiting:
        t.start()
    deadline = time.monotonic() + 10
    while httpx.get(url + "/healthz").json()["queue"] < 2:
        assert time.monotonic() < deadline, "requests 1 and 2 never queued"
        time.sleep(0.01)
    r = httpx.post(url + "/v1/judge", json={"text": "one too many"})
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"] == "1"
    assert "GUARDIAN_API_MAX_QUEUE" in r.json()["error"]["message"]
    counting.gate.set()
    for t in (first, *waiting):
        t.join(20)
    assert [results[i].status_code for i in range(3)] == [200, 200, 200]
    metrics = httpx.get(url + "/metrics").text
    assert 'guardian_api_rejected_total{reason="overloaded"}' in metrics


def test_batcher_groups_by_policy(api_backend):
    store = PolicyStore(POLICIES)
    force, allow = store.get("test-force"), store.get("test-allow")

    async def main():
        calls = []

        class Recording:
            name, model_id, model_version = "x", "x", "x"

            def judge(self, queries, policy):
                calls.append((len(queries), policy.id))
                return api_backend.judge(queries, policy)

        b = Batcher(Recording(), max_batch=32, max_wait_ms=200, max_queue=10)
        b.start()
        futs = [b.submit([Query(f"r{i}a", "hack it"), Query(f"r{i}b", "hi")], [force, allow])
                for i in range(4)]
        with pytest.raises(Overloaded):
            b.submit([Query("z", "z")] * 3, [force] * 3)  # 8 waiting + 3 > 10
        out = await asyncio.gather(*futs)
        await b.stop()
        return calls, out

    calls, out = asyncio.run(main())
    assert sorted(calls) == [(4, "test-allow"), (4, "test-force")]  # one call per policy
    for i, (a, b) in enumerate(out):
        assert (a.id, a.label, a.policy_id) == (f"r{i}a", "unsafe", "test-force")
        assert (b.id, b.policy_id) == (f"r{i}b", "test-allow")
