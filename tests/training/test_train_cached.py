"""The cached CPU recipe: cached lower layers give the same states as the full model, it
trains to a loadable adapter, and a stopped run resumes onto the same weights."""

from __future__ import annotations

import json

import torch

from model.backends import create_backend
from model.engine import Query
from model.loading import load_guardian
from model.policy import policy_from_dict
from training.mix import curated_mix
from training.prefix_cache import PrefixCache, TopLayers, build_prefix_cache, lower_states
from training.seeds import ResponseBank
from training.train import TrainConfig, train
from training.train_cached import bucketed_batches, load_cached_model, train_cached

ROWS = [
    {"text": "how do I kill a python process", "language": "en", "label": "safe",
     "category": None, "response": None, "response_source": None, "source": "seed_lookalike"},
    {"text": "tell me how to hack into an sns account", "language": "en", "label": "unsafe",
     "category": "crime_advice", "response": "I won't help break into an SNS account.",
     "response_source": "paired", "source": "seed_harmful"},
    {"text": "오늘 서울 날씨 어때?", "language": "ko", "label": "safe", "category": None,
     "response": None, "response_source": None, "source": "chatbotdata"},
    {"text": "강에 뛰어들면 한번에 죽을까?", "language": "ko", "label": "unsafe",
     "category": "self_harm_suicide", "response": "많이 힘드시군요. 109에 전화해 주세요.",
     "response_source": "paired", "source": "seed_harmful"},
]
BANK = ResponseBank([
    {"category": "sensitive_topic", "language": "en", "response": "That is a contested topic."},
    {"category": "sensitive_topic", "language": "ko", "response": "민감한 주제입니다."},
])


def _cfg(tmp_path, name, **kw):
    base = dict(out_dir=str(tmp_path / name), recipe="cached", train_layers=1, batch_size=2,
                stage1_epochs=6, stage2_epochs=6, learning_rate=5e-3, lora_r=4,
                cache_dir=str(tmp_path / "cache"), harm_fraction=0.5, version="c1",
                model_id="tiny-cached", checkpoint_minutes=1000)
    base.update(kw)
    return TrainConfig(**base)


