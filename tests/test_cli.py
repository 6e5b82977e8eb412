"""`guardian judge` as a user runs it: one query, a file with bad lines, resume, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from model.cli import main


@pytest.fixture()
def tiny_env(monkeypatch, tiny_model_dir):
    monkeypatch.setenv("GUARDIAN_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("GUARDIAN_DEVICE", "cpu")
    monkeypatch.setenv("GUARDIAN_DTYPE", "float32")
    monkeypatch.setenv("GUARDIAN_MAX_NEW_TOKENS", "4")


def test_judge_one_query_prints_a_verdict(tiny_env, capsys):
    assert main(["judge", "오늘 서울 날씨 어때?", "--policy", "default-en", "--id", "q9"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["id"] == "q9" and verdict["policy_id"] == "default-en"
    assert verdict["label"] in ("safe", "unsafe") and verdict["language"] == "ko"


def test_rescore_file_reports_bad_lines_and_resumes(tiny_env, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    good = [{"id": f"g{i}", "text": f"question {i}"} for i in range(7)]
    lines = [json.dumps(g) for g in good[:3]]
    lines += [
        "{not json",
        json.dumps({"id": "e1", "text": ""}),
        json.dumps({"id": "e2", "text": "x", "policy": "no-such-policy"}),
        json.dumps(["a list"]),
        json.dumps({"id": "g0", "text": "duplicate id"}),
    ]
    lines += [json.dumps(g) for g in good[3:]]
    lines.append(json.dumps({"text": "no id given", "policy": "default-en"}))
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    src_bytes = src.read_bytes() + b'{"id": "bin", "text": "\xff\xfe"}\n'
    src.write_bytes(src_bytes)
    out = tmp_path / "out.jsonl"

    assert main(["judge", "--input", str(src), "--output", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    for lineno in (4, 5, 6, 7, 8, 14):
        assert f"line {lineno}:" in err
    assert "unknown policy 'no-such-policy'" in err and "duplicate id" in err
    assert "line 14: not valid UTF-8" in err
    verdicts = [json.loads(x) for x in out.read_text().splitlines()]
    ids = [v["id"] for v in verdicts]
    assert sorted(ids) == sorted([g["id"] for g in good] + ["line-13"])
    assert {v["policy_id"] for v in verdicts if v["id"] == "line-13"} == {"default-en"}

    # a crash mid-write leaves a torn last line; a rerun cuts it and scores what is missing
    kept = out.read_text().splitlines()[:4]
    out.write_text("\n".join(kept) + '\n{"id": "g5", "lab')
    assert main(["judge", "--input", str(src), "--output", str(out), "--quiet"]) == 0
    report = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert report == {"scored": 4, "skipped_existing": 4, "bad_lines": 6}
    again = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert sorted(again) == sorted(ids)


def test_clear_errors(tmp_path, monkeypatch, capsys, tiny_env):
    bad = tmp_path / "bad.toml"
    bad.write_text('id = "x"\n')
    assert main(["judge", "hello", "--policy", str(bad)]) == 2
    assert "'version' must be" in capsys.readouterr().err
    assert main(["judge", "--input", str(tmp_path / "none.jsonl"), "--output", "o"]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv("GUARDIAN_BASE_MODEL", "")
    monkeypatch.setenv("GUARDIAN_CACHE_DIR", str(tmp_path / "empty-cache"))
    assert main(["judge", "hello"]) == 2
    assert "guardian model prepare" in capsys.readouterr().err


def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "model.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "judge" in out.stdout and "model" in out.stdout
