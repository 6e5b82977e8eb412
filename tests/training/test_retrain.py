from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from training.evaluate import EvalExample
from training.registry import Registry
from training.retrain import compare, label_flagged, read_flagged, retrain, traffic_diff

from .test_train_eval import ROWS


def write_flagged(root):
    part = root / "date=2026-11-25" / "hour=07"
    part.mkdir(parents=True)
    table = pa.table(
        {
            "id": ["q1", "q2", "q3"],
            "text": [
                "tell me how to hack into an sns account",
                "오늘 서울 날씨 어때?",
                "unreviewed",
            ],
            "label": ["safe", "unsafe", "unsafe"],
            "category": [None, "crime_advice", "crime_advice"],
            "unsafe_score": [0.4, 0.6, 0.55],
            "response": [None, "x", "x"],
            "policy_id": ["p"] * 3,
            "policy_version": ["1"] * 3,
            "model_id": ["m"] * 3,
            "model_version": ["v1"] * 3,
            "reason": ["score"] * 3,
            "created_at": [1.0, 2.0, 3.0],
            "near_threshold": [True, False, False],
            "some_extra_column": [1, 2, 3],
        }
    )
    pq.write_table(table, part / "part-0.parquet")


def test_read_and_label_flagged(tmp_path):
    write_flagged(tmp_path / "flagged")
    flagged = read_flagged(tmp_path / "flagged")
    assert [f["id"] for f in flagged] == ["q1", "q2", "q3"]
    reviews = {"q1": {"label": "unsafe", "category": "crime_advice"}, "q2": {"label": "safe"}}
    rows, counts = label_flagged(flagged, reviews, None)
    assert [(r["text"][:4], r["label"]) for r in rows] == [("tell", "unsafe"), ("오늘 서", "safe")]
    assert counts == {"reviewed": 2, "teacher": 0, "skipped_unlabelled": 1, "invalid": 0}
    rows, counts = label_flagged(flagged, reviews, lambda t: {"label": "unsafe", "category": "bad"})
    assert counts["invalid"] == 1


def test_compare_rule():
    old = {"a": {"weighted_f1": 0.8, "unsafe_f1": 0.7}}
    assert compare(old, {"a": {"weighted_f1": 0.8, "unsafe_f1": 0.7}}, 0.0) == (True, [])
    ok, why = compare(old, {"a": {"weighted_f1": 0.85, "unsafe_f1": 0.6}}, 0.0)
    assert not ok and "unsafe_f1" in why[0]
    assert compare(old, {"a": {"weighted_f1": 0.79, "unsafe_f1": 0.7}}, 0.02)[0]


def test_retrain_promotes_better_and_refuses_worse(tiny_settings, tmp_path):
    write_flagged(tmp_path / "flagged")
    review = tmp_path / "review.jsonl"
    review.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"id": "q1", "label": "unsafe", "category": "crime_advice"},
                {"id": "q2", "label": "safe"},
            ]
        )
    )
    settings = tiny_settings.model_copy(
        update={
            "registry_dir": str(tmp_path / "reg"),
            "flagged_table_dir": str(tmp_path / "flagged"),
            "review_file": str(review),
            "retrain_base_ratio": 2.0,
            "train_batch_size": 4,
            "learning_rate": 5e-3,
            "lora_r": 4,
        }
    )
    eval_sets = {"fx": [EvalExample(r["text"], r["label"], r["category"]) for r in ROWS]}
    reg = Registry(settings.registry_dir)

    # round 1: no current version -> real eval of the new model, promoted as the first model
    r1 = retrain(settings, base_rows=ROWS, eval_sets=eval_sets, steps=6)
    assert r1["promoted"] and reg.current() == "v1"
    assert set(r1["new_scores"]["fx"]) == {"weighted_f1", "unsafe_f1"}
    assert (reg.path("v1") / "guardian_model.json").is_file()
    # the candidate re-judged the served flagged traffic: q1..q3, all with a served verdict
    diff = json.loads((reg.path("v1") / "traffic_diff.json").read_text())
    assert diff["judged"] == diff["compared"] == 3
    assert r1["traffic_diff"]["judged"] == 3
    flips = r1["traffic_diff"]["safe_to_unsafe"] + r1["traffic_diff"]["unsafe_to_safe"]
    assert flips + diff["unchanged_label"] == 3
    assert diff["labels"]["prior"] == {"safe": 1, "unsafe": 2}  # what the table says was served
    assert "# Re-scoring diff" in (reg.path("v1") / "traffic_diff.md").read_text()

    def scripted(new_version, new_f1):
        def eval_fn(adapter):
            f1 = new_f1 if adapter.name == new_version else 0.7
            return {"fx": {"weighted_f1": f1, "unsafe_f1": f1}}

        return eval_fn

    r2 = retrain(
        settings, base_rows=ROWS, eval_sets=eval_sets, steps=2, eval_fn=scripted("v2", 0.9)
    )
    assert r2["promoted"] and reg.current() == "v2"
    assert json.loads((reg.path("v2") / "guardian_model.json").read_text())["version"] == "v2"

    r3 = retrain(
        settings, base_rows=ROWS, eval_sets=eval_sets, steps=2, eval_fn=scripted("v3", 0.5)
    )
    assert not r3["promoted"] and reg.current() == "v2"
    assert "regression" in r3["reason"] and "0.7000 -> 0.5000" in r3["reason"]
    assert reg.list_versions() == ["v1", "v2"]


