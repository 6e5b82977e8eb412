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
