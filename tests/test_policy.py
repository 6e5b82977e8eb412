"""Policies: validation with clear errors, and the same model giving different verdicts."""

from __future__ import annotations

import pytest

from model.engine import Query
from model.policy import PolicyError, PolicyStore, load_policy_file, policy_from_dict
from model.taxonomy import CATEGORY_IDS


def test_builtin_defaults():
    store = PolicyStore()
    assert {"default-ko", "default-en"} <= set(store.ids())
    ko, en = store.get("default-ko"), store.get("default-en")
    assert ko.blocked == frozenset(CATEGORY_IDS)
    assert "uncertain_prediction" not in en.blocked and "crime_advice" in en.blocked
    assert ko.forced_rule("이번 주 로또 번호 예측해줘").name == "lottery-numbers"
    assert ko.forced_rule("오늘 날씨 어때") is None
    assert en.forced_rule("what is the best way to kill myself").name == "suicide-methods"
    with pytest.raises(PolicyError, match="unknown policy 'nope'"):
        store.get("nope")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('id = "x"\nversion = "1"\ncolour = "red"\n', "unknown keys"),
        ('version = "1"\n', "'id' must be"),
        ('id = "x"\nversion = "1"\nblocked = ["crime"]\n', "unknown categories"),
        ('id = "x"\nversion = "1"\nthreshold = 1.5\n', "between 0 and 1"),
        ('id = "x"\nversion = "1"\nblocked = []\nallowed = []\n', "not both"),
        ('id = "x"\nversion = "1"\nresponse_language = "fr"\n', "response_language"),
        ('id = "x"\nversion = "1"\n[[force_harm]]\nregex = "("\n', "does not compile"),
        ('id = "x"\nversion = "1"\n[[force_harm]]\nname = "n"\n', "exactly one"),
        ('id = "x"\nversion = \n', "not valid TOML"),
    ],
)
def test_bad_policy_files_name_file_and_reason(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(PolicyError, match=message) as info:
        load_policy_file(path)
    assert str(path) in str(info.value)


def test_policy_dir_overrides_builtin(tmp_path):
    (tmp_path / "mine.toml").write_text('id = "default-en"\nversion = "7"\nthreshold = 0.9\n')
    store = PolicyStore(tmp_path)
    assert store.get("default-en").version == "7"
    assert store.resolve(str(tmp_path / "mine.toml")).threshold == 0.9
    with pytest.raises(PolicyError, match="does not exist"):
        PolicyStore(tmp_path / "missing")


def test_same_query_different_verdicts_under_two_policies(tiny_backend):
    """No retraining: one model, one query, two policies, two decisions."""
    query = [Query("q1", "삼성전자 주가 전망 알려줘")]
    everything = policy_from_dict({"id": "strict", "version": "1", "threshold": 0.0})
    (strict,) = tiny_backend.judge(query, everything)
    assert strict.label == "unsafe" and strict.category in CATEGORY_IDS
    assert strict.reason == "score"
    allow_it = policy_from_dict(
        {"id": "lenient", "version": "1", "threshold": 0.0, "allowed": [strict.category]}
    )
    (lenient,) = tiny_backend.judge(query, allow_it)
    assert lenient.label == "safe" and lenient.reason == "category_allowed"
    assert lenient.category == strict.category and lenient.response is None
    assert lenient.unsafe_score == pytest.approx(strict.unsafe_score)
    # a force-harm rule takes the safety path even where the score says safe
    forced_policy = policy_from_dict(
        {
            "id": "forced", "version": "1", "threshold": 1.0,
            "force_harm": [{"name": "stocks", "keyword": "주가"}],
        }
    )
    (forced,) = tiny_backend.judge(query, forced_policy)
    assert forced.label == "unsafe" and forced.reason == "forced_harm"
    assert forced.forced_by == "stocks"
    never = policy_from_dict({"id": "never", "version": "1", "threshold": 1.0})
    (calm,) = tiny_backend.judge(query, never)
    assert calm.label == "safe" and calm.reason == "below_threshold"


def test_a_record_without_a_policy_gets_its_languages_default():
    from model.policy import AUTO, PolicyStore

    store = PolicyStore()
    assert store.for_text(None, "What is the most painless way to kill myself?").id == "default-en"
    assert store.for_text(AUTO, "강에 뛰어들면 한번에 죽을까?").id == "default-ko"
    assert store.for_text("default-ko", "plain English text").id == "default-ko"
    mine = PolicyStore(by_language={"ko": "default-en", "en": "default-en"})
    assert mine.for_text(None, "안녕하세요").id == "default-en"


def test_force_harm_rule_carries_its_category():
    p = policy_from_dict({
        "id": "t", "version": "1",
        "force_harm": [{"name": "s", "regex": "kill myself", "category": "self_harm_suicide"}],
    })
    assert p.forced_rule("how to kill myself").category == "self_harm_suicide"
    with pytest.raises(PolicyError, match="unknown category"):
        policy_from_dict({"id": "t", "version": "1",
                          "force_harm": [{"keyword": "x", "category": "nope"}]})


def test_operating_points_pick_the_threshold():
    doc = {
        "id": "t", "version": "1", "operating_point": "strict",
        "operating_points": {
            "strict": {"threshold": 0.3, "dev_precision": 0.8, "dev_recall": 0.9},
            "permissive": {"threshold": 0.7, "dev_precision": 0.95, "dev_recall": 0.7},
        },
    }
    p = policy_from_dict(doc)
    assert p.threshold == 0.3 and p.operating_point == "strict"
    assert p.at("permissive").threshold == 0.7
    with pytest.raises(PolicyError, match="no operating point"):
        p.at("medium")
    with pytest.raises(PolicyError, match="not in operating_points"):
        policy_from_dict({**doc, "operating_point": "medium"})
    with pytest.raises(PolicyError, match="differs"):
        policy_from_dict({**doc, "threshold": 0.5})


def test_builtin_defaults_route_english_suicide_to_self_harm():
    from model.policy import PolicyStore

    store = PolicyStore()
    en = store.get("default-en")
    rule = en.forced_rule("What is the most painless way to kill myself?")
    assert rule is not None and rule.category == "self_harm_suicide"
    ko = store.get("default-ko")
    assert ko.forced_rule("자살 방법 알려줘").category == "self_harm_suicide"
    for p in (en, ko):
        assert set(p.points()) == {"strict", "permissive"}
        assert p.threshold == p.points()[p.operating_point]["threshold"]
