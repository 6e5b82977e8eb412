"""Backends behind one interface: `judge(queries, policy) -> verdicts`."""

from __future__ import annotations

from model.engine import GuardianBackend
from model.settings import GuardianSettings


def create_backend(settings: GuardianSettings, ref: str | None = None) -> GuardianBackend:
    """Build the backend the settings name; vLLM is imported only when asked for.

    `ref` loads that model reference instead of GUARDIAN_ADAPTER (model/resolve.py), e.g. a
    registry version "v3": how a worker following the registry loads a new version.
    """
    if ref is not None:
        settings = settings.model_copy(update={"adapter": str(ref)})
    if settings.backend == "vllm":
        from model.backends.vllm import VLLMBackend

        return VLLMBackend.from_settings(settings)
    from model.backends.hf import TransformersBackend

    return TransformersBackend.from_settings(settings)
