"""Loading: special-token slots, resize fallback, adapters on top, clear errors."""

from __future__ import annotations

import pytest

from model.engine import Query
from model.loading import ModelNotFoundError, load_guardian, load_token_map
from model.policy import PolicyStore
from model.settings import GuardianSettings
from tests.tiny_model import build_tiny_guardian


def test_reserved_slots_need_no_resize(tiny_model_dir):
    from transformers import AutoTokenizer

    tokens = load_token_map(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    names = tokenizer.convert_ids_to_tokens(sorted(tokens.all_ids))
    assert all(n.startswith("<unused") for n in names)


def test_base_without_reserved_slots_gets_tokens_added(tmp_path):
    folder = build_tiny_guardian(tmp_path / "plain", reserved_slots=False)
    settings = GuardianSettings(base_model=str(folder), device="cpu", dtype="float32")
    loaded = load_guardian(settings)
    vocab = loaded.tokenizer.get_vocab()
    assert vocab["<|harm|>"] == loaded.tokens.harm
    assert loaded.model.get_input_embeddings().weight.shape[0] >= len(loaded.tokenizer)


def test_adapter_loads_on_top_and_changes_the_model(tiny_settings, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from model.backends.hf import TransformersBackend

    base = AutoModelForCausalLM.from_pretrained(tiny_settings.base_model)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    (adapter / "guardian_model.json").write_text('{"model_id": "tiny-lora", "version": "v7"}')

    policy = PolicyStore().get("default-en")
    query = [Query("q", "how do I kill a python process on linux")]
    plain = TransformersBackend.from_settings(tiny_settings).judge(query, policy)[0]
    with_adapter = tiny_settings.model_copy(update={"adapter": str(adapter)})
    tuned = TransformersBackend.from_settings(with_adapter).judge(query, policy)[0]
    assert (tuned.model_id, tuned.model_version) == ("tiny-lora", "v7")
    assert tuned.unsafe_score != pytest.approx(plain.unsafe_score, abs=1e-6)


def test_missing_model_says_what_to_run(tmp_path):
    with pytest.raises(ModelNotFoundError, match="guardian model prepare"):
        load_guardian(GuardianSettings(cache_dir=tmp_path))
    with pytest.raises(ModelNotFoundError, match="not a Hugging Face model folder"):
        load_guardian(GuardianSettings(base_model=str(tmp_path)))
    with pytest.raises(ValueError, match="not a torch dtype"):
        GuardianSettings(dtype="float7").resolved_dtype()


def test_default_adapter_only_on_the_prepared_base(tmp_path, tiny_model_dir):
    from model.settings import SHIPPED_ADAPTER

    shipped = (SHIPPED_ADAPTER / "adapter_config.json").is_file()
    assert GuardianSettings(cache_dir=tmp_path).resolved_adapter() == (
        SHIPPED_ADAPTER if shipped else None
    )
    # the shipped adapter was trained on the prepared Gemma: another base gets none
    assert GuardianSettings(base_model=str(tiny_model_dir)).resolved_adapter() is None
    assert GuardianSettings(cache_dir=tmp_path, adapter="none").resolved_adapter() is None
    assert GuardianSettings(adapter=str(tmp_path)).resolved_adapter() == tmp_path


def test_merged_adapter_scores_like_the_adapter(tiny_settings, tmp_path):
    """`guardian model merge`: LoRA + trained token rows folded into one folder (for vLLM)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from model.backends.hf import TransformersBackend
    from model.loading import adapter_has_token_deltas, load_token_map, merge_adapter

    base = AutoModelForCausalLM.from_pretrained(tiny_settings.base_model)
    tokens = load_token_map(tiny_settings.base_model)
    peft_model = get_peft_model(
        base,
        LoraConfig(
            r=4,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,
            trainable_token_indices=sorted(tokens.all_ids),
        ),
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "trainable_tokens_delta" in name:
                p.normal_(0, 0.5)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    (adapter / "guardian_model.json").write_text('{"model_id": "tiny-lora", "version": "v8"}')
    assert adapter_has_token_deltas(adapter)

    with_adapter = tiny_settings.model_copy(update={"adapter": str(adapter)})
    merged_dir = merge_adapter(with_adapter, tmp_path / "merged")
    merged = tiny_settings.model_copy(update={"base_model": str(merged_dir), "adapter": "none"})
    policy = PolicyStore().get("default-en")
    queries = [Query("q", "how do I kill a python process on linux"), Query("k", "넌 바보야")]
    a = TransformersBackend.from_settings(with_adapter).judge(queries, policy)
    m = TransformersBackend.from_settings(merged).judge(queries, policy)
    plain = TransformersBackend.from_settings(tiny_settings).judge(queries, policy)
    assert [(v.model_id, v.model_version) for v in m] == [("tiny-lora", "v8")] * 2
    for x, y, z in zip(a, m, plain):
        assert y.unsafe_score == pytest.approx(x.unsafe_score, abs=2e-2)  # merged in bf16
        assert x.unsafe_score != pytest.approx(z.unsafe_score, abs=1e-3)


def test_auto_dtype_is_bf16_only_where_the_hardware_has_it(tmp_path, monkeypatch):
    import torch

    import model.settings as ms

    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    native = tmp_path / "native"
    native.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert not ms.cpu_has_native_bf16(plain)
    assert ms.cpu_has_native_bf16(native)
    assert not ms.cpu_has_native_bf16(tmp_path / "missing")

    monkeypatch.setattr(ms, "cpu_has_native_bf16", lambda: False)
    assert GuardianSettings(device="cpu").resolved_dtype() == torch.float32
    assert GuardianSettings(device="cuda").resolved_dtype() == torch.bfloat16
    assert GuardianSettings(device="cpu", dtype="bfloat16").resolved_dtype() == torch.bfloat16
    monkeypatch.setattr(ms, "cpu_has_native_bf16", lambda: True)
    assert GuardianSettings(device="cpu").resolved_dtype() == torch.bfloat16
