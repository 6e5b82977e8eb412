"""The Faust app: micro-batches from the queries topic to verdicts, at least once.

Flow of one micro-batch (`Pipeline.process`):
validate every record (bad ones -> DLQ, with the reason; a text over max_text_chars is
judged on its first max_text_chars characters) -> Redis lookup -> the misses go to
the guardian in one `decide` call per policy (labels and categories; no decoding), in a
single worker thread so the event loop (and Faust's heartbeats and fetches) never block ->
publish verdicts / responses / flagged / dlq -> wait until Kafka acknowledged every send ->
append flagged rows to the Parquet table -> queue the generate-mode unsafe verdicts
(published with `response: null, response_pending: true`) for the response stage -> only
then ack the input events.

The response stage (`Pipeline.run_responses`, its own task) decodes those responses in the
same model thread whenever no batch's `decide` is waiting for it, and publishes them to the
responses topic; verdicts never wait for responses. The at-least-once guarantee below
covers verdicts: a response still owed when the worker dies is lost (stream/README.md,
"Verdicts before responses": its flagged record carries the text to regenerate it from).

Delivery semantics (why this is at-least-once): the agent iterates
`stream.noack_take(max_batch, within=max_wait_ms)`, which hands out events without acking
them (unlike `take`/`take_events`, whose `finally` acks the buffer even when the batch was
interrupted). We call `stream.ack(event)` only after every output send future resolved
(producer acks=all) and the table file was replaced into place. Faust commits, per partition,
the highest offset below which every event was acked, so a crash or a SIGKILL at any point
before the acks leaves the batch uncommitted and it is consumed again by this worker after a
restart or by another member of the consumer group after a rebalance. Re-delivery produces
duplicate verdicts with the same key (the query id), which the design allows. If publishing
itself fails (broker unreachable) the batch is retried with backoff and never acked until it
succeeds, so nothing is dropped; a retry sends only the outputs Kafka has not acknowledged
yet (`BatchState`: outputs planned once, acks recorded per kind and input offset), so a
worker that stays up publishes each output of an input record once. Records Kafka delivers
again to the same process (a rebalance, a broker restart: offsets acked but not committed
yet) are recognised by their offsets (`Pipeline.fresh`) and acked without being published
again; only a new process (after a crash) repeats work. A backend call that
raises is retried `batch_retries` times with exponential backoff (`retry_backoff_s`), then
the group's queries are judged one by one and only those that fail alone go to the DLQ
(`model error`, with the exception). Graceful shutdown (SIGTERM/SIGINT through `faust.Worker`)
cancels the agent: the in-flight batch is not acked and is handed back to the group; offsets
of already-acked batches are committed on the way out.

Scaling: every worker joins the consumer group `app_id`; more workers (up to the number of
partitions of the queries topic) share the partitions.

Following the registry (GUARDIAN_FOLLOW_REGISTRY=true, best with GUARDIAN_ADAPTER=current):
a background task reads the registry pointer every GUARDIAN_REGISTRY_POLL_S seconds
(stream/follow.py); a new version is loaded in a loader thread while the model thread keeps
judging with the old one, and the backend is swapped under the batch lock, i.e. between two
batches. Each verdict's model_version is the version that judged it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from faust.transport.drivers.aiokafka import Consumer as _KafkaConsumer
from faust.transport.drivers.aiokafka import Producer as _KafkaProducer

from model.policy import Policy, PolicyError, PolicyStore
from model.settings import GuardianSettings
from stream import metrics
from stream.cache import VerdictCache, cache_key
from stream.follow import RegistryFollower
from stream.schemas import (
    MODEL_ERROR,
    UNKNOWN_POLICY,
    QueryMessage,
    Rejection,
    dlq_key,
    dlq_record,
    flagged_record,
    response_record,
    validate_query,
)
from stream.sink import FlaggedSink

log = logging.getLogger("guardian.stream")


def _dumps(obj: Any) -> bytes:
    # "replace": a lone surrogate (from a JSON escape) must not make a record unsendable
    return json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8", "replace")


def _error_text(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


@dataclass
class _Output:
    """One record a batch publishes for one input record."""

    kind: str  # verdict | response | flagged | dlq
    source: tuple[str, int, int]  # the input record: topic, partition, offset
    topic: Any
    key: bytes | None
    value: bytes

    @property
    def ident(self) -> tuple[str, str, int, int]:
        return (self.kind, *self.source)


@dataclass
class BatchState:
    """What the attempts at one micro-batch did, kept across the agent's retries of it.

    The first attempt plans every output (verdicts, responses, flagged, DLQ records, each
    named by its kind and input offset); an attempt that fails while publishing leaves in
    `acked` what Kafka acknowledged, and the next one sends only the rest, so no output is
    published twice for the same input record by this worker.
    """

    outputs: list[_Output] | None = None
    acked: set[tuple[str, str, int, int]] = field(default_factory=set)
    flagged_rows: list[tuple[dict[str, Any], float]] = field(default_factory=list)
    jobs: list[_ResponseJob] = field(default_factory=list)
    sunk: bool = False
    judged: int = 0
    dlq: int = 0
    attempts: int = 0


@dataclass
class _ResponseJob:
    """A published verdict whose generated response the response stage still owes."""

    backend: Any  # the backend that decided it: the response comes from the same version
    item: Any  # model.engine.PendingResponse
    verdict: dict[str, Any]  # as published (response None, response_pending True)
    cache_key: str
    queued_at: float


class Pipeline:
    """Everything one micro-batch goes through; independent of Faust's agent plumbing."""

    def __init__(self, app: faust.App, settings: GuardianSettings, backend=None) -> None:
        self.app = app
        self.settings = settings
        self.backend = backend
        self.policies = PolicyStore.from_settings(settings)
        self.cache = VerdictCache(settings.redis_url, settings.cache_ttl_s)
        self.sink = FlaggedSink(settings.flagged_table_dir)
        self.model_executor = ThreadPoolExecutor(1, thread_name_prefix="guardian-model")
        self.io_executor = ThreadPoolExecutor(1, thread_name_prefix="guardian-sink")
        # a following worker loads a new registry version here, beside the serving one
        self.loader_executor = ThreadPoolExecutor(1, thread_name_prefix="guardian-loader")
        self.follower: RegistryFollower | None = None
        # held for a whole batch: the backend is only swapped between batches
        self.batch_lock = asyncio.Lock()
        self.ready = asyncio.Event()
        self.load_error: str | None = None
        self.batches = 0
        self.last_batch_at: float | None = None
        # the response stage: generate-mode responses, decoded after their verdicts went out
        self.responses: asyncio.Queue[_ResponseJob] = asyncio.Queue(
            max(64, 4 * settings.max_batch))
        self.responses_in_flight = 0
        # decide calls waiting for or running in the model thread; the response stage only
        # submits a decode while this is 0, so verdicts go first
        self._deciding = 0
        self._model_free = asyncio.Event()
        self._model_free.set()
        # per input partition, the span of offsets this process published and acked: a
        # record delivered again (the group rebalanced, the broker restarted, and the last
        # acks were not committed yet) is acked without being published twice
        self._done: dict[tuple[str, int], tuple[int, int]] = {}
        topic = self._out_topic
        self.t_verdicts = topic(settings.topic_verdicts)
        self.t_responses = topic(settings.topic_responses)
        self.t_flagged = topic(settings.topic_flagged)
        self.t_dlq = topic(settings.topic_dlq)

    def _out_topic(self, name: str):
        return self.app.topic(name, key_serializer="raw", value_serializer="raw")

    async def load(self) -> None:
        """Load the guardian in the model thread (it can take a while for a real model)."""
        if self.backend is None:
            from model.backends import create_backend

            loop = asyncio.get_running_loop()
            try:
                self.backend = await loop.run_in_executor(
                    self.model_executor, create_backend, self.settings)
            except Exception as exc:
                self.load_error = f"{type(exc).__name__}: {exc}"
                log.exception("could not load the guardian backend")
                raise
        log.info("guardian backend ready: %s %s", self.backend.model_id,
                 self.backend.model_version)
        metrics.set_serving_model(self.backend.model_id, self.backend.model_version)
        if self.settings.follow_registry and self.follower is None:
            self.follower = RegistryFollower(self.settings, self.loader_executor,
                                             serving=str(self.backend.model_version))
        self.ready.set()

    async def follow_registry(self) -> str | None:
        """One look at the registry pointer; returns the version switched to, if any.

        The load runs in the loader thread while batches keep flowing on the serving
        backend; the swap waits for the batch lock, so it lands between two batches.
        """
        if self.follower is None:
            return None
        found = await self.follower.poll()
        if found is None:
            return None
        version, backend = found
        async with self.batch_lock:
            old, self.backend = self.backend, backend
            self.follower.switched(version)
        metrics.set_serving_model(backend.model_id, backend.model_version)
        log.info("switched from %s to registry version %s",
                    getattr(old, "model_version", None), backend.model_version)
        del old  # the previous version's weights go once no thread holds them
        return version

    def health(self) -> tuple[bool, dict[str, Any]]:
        ok = self.ready.is_set() and self.load_error is None
        return ok, {
            "status": "ok" if ok else ("error" if self.load_error else "starting"),
            "error": self.load_error,
            "model_id": getattr(self.backend, "model_id", None),
            "model_version": getattr(self.backend, "model_version", None),
            "batches": self.batches,
            "last_batch_at": self.last_batch_at,
            "cache": "on" if self.cache.enabled else "off",
            "responses_pending": self.responses.qsize() + self.responses_in_flight,
            "registry": self.follower.status() if self.follower is not None else None,
        }

    # -- records delivered again -------------------------------------------------------
    def fresh(self, events: list) -> list:
        """The events of a batch this process has not published yet.

        Kafka hands a consumer the records after its group's last committed offset again
        after a rebalance (also the one a broker restart causes); the ones this process
        already published, with every output acknowledged, are left out (and acked by the
        agent), so they are not published twice. A new process (after a crash) has no such
        memory: redelivery to it repeats work (at-least-once).
        """
        out = []
        batch: set[tuple[str, int, int]] = set()
        for ev in events:
            m = ev.message
            span = self._done.get((m.topic, m.partition))
            if (span is not None and span[0] <= m.offset <= span[1]) or (
                    (m.topic, m.partition, m.offset) in batch):  # or twice in this batch
                metrics.REDELIVERED.inc()
                continue
            batch.add((m.topic, m.partition, m.offset))
            out.append(ev)
        return out

    def mark_done(self, events: list) -> None:
        """Record that every output of `events` was acknowledged (see `fresh`)."""
        offsets: dict[tuple[str, int], list[int]] = defaultdict(list)
        for ev in events:
            offsets[(ev.message.topic, ev.message.partition)].append(ev.message.offset)
        for tp, offs in offsets.items():
            # the span only ever grows by the next offset, so every offset in it was
            # published by this process; anything else (a gap, a seek) starts a new span
            start, end = self._done.get(tp, (-2, -2))
            for off in sorted(set(offs)):
                if start <= off <= end:
                    continue
                if off == end + 1:
                    end = off
                else:
                    start = end = off
            self._done[tp] = (start, end)

    # -- one batch --------------------------------------------------------------------
    async def process(self, events: list, state: BatchState | None = None) -> None:
        """Judge and publish one micro-batch, all of it with one backend (see batch_lock).

        `state` carries what an earlier attempt at the same batch did (the agent passes the
        same one to every retry): the outputs it planned and which of them Kafka already
        acknowledged; those are not sent again.
        """
        state = BatchState() if state is None else state
        async with self.batch_lock:
            await self._process(events, state)

    async def _process(self, events: list, state: BatchState) -> None:
        t_batch = time.perf_counter()
        if state.outputs is None:  # first attempt, or an earlier one failed before planning
            metrics.BATCH_SIZE.observe(len(events))
            await self._plan(events, state)
        # at-least-once: wait for the broker to acknowledge every output before acking input
        t_send = time.perf_counter()
        await self._publish(state)
        t_sink = time.perf_counter()
        if state.flagged_rows and not state.sunk:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.io_executor, self.sink.write, state.flagged_rows)
            state.sunk = True
        log.debug("batch %d: model+cache %.3fs, send-ack %.3fs, sink %.3fs", len(events),
                  t_send - t_batch, t_sink - t_send, time.perf_counter() - t_sink)

        done = time.time()
        for ev in events:
            ts = ev.message.timestamp
            if ts:
                metrics.E2E_LATENCY.observe(max(0.0, done - ts))
        metrics.QUERIES.labels("judged").inc(state.judged)
        metrics.QUERIES.labels("dlq").inc(state.dlq)
        self._update_lag(events)
        self.batches += 1
        self.last_batch_at = done
        # the verdicts are acknowledged: hand the owed responses over (this waits only when
        # the response stage is a whole queue behind, so memory stays bounded)
        jobs, state.jobs = state.jobs, []
        for job in jobs:
            job.queued_at = time.monotonic()
            await self.responses.put(job)
            metrics.RESPONSES_PENDING.inc()

    async def _plan(self, events: list, state: BatchState) -> None:
        """Validate, look up, judge; fill `state` with every output record of the batch."""
        s = self.settings
        valid: list[tuple[Any, QueryMessage, Policy]] = []
        rejected: list[tuple[Any, Rejection]] = []
        for ev in events:
            result = validate_query(ev.value, max_text_chars=s.max_text_chars,
                                    default_policy=s.default_policy)
            if isinstance(result, Rejection):
                rejected.append((ev, result))
                continue
            try:
                policy = self.policies.for_text(result.policy, result.text)
            except PolicyError as exc:
                rejected.append((ev, Rejection(UNKNOWN_POLICY, str(exc)[:200], result.id)))
                continue
            if result.truncated:
                metrics.TRUNCATED.inc()
            valid.append((ev, result, policy))

        verdicts: list[dict[str, Any] | None] = [None] * len(valid)
        model_version = self.backend.model_version
        keys = [cache_key(q.text, p.key, model_version) for _, q, p in valid]
        cached = await self.cache.get_many(keys)
        misses: dict[str, list[int]] = defaultdict(list)
        now = time.time()
        for i, hit in enumerate(cached):
            if hit is not None and hit.get("label") in ("safe", "unsafe"):
                hit["id"] = valid[i][1].id
                hit["created_at"] = now
                hit["cache_hit"] = True
                verdicts[i] = hit
                metrics.CACHE_HITS.inc()
            else:
                misses[valid[i][2].key].append(i)
                metrics.CACHE_MISSES.inc()

        to_cache: dict[str, str] = {}
        jobs: list[_ResponseJob] = []
        from model.engine import Query

        backend = self.backend
        for idxs in misses.values():
            policy = valid[idxs[0]][2]
            queries = [Query(valid[i][1].id, valid[i][1].text) for i in idxs]
            out, pending, errors = await self._judge_group(backend, queries, policy)
            waiting = {id(p.verdict): p for p in pending}
            for i, verdict, error in zip(idxs, out, errors, strict=True):
                if verdict is None:  # failed alone too: to the DLQ with the reason
                    rejected.append((valid[i][0], Rejection(MODEL_ERROR, error or "",
                                                            valid[i][1].id)))
                    continue
                d = verdict.to_dict()
                d["id"] = valid[i][1].id
                verdicts[i] = d
                item = waiting.get(id(verdict))
                if item is None:
                    to_cache[keys[i]] = json.dumps(d, ensure_ascii=False)
                else:  # cached once complete, by the response stage
                    jobs.append(_ResponseJob(backend, item, d, keys[i], 0.0))
        await self.cache.set_many(to_cache)

        outputs: list[_Output] = []
        flagged_rows: list[tuple[dict[str, Any], float]] = []
        for i, (ev, q, policy) in enumerate(valid):
            v = verdicts[i]
            if v is None:  # model error: already in `rejected`
                continue
            msg = ev.message
            source = (msg.topic, msg.partition, msg.offset)
            key = q.id.encode("utf-8")
            # what the record says about the query itself; the cached verdict stays as the
            # model made it (another record with the same judged text may be shorter)
            v = dict(v, **q.verdict_fields())
            outputs.append(_Output("verdict", source, self.t_verdicts, key, _dumps(v)))
            unsafe = v.get("label") == "unsafe"
            near = (not unsafe) and policy.near_threshold(float(v.get("unsafe_score") or 0.0))
            if unsafe and not v.get("response_pending"):  # pending: the response stage's
                outputs.append(_Output("response", source, self.t_responses, key,
                                       _dumps(response_record(v))))
            if unsafe or near:
                rec = flagged_record(v, q.text, near_threshold=near, topic=msg.topic,
                                     partition=msg.partition, offset=msg.offset)
                outputs.append(_Output("flagged", source, self.t_flagged, key, _dumps(rec)))
                flagged_rows.append((rec, msg.timestamp or time.time()))
            metrics.VERDICTS.labels(v.get("label"), "cache" if v.get("cache_hit") else
                                    "model").inc()
        for ev, rej in rejected:
            msg = ev.message
            rec = dlq_record(rej, ev.value, ev.key, topic=msg.topic, partition=msg.partition,
                             offset=msg.offset, timestamp=msg.timestamp)
            outputs.append(_Output("dlq", (msg.topic, msg.partition, msg.offset), self.t_dlq,
                                   dlq_key(rej, ev.key), _dumps(rec)))
            metrics.DLQ.labels(rej.reason).inc()
        state.outputs = outputs
        state.flagged_rows = flagged_rows
        state.jobs = jobs
        state.judged = sum(v is not None for v in verdicts)
        state.dlq = len(rejected)

    async def _publish(self, state: BatchState) -> None:
        """Send every planned output Kafka has not acknowledged yet and wait for the acks.

        Raises the first failure after all sends issued have settled, so `state.acked` holds
        exactly what the broker acknowledged: a retry sends only the rest.
        """
        todo = [o for o in state.outputs or () if o.ident not in state.acked]
        futures, sent = [], []
        failure: BaseException | None = None
        for out in todo:
            try:
                futures.append(await out.topic.send(key=out.key, value=out.value, force=True))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - settle what was issued, then raise
                failure = exc
                break
            sent.append(out)
        results = await asyncio.gather(*futures, return_exceptions=True)
        for out, result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                failure = failure or result
            else:
                state.acked.add(out.ident)
        if failure is not None:
            raise failure

    async def _judge_group(self, backend, queries, policy):
        """One policy group through the model: bounded retries, then each query alone.

        Returns `(verdicts, pending, errors)` in query order; a query that failed alone too
        has verdict None and its error text (what the DLQ record says).
        """
        s = self.settings
        retries = max(0, int(s.batch_retries))
        backoff = max(0.0, float(s.retry_backoff_s))
        last: Exception | None = None
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(backoff * 2 ** (attempt - 1))
            try:
                out, pending = await self._call_model(backend, queries, policy)
                return out, pending, [None] * len(out)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a model failure must not kill the worker
                last = exc
                metrics.MODEL_FAILURES.labels("batch").inc()
                log.warning("guardian failed on a batch of %d (attempt %d of %d): %s",
                            len(queries), attempt + 1, retries + 1, _error_text(exc),
                            exc_info=attempt == retries)
        if len(queries) == 1:
            log.error("guardian failed on query %r: %s", queries[0].id, _error_text(last))
            return [None], [], [_error_text(last)]
        log.warning("judging the %d queries of the failing batch one by one", len(queries))
        verdicts: list = []
        pending: list = []
        errors: list[str | None] = []
        for q in queries:
            try:
                out, more = await self._call_model(backend, [q], policy)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                metrics.MODEL_FAILURES.labels("single").inc()
                log.error("guardian failed on query %r alone: %s", q.id, _error_text(exc),
                          exc_info=True)
                verdicts.append(None)
                errors.append(_error_text(exc))
                continue
            verdicts.append(out[0])
            pending.extend(more)
            errors.append(None)
        return verdicts, pending, errors

    async def _call_model(self, backend, queries, policy):
        """`(verdicts, pending)` of one backend call, in the model thread."""
        t0 = time.perf_counter()
        if callable(getattr(backend, "decide", None)) and callable(
                getattr(backend, "respond", None)):
            # verdicts now, generated responses later (the response stage)
            out, pending = await self._decide(backend, queries, policy)
        else:
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(self.model_executor, backend.judge, queries,
                                             policy)
            pending = []
        if len(out) != len(queries):
            raise RuntimeError(f"backend returned {len(out)} verdicts for {len(queries)} "
                               "queries")
        metrics.MODEL_LATENCY.observe(time.perf_counter() - t0)
        return out, pending

    async def _decide(self, backend, queries, policy):
        """backend.decide in the model thread, ahead of any response decode not yet started."""
        loop = asyncio.get_running_loop()
        self._deciding += 1
        self._model_free.clear()
        try:
            return await loop.run_in_executor(
                self.model_executor, backend.decide, queries, policy)
        finally:
            self._deciding -= 1
            if self._deciding == 0:
                self._model_free.set()

    # -- the response stage -------------------------------------------------------------
    async def run_responses(self) -> None:
        """Decode and publish the responses of generate-mode unsafe verdicts, forever.

        Takes up to `batch_size` jobs at a time from the queue `_process` fills, decodes them
        in the model thread whenever no batch is waiting for it, publishes one
        `response_record` per job to the responses topic (retrying until Kafka acks), and
        caches the completed verdict. Jobs still here when the worker stops are lost (see
        the README: the flagged record of each carries the text to regenerate from).
        """
        limit = max(1, int(self.settings.batch_size))
        try:
            while True:
                chunk = [await self.responses.get()]
                while len(chunk) < limit and not self.responses.empty():
                    chunk.append(self.responses.get_nowait())
                self.responses_in_flight = len(chunk)
                for group in _response_groups(chunk):
                    try:
                        await self._respond(group)
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # noqa: BLE001 - never stop the stage
                        log.exception("response stage failed on %d responses", len(group))
                    metrics.RESPONSES_PENDING.dec(len(group))
                    self.responses_in_flight -= len(group)
                for _ in chunk:
                    self.responses.task_done()
        except asyncio.CancelledError:
            left = self.responses_in_flight + self.responses.qsize()
            if left:
                ids = [j.item.id for j in list(self.responses._queue)[:10]]  # type: ignore[attr-defined]
                log.warning("stopping with %d responses not published (first queued ids: %s); "
                            "their verdicts say response_pending", left, ids)
            raise

    async def _respond(self, group: list[_ResponseJob]) -> None:
        loop = asyncio.get_running_loop()
        while self._deciding:  # a batch's labels go first
            await self._model_free.wait()
        backend = group[0].backend
        t0 = time.perf_counter()
        failed: str | None = None
        try:
            results = await loop.run_in_executor(
                self.model_executor, backend.respond, [j.item for j in group])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the verdicts are out: say what happened
            log.exception("generating %d responses failed", len(group))
            failed = f"{MODEL_ERROR}: {type(exc).__name__}: {exc}"[:200]
            results = {}
        ms = (time.perf_counter() - t0) * 1000
        to_cache: dict[str, str] = {}
        finals = []
        for j in group:
            response, error = results.get(j.item.id, (None, failed or "no response returned"))
            final = dict(j.verdict, response=response, error=error, response_pending=False,
                         response_language=j.item.response_language)
            timings = dict(final.get("timings_ms") or {})
            timings["generate"] = ms
            final["timings_ms"] = timings
            finals.append(final)
            if failed is None:
                to_cache[j.cache_key] = json.dumps(final, ensure_ascii=False)
        # complete verdicts into the cache first: a repeat of the text is then served whole
        await self.cache.set_many(to_cache)
        delay = 0.5
        while True:  # no input offset to fall back on: retry until the broker acks
            try:
                sends = [await self.t_responses.send(
                    key=str(f["id"]).encode("utf-8"), value=_dumps(response_record(f)),
                    force=True) for f in finals]
                await asyncio.gather(*sends)
                break
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("publishing %d responses failed; retrying in %.1fs",
                              len(finals), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        now = time.monotonic()
        for j in group:
            metrics.RESPONSE_LATENCY.observe(max(0.0, now - j.queued_at))

    def _update_lag(self, events: list) -> None:
        last: dict[Any, int] = {}
        for ev in events:
            last[ev.message.tp] = max(last.get(ev.message.tp, -1), ev.message.offset)
        for tp, offset in last.items():
            try:
                hw = self.app.consumer.highwater(tp)
            except Exception:  # noqa: BLE001
                continue
            if hw is not None:
                metrics.CONSUMER_LAG.labels(str(tp.partition)).set(max(0, hw - offset - 1))


def _response_groups(chunk: list[_ResponseJob]) -> list[list[_ResponseJob]]:
    """Consecutive runs with one backend (a registry switch can fall between two jobs) and
    no id twice (respond answers by id)."""
    groups: list[list[_ResponseJob]] = []
    ids: set[str] = set()
    for job in chunk:
        if groups and groups[-1][0].backend is job.backend and job.item.id not in ids:
            groups[-1].append(job)
        else:
            groups.append([job])
            ids = set()
        ids.add(job.item.id)
    return groups


async def ensure_topics(settings: GuardianSettings) -> list[str]:
    """Create the guardian topics that do not exist yet; returns the ones created.

    Why: a consumer subscribed to a topic that does not exist yet only notices it at the next
    metadata refresh (minutes), so a worker started before the first producer would sit idle.
    Best effort: a broker that refuses (ACLs, already exists) is logged, never fatal.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    names = [settings.topic_queries, settings.topic_verdicts, settings.topic_responses,
             settings.topic_flagged, settings.topic_dlq]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap,
                                request_timeout_ms=10000)
    created: list[str] = []
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            await admin.create_topics([NewTopic(n, settings.topic_partitions,
                                                settings.topic_replication) for n in missing])
            created = missing
    except Exception as exc:  # noqa: BLE001
        log.warning("could not ensure topics %s: %s", names, exc)
    finally:
        try:
            await admin.close()
        except Exception:  # noqa: BLE001
            pass
    return created


async def wait_broker_ready(settings: GuardianSettings, group: str, timeout: float = 60.0) -> None:
    """Create the topics, then wait until each has a leader and the group's coordinator answers.

    Why: on a fresh broker, a worker that joins before `__consumer_offsets` exists and before
    the topics have leaders logs aiokafka ERROR lines (group coordinator not available, topic
    not in metadata) and retries; a first run should show none. Raises TimeoutError with what
    was still missing.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    await ensure_topics(settings)
    names = {settings.topic_queries, settings.topic_verdicts, settings.topic_responses,
             settings.topic_flagged, settings.topic_dlq}
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap,
                                request_timeout_ms=5000)
    await admin.start()
    deadline = time.monotonic() + timeout
    waiting = "topic leaders"
    try:
        while time.monotonic() < deadline:
            try:
                described = await admin.describe_topics(sorted(names))
                led = {t["topic"] for t in described if t.get("error_code", 0) == 0
                       and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])}
                if led != names:
                    waiting = f"topic leaders for {sorted(names - led)}"
                    raise RuntimeError(waiting)
                waiting = f"the coordinator of group {group}"
                await admin.find_coordinator(group)
                return
            except Exception:  # noqa: BLE001 - not ready yet: ask again
                await asyncio.sleep(0.5)
        raise TimeoutError(f"broker not ready after {timeout:.0f}s: waiting for {waiting}")
    finally:
        await admin.close()