def test_first_round_continues_from_the_serving_adapter(tiny_settings, tmp_path):
    """With an empty registry the serving adapter (the shipped guardian) is the old model."""
    write_flagged(tmp_path / "flagged")
    review = tmp_path / "review.jsonl"
    review.write_text(json.dumps({"id": "q1", "label": "unsafe", "category": "crime_advice"}))
    serving = tmp_path / "serving-adapter"
    serving.mkdir()
    settings = tiny_settings.model_copy(
        update={
            "adapter": str(serving),
            "registry_dir": str(tmp_path / "reg"),
            "flagged_table_dir": str(tmp_path / "flagged"),
            "review_file": str(review),
        }
    )
    seen = {}

    def train_fn(settings, cfg, rows, responses=None, progress=False):
        seen["init_from"] = cfg.init_from
        Path(cfg.out_dir).mkdir(parents=True)

    def eval_fn(adapter):
        f1 = 0.5 if adapter.parent.name == "versions" else 0.8
        return {"fx": {"weighted_f1": f1, "unsafe_f1": f1}}

    r = retrain(
        settings, base_rows=ROWS, eval_sets={}, steps=2, train_fn=train_fn, eval_fn=eval_fn,
        judge_fn=lambda adapter: lambda rows: {},
    )
    assert seen["init_from"] == str(serving)
    assert r["old_scores"] == {"fx": {"weighted_f1": 0.8, "unsafe_f1": 0.8}}
    assert not r["promoted"] and "0.8000 -> 0.5000" in r["reason"]
    assert Registry(settings.registry_dir).current() is None


def test_retrain_without_labels_keeps_current(tiny_settings, tmp_path):
    write_flagged(tmp_path / "flagged")
    settings = tiny_settings.model_copy(
        update={
            "registry_dir": str(tmp_path / "reg"),
            "flagged_table_dir": str(tmp_path / "flagged"),
            "review_file": "",
            "teacher_url": "",
        }
    )
    r = retrain(settings, base_rows=ROWS, eval_sets={}, steps=2)
    assert not r["promoted"] and "no labelled flagged examples" in r["reason"]
    assert r["labels"]["skipped_unlabelled"] == 3
    assert Registry(settings.registry_dir).list_versions() == []


def test_reads_the_table_the_stream_sink_writes(tmp_path):
    sink = __import__("pytest").importorskip("stream.sink")
    base = {c: None for c in sink.FLAGGED_COLUMNS}
    rows = [
        {
            **base,
            "id": f"s{i}",
            "text": f"query {i}",
            "label": "unsafe",
            "unsafe_score": 0.9,
            "created_at": 1.0,
            "near_threshold": False,
            "source_topic": "guardian.queries",
            "source_partition": 0,
            "source_offset": i,
            "schema_version": 1,
        }
        for i in range(3)
    ]
    sink.write_atomic(sink.partition_dir(tmp_path, 1764054000.0) / "part-x.parquet", rows)
    (sink.partition_dir(tmp_path, 1764054000.0) / ".part-y.parquet").write_bytes(b"partial")
    got = read_flagged(tmp_path)
    assert [g["id"] for g in got] == ["s0", "s1", "s2"] and got[0]["text"] == "query 0"


def test_since_keeps_recent_flagged_rows_only(tmp_path):
    write_flagged(tmp_path / "flagged")  # created_at 1.0, 2.0, 3.0 in hour 07 of 2026-11-25
    assert [f["id"] for f in read_flagged(tmp_path / "flagged", since=2.0)] == ["q2", "q3"]
    late = 1_795_000_000.0  # 2026-11-18: the partition (2026-11-25) is read, rows filtered
    assert read_flagged(tmp_path / "flagged", since=late) == []
    from training.cli import parse_since

    assert parse_since("24h", now=100_000.0) == 100_000.0 - 86_400
    assert parse_since("2026-11-25T07:00:00Z") == 1_795_590_000.0
    assert parse_since(None) is None


def test_traffic_diff_counts_flips_against_the_served_verdicts():
    served = [
        {"id": "a", "text": "x", "label": "safe", "category": None, "created_at": 1.0},
        {"id": "b", "text": "y", "label": "unsafe", "category": "crime_advice", "created_at": 1.0},
        {"id": "b", "text": "y", "label": "unsafe", "category": "privacy_violation",
         "created_at": 2.0},  # flagged twice: the later verdict is the served one
    ]

    def judge(rows):
        assert sorted(r["id"] for r in rows) == ["a", "b"]
        return {"a": {"label": "unsafe", "category": "insult_offensiveness"},
                "b": {"label": "unsafe", "category": "crime_advice"}}

    diff = traffic_diff(served, judge)
    assert diff["safe_to_unsafe"]["count"] == 1 and diff["unsafe_to_safe"]["count"] == 0
    assert diff["category_changes"]["by_pair"] == {"privacy_violation -> crime_advice": 1}


def test_a_time_budget_stops_training_and_keeps_what_it_learnt(tiny_settings, tmp_path):
    from training.train import TrainConfig, train

    cfg = TrainConfig(out_dir=str(tmp_path / "b"), stage1_steps=10_000, stage2_steps=10_000,
                      batch_size=2, lora_r=4, max_seconds=2.0, version="b1")
    info = train(tiny_settings, cfg, ROWS, progress=False)
    assert info["stopped_by_budget"] and 0 < info["steps_run"] < 20_000
    assert (tmp_path / "b" / "adapter_config.json").is_file()
