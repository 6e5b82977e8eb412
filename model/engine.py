"""Backend-independent judging: prompts, policy decisions and verdict records.

A backend supplies three primitives over token ids (label scores from one forward pass,
the category token after `<|unsafe|>`, greedy decoding of the response), and may supply
`label_and_category`, both from one pass; everything that
decides what a verdict says lives here, so transformers and vLLM cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from model.language import detect_language
from model.policy import Policy
from model.prompt import GuardianTokens, build_prompt_ids, parse_continuation
from model.responses import stock_response
from model.verdict import Verdict


@dataclass(frozen=True)
class Query:
    id: str
    text: str


class Runner(Protocol):
    """The model-facing primitives a backend implements."""

    def label_scores(self, prompts: list[list[int]]) -> list[float]:
        """P(<|unsafe|>) against P(<|safe|>) at the next position, one forward pass."""

    def pick_tokens(self, prompts: list[list[int]], candidates: list[int]) -> list[int]:
        """The most likely of `candidates` at the next position of each prompt."""

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuation ids of each prompt (without the prompt)."""


class GuardianBackend(Protocol):
    name: str
    model_id: str
    model_version: str

    def judge(self, queries: Sequence[Query], policy: Policy) -> list[Verdict]: ...


@dataclass
class _Plan:
    query: Query
    language: str
    response_language: str
    forced_by: str | None
    forced_category: str | None
    prompt: list[int]
    truncated: bool


class Engine:
    """Turns a batch of queries and a policy into verdicts through a Runner."""

    def __init__(
        self,
        runner: Runner,
        tokenizer,
        tokens: GuardianTokens,
        *,
        backend_name: str,
        model_id: str,
        model_version: str,
        max_query_tokens: int = 256,
        max_new_tokens: int = 96,
    ) -> None:
        self.runner = runner
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.name = backend_name
        self.model_id = model_id
        self.model_version = model_version
        self.max_query_tokens = max_query_tokens
        self.max_new_tokens = max_new_tokens

    @classmethod
    def for_backend(
        cls, runner: Runner, tokenizer, tokens: GuardianTokens, *, backend_name: str,
        model_id: str, model_version: str, settings,
    ) -> Engine:
        """An engine with the prompt and decoding bounds a GuardianSettings names."""
        return cls(
            runner, tokenizer, tokens, backend_name=backend_name, model_id=model_id,
            model_version=model_version, max_query_tokens=settings.max_query_tokens,
            max_new_tokens=settings.max_new_tokens,
        )

    def plan(self, query: Query, policy: Policy) -> _Plan:
        language = detect_language(query.text)
        response_language = policy.response_language_for(language)
        rule = policy.forced_rule(query.text)
        encoded = build_prompt_ids(
            self.tokenizer,
            self.tokens,
            query.text,
            language=response_language,
            force_harm=rule is not None,
            max_query_tokens=self.max_query_tokens,
        )
        return _Plan(
            query=query,
            language=language,
            response_language=response_language,
            forced_by=rule.name if rule else None,
            forced_category=rule.category if rule else None,
            prompt=encoded.ids,
            truncated=encoded.truncated,
        )

    def judge(self, queries: Sequence[Query], policy: Policy) -> list[Verdict]:
        if not queries:
            return []
        t0 = time.perf_counter()
        plans = [self.plan(q, policy) for q in queries]
        one_pass = getattr(self.runner, "label_and_category", None)
        if one_pass is not None:
            scores, every_pick = one_pass([p.prompt for p in plans])
        else:
            scores = self.runner.label_scores([p.prompt for p in plans])
        t_label = time.perf_counter()

        candidates = [
            i for i, p in enumerate(plans) if p.forced_by or scores[i] >= policy.threshold
        ]
        categories: dict[int, str | None] = {}
        if candidates:
            if one_pass is not None:
                picked = [every_pick[i] for i in candidates]
            else:
                picked = self.runner.pick_tokens(
                    [plans[i].prompt + [self.tokens.unsafe] for i in candidates],
                    self.tokens.category_ids,
                )
            categories = {
                # a force-harm rule that names a category reports it, not the model's pick
                i: plans[i].forced_category or self.tokens.category_of(t)
                for i, t in zip(candidates, picked)
            }
        t_category = time.perf_counter()

        blocked = [
            i for i in candidates if plans[i].forced_by or categories[i] in policy.blocked
        ]
        generated: dict[int, list[int]] = {}
        decode = [] if policy.response_mode != "generate" else blocked
        if decode and self.max_new_tokens > 0:
            outs = self.runner.generate(
                [
                    plans[i].prompt + [self.tokens.unsafe, self.tokens.category(categories[i])]
                    for i in decode
                ],
                self.max_new_tokens,
            )
            generated = dict(zip(decode, outs))
        t_end = time.perf_counter()

        timings = {
            "label": (t_label - t0) * 1000,
            "category": (t_category - t_label) * 1000,
            "generate": (t_end - t_category) * 1000,
            "batch_total": (t_end - t0) * 1000,
            "batch_size": float(len(plans)),
        }
        verdicts = []
        for i, plan in enumerate(plans):
            verdict = Verdict(
                id=plan.query.id,
                label="safe",
                unsafe_score=float(scores[i]),
                reason="below_threshold",
                forced_by=plan.forced_by,
                language=plan.language,
                query_truncated=plan.truncated,
                policy_id=policy.id,
                policy_version=policy.version,
                model_id=self.model_id,
                model_version=self.model_version,
                backend=self.name,
                timings_ms=dict(timings),
            )
            if i in categories:
                verdict.category = categories[i]
                verdict.reason = "category_allowed"
            if i in blocked:
                verdict.label = "unsafe"
                verdict.reason = "forced_harm" if plan.forced_by else "score"
                # response by the policy's mode; nothing decoded with max_new_tokens=0 or "none"
                if policy.response_mode == "template":
                    verdict.response = stock_response(
                        categories[i], plan.response_language, plan.query.text
                    )
                    verdict.response_language = plan.response_language
                elif i in generated:
                    parsed = parse_continuation(
                        self.tokenizer,
                        self.tokens,
                        [self.tokens.category(categories[i]), *generated[i]],
                        label_given="unsafe",
                    )
                    verdict.response = parsed.response
                    verdict.response_language = plan.response_language
                    verdict.error = parsed.error
            verdicts.append(verdict)
        return verdicts
