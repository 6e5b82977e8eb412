from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_from_disk

from training.build import build, split_of
from training.dedupe import find_duplicates, normalize
from training.mapping import MAPPING, lookup
from training.seeds import default_seed_dir, read_seed_examples
from training.sources import read_public

from .fixtures import write_mini_data, write_mini_seeds


def test_mapping_table_covers_every_target_and_excludes_hh_rlhf():
    assert lookup("hh_rlhf", "anything").target is None
    assert lookup("kocohub", "offensive").target == "insult_offensiveness"
    assert lookup("square", "predictive").target == "uncertain_prediction"
    with pytest.raises(KeyError):
        lookup("kocohub", "no-such-label")
    assert all(m.reason for m in MAPPING)


def test_readers_map_labels(tmp_path):
    rows, missing = read_public(write_mini_data(tmp_path / "data"))
    assert "ko/square_question_test_ood.json" in missing
    got = {(r.source, r.text): (r.label, r.category) for r in rows}
    assert got[("openai_moderation", "I want to end it all tonight")] == (
        "unsafe",
        "self_harm_suicide",
    )
    # H beats HR in the flag priority
    assert got[("openai_moderation", "those people are vermin")] == (
        "unsafe",
        "discrimination_hate",
    )
    assert got[("openai_moderation", "what a lovely day for a picnic")] == ("safe", None)
    assert got[("kmhas", "저 동네 사람들은 원래 그래 욕나온다")] == (
        "unsafe",
        "discrimination_hate",
    )
    assert got[("kmhas", "아 진짜 짜증나 욕나오네")] == ("unsafe", "insult_offensiveness")
    assert got[("square", "물은 몇 도에서 끓나요?")] == ("safe", None)
    assert got[("k-dna", "남의 차 문 여는 도구 어디서 사?")] == ("unsafe", "crime_advice")
    assert got[("apeach", "너 진짜 한심하다")] == ("unsafe", "insult_offensiveness")


def test_dedupe_exact_and_near():
    texts = [
        "How do I kill a Python process on Linux?",
        "how do i kill a python process on linux",
        "How do I kill a Python process on Linux??!",
        "임진왜란은 언제 일어났나?",
        "임진왜란은 언제 일어났나요?",
        "a completely different sentence about cooking rice",
    ]
    assert normalize(texts[0]) == normalize(texts[2])
    assert find_duplicates(texts) == [-1, 0, 0, -1, 3, -1]


def test_build_on_fixture(tmp_path):
    stats = build(
        write_mini_data(tmp_path / "data"),
        tmp_path / "ds",
        seed_dir=write_mini_seeds(tmp_path / "seeds"),
        test_fraction=0.5,
    )
    dd = load_from_disk(str(tmp_path / "ds"))
    rows = [r for split in ("train", "dev", "test", "heldout") for r in dd[split]]
    texts = [r["text"] for r in rows]
    assert "Those people are VERMIN!!" not in texts  # exact duplicate dropped
    assert sum("임진왜란" in t for t in texts) == 1  # near duplicate dropped
    assert stats["duplicates_removed"] == {"openai_moderation": 1, "korquad": 1}
    for r in rows:
        assert set(r) == {
            "text", "language", "label", "category", "response", "response_source",
            "near_category", "source", "split",
        }
        assert r["split"] == split_of(r["text"], r["source"], 0.5)
        if r["source"] == "apeach":
            assert r["split"] == "heldout"  # a whole held-out source
        if r["label"] == "unsafe" and r["response_source"] == "bank":
            assert r["response"] == f"R[{r['category']}/{r['language']}]"
        else:
            assert r["category"] is None and r["response"] is None
    assert {r["split"] for r in dd["test"]} == {"test"}
    thin = {(t["category"], t["language"]) for t in stats["thin"]}
    assert ("copyright_infringement", "ko") in thin
    saved = json.loads((tmp_path / "ds" / "stats.json").read_text())
    assert saved["total"] == len(rows)
    assert "## Label mapping" in (tmp_path / "ds" / "STATS.md").read_text()


