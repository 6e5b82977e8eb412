"""`guardian soup`: one LoRA adapter that is the weighted mean of several (a "model soup").

Two fine-tunes of the same base that disagree on many rows (v4 and v6 disagree on a third
of the held-out HarmfulQA rows they miss) often average to a model better than either
(Wortsman et al. 2022, "Model soups"). Averaging the LoRA factors A and B separately would
not average the weight deltas; stacking them does: for deltas B_i A_i with weights w_i,

    sum_i w_i B_i A_i = [B_1 ... B_n] @ [w_1 A_1; ...; w_n A_n]

which is one LoRA of rank sum(r_i). With lora_alpha scaled by the same factor the scale
alpha / r stays that of the ingredients. A layer one ingredient does not adapt counts as a
zero delta. The result is one adapter, served like any other (one forward pass).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_SAME = (
    "peft_type", "r", "lora_alpha", "use_rslora", "use_dora", "bias", "base_model_name_or_path"
)


class SoupError(ValueError):
    """The adapters cannot be averaged into one; the message says which field differs."""


def soup(adapters: list[str | Path], out_dir: str | Path, *, weights: list[float] | None = None,
         version: str = "") -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    from model.loading import MODEL_META_FILE
    from model.prompt import TOKEN_MAP_FILE
    from training.train import git_commit

    paths = [Path(a) for a in adapters]
    if len(paths) < 2:
        raise SoupError("a soup needs at least two adapters")
    weights = list(weights) if weights else [1.0 / len(paths)] * len(paths)
    if len(weights) != len(paths):
        raise SoupError(f"{len(weights)} weights for {len(paths)} adapters")
    configs = [json.loads((p / ADAPTER_CONFIG).read_text()) for p in paths]
    for key in _SAME:
        values = {json.dumps(c.get(key)) for c in configs}
        if len(values) > 1:
            raise SoupError(f"adapters differ in {key!r}: {sorted(values)}")
    if configs[0].get("peft_type") != "LORA" or configs[0].get("rank_pattern") or configs[0].get(
            "alpha_pattern"):
        raise SoupError("only plain LoRA adapters (no rank or alpha patterns) can be averaged")
    token_maps = {(p / TOKEN_MAP_FILE).read_text() for p in paths}
    if len(token_maps) > 1:
        raise SoupError(f"adapters use different special-token ids ({TOKEN_MAP_FILE})")

    tensors = [load_file(str(p / ADAPTER_WEIGHTS)) for p in paths]
    modules = sorted({k[: -len(".lora_A.weight")] for t in tensors for k in t
                      if k.endswith(".lora_A.weight")})
    extra = [k for t in tensors for k in t if ".lora_A." not in k and ".lora_B." not in k]
    if extra:
        raise SoupError(f"adapters carry more than LoRA factors, e.g. {extra[0]}")
    r = configs[0]["r"]
    merged = {}
    for m in modules:
        a_key, b_key = f"{m}.lora_A.weight", f"{m}.lora_B.weight"
        ref = next(t for t in tensors if a_key in t)
        a_shape, b_shape = ref[a_key].shape, ref[b_key].shape
        a_parts, b_parts = [], []
        for t, w in zip(tensors, weights):
            if a_key in t:
                a_parts.append(t[a_key] * w)
                b_parts.append(t[b_key])
            else:
                a_parts.append(torch.zeros(a_shape, dtype=ref[a_key].dtype))
                b_parts.append(torch.zeros(b_shape, dtype=ref[b_key].dtype))
        merged[a_key] = torch.cat(a_parts, dim=0).contiguous()
        merged[b_key] = torch.cat(b_parts, dim=1).contiguous()

    out = Path(out_dir)
    staged = out.with_name(out.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    config = dict(configs[0])
    n = len(paths)
    config["r"] = r * n
    config["lora_alpha"] = configs[0]["lora_alpha"] * n
    layers = [c.get("layers_to_transform") for c in configs]
    config["layers_to_transform"] = (None if any(x is None for x in layers)
                                     else sorted({i for x in layers for i in x}))
    config["target_modules"] = sorted({t for c in configs for t in c["target_modules"]})
    (staged / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file(merged, str(staged / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    shutil.copy(paths[0] / TOKEN_MAP_FILE, staged / TOKEN_MAP_FILE)
    metas = [json.loads((p / MODEL_META_FILE).read_text()) for p in paths]
    meta = {
        "model_id": metas[0].get("model_id", "guardian"),
        "version": version or time.strftime("v%Y%m%d-%H%M%S"),
        "base": metas[0].get("base"),
        "method": "lora-soup",
        "ingredients": [{"version": m.get("version"), "weight": w} for m, w in zip(metas, weights)],
        "git_commit": git_commit(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (staged / MODEL_META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    lines = [f"# guardian {meta['version']}: a soup of "
             + ", ".join(f"{m.get('version')} (weight {w:g})" for m, w in zip(metas, weights)), "",
             "Made by `guardian soup` (training/soup.py): the weighted mean of the ingredients' "
             "weight deltas, as one LoRA adapter of rank " + str(config["r"]) + ".", ""]
    (staged / "README.md").write_text("\n".join(lines))
    if out.exists():
        shutil.rmtree(out)
    staged.rename(out)
    return out