class _IdempotentProducer(_KafkaProducer):
    def _settings_extra(self):
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class _CommitOnRevokeConsumer(_KafkaConsumer):
    async def on_partitions_revoked(self, revoked) -> None:
        # Faust forgets the acked offsets of revoked partitions before it commits, so what
        # was acked since the last periodic commit would be judged again by the next owner
        try:
            await self.commit()
        except Exception:  # noqa: BLE001 - a failed commit only means redelivery
            log.warning("committing before a rebalance failed", exc_info=True)
        await super().on_partitions_revoked(revoked)


class GuardianApp(faust.App):
    """faust.App whose producer is idempotent and whose consumer commits on revocation.

    Producer (aiokafka `enable_idempotence`): without it a send the producer retries because
    the broker's answer was lost (seen when the broker restarts mid-stream: the same verdict
    twice, same `created_at`) is written twice; with it the broker keeps one. Faust turns
    idempotence on only in its exactly-once (transactions) mode.

    Consumer: Faust commits acked offsets every `broker_commit_interval`, and at a rebalance
    drops the acked offsets of the partitions it loses before committing; committing first
    keeps the next owner from judging those records again.
    """

    def _new_producer(self):
        if not issubclass(self.transport.Producer, _KafkaProducer):  # another transport
            return super()._new_producer()
        return _IdempotentProducer(self.transport, loop=self.loop, beacon=self.beacon)

    def _new_consumer(self):
        if not issubclass(self.transport.Consumer, _KafkaConsumer):  # another transport
            return super()._new_consumer()
        return _CommitOnRevokeConsumer(
            self.transport, callback=self.topics.on_message, loop=self.transport.loop,
            on_partitions_revoked=self._on_partitions_revoked,
            on_partitions_assigned=self._on_partitions_assigned, beacon=self.beacon)


