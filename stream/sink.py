"""Flagged-table sink: flagged records -> partitioned Parquet that `datasets` can load.

Layout:
`<flagged_table_dir>/date=YYYY-MM-DD/hour=HH/part-<topic>-p<partition>-<first>-<last>.parquet`
(UTC, from each record's Kafka timestamp, not the wall clock, so a replay lands in the
same folder). The file name is a pure function of (source topic, partition, first offset,
last offset): replaying the same batch overwrites the same file instead of adding a copy.
A batch cut differently after a restart can write overlapping rows under another name;
readers dedupe on `id` (+ `model_version`, `policy_version`). Files are written to a
temporary name in the same folder and `os.replace`d into place, so a crash never leaves a
half-written `.parquet` (temporary files start with `.` and are ignored by readers).

Schema (one row per flagged verdict; `FLAGGED_SCHEMA`):
id string, text string, label string, category string?, unsafe_score float64,
response string?, policy_id string, policy_version string, model_id string,
model_version string, reason string, created_at float64 (unix seconds),
near_threshold bool, language string?, source_topic string, source_partition int32,
source_offset int64, schema_version int32.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stream import metrics
from stream.schemas import FLAGGED_COLUMNS

FLAGGED_SCHEMA = pa.schema([
    ("id", pa.string()), ("text", pa.string()), ("label", pa.string()),
    ("category", pa.string()), ("unsafe_score", pa.float64()), ("response", pa.string()),
    ("policy_id", pa.string()), ("policy_version", pa.string()), ("model_id", pa.string()),
    ("model_version", pa.string()), ("reason", pa.string()), ("created_at", pa.float64()),
    ("near_threshold", pa.bool_()), ("language", pa.string()), ("source_topic", pa.string()),
    ("source_partition", pa.int32()), ("source_offset", pa.int64()),
    ("schema_version", pa.int32()),
])
assert tuple(FLAGGED_SCHEMA.names) == FLAGGED_COLUMNS

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def partition_dir(root: str | Path, ts: float) -> Path:
    t = time.gmtime(ts)
    return Path(root) / f"date={time.strftime('%Y-%m-%d', t)}" / f"hour={t.tm_hour:02d}"


def part_name(topic: str, partition: int, first: int, last: int) -> str:
    return f"part-{_SAFE.sub('_', topic)}-p{partition:04d}-{first:012d}-{last:012d}.parquet"


def write_atomic(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    table = pa.Table.from_pylist(rows, schema=FLAGGED_SCHEMA)
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


class FlaggedSink:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def write(self, rows: list[tuple[dict[str, Any], float]]) -> list[Path]:
        """Write (record, kafka_timestamp) rows; one file per (hour, topic, partition)."""
        groups: dict[tuple[Path, str, int], list[dict[str, Any]]] = defaultdict(list)
        for rec, ts in rows:
            key = (partition_dir(self.root, ts), rec["source_topic"], rec["source_partition"])
            groups[key].append(rec)
        written = []
        for (folder, topic, part), recs in sorted(groups.items(), key=lambda kv: str(kv[0])):
            recs.sort(key=lambda r: r["source_offset"])
            name = part_name(topic, part, recs[0]["source_offset"], recs[-1]["source_offset"])
            written.append(write_atomic(folder / name, recs))
            metrics.FLAGGED_FILES.inc()
        return written
