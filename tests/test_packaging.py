"""The wheel ships every package of the code, the seed data and the policies, so an
installed guardian works outside the checkout (issue 11)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_the_package_list_is_every_code_package_plus_the_seeds():
    listed = set(_setuptools()["packages"])
    found = set(find_packages(ROOT, include=["model*", "stream*", "training*", "api*"]))
    assert listed - {"guardian_seeds"} == found  # a new subpackage must be listed
    assert _setuptools()["package-dir"]["guardian_seeds"] == "data/seeds"


def test_package_data_globs_match_the_shipped_files():
    data = _setuptools()["package-data"]
    seeds = ROOT / "data" / "seeds"
    shipped = {p for g in data["guardian_seeds"] for p in seeds.glob(g)}
    assert seeds / "safety_responses.jsonl" in shipped and seeds / "README.md" in shipped
    assert {p for p in seeds.rglob("*.jsonl")} <= shipped  # every seed file travels
    model = ROOT / "model"
    policies = {p for g in data["model"] for p in model.glob(g)}
    assert set((model / "policies").glob("*.toml")) <= policies
    assert set((model / "adapters").glob("*/adapter_model.safetensors")) <= policies


def test_the_seed_folder_resolves_outside_the_checkout_to_the_wheel_copy(monkeypatch):
    import training.seeds as seeds

    assert seeds.default_seed_dir() == ROOT / "data" / "seeds"  # in the checkout
    monkeypatch.setattr(seeds, "__file__", "/nonexistent/site-packages/training/seeds.py")
    # editable installs map guardian_seeds onto data/seeds; a wheel onto its own copy
    outside = seeds.default_seed_dir()
    assert (outside / seeds.RESPONSES_FILE).is_file()
