"""Workers follow the registry (stream/follow.py, Pipeline.follow_registry), without Kafka:
the pipeline's methods are called directly on the tiny guardian and a registry in tmp_path.
The end-to-end run against a real broker is in test_services_e2e.py."""

from __future__ import annotations

import asyncio
import logging
import threading

import faust
import pytest
from prometheus_client import REGISTRY

from model.engine import Query
from model.registry import Registry
from stream.app import Pipeline
from stream.follow import RegistryFollower, _default_load
from tests.tiny_model import add_tiny_registry_version


@pytest.fixture
def follow_settings(tiny_settings, tmp_path):
    return tiny_settings.model_copy(update={
        "registry_dir": str(tmp_path / "reg"), "adapter": "current", "follow_registry": True,
        "registry_poll_s": 0.1, "redis_url": "", "flagged_table_dir": str(tmp_path / "fl"),
    })


@pytest.fixture
def registry(follow_settings, tiny_model_dir) -> Registry:
    reg = Registry(follow_settings.registry_dir)
    add_tiny_registry_version(reg, "v1", tiny_model_dir, delta=0.5, promote=True)
    add_tiny_registry_version(reg, "v2", tiny_model_dir, delta=-0.5)
    return reg


def _pipeline(settings) -> Pipeline:
    return Pipeline(faust.App(f"follow-test-{id(settings)}", broker="kafka://localhost:1"),
                    settings)


def _judge(pipeline: Pipeline, text: str = "what is the capital of france"):
    policy = pipeline.policies.for_text("default-en", text)
    return pipeline.backend.judge([Query("q1", text)], policy)[0]


def _info_versions() -> dict[str, float]:
    return {s.labels["version"]: s.value for m in REGISTRY.collect()
            if m.name == "guardian_model_info" for s in m.samples}


def test_worker_switches_to_the_promoted_version(follow_settings, registry):
    async def main():
        p = _pipeline(follow_settings)
        await p.load()  # GUARDIAN_ADAPTER=current: v1
        assert p.backend.model_version == "v1" and _judge(p).model_version == "v1"
        assert _info_versions() == {"v1": 1.0}
        assert await p.follow_registry() is None  # the pointer names the serving version
        registry.promote("v2")
        assert await p.follow_registry() == "v2"
        assert p.backend.model_version == "v2" and _judge(p).model_version == "v2"
        assert _info_versions() == {"v2": 1.0}
        assert p.health()[1]["registry"]["serving"] == "v2"
        assert await p.follow_registry() is None
        registry.rollback()
        assert await p.follow_registry() == "v1" and _judge(p).model_version == "v1"

    asyncio.run(main())


def test_old_version_serves_while_the_new_one_loads(follow_settings, registry):
    """The load runs beside the serving version; the swap waits for the batch in flight."""
    release = threading.Event()
    started = threading.Event()

    def slow_load(settings, version):
        started.set()
        release.wait(30)
        return _default_load(settings, version)

    async def main():
        p = _pipeline(follow_settings)
        await p.load()
        p.follower = RegistryFollower(follow_settings, p.loader_executor, serving="v1",
                                      load=slow_load)
        registry.promote("v2")
        follow = asyncio.create_task(p.follow_registry())
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)
        # a batch meanwhile is judged by v1, in the model thread, while v2 is loading
        loop = asyncio.get_running_loop()
        async with p.batch_lock:
            v = await loop.run_in_executor(p.model_executor, _judge, p)
            assert v.model_version == "v1"
            release.set()
            await asyncio.sleep(0.5)  # v2 may be loaded by now: still no switch mid-batch
            assert p.backend.model_version == "v1"
            v = await loop.run_in_executor(p.model_executor, _judge, p)
            assert v.model_version == "v1"
        assert await asyncio.wait_for(follow, 30) == "v2"
        assert _judge(p).model_version == "v2"

    asyncio.run(main())


def test_failed_load_keeps_serving_and_waits_for_a_change(follow_settings, registry, caplog):
    calls: list[str] = []
    now = [0.0]

    def counting_load(settings, version):
        calls.append(version)
        return _default_load(settings, version)

    bad = registry.path("v3")
    bad.mkdir()
    (bad / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2}')  # no weights

    async def main():
        p = _pipeline(follow_settings)
        await p.load()
        p.follower = RegistryFollower(follow_settings, p.loader_executor, serving="v1",
                                      load=counting_load, retry_after_s=60,
                                      clock=lambda: now[0])
        (registry.root / "current").write_text("v9\n")  # a version that is not there
        with caplog.at_level(logging.WARNING, logger="guardian.stream.registry"):
            assert await p.follow_registry() is None
        assert p.backend.model_version == "v1" and _judge(p).model_version == "v1"
        assert calls == ["v9"]
        assert "could not load registry version v9" in caplog.text
        assert "no version 'v9'" in caplog.text  # the reason
        assert "no version 'v9'" in p.health()[1]["registry"]["last_error"]
        for _ in range(3):  # same pointer: not tried again on every look
            assert await p.follow_registry() is None
        assert calls == ["v9"]
        now[0] = 61.0  # ... but after the back-off
        assert await p.follow_registry() is None
        assert calls == ["v9", "v9"]
        caplog.clear()
        registry.promote("v3")  # the pointer moves: tried at once, fails (bad adapter)
        with caplog.at_level(logging.WARNING, logger="guardian.stream.registry"):
            assert await p.follow_registry() is None
            assert await p.follow_registry() is None
        assert calls == ["v9", "v9", "v3"]
        assert "could not load registry version v3" in caplog.text
        assert _judge(p).model_version == "v1"
        registry.promote("v2")
        assert await p.follow_registry() == "v2"
        assert calls[-1] == "v2" and p.health()[1]["registry"]["last_error"] is None

    asyncio.run(main())


def test_pointer_that_is_not_a_version_is_ignored(follow_settings, registry, caplog):
    async def main():
        p = _pipeline(follow_settings)
        await p.load()
        (registry.root / "current").write_text("../../etc\n")
        with caplog.at_level(logging.WARNING, logger="guardian.stream.registry"):
            assert await p.follow_registry() is None
            assert await p.follow_registry() is None
        assert caplog.text.count("is not a version") == 1
        assert p.backend.model_version == "v1"

    asyncio.run(main())


def test_registry_version_is_the_recorded_version(follow_settings, registry):
    """GUARDIAN_MODEL_VERSION and a folder's own metadata do not rename a registry load."""
    import json

    from model.loading import MODEL_META_FILE
    from model.resolve import resolve_model

    (registry.path("v2") / MODEL_META_FILE).write_text(json.dumps({"version": "v2024-x"}))
    s = follow_settings.model_copy(update={"model_version": "pinned"})
    assert resolve_model(s, "v2").version == "v2"
    assert resolve_model(s, "current").version == "v1"
    assert resolve_model(s, str(registry.path("v2"))).version == "pinned"  # a path is no ref
