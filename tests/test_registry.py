"""model.registry: entries and states, promote / rollback, the atomic pointer, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import model.registry as registry_mod
from model.cli import main
from model.registry import ENTRY_FILE, REDIS_KEY, Registry, RegistryError, UnknownVersionError


def add_version(reg: Registry, version: str, **entry) -> Path:
    folder = reg.path(version)
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    if entry:
        reg.register(version, **entry)
    return folder


def states(reg: Registry) -> dict[str, str]:
    return {e.version: e.state for e in reg.list()}


def test_training_keeps_its_import():
    from training.registry import Registry as TrainingRegistry

    assert TrainingRegistry is Registry


def test_register_and_list(tmp_path):
    reg = Registry(tmp_path)
    assert reg.list() == [] and reg.current() is None and reg.next_version() == "v1"
    add_version(reg, "v1", data_hash="sha256:ab", eval={"fx": {"weighted_f1": 0.8}})
    add_version(reg, "v10")
    add_version(reg, "v2", parent="v1", eval="runs/eval/v2")
    (reg.versions / "v3-rejected-1").mkdir()  # ignored, as retrain leaves it
    entries = reg.list()
    assert [e.version for e in entries] == ["v1", "v2", "v10"] and reg.next_version() == "v11"
    assert all(e.state == "candidate" for e in entries)
    assert entries[0].data_hash == "sha256:ab" and entries[0].eval == {"fx": {"weighted_f1": 0.8}}
    assert entries[1].parent == "v1" and entries[1].eval == "runs/eval/v2"
    assert entries[2].created_at  # made up from the folder for versions without an entry
    on_disk = json.loads((reg.path("v1") / ENTRY_FILE).read_text())
    assert set(on_disk) == {
        "version", "state", "parent", "data_hash", "eval", "created_at", "promoted_at"
    }


def test_promote_retires_the_old_current(tmp_path):
    reg = Registry(tmp_path)
    for v in ("v1", "v2", "v3"):
        add_version(reg, v)
    first = reg.promote("v1")
    assert (first.state, first.parent, reg.current()) == ("current", None, "v1")
    assert first.promoted_at
    second = reg.promote("v2")
    assert second.parent == "v1" and reg.current_path() == reg.path("v2")
    assert states(reg) == {"v1": "retired", "v2": "current", "v3": "candidate"}
    assert (tmp_path / "current").read_text() == "v2\n"
    again = reg.promote("v2")  # promoting the current version changes nothing else
    assert again.parent == "v1" and states(reg)["v1"] == "retired"


def test_rollback_goes_to_the_parent_then_the_last_retired(tmp_path):
    reg = Registry(tmp_path)
    add_version(reg, "v1")
    add_version(reg, "v2")
    add_version(reg, "v3", parent="v1")  # trained from v1, promoted after v2
    with pytest.raises(RegistryError, match="no current version"):
        reg.rollback()
    reg.promote("v1")
    with pytest.raises(RegistryError, match="no parent or retired version"):
        reg.rollback()
    reg.promote("v2")
    reg.promote("v3")
    assert reg.rollback().version == "v1"  # v3's parent, not the v2 it replaced
    assert states(reg) == {"v1": "current", "v2": "retired", "v3": "retired"}
    # v1 has no parent: the most recently promoted retired version is next
    assert reg.rollback().version == "v3"
    assert reg.current() == "v3"


def test_unknown_version(tmp_path):
    reg = Registry(tmp_path)
    add_version(reg, "v1")
    with pytest.raises(UnknownVersionError, match=r"no version 'v4'.*versions: v1"):
        reg.promote("v4")
    with pytest.raises(FileNotFoundError):  # what callers of the old registry caught
        reg.promote("../v1")
    assert reg.current() is None


def test_pointer_is_never_half_written(tmp_path, monkeypatch):
    reg = Registry(tmp_path)
    add_version(reg, "v1")
    add_version(reg, "v2")
    reg.promote("v1")
    real_replace = os.replace

    def crash_on_pointer(src, dst):
        if Path(dst).name == "current":
            raise OSError("disk gone")
        return real_replace(src, dst)

    monkeypatch.setattr(registry_mod.os, "replace", crash_on_pointer)
    with pytest.raises(OSError, match="disk gone"):
        reg.promote("v2")
    assert (tmp_path / "current").read_text() == "v1\n" and reg.current() == "v1"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp file removed
    # the pointer moves first, so nothing else changed either
    assert states(reg) == {"v1": "current", "v2": "candidate"}
    monkeypatch.setattr(registry_mod.os, "replace", real_replace)
    reg.promote("v2")
    assert states(reg) == {"v1": "retired", "v2": "current"}


def test_a_crash_after_the_pointer_moved_leaves_right_states(tmp_path, monkeypatch):
    reg = Registry(tmp_path)
    add_version(reg, "v1")
    add_version(reg, "v2")
    reg.promote("v1")

    def crash(entry):
        raise OSError("killed")

    monkeypatch.setattr(reg, "_write_entry", crash)
    with pytest.raises(OSError, match="killed"):
        reg.promote("v2")
    monkeypatch.undo()
    assert json.loads((reg.path("v1") / ENTRY_FILE).read_text())["state"] == "current"
    assert states(reg) == {"v1": "retired", "v2": "current"}


def test_a_stale_pointer_reads_as_no_current(tmp_path):
    reg = Registry(tmp_path)
    add_version(reg, "v1")
    (tmp_path / "current").write_text("v7\n")
    assert reg.current() is None and states(reg) == {"v1": "candidate"}


def test_promote_merge_writes_the_vllm_form(tmp_path, monkeypatch):
    import model.loading as loading

    reg = Registry(tmp_path)
    add_version(reg, "v1")
    calls = []

    def fake_merge(settings, out):
        calls.append((settings.adapter, Path(out)))
        Path(out).mkdir()
        return Path(out)

    monkeypatch.setattr(loading, "merge_adapter", fake_merge)
    reg.promote("v1")
    assert calls == []  # only when asked
    reg.promote("v1", merge=True)
    assert calls == [(str(reg.path("v1")), reg.path("v1") / "merged")]
    full = reg.path("v2")
    full.mkdir()
    (full / "config.json").write_text("{}")
    reg.promote("v2", merge=True)  # a full model folder is served as it is
    assert len(calls) == 1 and reg.current() == "v2"


def test_publish_current(tmp_path, monkeypatch, caplog):
    import redis

    reg = Registry(tmp_path)
    add_version(reg, "v1")
    assert reg.publish_current("") is False
    assert "not published" in caplog.text
    store = {}

    class FakeRedis:
        def set(self, key, value):
            store[key] = value

        def close(self):
            store["closed"] = True

    monkeypatch.setattr(redis.Redis, "from_url", staticmethod(lambda url: FakeRedis()))
    assert reg.publish_current("redis://x") is False  # nothing current yet
    reg.promote("v1")
    assert reg.publish_current("redis://x") is True
    assert store == {REDIS_KEY: "v1", "closed": True}


def test_cli_list_promote_rollback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GUARDIAN_REGISTRY_DIR", str(tmp_path))
    reg = Registry(tmp_path)
    add_version(reg, "v1", data_hash="sha256:0123")
    add_version(reg, "v2", parent="v1")
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("version\tstate") and " v1\tcandidate" in out
    assert main(["model", "promote", "v1"]) == 0
    assert main(["model", "promote", "v2"]) == 0
    assert "promoted v2 (parent v1)" in capsys.readouterr().out
    assert main(["model", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["version"], e["state"]) for e in listed] == [("v1", "retired"), ("v2", "current")]
    assert main(["model", "rollback"]) == 0
    assert "rolled back v2 -> v1" in capsys.readouterr().out and reg.current() == "v1"
    assert main(["model", "promote", "v9"]) == 2
    assert "no version 'v9'" in capsys.readouterr().err
    other = tmp_path / "other"
    assert main(["model", "rollback", "--registry-dir", str(other)]) == 2
    assert "no current version" in capsys.readouterr().err


def test_cli_through_the_installed_entry_point(tmp_path):
    reg = Registry(tmp_path)
    add_version(reg, "v1")
    env = {**os.environ, "GUARDIAN_REGISTRY_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "model.cli", "model", "promote", "v1"]
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    out = subprocess.run(
        [sys.executable, "-m", "model.cli", "model", "list"],
        check=True, capture_output=True, text=True, env=env,
    ).stdout
    assert "*v1\tcurrent" in out


def test_next_version_is_numbered_after_the_serving_one(tmp_path):
    reg = Registry(tmp_path / "reg")
    assert reg.next_version() == "v1"
    assert reg.next_version(after="v3") == "v4"  # empty registry, the shipped v3 serving
    (tmp_path / "reg" / "versions" / "v7").mkdir(parents=True)
    assert reg.next_version(after="v3") == "v8"
    assert reg.next_version(after="unversioned") == "v8"
