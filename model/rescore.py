"""Offline re-scoring of a JSONL file of queries: the batch path of `guardian judge`.

Designed for long runs that get interrupted: verdicts are appended and flushed batch by
batch, and a rerun skips every id the output already holds, so it resumes where it
stopped. A bad input line is reported with its line number and never stops the rest.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from model.engine import GuardianBackend, Query
from model.policy import Policy, PolicyError, PolicyStore
from model.verdict import Verdict


@dataclass
class RescoreReport:
    scored: int = 0
    skipped_existing: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "scored": self.scored,
            "skipped_existing": self.skipped_existing,
            "bad_lines": len(self.bad_lines),
        }


@dataclass(frozen=True)
class _Item:
    line: int
    query: Query
    policy: Policy


def existing_ids(output: Path) -> set[str]:
    """Ids already in the output; a torn last line (crash mid-write) is cut off first."""
    if not output.exists():
        return set()
    raw = output.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        output.write_bytes(raw)
    ids = set()
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            ids.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def parse_line(
    lineno: int, raw: str, store: PolicyStore, default: Policy | str
) -> tuple[_Item | None, str | None]:
    """`default` is a policy, or `auto` for the default policy of each line's language."""
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        return None, f"not JSON ({exc.msg})"
    if not isinstance(obj, dict):
        return None, "a line must be a JSON object"
    text = obj.get("text", obj.get("prompt"))
    if not isinstance(text, str) or not text.strip():
        return None, "missing or empty 'text'"
    qid = obj.get("id", f"line-{lineno}")
    if not isinstance(qid, str | int) or isinstance(qid, bool):
        return None, "'id' must be a string or an integer"
    policy = store.for_text(default, text) if isinstance(default, str) else default
    if obj.get("policy") is not None:
        if not isinstance(obj["policy"], str):
            return None, "'policy' must be a policy id"
        try:
            policy = store.get(obj["policy"])
        except PolicyError as exc:
            return None, str(exc)
    return _Item(lineno, Query(str(qid), text), policy), None


def _read_items(
    lines: Iterator[tuple[int, str | None]], store, default, done, report, errors: TextIO
) -> Iterator[_Item]:
    seen: set[str] = set()
    for lineno, raw in lines:
        if raw is None:
            item, error = None, "not valid UTF-8"
        elif not raw.strip():
            continue
        else:
            item, error = parse_line(lineno, raw, store, default)
        if item is not None and item.query.id in seen:
            item, error = None, f"duplicate id {item.query.id!r}"
        if item is None:
            report.bad_lines.append((lineno, error or "invalid"))
            print(f"line {lineno}: {error}", file=errors)
            continue
        seen.add(item.query.id)
        if item.query.id in done:
            report.skipped_existing += 1
            continue
        yield item


def _numbered_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError:
                yield lineno, None


def judged_batches(
    backend: GuardianBackend, items: Iterable[tuple[Query, Policy]], *, batch_size: int = 64
) -> Iterator[list[tuple[Query, Verdict]]]:
    """`(query, policy)` pairs judged `batch_size` at a time, one `judge` call per policy in
    a batch; yields each batch's `(query, verdict)` pairs as soon as it is judged."""
    batch: list[tuple[Query, Policy]] = []

    def run() -> list[tuple[Query, Verdict]]:
        by_policy: dict[str, list[tuple[Query, Policy]]] = {}
        for query, policy in batch:
            by_policy.setdefault(policy.key, []).append((query, policy))
        done = []
        for group in by_policy.values():
            queries = [q for q, _ in group]
            done += zip(queries, backend.judge(queries, group[0][1]), strict=True)
        batch.clear()
        return done

    for pair in items:
        batch.append(pair)
        if len(batch) >= batch_size:
            yield run()
    if batch:
        yield run()


def judge_in_batches(
    backend: GuardianBackend,
    items: Iterable[tuple[Query, Policy]],
    out: TextIO,
    *,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
    annotate: Callable[[Query], dict] | None = None,
) -> int:
    """Judge `(query, policy)` pairs `batch_size` at a time (`judged_batches`), appending
    each verdict as a JSON line to `out` and flushing after every batch (so an interrupted
    run loses at most one batch). Returns the number judged. `on_batch(n)` is called after
    each flush: progress bars and counters. `annotate(query)` returns fields added to that
    query's line (what the caller knows about the record, not the model: the topic
    re-scorer adds `text_chars` and `query_truncated` as the worker's verdicts carry them).
    Also used by the topic re-scorer (stream/rescore_topic.py)."""
    judged = 0
    for done in judged_batches(backend, items, batch_size=batch_size):
        for query, verdict in done:
            out.write(verdict.to_json(**(annotate(query) if annotate else {})) + "\n")
        out.flush()
        judged += len(done)
        if on_batch is not None:
            on_batch(len(done))
    return judged


def rescore_file(
    backend: GuardianBackend,
    input_path: Path,
    output_path: Path,
    *,
    store: PolicyStore,
    default_policy: Policy | str,
    batch_size: int = 64,
    errors: TextIO | None = None,
    progress: bool = True,
) -> RescoreReport:
    report = RescoreReport()
    done = existing_ids(output_path)
    total = sum(1 for _ in input_path.open("rb"))
    # sys.stderr read at call time: a default bound at import keeps whatever stream was
    # current then (a test's capture, closed since)
    errors = errors if errors is not None else sys.stderr
    items = _read_items(_numbered_lines(input_path), store, default_policy, done, report, errors)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with output_path.open("a", encoding="utf-8") as out, tqdm(
        total=total, unit="q", desc="judging", disable=not progress
    ) as bar:

        def on_batch(n: int) -> None:
            report.scored += n
            bar.update(n)

        judge_in_batches(backend, ((i.query, i.policy) for i in items), out,
                         batch_size=batch_size, on_batch=on_batch)
        bar.n = total
        bar.refresh()
    return report
