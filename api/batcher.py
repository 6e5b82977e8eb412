"""Dynamic batching across HTTP requests: concurrent requests share the model's calls.

One `Batcher` per process. Requests append their queries to one queue; a single collector
task takes the waiting requests as one batch once `max_batch` queries are waiting or the
oldest has waited `max_wait_ms`, groups the batch's queries by policy and runs one
`backend.judge` call per policy in a single worker thread (the model is not thread-safe,
and the event loop never blocks). While the model works, new requests queue up and form
the next batch. More than `max_queue` waiting queries and a request is refused at once
(`Overloaded`, answered 429) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from api import metrics
from model.engine import Query
from model.policy import Policy
from model.verdict import Verdict

log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """The queue is full: the request was not admitted."""


class ShuttingDown(RuntimeError):
    """The server stopped before the request was judged."""


@dataclass
class _Request:
    queries: list[Query]
    policies: list[Policy]
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return len(self.queries)


class Batcher:
    def __init__(
        self,
        backend,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 10.0,
        max_queue: int = 512,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.backend = backend
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.max_queue = max(1, max_queue)
        self.executor = executor or ThreadPoolExecutor(1, thread_name_prefix="guardian-model")
        self._own_executor = executor is None
        self._queue: deque[_Request] = deque()
        self._waiting = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.model_calls = 0
        self.last_batch_at: float | None = None

    @property
    def waiting(self) -> int:
        """Queries admitted and not yet handed to the model."""
        return self._waiting

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="guardian-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue:
            req = self._queue.popleft()
            if not req.future.done():
                req.future.set_exception(ShuttingDown("the server is shutting down"))
        self._waiting = 0
        metrics.QUEUE_DEPTH.set(0)
        if self._own_executor:
            self.executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, queries: Sequence[Query], policies: Sequence[Policy]) -> asyncio.Future:
        """Queue one request's queries (policies[i] for queries[i]); the future gets the
        verdicts in order. Raises Overloaded when the queue cannot take them."""
        if len(queries) != len(policies):
            raise ValueError("one policy per query")
        if self._task is None or self._task.done():
            raise ShuttingDown("the batcher is not running")
        n = len(queries)
        if self._waiting + n > self.max_queue:
            raise Overloaded(
                f"{self._waiting} queries are waiting for the model (limit "
                f"{self.max_queue}, GUARDIAN_API_MAX_QUEUE); retry later"
            )
        fut = asyncio.get_running_loop().create_future()
        if n == 0:
            fut.set_result([])
            return fut
        self._queue.append(_Request(list(queries), list(policies), fut))
        self._waiting += n
        metrics.QUEUE_DEPTH.set(self._waiting)
        self._wakeup.set()
        return fut

    async def _collect(self) -> list[_Request]:
        """Wait for the next batch: max_batch queries, or the oldest waited max_wait."""
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._queue[0].arrived + self.max_wait_s
        while self._waiting < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except TimeoutError:
                break
        batch: list[_Request] = []
        taken = 0
        while self._queue:
            req = self._queue[0]
            if batch and taken + req.size > self.max_batch:
                break
            self._queue.popleft()
            self._waiting -= req.size
            if req.future.done():  # the client went away (cancelled) before its turn
                continue
            batch.append(req)
            taken += req.size
        metrics.QUEUE_DEPTH.set(self._waiting)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            try:
                await self._judge_batch(loop, batch)
            except asyncio.CancelledError:
                for req in batch:
                    if not req.future.done():
                        req.future.set_exception(ShuttingDown("the server is shutting down"))
                raise
            except Exception as exc:  # noqa: BLE001 - never let one batch kill the loop
                log.exception("batch failed")
                for req in batch:
                    if not req.future.done():
                        req.future.set_exception(exc)

    async def _judge_batch(self, loop, batch: list[_Request]) -> None:
        groups: dict[str, list[tuple[int, int]]] = {}
        policy_of: dict[str, Policy] = {}
        for r, req in enumerate(batch):
            for q, policy in enumerate(req.policies):
                groups.setdefault(policy.key, []).append((r, q))
                policy_of[policy.key] = policy
        metrics.BATCH_SIZE.observe(sum(req.size for req in batch))
        results: list[list[Verdict | None]] = [[None] * req.size for req in batch]
        failed: dict[int, BaseException] = {}
        for key, members in groups.items():
            queries = [batch[r].queries[q] for r, q in members]
            t0 = time.perf_counter()
            try:
                out = await loop.run_in_executor(
                    self.executor, self.backend.judge, queries, policy_of[key]
                )
                if len(out) != len(queries):
                    raise RuntimeError(
                        f"backend returned {len(out)} verdicts for {len(queries)} queries"
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - fails the requests of this group only
                log.exception("guardian failed on a batch of %d", len(queries))
                metrics.QUERIES.labels("error").inc(len(queries))
                for r, _ in members:
                    failed[r] = exc
                continue
            finally:
                self.model_calls += 1
            metrics.MODEL_LATENCY.observe(time.perf_counter() - t0)
            for (r, q), verdict in zip(members, out, strict=True):
                results[r][q] = verdict
        self.batches += 1
        self.last_batch_at = time.time()
        for r, req in enumerate(batch):
            if req.future.done():
                continue
            if r in failed:
                req.future.set_exception(failed[r])
            else:
                req.future.set_result(results[r])
