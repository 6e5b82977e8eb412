"""The vLLM backend (CUDA production serving).

Thin on purpose: prompts, policy logic and parsing come from model.engine and model.prompt,
exactly as for transformers; this module only maps the three runner primitives onto
`vllm.LLM.generate` with `SamplingParams`. vLLM is imported when the backend is built, so a
CPU install never needs it.

- Label: one step, sampling restricted to the two label tokens, with processed logprobs so
  both labels' log-probabilities come back and are compared exactly as the transformers
  backend compares the two logits.
- Category: one step restricted to the category tokens.
- Response: greedy decoding of the prompt + label + category.
- Adapters: a peft LoRA folder is served through `LoRARequest` on every call; what is
  served (base, adapter, merged folder) comes from model.resolve, as for transformers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from model.engine import Engine, Query
from model.policy import Policy
from model.settings import GuardianSettings
from model.verdict import Verdict


def _logprob_value(entry: Any) -> float:
    """vLLM gives Logprob objects (with .logprob); tests and older versions give floats."""
    return float(getattr(entry, "logprob", entry))


def label_score_from_logprobs(step_logprobs: dict | None, safe_id: int, unsafe_id: int) -> float:
    """P(unsafe) from one position's logprobs; a missing label counts as log 0 = -inf."""
    if not step_logprobs:
        return 0.5
    safe = _logprob_value(step_logprobs[safe_id]) if safe_id in step_logprobs else -math.inf
    unsafe = _logprob_value(step_logprobs[unsafe_id]) if unsafe_id in step_logprobs else -math.inf
    if safe == -math.inf and unsafe == -math.inf:
        return 0.5
    top = max(safe, unsafe)
    es, eu = math.exp(safe - top), math.exp(unsafe - top)
    return eu / (es + eu)


def first_token(output: Any) -> int | None:
    ids = list(output.outputs[0].token_ids)
    return int(ids[0]) if ids else None


class VLLMRunner:
    def __init__(self, llm, tokens, *, lora_request=None) -> None:
        from vllm import SamplingParams

        self.llm = llm
        self.tokens = tokens
        self.lora_request = lora_request
        self._SamplingParams = SamplingParams

    def _run(self, prompts: list[list[int]], params) -> list:
        from vllm.inputs import TokensPrompt

        return self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts],
            params,
            lora_request=self.lora_request,
            use_tqdm=False,
        )

    def label_scores(self, prompts: list[list[int]]) -> list[float]:
        labels = [self.tokens.safe, self.tokens.unsafe]
        params = self._SamplingParams(
            max_tokens=1, temperature=0.0, logprobs=2, allowed_token_ids=labels
        )
        outs = self._run(prompts, params)
        return [
            label_score_from_logprobs(
                (o.outputs[0].logprobs or [None])[0], self.tokens.safe, self.tokens.unsafe
            )
            for o in outs
        ]

    def pick_tokens(self, prompts: list[list[int]], candidates: list[int]) -> list[int]:
        params = self._SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=candidates)
        picked = [first_token(o) for o in self._run(prompts, params)]
        return [t if t in candidates else candidates[0] for t in picked]

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        params = self._SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
        return [list(o.outputs[0].token_ids) for o in self._run(prompts, params)]


class VLLMBackend:
    name = "vllm"

    def __init__(self, settings: GuardianSettings) -> None:
        try:
            from vllm import LLM
            from vllm.lora.request import LoRARequest
        except ImportError as exc:
            raise RuntimeError(
                "the vLLM backend needs vLLM on a CUDA machine: pip install 'guardian[gpu]'"
            ) from exc
        from transformers import AutoTokenizer

        from model.loading import adapter_has_token_deltas, assign_special_tokens
        from model.resolve import resolve_model

        resolved = resolve_model(settings)
        adapter = str(resolved.adapter_dir) if resolved.kind == "adapter" else None
        if adapter is not None and adapter_has_token_deltas(resolved.adapter_dir):
            raise RuntimeError(
                f"{adapter} trains the guardian token rows, which vLLM's LoRA loader cannot "
                "apply: run `guardian model merge --out DIR` once and serve DIR with "
                "GUARDIAN_BASE_MODEL=DIR GUARDIAN_ADAPTER=none (or, for a registry version, "
                "`guardian model promote VERSION --merge`)"
            )
        tokenizer = AutoTokenizer.from_pretrained(str(resolved.tokenizer_dir))
        tokens = resolved.token_map or assign_special_tokens(tokenizer)
        self.resolved = resolved
        self.llm = LLM(
            model=str(resolved.weights_dir),
            tokenizer=str(resolved.tokenizer_dir),
            enable_lora=adapter is not None,
            max_lora_rank=settings.vllm_max_lora_rank,
            gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
            dtype=resolved.dtype,
            logprobs_mode="processed_logprobs",
        )
        lora = LoRARequest("guardian", 1, adapter) if adapter else None
        self.model_id = resolved.model_id
        self.model_version = resolved.version
        self.engine = Engine.for_backend(
            VLLMRunner(self.llm, tokens, lora_request=lora), tokenizer, tokens,
            backend_name=self.name, model_id=self.model_id, model_version=self.model_version,
            settings=settings,
        )

    @classmethod
    def from_settings(cls, settings: GuardianSettings) -> VLLMBackend:
        return cls(settings)

    def judge(self, queries: Sequence[Query], policy: Policy) -> list[Verdict]:
        return self.engine.judge(queries, policy)

    def decide(self, queries: Sequence[Query], policy: Policy):
        return self.engine.decide(queries, policy)

    def respond(self, pending):
        return self.engine.respond(pending)
