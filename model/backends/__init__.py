"""Backends behind one interface: `judge(queries, policy) -> verdicts`."""

from __future__ import annotations

from model.engine import GuardianBackend
from model.settings import GuardianSettings


def create_backend(settings: GuardianSettings) -> GuardianBackend:
    """Build the backend the settings name; vLLM is imported only when asked for."""
    if settings.backend == "vllm":
        from model.backends.vllm import VLLMBackend

        return VLLMBackend.from_settings(settings)
    from model.backends.hf import TransformersBackend

    return TransformersBackend.from_settings(settings)
