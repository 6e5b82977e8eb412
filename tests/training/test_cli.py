from __future__ import annotations

import argparse
import json

from training.cli import register

from .fixtures import write_mini_data


def parse(argv):
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command", required=True))
    return p.parse_args(argv)


def test_cli_build_train_eval(tiny_settings, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GUARDIAN_BASE_MODEL", tiny_settings.base_model)
    monkeypatch.setenv("GUARDIAN_DEVICE", "cpu")
    monkeypatch.setenv("GUARDIAN_DTYPE", "float32")
    monkeypatch.setenv("GUARDIAN_MAX_NEW_TOKENS", "4")
    monkeypatch.setenv("GUARDIAN_TRAIN_BATCH_SIZE", "2")
    monkeypatch.setenv("GUARDIAN_TRAIN_MAX_TOKENS", "48")
    data, ds = write_mini_data(tmp_path / "data"), tmp_path / "ds"
    args = parse(["data", "build", "--data-dir", str(data), "--dataset-dir", str(ds)])
    assert args.func(args) == 0
    assert "thin" in capsys.readouterr().out
    reg = tmp_path / "reg"
    monkeypatch.setenv("GUARDIAN_REGISTRY_DIR", str(reg))
    args = parse(["train", "--dataset-dir", str(ds), "--steps", "2", "--register"])
    assert args.func(args) == 0
    assert (reg / "current").read_text().strip() == "v1"
    card = (reg / "versions" / "v1" / "README.md").read_text()
    assert "LoRA" in card and "git" in card
    out = tmp_path / "eval"
    args = parse(
        [
            "eval",
            "--data",
            str(ds),
            "--adapter",
            str(reg / "versions" / "v1"),
            "--out",
            str(out),
            "--limit",
            "3",
        ]
    )
    assert args.func(args) == 0
    res = json.loads((out / "eval.json").read_text())
    assert res["model_version"] == "v1" and "all" in res["datasets"]
