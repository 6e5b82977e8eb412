"""Frozen lower layers, computed once: the outputs of a decoder's first K layers, on disk.

The cheap CPU recipe trains LoRA on the top layers only. The lower layers never change, and
neither do the training sequences, so their outputs are the same in every epoch: computing
them once and reading them back turns each later step into a pass over the top layers
alone. The cache is keyed by the base, the split point and every token id, so a changed
dataset or split can never reuse stale states.

`TopLayers` runs the rest of the model from such states: it swaps the lower layers for
pass-through modules (the last one injects the cached states), so the model's own forward
still builds the attention masks and rotary embeddings exactly as it does at inference.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch
from torch import nn

CACHE_FORMAT = 1


def decoder_of(model) -> nn.Module:
    """The decoder stack (the module with `.layers`) under a causal LM, peft-wrapped or not."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = inner.get_decoder()
    if not hasattr(decoder, "layers"):
        raise TypeError(f"{type(decoder).__name__} has no .layers: unsupported architecture")
    return decoder


class _Stop(Exception):
    pass


@torch.inference_mode()
def lower_states(model, batch_ids: torch.Tensor, mask: torch.Tensor, split: int) -> torch.Tensor:
    """Output of decoder layers [0, split) for a right-padded batch (no grad, no top layers)."""
    decoder = decoder_of(model)
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = decoder.layers[split - 1].register_forward_hook(hook)
    try:
        decoder(input_ids=batch_ids, attention_mask=mask, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["h"]


def right_padded(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of a right-padded batch: with a causal model the real positions'
    states do not depend on the padding after them, so they can be stored as computed."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    return ids, mask


def cache_key(base_name: str, split: int, sequences: list[list[int]], dtype: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_FORMAT, base_name, split, dtype]).encode())
    for seq in sequences:
        h.update(len(seq).to_bytes(4, "little"))
        h.update(torch.tensor(seq, dtype=torch.int32).numpy().tobytes())
    return h.hexdigest()[:20]


class PrefixCache:
    """All sequences' lower-layer states in one flat bf16 tensor with offsets."""

    def __init__(self, flat: torch.Tensor, offsets: torch.Tensor):
        self.flat = flat
        self.offsets = offsets  # [n + 1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, i: int, length: int | None = None) -> torch.Tensor:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        if length is not None:
            end = min(end, start + length)
        return self.flat[start:end]

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tmp = path.with_name(path.name + ".partial")
        save_file({"flat": self.flat.contiguous(), "offsets": self.offsets}, str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PrefixCache:
        from safetensors.torch import load_file

        t = load_file(str(path))
        return cls(t["flat"], t["offsets"])


def build_prefix_cache(
    model,
    sequences: list[list[int]],
    split: int,
    *,
    pad_id: int,
    device: str,
    cache_dir: Path,
    base_name: str,
    batch_tokens: int = 4096,
    autocast=None,
    progress: bool = True,
) -> PrefixCache:
    """Compute (or read back) the lower-layer states of every sequence."""
    from tqdm import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(base_name, split, sequences, "bf16")
    path = cache_dir / f"prefix-{key}.safetensors"
    if path.is_file():
        return PrefixCache.load(path)
    hidden = model.config.hidden_size
    lengths = torch.tensor([len(s) for s in sequences])
    offsets = torch.zeros(len(sequences) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)
    flat = torch.empty((int(offsets[-1]), hidden), dtype=torch.bfloat16)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    bar = tqdm(total=len(sequences), disable=not progress, desc=f"cache layers 0-{split - 1}")
    i = 0
    while i < len(order):
        # sorted by length: grow the chunk while its padded size stays under batch_tokens
        end = i + 1
        while end < len(order) and (end + 1 - i) * len(sequences[order[end]]) <= batch_tokens:
            end += 1
        chunk = order[i:end]
        ids, mask = right_padded([sequences[j] for j in chunk], pad_id)
        with autocast if autocast is not None else contextlib.nullcontext():
            states = lower_states(model, ids.to(device), mask.to(device), split)
        states = states.to("cpu", torch.bfloat16)
        for r, j in enumerate(chunk):
            flat[offsets[j] : offsets[j + 1]] = states[r, : len(sequences[j])]
        bar.update(len(chunk))
        i = end
    bar.close()
    cache = PrefixCache(flat, offsets)
    cache.save(path)
    return cache


class _Pass(nn.Module):
    """Stands in for a frozen lower layer: hands the hidden states on untouched."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _Inject(nn.Module):
    """Stands in for the last frozen layer: returns the cached states of the batch."""

    def __init__(self):
        super().__init__()
        self.states: torch.Tensor | None = None

    def forward(self, hidden_states, *args, **kwargs):
        return self.states.to(hidden_states.dtype)


class TopLayers:
    """Run decoder layers [split, end) and the final norm from cached lower-layer states."""

    def __init__(self, model, split: int):
        self.model = model
        self.split = split
        self.decoder = decoder_of(model)
        self._saved = [self.decoder.layers[i] for i in range(split)]
        self._inject = _Inject()
        for i in range(split - 1):
            self.decoder.layers[i] = _Pass()
        self.decoder.layers[split - 1] = self._inject

    def restore(self) -> None:
        """Put the real lower layers back (before saving or evaluating the model)."""
        for i, layer in enumerate(self._saved):
            self.decoder.layers[i] = layer

    def __call__(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self._inject.states = states
        try:
            out = self.decoder(inputs_embeds=torch.zeros_like(states), attention_mask=mask,
                               use_cache=False)
        finally:
            self._inject.states = None
        return out.last_hidden_state