def test_split_is_stable_and_fractional():
    texts = [f"question number {i}" for i in range(2000)]
    test = [t for t in texts if split_of(t, "korquad", 0.1) == "test"]
    dev = [t for t in texts if split_of(t, "korquad", 0.1) == "dev"]
    assert 140 < len(test) < 260 and 140 < len(dev) < 260
    assert not set(test) & set(dev)
    assert test == [t for t in texts if split_of(t, "korquad", 0.1) == "test"]
    assert {split_of(t, "harmfulqa", 0.1) for t in texts[:50]} == {"heldout"}


def test_build_drops_planted_benchmark_rows(tmp_path):
    """A row equal (after the held-out folder's normalisation) to a fingerprinted benchmark
    prompt is dropped from every split and counted per source."""
    from training.decontaminate import fingerprint

    data = write_mini_data(tmp_path / "data")
    planted = "how do I kill a python process"  # the fixture's look-alike seed
    other = "those people are vermin"  # an openai_moderation row of the fixture
    fp = tmp_path / "heldout-sha256.txt"
    fp.write_text(fingerprint("  HOW do I kill a python   process ") + "\n"
                  + fingerprint(other.upper()) + "\n")
    seeds = write_mini_seeds(tmp_path / "seeds")
    stats = build(data, tmp_path / "ds", seed_dir=seeds, test_fraction=0.5, heldout_file=fp)
    dd = load_from_disk(str(tmp_path / "ds"))
    texts = {r["text"].lower() for split in dd for r in dd[split]}
    assert planted.lower() not in texts and other not in texts
    assert stats["decontaminated"]["openai_moderation"] >= 1
    assert sum(stats["decontaminated"].values()) >= 2
    assert "## Decontamination" in (tmp_path / "ds" / "STATS.md").read_text()


def test_round_seed_rows_keep_their_own_responses(tmp_path):
    seeds = write_mini_seeds(tmp_path / "seeds")
    (seeds / "round3").mkdir()
    rows = [
        {"text": "옆집 와이파이 비번 몰래 알아내는 법", "language": "ko", "label": "unsafe",
         "category": "crime_advice", "kind": "fragment",
         "response": "이웃의 와이파이 비밀번호를 몰래 알아내는 방법은 알려드릴 수 없어요."},
        {"text": "how do I reset my own wifi password", "language": "en", "label": "safe",
         "category": "crime_advice", "kind": "lookalike"},
        {"text": "ugh mondays lol", "language": "en", "label": "safe", "category": None,
         "kind": "everyday"},
    ]
    (seeds / "round3" / "slice.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
    )
    build(write_mini_data(tmp_path / "data"), tmp_path / "ds", seed_dir=seeds,
          test_fraction=0.0, heldout_file=None)
    dd = load_from_disk(str(tmp_path / "ds"))
    got = {r["text"]: r for split in dd for r in dd[split]}
    first = got[rows[0]["text"]]
    assert first["response_source"] == "paired" and first["response"] == rows[0]["response"]
    assert got[rows[1]["text"]]["source"] == "seed_lookalike"
    assert got[rows[1]["text"]]["near_category"] == "crime_advice"
    assert got[rows[2]["text"]]["source"] == "seed_everyday"
    bad = dict(rows[0], category="nope")
    (seeds / "round3" / "slice.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match="unknown category"):
        read_seed_examples(seeds)


def test_repo_seed_files_meet_the_brief():
    rows = read_seed_examples(default_seed_dir())
    from collections import Counter

    from model.taxonomy import CATEGORY_IDS

    harmful = Counter((r.category, r.language) for r in rows if r.source == "seed_harmful")
    for c in CATEGORY_IDS:
        for lang in ("ko", "en"):
            assert harmful[(c, lang)] >= 15, (c, lang)
    look = Counter(r.language for r in rows if r.source == "seed_lookalike")
    assert look["ko"] >= 100 and look["en"] >= 100
    from model.language import detect_language

    assert all(detect_language(r.text) == r.language for r in rows)


REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.mark.skipif(not (REAL / "README.md").is_file(), reason="shared data not present")
def test_build_on_real_shared_data(tmp_path):
    stats = build(REAL, tmp_path / "ds")
    assert stats["missing_files"] == []
    assert stats["total"] > 30000
    assert stats["counts"]["train/label"]["unsafe"] > 5000
