"""Audited recall: weights of sampled strata, per-language thresholds, and clear errors."""

from __future__ import annotations

import json

import pytest

from training.audit import audit_suite, audited_recall, load_audit


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_sampled_stratum_counts_by_its_weight(tmp_path):
    rows = [
        {"text": "a", "judged": "H"},  # read in full, weight 1
        {"text": "b", "judged": "H", "weight": 3.0},  # one read row standing for three
        {"text": "c", "judged": "B"},
    ]
    _write(tmp_path / "a.jsonl", rows)
    audit = load_audit(tmp_path / "a.jsonl")
    scores = {"a": [0.9, "crime_advice"], "b": [0.1, None], "c": [0.6, "crime_advice"]}
    r = audited_recall(audit, scores, 0.5)
    assert r["harmful"] == {"rows_read": 2, "estimated_rows": 4.0, "flagged": 0.25}
    assert r["benign"]["flagged"] == 1.0 and r["gray"]["flagged"] is None


def test_bad_rows_and_unscored_texts_are_named(tmp_path):
    _write(tmp_path / "bad.jsonl", [{"text": "a", "judged": "maybe"}])
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_audit(tmp_path / "bad.jsonl")
    with pytest.raises(KeyError, match="no score"):
        audited_recall([{"text": "zz", "judged": "H", "weight": 1.0}], {}, 0.5)


def test_each_suite_model_at_its_own_point(tmp_path):
    _write(tmp_path / "a.jsonl", [{"text": "q", "judged": "H", "language": "en"}])
    suite = tmp_path / "s"
    suite.mkdir()
    pts = {m: {"en": {"strict": {"threshold": t}}} for m, t in (("x", 0.3), ("y", 0.7))}
    (suite / "suite.json").write_text(json.dumps(
        {"candidate": "x", "operating_points": pts["x"], "operating_points_by_model": pts}))
    for m in ("x", "y"):
        (suite / f"scores-{m}.json").write_text(json.dumps({"q": [0.5, "crime_advice"]}))
    res = audit_suite(tmp_path / "a.jsonl", suite)
    assert res["x"]["harmful"]["flagged"] == 1.0 and res["y"]["harmful"]["flagged"] == 0.0
