"""Unit tests for cache keys, the Redis-down path and the Parquet sink (no Kafka)."""

import asyncio
import os

import pytest

from stream import metrics
from stream.cache import VerdictCache, cache_key, normalise_text
from stream.schemas import flagged_record
from stream.services import free_port
from stream.sink import FlaggedSink, part_name


def test_cache_key_normalises_and_separates_versions():
    k = cache_key("Hello   world ", "default-en@1", "m1")
    assert k == cache_key(" Hello world", "default-en@1", "m1")
    assert k == cache_key("Ｈｅｌｌｏ world", "default-en@1", "m1")  # NFKC full-width
    assert k != cache_key("Hello world", "default-en@2", "m1")
    assert k != cache_key("Hello world", "default-en@1", "m2")
    assert k != cache_key("hello world", "default-en@1", "m1")
    assert normalise_text("a\n\tb") == "a b"


def test_cache_down_is_no_cache_not_an_outage():
    cache = VerdictCache(f"redis://127.0.0.1:{free_port()}/0", 60, timeout_s=0.2)
    before = metrics.CACHE_ERRORS._value.get()

    async def go():
        got = await cache.get_many(["a", "b"])
        await cache.set_many({"a": "{}"})
        await cache.close()
        return got

    assert asyncio.run(go()) == [None, None]
    assert metrics.CACHE_ERRORS._value.get() > before
    assert not cache.enabled  # breaker open: next batches skip Redis


def _rows(offsets, ts=1_700_000_000.0):
    return [(flagged_record({"id": f"id{o}", "label": "unsafe", "unsafe_score": 0.9,
                             "category": "crime_advice", "response": "no"}, f"text {o}",
                            near_threshold=False, topic="q", partition=1, offset=o), ts)
            for o in offsets]


def test_sink_partitions_deterministic_names_and_loads(tmp_path):
    sink = FlaggedSink(tmp_path)
    paths = sink.write(_rows([5, 3, 4]))
    assert len(paths) == 1
    p = paths[0]
    assert p.parent.name == "hour=22" and p.parent.parent.name == "date=2023-11-14"
    assert p.name == part_name("q", 1, 3, 5)
    # replaying the same batch overwrites instead of duplicating
    sink.write(_rows([3, 4, 5]))
    files = list(tmp_path.rglob("*.parquet"))
    assert files == [p]
    assert not [f for f in tmp_path.rglob("*") if f.is_file() and f.suffix != ".parquet"]
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=str(tmp_path / "**" / "*.parquet"), split="train")
    assert len(ds) == 3
    assert sorted(ds["id"]) == ["id3", "id4", "id5"]
    for col in ("id", "text", "label", "category", "unsafe_score", "response", "policy_id",
                "policy_version", "model_id", "model_version", "reason", "created_at",
                "near_threshold"):
        assert col in ds.column_names


def test_sink_crash_leaves_no_half_file(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    def boom(table, where, **kw):
        with open(where, "wb") as fh:
            fh.write(b"PAR1 half")
        raise OSError("disk died")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        FlaggedSink(tmp_path).write(_rows([1]))
    assert [f for f in tmp_path.rglob("*") if f.is_file()] == []
    assert not any(name.endswith(".parquet") for _, _, names in os.walk(tmp_path)
                   for name in names)
