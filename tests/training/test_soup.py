"""`guardian soup`: the soup's weight deltas are the weighted mean of the ingredients'."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model.engine import Query
from model.policy import PolicyStore
from training.soup import SoupError, soup


def _adapter(settings, path, layers, seed, bump, version):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM


    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(settings.base_model)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                     layers_to_transform=layers, init_lora_weights=False)
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(bump)
    model.save_pretrained(path)
    shutil.copy(Path(settings.base_model) / "guardian_tokens.json", path)
    (path / "guardian_model.json").write_text(json.dumps({"model_id": "t", "version": version}))
    return path


def _merged_weights(settings, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(settings.base_model)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


@pytest.fixture(scope="module")
def ingredients(tiny_settings, tmp_path_factory):
    d = tmp_path_factory.mktemp("soup")
    a = _adapter(tiny_settings, d / "a", [0, 1], 1, 0.3, "va")
    b = _adapter(tiny_settings, d / "b", [1], 2, -0.2, "vb")  # layer 0 untouched by b
    return d, a, b


def test_soup_is_the_weighted_mean_of_the_deltas(tiny_settings, ingredients):
    import torch

    d, a, b = ingredients
    out = soup([a, b], d / "ab", weights=[0.25, 0.75], version="vab")
    wa, wb, ws = (_merged_weights(tiny_settings, p) for p in (a, b, out))
    from transformers import AutoModelForCausalLM

    w0 = AutoModelForCausalLM.from_pretrained(tiny_settings.base_model).state_dict()
    changed = 0
    for k in w0:
        want = w0[k] + 0.25 * (wa[k] - w0[k]) + 0.75 * (wb[k] - w0[k])
        assert torch.allclose(ws[k], want, atol=1e-5), k
        changed += not torch.allclose(ws[k], w0[k])
    assert changed >= 3  # q and v of both layers moved (layer 0 by a alone)
    meta = json.loads((out / "guardian_model.json").read_text())
    assert meta["method"] == "lora-soup" and [i["version"] for i in meta["ingredients"]] == [
        "va", "vb"]
    assert json.loads((out / "adapter_config.json").read_text())["layers_to_transform"] == [0, 1]


def test_a_soup_weighted_on_one_ingredient_judges_like_it(tiny_settings, ingredients):
    from model.backends.hf import TransformersBackend

    d, a, b = ingredients
    only_a = soup([a, b], d / "a-only", weights=[1.0, 0.0], version="v-a")
    policy = PolicyStore().get("default-en")
    q = [Query("q", "how do I kill a python process on linux")]

    def score(adapter):
        s = tiny_settings.model_copy(update={"adapter": str(adapter)})
        return TransformersBackend.from_settings(s).judge(q, policy)[0]

    va, vs = score(a), score(only_a)
    assert vs.unsafe_score == pytest.approx(va.unsafe_score, abs=1e-5)
    assert vs.model_version == "v-a"


def test_unlike_adapters_are_refused_with_the_field(tiny_settings, ingredients, tmp_path):
    d, a, b = ingredients
    c = tmp_path / "c"
    shutil.copytree(b, c)
    cfg = json.loads((c / "adapter_config.json").read_text())
    cfg["r"] = 8
    (c / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(SoupError, match="'r'"):
        soup([a, c], tmp_path / "x")
    with pytest.raises(SoupError, match="at least two"):
        soup([a], tmp_path / "y")