def create_app(settings: GuardianSettings | None = None, backend=None) -> faust.App:
    """Build the Faust app for `settings` (one app per process; tests build their own)."""
    settings = settings or GuardianSettings()
    datadir = Path(tempfile.gettempdir()) / "guardian-faust" / settings.app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = GuardianApp(
        settings.app_id,
        broker=[f"kafka://{b.strip()}" for b in settings.kafka_bootstrap.split(",")],
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        datadir=str(datadir),
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        producer_acks=-1,
        topic_replication_factor=1,
    )
    pipeline = Pipeline(app, settings, backend)
    app.guardian_pipeline = pipeline  # type: ignore[attr-defined]
    queries = app.topic(settings.topic_queries, key_serializer="raw", value_serializer="raw")
    within = max(settings.max_wait_ms, 1) / 1000.0

    @app.task
    async def startup() -> None:
        runner = await metrics.start_http(settings.metrics_port, pipeline.health)
        ports = [s._server.sockets[0].getsockname()[1] for s in runner.sites  # type: ignore
                 if getattr(s, "_server", None)]
        log.info("metrics and health on port %s (/metrics, /healthz)", ports)
        await pipeline.load()

    @app.task
    async def responses() -> None:
        await pipeline.ready.wait()
        await pipeline.run_responses()

    if settings.follow_registry:
        poll_s = max(float(settings.registry_poll_s), 0.1)

        @app.task
        async def follow_registry() -> None:
            await pipeline.ready.wait()
            log.info("following the registry %s every %.1fs", settings.registry_dir, poll_s)
            while True:
                await asyncio.sleep(poll_s)
                try:
                    await pipeline.follow_registry()
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - never stop following, never stop serving
                    log.exception("checking the registry pointer failed")

    @app.agent(queries, concurrency=1)
    async def judge(stream):
        await pipeline.ready.wait()
        async for events in stream.noack_take(settings.max_batch, within=within):
            delay = 0.5
            state = BatchState()  # shared by the retries: acknowledged outputs are not resent
            todo = pipeline.fresh(events)  # not the ones this process published already
            while todo:
                try:
                    await pipeline.process(todo, state)
                    break
                except asyncio.CancelledError:
                    raise  # shutdown: not acked, handed back to the group
                except Exception:  # noqa: BLE001 - never crash on input; never drop it
                    state.attempts += 1
                    metrics.BATCH_RETRIES.inc()
                    planned = len(state.outputs) if state.outputs is not None else 0
                    log.exception("batch of %d failed (attempt %d, %d of %d outputs "
                                  "acknowledged); retrying in %.1fs", len(events),
                                  state.attempts, len(state.acked), planned, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
            pipeline.mark_done(todo)
            for ev in events:
                await stream.ack(ev)

    return app
