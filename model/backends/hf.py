"""The transformers backend (CPU and CUDA): the default and the one the tests run.

The label needs only the hidden state at the last position and the output-head rows of the
label tokens. Running the decoder body and multiplying by those rows skips the 262k-row
vocabulary projection, which costs about as much as the whole body on a small model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from model.engine import Engine, Query
from model.loading import LoadedGuardian, load_guardian
from model.policy import Policy
from model.settings import GuardianSettings
from model.verdict import Verdict


class TransformersRunner:
    def __init__(self, model, tokenizer, tokens, *, device: str, batch_size: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.device = device
        self.batch_size = max(1, batch_size)
        self.body = model.get_decoder()
        self.head = model.get_output_embeddings()
        config = getattr(model, "config", None)
        self.softcap = getattr(config, "final_logit_softcapping", None) if config else None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _chunks(self, n: int, prompts: list[list[int]]):
        """Length-sorted chunks, so a batch pads to its own longest prompt."""
        order = sorted(range(n), key=lambda i: len(prompts[i]))
        for start in range(0, n, self.batch_size):
            yield order[start:start + self.batch_size]

    def _project(self, hidden: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
        """Logits of only `token_ids` (the output head's rows), softcapped like the model's."""
        logits = hidden @ self.head.weight[token_ids].T
        if getattr(self.head, "bias", None) is not None:
            logits = logits + self.head.bias[token_ids]
        logits = logits.float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def _last_hidden(self, prompts: list[list[int]], idx: list[int], n: int) -> torch.Tensor:
        ids, mask = self._left_pad([prompts[i] for i in idx])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.body(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
        ).last_hidden_state[:, -n:]

    @torch.inference_mode()
    def _next_logits(self, prompts: list[list[int]], token_ids: list[int]) -> torch.Tensor:
        """Logits of `token_ids` at the position after each prompt: one forward pass."""
        out = torch.empty((len(prompts), len(token_ids)), dtype=torch.float32)
        for idx in self._chunks(len(prompts), prompts):
            out[idx] = self._project(self._last_hidden(prompts, idx, 1)[:, 0], token_ids).cpu()
        return out

    @torch.inference_mode()
    def label_and_category(self, prompts: list[list[int]]) -> tuple[list[float], list[int]]:
        """Unsafe score and category token from ONE forward pass over prompt + `<|unsafe|>`.

        The model is causal, so the appended token cannot change the label position's
        state; the position after it is where the category is read (as in training).
        """
        label_ids = [self.tokens.safe, self.tokens.unsafe]
        cats = self.tokens.category_ids
        seqs = [p + [self.tokens.unsafe] for p in prompts]
        scores = torch.empty(len(seqs), dtype=torch.float32)
        picked = torch.empty(len(seqs), dtype=torch.long)
        for idx in self._chunks(len(seqs), seqs):
            hidden = self._last_hidden(seqs, idx, 2)
            scores[idx] = torch.softmax(self._project(hidden[:, 0], label_ids), -1)[:, 1].cpu()
            picked[idx] = self._project(hidden[:, 1], cats).argmax(-1).cpu()
        return scores.tolist(), [cats[j] for j in picked.tolist()]

    def label_scores(self, prompts: list[list[int]]) -> list[float]:
        logits = self._next_logits(prompts, [self.tokens.safe, self.tokens.unsafe])
        return torch.softmax(logits, dim=-1)[:, 1].tolist()

    def pick_tokens(self, prompts: list[list[int]], candidates: list[int]) -> list[int]:
        logits = self._next_logits(prompts, candidates)
        return [candidates[i] for i in logits.argmax(dim=-1).tolist()]

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        results: list[list[int]] = [[] for _ in prompts]
        eos = self.tokenizer.eos_token_id
        for idx in self._chunks(len(prompts), prompts):
            ids, mask = self._left_pad([prompts[i] for i in idx])
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
                eos_token_id=eos,
            )
            for row, i in enumerate(idx):
                results[i] = out[row, ids.shape[1]:].tolist()
        return results


class TransformersBackend:
    """`judge(queries, policy) -> verdicts` on a transformers model."""

    name = "transformers"

    def __init__(self, loaded: LoadedGuardian, settings: GuardianSettings) -> None:
        self.loaded = loaded
        self.model_id = loaded.model_id
        self.model_version = loaded.model_version
        self.runner = TransformersRunner(
            loaded.model,
            loaded.tokenizer,
            loaded.tokens,
            device=loaded.device,
            batch_size=settings.batch_size,
        )
        self.engine = Engine.for_backend(
            self.runner, loaded.tokenizer, loaded.tokens, backend_name=self.name,
            model_id=loaded.model_id, model_version=loaded.model_version, settings=settings,
        )

    @classmethod
    def from_settings(cls, settings: GuardianSettings) -> TransformersBackend:
        return cls(load_guardian(settings), settings)

    def judge(self, queries: Sequence[Query], policy: Policy) -> list[Verdict]:
        return self.engine.judge(queries, policy)

    def decide(self, queries: Sequence[Query], policy: Policy):
        return self.engine.decide(queries, policy)

    def respond(self, pending):
        return self.engine.respond(pending)
