"""The evaluation suite end to end on the tiny model: sets, floor rows, dev thresholds."""

from __future__ import annotations

import json

from datasets import Dataset, DatasetDict

from training.suite import choose_points, figures, predict, run_suite

COLS = ("text", "language", "label", "category", "response", "response_source",
        "near_category", "source", "split")


def _rows(split, source, n, label, lang, category=None):
    word = "해킹" if lang == "ko" else "hack"
    return [
        {"text": f"{split} {source} {word} {label} {i}", "language": lang, "label": label,
         "category": category, "response": None, "response_source": None,
         "near_category": None, "source": source, "split": split}
        for i in range(n)
    ]


def _dataset(path):
    parts = {}
    for split in ("train", "dev", "test", "heldout"):
        src = "harmfulqa" if split == "heldout" else "seed_harmful"
        rows = (_rows(split, src, 6, "unsafe", "en", "crime_advice")
                + _rows(split, "seed_lookalike", 4, "safe", "en")
                + _rows(split, "korquad", 4, "safe", "ko")
                + _rows(split, "kmhas", 4, "unsafe", "ko", "insult_offensiveness"))
        parts[split] = Dataset.from_dict({c: [r[c] for r in rows] for c in COLS})
    DatasetDict(parts).save_to_disk(str(path))


def test_suite_writes_every_table(tiny_settings, tmp_path):
    _dataset(tmp_path / "ds")
    res = run_suite(tiny_settings, str(tmp_path / "ds"), {"cand": "none"}, str(tmp_path / "r"),
                    candidate="cand", responses=4, progress=False)
    assert {"heldout/harmfulqa", "test/seed_harmful", "all/ko", "all/en"} <= set(res["sets"])
    assert set(res["sets"]["all/en"]) == {"cand", "probe"}
    en = res["sets"]["all/en"]["cand"]
    assert en["policy"]["n"] == en["model"]["n"] == 20  # test + held-out English rows
    assert en["model"]["n_lookalike"] == 8
    assert set(res["operating_points"]["ko"]) == {"strict", "permissive"}
    md = (tmp_path / "r" / "EVAL.md").read_text()
    assert "| heldout/harmfulqa | cand |" in md and "| heldout/harmfulqa | probe |" in md
    assert (tmp_path / "r" / "pr_curves.png").stat().st_size > 1000
    scores = json.loads((tmp_path / "r" / "scores-cand.json").read_text())
    assert len(scores) == 54  # dev + test + held-out texts (18 each), each scored once
    assert res["responses"]["n"] == 4


def test_policy_mode_counts_only_blocked_categories_as_truth():
    from model.policy import policy_from_dict
    from training.suite import Row

    pol = policy_from_dict({"id": "p", "version": "1", "allowed": ["sensitive_topic"],
                            "threshold": 0.5})
    rows = [Row("a", "unsafe", "sensitive_topic", "en", "s", "harmful"),
            Row("b", "unsafe", "crime_advice", "en", "s", "harmful"),
            Row("c", "safe", None, "en", "s", "lookalike")]
    book = {"a": [0.9, "sensitive_topic"], "b": [0.9, "crime_advice"], "c": [0.7, "crime_advice"]}
    yt, yp, *_ = predict(book, rows, lambda r: pol, "policy")
    assert yt == ["safe", "unsafe", "safe"] and yp == ["safe", "unsafe", "unsafe"]
    f = figures(yt, yp, [0.9, 0.9, 0.7], [r.category for r in rows], [None, "crime_advice",
                "crime_advice"], rows)
    assert f["fpr_lookalike"] == 1.0 and f["unsafe"]["recall"] == 1.0
    pts = choose_points(book, rows, "en", {"strict": 0.5})
    assert pts["strict"]["threshold"] > 0.7  # the look-alike at 0.7 must stay below it


def test_each_model_is_measured_at_its_own_dev_point(tiny_settings, tmp_path):
    """Two models that rank every row right on different score scales: each must get its
    own dev threshold and full recall; at the other's threshold "b" would catch nothing."""
    from datasets import load_from_disk

    _dataset(tmp_path / "ds")
    out = tmp_path / "r"
    out.mkdir()
    ds = load_from_disk(str(tmp_path / "ds"))
    rows = [r for split in ("dev", "test", "heldout") for r in ds[split]]
    for name, (hi, lo) in {"a": (0.9, 0.1), "b": (0.08, 0.02)}.items():
        book = {r["text"]: [hi if r["label"] == "unsafe" else lo, r["category"]] for r in rows}
        (out / f"scores-{name}.json").write_text(json.dumps(book))
    res = run_suite(tiny_settings, str(tmp_path / "ds"), {"a": "none", "b": "none"}, str(out),
                    candidate="a", probe=False, responses=0, progress=False)
    by = res["operating_points_by_model"]
    assert by["a"]["en"]["strict"]["threshold"] == 0.11
    assert by["b"]["en"]["strict"]["threshold"] == 0.03
    assert res["operating_points"] == by["a"]
    for model in ("a", "b"):
        for mode in ("model", "policy"):
            assert res["sets"]["heldout/harmfulqa"][model][mode]["unsafe"]["recall"] == 1.0
        assert res["sets"]["all/en"][model]["model"]["fpr_lookalike"] == 0.0
    md = (out / "EVAL.md").read_text()
    assert "| b | en | 0.03 (" in md