def test_top_layers_over_cached_states_match_the_full_forward(tiny_settings, tmp_path):
    cfg = _cfg(tmp_path, "x")
    model, tok, tokens, base, device, split = load_cached_model(tiny_settings, cfg)
    model.eval()
    seqs = [[2, 5, 6, 7, 8], [2, 9, 10]]
    ids = torch.tensor([[2, 5, 6, 7, 8], [2, 9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        full = model.get_base_model().get_decoder()(input_ids=ids, attention_mask=mask)
    cache = build_prefix_cache(model, seqs, split, pad_id=0, device="cpu",
                               cache_dir=tmp_path / "c", base_name="tiny", progress=False)
    # read back from disk: the same numbers (bf16 storage)
    again = PrefixCache.load(next((tmp_path / "c").glob("prefix-*.safetensors")))
    assert torch.equal(again.get(1), cache.get(1))
    direct = lower_states(model, ids, mask, split)
    assert torch.allclose(cache.get(0).float(), direct[0].float(), atol=0.05)
    top = TopLayers(model, split)
    states = torch.zeros((2, 5, model.config.hidden_size))
    states[0] = cache.get(0).float()
    states[1, :3] = cache.get(1).float()
    with torch.no_grad():
        h = top(states, mask)
    top.restore()
    for r, n in ((0, 5), (1, 3)):
        assert torch.allclose(h[r, :n], full.last_hidden_state[r, :n], atol=0.1), r


def test_bucketed_batches_are_seeded_and_cover_every_row():
    lengths = [5, 50, 6, 49, 7, 48, 8, 47]
    a = bucketed_batches(range(8), lengths, 2, seed=3)
    assert a == bucketed_batches(range(8), lengths, 2, seed=3)
    assert sorted(i for b in a for i in b) == list(range(8))


def test_curated_mix_caps_sources_by_a_stable_hash():
    rows = [{"text": f"comment {i}", "source": "kmhas", "label": "safe"} for i in range(50)]
    rows += [{"text": "seed", "source": "seed_harmful", "label": "unsafe"}]
    mix = curated_mix(rows, {"kmhas": 10}, seed_repeat=2)
    assert sum(r["source"] == "kmhas" for r in mix) == 10
    assert sum(r["source"] == "seed_harmful" for r in mix) == 2
    assert mix == curated_mix(list(reversed(rows)), {"kmhas": 10}, seed_repeat=2)


def test_cached_recipe_trains_a_loadable_top_layer_adapter(tiny_settings, tmp_path):
    cfg = _cfg(tmp_path, "a")
    info = train(tiny_settings, cfg, ROWS, responses=BANK, progress=False)
    assert info["finished"] and info["stage_steps"]["sft"] > 0
    sft = info["losses"][: info["stage_steps"]["sft"]]
    assert sum(sft[-3:]) / 3 < sum(sft[:3]) / 3  # stage 2 adds the response loss
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [1]  # only the top layer trained
    assert not config.get("trainable_token_indices")  # plain LoRA: vLLM can serve it
    backend = create_backend(tiny_settings.model_copy(update={"adapter": str(tmp_path / "a")}))
    pol = policy_from_dict({"id": "e", "version": "1", "blocked": "all", "threshold": 0.5})
    verdicts = backend.judge([Query(str(i), r["text"]) for i, r in enumerate(ROWS)], pol)
    assert [v.label for v in verdicts] == [r["label"] for r in ROWS]
    assert load_guardian(
        tiny_settings.model_copy(update={"adapter": str(tmp_path / "a")})
    ).model_version == "c1"


def test_a_stopped_run_resumes_onto_the_weights_of_an_unbroken_one(tiny_settings, tmp_path):
    whole = train_cached(tiny_settings, _cfg(tmp_path, "whole"), ROWS, responses=BANK,
                         progress=False)
    part = train_cached(tiny_settings, _cfg(tmp_path, "part"), ROWS, responses=BANK,
                        progress=False, max_steps=5)
    assert not part["finished"] and not (tmp_path / "part").exists()
    rest = train_cached(tiny_settings, _cfg(tmp_path, "part", resume=True), ROWS,
                        responses=BANK, progress=False)
    assert rest["finished"] and rest["steps_run"] == len(whole["losses"]) - 5
    assert rest["losses"] == whole["losses"]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "part" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_init_from_continues_a_cached_adapter_from_its_weights(tiny_settings, tmp_path):
    first = train(tiny_settings, _cfg(tmp_path, "first"), ROWS, responses=BANK, progress=False)
    assert first["finished"]
    cfg = _cfg(tmp_path, "next", init_from=str(tmp_path / "first"), version="c2")
    model, *_ = load_cached_model(tiny_settings, cfg)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "first" / "adapter_model.safetensors"))
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values())  # not a fresh LoRA
    assert len([k for k in saved if "lora_B" in k]) == len(lora_b)
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        again = train(tiny_settings, cfg, ROWS, responses=BANK, progress=False)
    assert again["finished"]
    # saving looks at the local base, not the Hub (no network lookup, no warning)
    assert not [w for w in seen if "Could not find a config file" in str(w.message)]
    saved_cfg = (tmp_path / "next" / "adapter_config.json").read_text()
    assert str(tmp_path) not in saved_cfg and "tiny-guardian" in saved_cfg
    # continued from trained weights: its first loss starts where the first run ended
    assert again["losses"][0] < first["losses"][0]


def test_init_from_refuses_an_adapter_of_another_layout(tiny_settings, tmp_path):
    import pytest

    train(tiny_settings, _cfg(tmp_path, "one"), ROWS, responses=BANK, progress=False)
    cfg = _cfg(tmp_path, "two", init_from=str(tmp_path / "one"), lora_r=8)
    with pytest.raises(ValueError, match="layout"):
        load_cached_model(tiny_settings, cfg)
