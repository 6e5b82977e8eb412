"""model.resolve: every kind of model reference, and the error for each way one is wrong.

Folders are built in tmp_path from the tiny guardian (tests/tiny_model.py); most adapters are
just an adapter_config.json, since resolving reads metadata and never weights.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from model.loading import MODEL_META_FILE, ModelNotFoundError, load_guardian
from model.prompt import TOKEN_MAP_FILE
from model.registry import Registry
from model.resolve import (
    AdapterBaseMismatchError,
    MissingTokenMapError,
    ModelPathNotFoundError,
    NotAModelError,
    UnknownVersionError,
    resolve_model,
)
from model.settings import SHIPPED_ADAPTER, GuardianSettings


def fake_adapter(folder: Path, base: str | None, meta: dict | None = None, tokens=None) -> Path:
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 4}
    if base is not None:
        config["base_model_name_or_path"] = base
    (folder / "adapter_config.json").write_text(json.dumps(config))
    if meta:
        (folder / MODEL_META_FILE).write_text(json.dumps(meta))
    if tokens is not None:
        shutil.copy(tokens / TOKEN_MAP_FILE, folder / TOKEN_MAP_FILE)
    return folder


def copy_model(src: Path, dst: Path, *, meta: dict | None = None, token_map: bool = True) -> Path:
    shutil.copytree(src, dst)
    if not token_map:
        (dst / TOKEN_MAP_FILE).unlink()
    if meta is not None:
        (dst / MODEL_META_FILE).write_text(json.dumps(meta))
    return dst


@pytest.fixture
def settings(tiny_settings, tmp_path) -> GuardianSettings:
    return tiny_settings.model_copy(update={"registry_dir": str(tmp_path / "reg")})


def test_default_on_another_base_is_the_bare_base(settings, tiny_model_dir):
    r = resolve_model(settings)
    assert (r.kind, r.base_dir, r.adapter_dir, r.weights_dir) == (
        "base", tiny_model_dir, None, tiny_model_dir
    )
    assert r.tokenizer_dir == tiny_model_dir and r.token_map_dir == tiny_model_dir
    assert r.token_map is not None and r.model_id == tiny_model_dir.name
    assert (r.version, r.dtype) == ("unversioned", "float32")
    d = r.describe()
    assert d["kind"] == "base" and d["adapter_dir"] is None and json.dumps(d)
    assert resolve_model(settings, "none").kind == "base"
    assert resolve_model(settings.model_copy(update={"adapter": ""})).kind == "base"


@pytest.mark.skipif(
    not (SHIPPED_ADAPTER / "adapter_config.json").is_file(), reason="no shipped adapter"
)
def test_default_on_the_prepared_base_is_the_shipped_adapter(tmp_path, tiny_model_dir):
    # a stand-in for the prepared Gemma: same folder name, so the adapter's base matches
    copy_model(tiny_model_dir, tmp_path / "cache" / "base" / "gemma-3-270m")
    s = GuardianSettings(cache_dir=tmp_path / "cache", device="cpu", dtype="float32")
    r = resolve_model(s)
    assert (r.kind, r.adapter_dir) == ("adapter", SHIPPED_ADAPTER)
    assert r.base_dir == s.prepared_base_dir and r.weights_dir == s.prepared_base_dir
    assert r.token_map_dir == SHIPPED_ADAPTER and r.version.startswith("v")


def test_adapter_folder(settings, tiny_model_dir, tmp_path):
    a = fake_adapter(tmp_path / "a", str(tiny_model_dir), {"model_id": "g", "version": "v7"})
    r = resolve_model(settings, str(a))
    assert (r.kind, r.adapter_dir, r.weights_dir) == ("adapter", a, tiny_model_dir)
    assert r.tokenizer_dir == tiny_model_dir and r.token_map_dir == tiny_model_dir
    assert (r.model_id, r.version) == ("g", "v7")
    # the adapter's own token map wins; GUARDIAN_MODEL_VERSION overrides the metadata
    b = fake_adapter(tmp_path / "b", None, tokens=tiny_model_dir)
    r = resolve_model(settings.model_copy(update={"adapter": str(b), "model_version": "x"}))
    assert (r.token_map_dir, r.model_id, r.version) == (b, "b", "x")


def test_adapter_base_is_compared_by_name_or_model_id(settings, tiny_model_dir, tmp_path):
    # a hub id or another machine's path ending in the base's folder name is the same base
    a = fake_adapter(tmp_path / "a", f"/elsewhere/{tiny_model_dir.name}/")
    assert resolve_model(settings, str(a)).kind == "adapter"
    base = copy_model(tiny_model_dir, tmp_path / "renamed", meta={"model_id": "tiny-x"})
    s = settings.model_copy(update={"base_model": str(base)})
    assert resolve_model(s, str(fake_adapter(tmp_path / "b", "org/tiny-x"))).kind == "adapter"
    with pytest.raises(AdapterBaseMismatchError, match="trained on base 'gemma-3-270m'") as e:
        resolve_model(settings, str(fake_adapter(tmp_path / "c", "gemma-3-270m")))
    assert "GUARDIAN_BASE_MODEL" in str(e.value)
    assert isinstance(e.value, ModelNotFoundError)


def test_merged_folder(settings, tiny_model_dir, tmp_path):
    m = copy_model(tiny_model_dir, tmp_path / "merged", meta={"model_id": "g", "version": "v8",
                                                               "merged_from": "v8"})
    r = resolve_model(settings, str(m))
    assert (r.kind, r.weights_dir, r.tokenizer_dir, r.token_map_dir) == ("merged", m, m, m)
    assert (r.base_dir, r.adapter_dir, r.version) == (tiny_model_dir, None, "v8")
    # self-contained: no base configured or prepared is needed
    lone = GuardianSettings(cache_dir=tmp_path / "empty", device="cpu", dtype="float32")
    assert resolve_model(lone, str(m)).base_dir == m


def test_plain_hugging_face_folder_is_a_base(settings, tiny_model_dir, tmp_path):
    hf = copy_model(tiny_model_dir, tmp_path / "hf", token_map=False)
    r = resolve_model(settings, str(hf))
    assert (r.kind, r.base_dir, r.weights_dir, r.token_map, r.token_map_dir) == (
        "base", hf, hf, None, None
    )
    assert r.describe()["token_map"] == "assigned at load (bare base)"


def test_registry_versions_and_current(settings, tiny_model_dir):
    reg = Registry(settings.registry_dir)
    for v in ("v1", "v2"):
        fake_adapter(reg.path(v), tiny_model_dir.name, {"model_id": "guardian"})
    with pytest.raises(UnknownVersionError, match="no current version.*guardian model promote"):
        resolve_model(settings, "current")
    reg.promote("v1")
    r = resolve_model(settings, "v2")
    assert (r.kind, r.adapter_dir, r.version) == ("adapter", reg.path("v2"), "v2")
    assert resolve_model(settings, "current").adapter_dir == reg.path("v1")
    assert resolve_model(settings.model_copy(update={"adapter": "current"})).version == "v1"
    # vLLM serves a version's merged copy when promote --merge wrote one
    merged = copy_model(tiny_model_dir, reg.path("v2") / "merged", meta={"version": "v2"})
    vllm = settings.model_copy(update={"backend": "vllm"})
    assert resolve_model(vllm, "v2").weights_dir == merged
    assert resolve_model(settings, "v2").kind == "adapter"


def test_errors_say_what_is_wrong(settings, tiny_model_dir, tmp_path):
    with pytest.raises(ModelPathNotFoundError, match="does not exist"):
        resolve_model(settings, str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAModelError, match="neither a peft adapter"):
        resolve_model(settings, str(tmp_path / "empty"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotAModelError, match="is a file"):
        resolve_model(settings, str(tmp_path / "file"))
    fake_adapter(Registry(settings.registry_dir).path("v1"), None)
    with pytest.raises(UnknownVersionError, match=r"no version 'v9'.*versions: v1"):
        resolve_model(settings, "v9")
    # the base would be loaded first, so a missing base still says what to run
    with pytest.raises(ModelNotFoundError, match="guardian model prepare"):
        resolve_model(GuardianSettings(cache_dir=tmp_path / "c"), "none")
    with pytest.raises(ValueError, match="not a torch dtype"):
        resolve_model(settings.model_copy(update={"dtype": "float7"}))


def test_missing_token_map(settings, tiny_model_dir, tmp_path):
    bare = copy_model(tiny_model_dir, tmp_path / "bare", token_map=False)
    s = settings.model_copy(update={"base_model": str(bare)})
    adapter = fake_adapter(tmp_path / "a", "bare")
    with pytest.raises(MissingTokenMapError, match="has no guardian_tokens.json"):
        resolve_model(s, str(adapter))
    merged = copy_model(tiny_model_dir, tmp_path / "m", meta={"version": "v1"}, token_map=False)
    with pytest.raises(MissingTokenMapError, match="guardian model merge"):
        resolve_model(settings, str(merged))
    assert resolve_model(s, "none").token_map is None  # the bare base assigns at load


def test_load_guardian_follows_the_resolver(settings, tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    reg = Registry(settings.registry_dir)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    peft_model.save_pretrained(reg.path("v1"))
    reg.promote("v1")
    plain = load_guardian(settings)
    loaded = load_guardian(settings, "current")
    assert loaded.resolved.kind == "adapter" and loaded.model_version == "v1"
    assert plain.resolved.kind == "base" and plain.model_version == "unversioned"
    assert loaded.tokens == plain.tokens
    w = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(loaded.model.state_dict()[w], plain.model.state_dict()[w])


def test_vllm_backend_loads_what_the_resolver_says(settings, tiny_model_dir, monkeypatch):
    """No vLLM here: stand-ins record what the backend hands to vLLM."""
    seen: dict = {}

    class LLM:
        def __init__(self, **kw):
            seen["llm"] = kw

    class LoRARequest:
        def __init__(self, name, idx, path):
            seen["lora"] = path

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = LLM, dict
    lora_mod = types.ModuleType("vllm.lora.request")
    lora_mod.LoRARequest = LoRARequest
    for name, mod in {"vllm": fake, "vllm.lora": types.ModuleType("vllm.lora"),
                      "vllm.lora.request": lora_mod}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    from model.backends.vllm import VLLMBackend

    reg = Registry(settings.registry_dir)
    fake_adapter(reg.path("v1"), tiny_model_dir.name, {"model_id": "guardian"})
    s = settings.model_copy(update={"backend": "vllm", "adapter": "v1"})
    b = VLLMBackend(s)
    assert seen["llm"]["model"] == str(tiny_model_dir) and seen["llm"]["enable_lora"]
    assert seen["lora"] == str(reg.path("v1")) and (b.model_id, b.model_version) == (
        "guardian", "v1"
    )
    merged = copy_model(tiny_model_dir, reg.path("v1") / "merged", meta={"version": "v1"})
    seen.clear()
    VLLMBackend(s)
    assert seen["llm"]["model"] == str(merged) and not seen["llm"]["enable_lora"]
    assert "lora" not in seen
