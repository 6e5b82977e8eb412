"""Re-scoring a time or offset range of the queries topic, and the diff against the verdicts
the worker already published: `guardian rescore --topic ...` (stream/cli.py).

The topic is read directly: the partitions are assigned, each start and stop offset is
found with `offsets_for_times` (or given as offsets) and seeked to; no consumer group is
joined and nothing is committed, so the worker's group is untouched. Each record goes
through `stream.schemas.validate_query` and the worker's policy choice; the invalid ones
are counted and listed with the reason, the valid ones are judged with
`model.rescore.judge_in_batches` (the file re-scorer's batching) by the model `--model`
names. The output folder holds:

- `verdicts.jsonl`  the new verdicts, appended and flushed batch by batch;
- `invalid.jsonl`   one line per record that could not be judged: where it is and why;
- `diff.json`, `diff.md`  the new verdicts against the last prior verdict per id read from
  the verdicts topic over the queries' time span plus a margin: label flips both ways,
  unsafe counts per category, category changes, each with examples;
- `state.json`      the run's arguments and the resolved offsets of every partition.

A rerun with the same folder reads the same offsets from `state.json`, skips every id
already in `verdicts.jsonl` (a torn last line is cut first) and rewrites the diff; a rerun
with other arguments (topic, range, model, policy) is refused rather than mixing two runs.

Ranges are half-open: `--from` / `--from-offset` inclusive, `--to` / `--to-offset`
exclusive. Times are ISO-8601 (UTC when no zone is given) or epoch seconds; they select by
each record's Kafka timestamp (the offsets are looked up `--skew` seconds wider on both
sides and the records then filtered by timestamp, so slightly out-of-order timestamps are
still found). A query id that occurs more than once in the range is judged
once, from its last record (what the last prior verdict was made from).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.engine import Query
from model.policy import Policy, PolicyError, PolicyStore
from model.verdict_diff import diff_markdown, diff_verdicts, parse_time_ms
from stream.schemas import UNKNOWN_POLICY, Rejection, validate_query

STATE_FILE = "state.json"
VERDICTS_FILE = "verdicts.jsonl"
INVALID_FILE = "invalid.jsonl"
DIFF_JSON = "diff.json"
DIFF_MD = "diff.md"
#: Characters of query text kept in a diff example.


class RescoreTopicError(ValueError):
    """A request that cannot be served (bad range, missing topic, a different earlier run)."""


# --- arguments ---------------------------------------------------------------------------


def parse_time(value: str) -> int:
    """ISO-8601 (UTC when no zone is given) or epoch seconds -> epoch milliseconds."""
    try:
        return parse_time_ms(value)
    except ValueError as exc:
        raise RescoreTopicError(str(exc)) from None


def parse_offsets(value: str) -> dict[int | None, int]:
    """`N` (every partition) -> {None: N}; `P:N,P:N` -> {P: N, ...}."""
    out: dict[int | None, int] = {}
    try:
        if ":" not in value:
            out[None] = int(value)
        else:
            for part in value.split(","):
                p, _, n = part.strip().partition(":")
                if int(p) in out:
                    raise RescoreTopicError(f"partition {p} given twice in {value!r}")
                out[int(p)] = int(n)
    except ValueError as exc:
        if isinstance(exc, RescoreTopicError):
            raise
        raise RescoreTopicError(
            f"offsets {value!r}: give N (all partitions) or P:N,P:N (per partition)"
        ) from None
    if any(n < 0 for n in out.values()) or any(p is not None and p < 0 for p in out):
        raise RescoreTopicError(f"offsets {value!r}: partitions and offsets must be >= 0")
    return out


@dataclass(frozen=True)
class RangeSpec:
    """What to read: any of a start time / offsets and an end time / offsets."""

    from_ms: int | None = None
    to_ms: int | None = None
    from_offsets: dict[int | None, int] | None = None
    to_offsets: dict[int | None, int] | None = None

    def __post_init__(self) -> None:
        if self.from_ms is not None and self.from_offsets is not None:
            raise RescoreTopicError("give --from or --from-offset, not both")
        if self.to_ms is not None and self.to_offsets is not None:
            raise RescoreTopicError("give --to or --to-offset, not both")
        if self.from_ms is not None and self.to_ms is not None and self.to_ms <= self.from_ms:
            raise RescoreTopicError("--to must be later than --from")

    def named_partitions(self) -> set[int] | None:
        """The partitions a per-partition offset spec restricts the read to (None: all)."""
        named = {p for spec in (self.from_offsets, self.to_offsets) if spec for p in spec
                 if p is not None}
        return named or None

    def to_dict(self) -> dict[str, Any]:
        def offsets(spec):
            return None if spec is None else {("*" if p is None else str(p)): n
                                              for p, n in sorted(spec.items(), key=str)}
        return {"from_ms": self.from_ms, "to_ms": self.to_ms,
                "from_offsets": offsets(self.from_offsets), "to_offsets": offsets(self.to_offsets)}


def plan_ranges(
    spec: RangeSpec,
    partitions: Iterable[int],
    begin: dict[int, int],
    end: dict[int, int],
    from_lookup: dict[int, int | None] | None = None,
    to_lookup: dict[int, int | None] | None = None,
) -> dict[int, tuple[int, int]]:
    """[start, stop) offsets per partition, clamped to [begin, end] of each partition.

    `from_lookup` / `to_lookup`: offsets_for_times of spec.from_ms / spec.to_ms (None where
    the partition has no record at or after that time: nothing before the end)."""
    named = spec.named_partitions()
    plan: dict[int, tuple[int, int]] = {}
    for p in sorted(partitions):
        if named is not None and p not in named:
            continue
        lo, hi = begin[p], end[p]
        if spec.from_offsets is not None:
            start = spec.from_offsets.get(p, spec.from_offsets.get(None, lo))
        elif spec.from_ms is not None:
            found = (from_lookup or {}).get(p)
            start = hi if found is None else found
        else:
            start = lo
        if spec.to_offsets is not None:
            stop = spec.to_offsets.get(p, spec.to_offsets.get(None, hi))
        elif spec.to_ms is not None:
            found = (to_lookup or {}).get(p)
            stop = hi if found is None else found
        else:
            stop = hi
        start = min(max(start, lo), hi)
        stop = min(max(stop, start), hi)
        plan[p] = (start, stop)
    if named is not None and named - set(plan):
        raise RescoreTopicError(f"partitions {sorted(named - set(plan))} do not exist")
    return plan


# --- reading Kafka -----------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    timestamp: int  # ms
    key: bytes | None
    value: bytes | None


async def _consumer(bootstrap: str):
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    return consumer


async def _partitions(consumer, topic: str) -> list:
    from aiokafka import TopicPartition

    # every topic's metadata (no auto-creation of a mistyped name); aiokafka's public
    # topics() drops the partitions and partitions_for_topic() knows only assigned topics
    cluster = await consumer._client.fetch_all_metadata()
    parts = cluster.partitions_for_topic(topic)
    if not parts:
        raise RescoreTopicError(f"topic {topic!r} does not exist on the broker")
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def _offsets_for(consumer, tps: list, ms: int) -> dict[int, int | None]:
    found = await consumer.offsets_for_times({tp: ms for tp in tps})
    return {tp.partition: (None if v is None else v.offset) for tp, v in found.items()}


async def _read(consumer, topic: str, plan: dict[int, tuple[int, int]],
                stall_s: float = 30.0) -> list[Record]:
    """Every record of `topic` in plan's [start, stop) per partition, in offset order."""
    from aiokafka import TopicPartition

    tps = {p: TopicPartition(topic, p) for p, (a, b) in plan.items() if b > a}
    if not tps:
        return []
    consumer.assign(list(tps.values()))
    for p, tp in tps.items():
        consumer.seek(tp, plan[p][0])
    out: list[Record] = []
    pending = set(tps)
    last_progress = time.monotonic()
    while pending:
        batch = await consumer.getmany(*[tps[p] for p in pending], timeout_ms=500)
        for tp, msgs in batch.items():
            stop = plan[tp.partition][1]
            for m in msgs:
                if m.offset < stop:
                    out.append(Record(tp.partition, m.offset, m.timestamp, m.key, m.value))
            if msgs:
                last_progress = time.monotonic()
        for p in list(pending):  # position, not the last offset: compaction/transaction gaps
            if await consumer.position(tps[p]) >= plan[p][1]:
                pending.discard(p)
                consumer.pause(tps[p])
        if pending and time.monotonic() - last_progress > stall_s:
            raise RescoreTopicError(
                f"no records from {topic} partitions {sorted(pending)} for {stall_s:.0f} s "
                "before their stop offsets")
    return out


