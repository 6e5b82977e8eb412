"""Shared fixtures: the tiny guardian for mechanics, the real prepared base for integration."""

from __future__ import annotations

import pytest

from model.settings import GuardianSettings
from tests.tiny_model import build_tiny_guardian


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_guardian(tmp_path_factory.mktemp("tiny-guardian"))


@pytest.fixture(scope="session")
def tiny_settings(tiny_model_dir, tmp_path_factory) -> GuardianSettings:
    return GuardianSettings(
        base_model=str(tiny_model_dir),
        cache_dir=tmp_path_factory.mktemp("cache"),
        device="cpu",
        dtype="float32",
        batch_size=4,
        max_new_tokens=8,
    )


@pytest.fixture(scope="session")
def tiny_backend(tiny_settings):
    from model.backends.hf import TransformersBackend

    return TransformersBackend.from_settings(tiny_settings)
