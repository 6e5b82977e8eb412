from __future__ import annotations

import pytest

from training import metrics


def test_classification_report_exact_numbers():
    # 4 unsafe (3 caught), 6 safe (1 false alarm)
    y_true = ["unsafe"] * 4 + ["safe"] * 6
    y_pred = [
        "unsafe",
        "unsafe",
        "unsafe",
        "safe",
        "unsafe",
        "safe",
        "safe",
        "safe",
        "safe",
        "safe",
    ]
    r = metrics.classification_report(y_true, y_pred)
    assert r["confusion"] == {"safe": {"safe": 5, "unsafe": 1}, "unsafe": {"safe": 1, "unsafe": 3}}
    assert r["unsafe"]["precision"] == pytest.approx(0.75)
    assert r["unsafe"]["recall"] == pytest.approx(0.75)
    assert r["unsafe"]["f1"] == pytest.approx(0.75)
    assert r["safe"]["precision"] == pytest.approx(5 / 6)
    assert r["safe"]["recall"] == pytest.approx(5 / 6)
    assert r["weighted"]["f1"] == pytest.approx(0.4 * 0.75 + 0.6 * 5 / 6)
    assert r["accuracy"] == pytest.approx(0.8)
    assert r["fpr_safe"] == pytest.approx(1 / 6)
    assert r["unsafe_f1"] == r["unsafe"]["f1"]


def test_degenerate_cases_do_not_divide_by_zero():
    r = metrics.classification_report(["safe", "safe"], ["safe", "safe"])
    assert r["unsafe"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["safe"]["f1"] == 1.0 and r["fpr_safe"] == 0.0
    with pytest.raises(ValueError):
        metrics.confusion(["safe"], [])


def test_threshold_sweep_best_threshold_and_ap():
    y = ["unsafe", "unsafe", "safe", "unsafe", "safe"]
    s = [0.9, 0.8, 0.7, 0.4, 0.1]
    sweep = metrics.threshold_sweep(y, s, [0.05, 0.5, 0.75, 0.85])
    by_t = {r["threshold"]: r for r in sweep}
    assert by_t[0.05]["recall"] == 1.0 and by_t[0.05]["precision"] == pytest.approx(0.6)
    assert by_t[0.05]["fpr_safe"] == 1.0
    assert by_t[0.5]["precision"] == pytest.approx(2 / 3) and by_t[0.5]["recall"] == pytest.approx(
        2 / 3
    )
    assert by_t[0.75]["precision"] == 1.0 and by_t[0.75]["recall"] == pytest.approx(2 / 3)
    best = metrics.best_threshold(sweep)
    assert best["threshold"] == 0.75 and best["f1"] == pytest.approx(0.8)
    # AP = 1*(1/3) + 1*(1/3) + (3/4)*(1/3)
    assert metrics.average_precision(y, s) == pytest.approx(2 / 3 + 0.25)


def test_category_recall():
    r = metrics.category_recall(
        ["unsafe", "unsafe", "unsafe", "safe"],
        ["crime_advice", "crime_advice", "self_harm_suicide", None],
        ["unsafe", "safe", "unsafe", "unsafe"],
        ["crime_advice", None, "crime_advice", "privacy_violation"],
    )
    assert r["crime_advice"]["recall"] == 0.5 and r["crime_advice"]["category_accuracy"] == 0.5
    assert r["self_harm_suicide"]["recall"] == 1.0
    assert r["self_harm_suicide"]["category_accuracy"] == 0.0
    assert metrics.percentile([1, 2, 3, 4], 0.5) == pytest.approx(2.5)