async def _read_queries(bootstrap: str, topic: str, spec: RangeSpec,
                        plan: dict[int, tuple[int, int]] | None, skew_ms: int):
    consumer = await _consumer(bootstrap)
    try:
        if plan is None:
            tps = await _partitions(consumer, topic)
            begin = {tp.partition: o for tp, o in (await consumer.beginning_offsets(tps)).items()}
            end = {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
            # `skew_ms` wider on both sides, then filtered by timestamp (select_queries):
            # offsets_for_times finds the first offset at or after a time, so a record whose
            # timestamp is a little out of order (producer clocks) would be missed otherwise
            fl = tl = None
            if spec.from_ms is not None:
                fl = await _offsets_for(consumer, tps, max(spec.from_ms - skew_ms, 0))
            if spec.to_ms is not None:
                tl = await _offsets_for(consumer, tps, spec.to_ms + skew_ms)
            plan = plan_ranges(spec, begin, begin, end, fl, tl)
        return plan, await _read(consumer, topic, plan)
    finally:
        await consumer.stop()


async def _read_verdicts(bootstrap: str, topic: str, from_ms: int, to_ms: int) -> list[Record]:
    consumer = await _consumer(bootstrap)
    try:
        try:
            tps = await _partitions(consumer, topic)
        except RescoreTopicError:
            return []  # no verdicts topic yet: every id is "no prior verdict"
        begin = {tp.partition: o for tp, o in (await consumer.beginning_offsets(tps)).items()}
        end = {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
        spec = RangeSpec(from_ms=from_ms, to_ms=to_ms)
        plan = plan_ranges(spec, begin, begin, end, await _offsets_for(consumer, tps, from_ms),
                           await _offsets_for(consumer, tps, to_ms))
        return await _read(consumer, topic, plan)
    finally:
        await consumer.stop()


# --- validation, prior verdicts, diff (pure) ---------------------------------------------


@dataclass
class Invalid:
    partition: int
    offset: int
    timestamp: int
    reason: str
    detail: str
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"partition": self.partition, "offset": self.offset,
                "timestamp_ms": self.timestamp, "id": self.id, "reason": self.reason,
                "detail": self.detail}


@dataclass
class Selection:
    """The records of a range, sorted into what gets judged and what cannot be."""

    valid: dict[str, tuple[Query, Policy, Record]] = field(default_factory=dict)
    #: per valid id, the fields its verdict gets beside the model's (as the worker's do)
    record_fields: dict[str, dict] = field(default_factory=dict)
    invalid: list[Invalid] = field(default_factory=list)
    out_of_time: int = 0
    duplicates: int = 0


def select_queries(
    records: Iterable[Record], *, store: PolicyStore, max_text_chars: int, default_policy: str,
    policy: Policy | None = None, from_ms: int | None = None, to_ms: int | None = None,
) -> Selection:
    """Validate like the worker does; `policy` overrides every record's own; the last record
    of an id wins; records outside [from_ms, to_ms) (timestamps out of order) are left out."""
    sel = Selection()
    for rec in sorted(records, key=lambda r: (r.timestamp, r.partition, r.offset)):
        if (from_ms is not None and rec.timestamp < from_ms) or (
                to_ms is not None and rec.timestamp >= to_ms):
            sel.out_of_time += 1
            continue
        result = validate_query(rec.value, max_text_chars=max_text_chars,
                                default_policy=default_policy)
        if not isinstance(result, Rejection):
            try:
                chosen = policy or store.for_text(result.policy, result.text)
            except PolicyError as exc:
                result = Rejection(UNKNOWN_POLICY, str(exc)[:200], result.id)
        if isinstance(result, Rejection):
            sel.invalid.append(Invalid(rec.partition, rec.offset, rec.timestamp, result.reason,
                                       result.detail, result.id))
            continue
        if result.id in sel.valid:
            sel.duplicates += 1
            del sel.valid[result.id]  # re-inserted last: dict order = order of last records
        sel.valid[result.id] = (Query(result.id, result.text), chosen, rec)
        sel.record_fields[result.id] = result.verdict_fields()
    return sel


def last_verdicts(records: Iterable[Record], ids: set[str] | None = None
                  ) -> tuple[dict[str, dict], int]:
    """The last verdict per id (offset order within a partition, else Kafka timestamp), and
    how many records could not be read as a verdict."""
    best: dict[str, tuple[Record, dict]] = {}
    unreadable = 0
    for rec in records:
        try:
            v = json.loads(rec.value)
            vid = str(v["id"])
            if v.get("label") not in ("safe", "unsafe"):
                raise ValueError("no label")
        except (TypeError, ValueError, KeyError, UnicodeDecodeError):
            unreadable += 1
            continue
        if ids is not None and vid not in ids:
            continue
        old = best.get(vid)
        if old is None:
            best[vid] = (rec, v)
            continue
        o = old[0]
        later = rec.offset > o.offset if rec.partition == o.partition else (
            rec.timestamp, rec.partition) >= (o.timestamp, o.partition)
        if later:
            best[vid] = (rec, v)
    return {vid: v for vid, (_, v) in best.items()}, unreadable


# --- the run -----------------------------------------------------------------------------


@dataclass
class TopicRescoreReport:
    read: int = 0
    #: Records of the range (read minus those whose timestamp is outside it).
    records: int = 0
    judged: int = 0
    skipped_existing: int = 0
    invalid: int = 0
    duplicates: int = 0
    out_of_time: int = 0
    prior_verdicts: int = 0
    resumed: bool = False
    invalid_reasons: dict[str, int] = field(default_factory=dict)
    diff: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        keys = ("read", "records", "judged", "skipped_existing", "invalid", "duplicates",
                "out_of_time", "prior_verdicts", "resumed", "invalid_reasons")
        d = {k: getattr(self, k) for k in keys}
        d["safe_to_unsafe"] = self.diff.get("safe_to_unsafe", {}).get("count", 0)
        d["unsafe_to_safe"] = self.diff.get("unsafe_to_safe", {}).get("count", 0)
        d["category_changes"] = self.diff.get("category_changes", {}).get("count", 0)
        return d


def _read_jsonl(path: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                v = json.loads(line)
                out[str(v["id"])] = v
            except (ValueError, KeyError, TypeError):
                continue
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def rescore_topic(
    settings, out_dir: str | Path, spec: RangeSpec, *, topic: str | None = None,
    verdicts_topic: str | None = None, model: str | None = None, policy: str | None = None,
    margin_s: float = 600.0, skew_s: float = 60.0, batch_size: int = 64, examples: int = 10,
    progress: bool = True, backend=None, errors=sys.stderr,
) -> TopicRescoreReport:
    """Read the range, judge what is not yet in out_dir, write the diff. `backend`: an already
    built backend (tests); otherwise `create_backend(settings, model)` once something needs
    judging."""
    from tqdm import tqdm

    from model.rescore import existing_ids, judge_in_batches

    topic = topic or settings.topic_queries
    verdicts_topic = verdicts_topic or settings.topic_verdicts
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = PolicyStore.from_settings(settings)
    forced = store.resolve(policy) if policy else None
    args = {"topic": topic, "verdicts_topic": verdicts_topic, "range": spec.to_dict(),
            "model": model, "policy": policy, "policy_key": forced.key if forced else None}
    report = TopicRescoreReport()

    state_path = out / STATE_FILE
    plan = None
    state: dict[str, Any] = {}
    if state_path.exists():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if state.get("args") != args:
            raise RescoreTopicError(
                f"{out} holds a run with other arguments ({state.get('args')}); "
                "use another folder or remove it")
        plan = {int(p): (int(a), int(b)) for p, (a, b) in state["partitions"].items()}
        report.resumed = True
    plan, records = asyncio.run(_read_queries(settings.kafka_bootstrap, topic, spec, plan,
                                              int(skew_s * 1000)))
    state = {"args": args, "partitions": {str(p): list(r) for p, r in plan.items()},
             "started_at": state.get("started_at", time.time()), "complete": False,
             "model": state.get("model")}
    _write_atomic(state_path, json.dumps(state, indent=2) + "\n")

    sel = select_queries(records, store=store, max_text_chars=settings.max_text_chars,
                         default_policy=settings.default_policy, policy=forced,
                         from_ms=spec.from_ms, to_ms=spec.to_ms)
    report.read = len(records)
    report.records = len(records) - sel.out_of_time
    report.invalid = len(sel.invalid)
    report.duplicates = sel.duplicates
    report.out_of_time = sel.out_of_time
    report.invalid_reasons = dict(Counter(i.reason for i in sel.invalid))
    _write_atomic(out / INVALID_FILE, "".join(json.dumps(i.to_dict(), ensure_ascii=False) + "\n"
                                              for i in sel.invalid))
    for i in sel.invalid[:20]:
        print(f"{topic}[{i.partition}]@{i.offset}: {i.reason}: {i.detail}", file=errors)

    verdicts_path = out / VERDICTS_FILE
    done = existing_ids(verdicts_path)
    todo = [(q, p) for vid, (q, p, _) in sel.valid.items() if vid not in done]
    report.skipped_existing = len(sel.valid) - len(todo)
    if todo:
        if backend is None:
            from model.backends import create_backend

            backend = create_backend(settings, model)
        state["model"] = {"ref": model, "model_id": backend.model_id,
                          "model_version": backend.model_version}
        with verdicts_path.open("a", encoding="utf-8") as fh, tqdm(
            total=len(todo), unit="q", desc="judging", disable=not progress
        ) as bar:
            report.judged = judge_in_batches(
                backend, todo, fh, batch_size=batch_size, on_batch=bar.update,
                annotate=lambda q: sel.record_fields[q.id])

    new = {vid: v for vid, v in _read_jsonl(verdicts_path).items() if vid in sel.valid}
    prior: dict[str, dict] = {}
    if sel.valid:
        stamps = [rec.timestamp for _, _, rec in sel.valid.values()]
        margin = int(margin_s * 1000)
        vrecs = asyncio.run(_read_verdicts(settings.kafka_bootstrap, verdicts_topic,
                                           max(min(stamps) - margin, 0),
                                           max(stamps) + margin + 1))
        prior, _ = last_verdicts(vrecs, set(sel.valid))
    report.prior_verdicts = len(prior)
    texts = {vid: q.text for vid, (q, _, _) in sel.valid.items()}
    diff = diff_verdicts(new, prior, texts=texts, examples=examples)
    report.diff = diff
    summary = report.to_dict()
    _write_atomic(out / DIFF_JSON, json.dumps({"summary": summary, **diff}, indent=2,
                                              ensure_ascii=False) + "\n")
    header = {"topic": topic, "verdicts topic": verdicts_topic,
              "model": (state.get("model") or {}).get("model_version") or model or "settings",
              "policy": policy or "each record's own", "records read": report.records,
              "invalid records": report.invalid}
    _write_atomic(out / DIFF_MD, diff_markdown(diff, header))
    state.update(complete=True, finished_at=time.time(), summary=summary)
    _write_atomic(state_path, json.dumps(state, indent=2) + "\n")
    return report
