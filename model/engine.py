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

    # Optional (the transformers and vLLM backends have them; the stream worker falls back
    # to `judge` without): verdicts first, generated responses later. See Engine.decide.
    # def decide(self, queries, policy) -> tuple[list[Verdict], list[PendingResponse]]
    # def respond(self, pending) -> dict[str, tuple[str | None, str | None]]


@dataclass
class PendingResponse:
    """A blocked verdict whose safety response is still to be generated (`Engine.decide`)."""

    id: str
    #: prompt + `<|unsafe|>` + the category token: where the response is decoded from.
    prompt: list[int]
    category: str | None
    response_language: str
    #: The verdict `decide` returned (response None, response_pending True).
    verdict: Verdict

    def fill(self, response: str | None, error: str | None) -> Verdict:
        """The verdict completed with its response (what `judge` returns)."""
        self.verdict.response = response
        self.verdict.response_language = self.response_language
        self.verdict.error = error
        self.verdict.response_pending = False
        return self.verdict


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
        """Complete verdicts: `decide`, then `respond` for the ones still waiting on one."""
        verdicts, pending = self.decide(queries, policy)
        if pending:
            for item, (response, error) in zip(pending, self._decode(pending), strict=True):
                item.fill(response, error)
            for v in verdicts:  # one batch, one set of timings, now with the decode in it
                v.timings_ms["generate"] = pending[0].verdict.timings_ms["generate"]
                v.timings_ms["batch_total"] = (
                    v.timings_ms["batch_total"] + v.timings_ms["generate"])
        return verdicts

    def decide(
        self, queries: Sequence[Query], policy: Policy
    ) -> tuple[list[Verdict], list[PendingResponse]]:
        """Label and category of every query (one pass); never decodes a response.

        Returns the verdicts in query order and the blocked ones that still need a generated
        response (policy `response_mode = "generate"` and max_new_tokens > 0): those carry
        `response=None, response_pending=True` until `respond` (or `PendingResponse.fill`)
        completes them. Template and none modes are final here.
        """
        if not queries:
            return [], []
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
        decode = policy.response_mode == "generate" and self.max_new_tokens > 0
        timings = {
            "label": (t_label - t0) * 1000,
            "category": (t_category - t_label) * 1000,
            "generate": 0.0,
            "batch_total": (t_category - t0) * 1000,
            "batch_size": float(len(plans)),
        }
        verdicts: list[Verdict] = []
        pending: list[PendingResponse] = []
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
                elif decode:
                    verdict.response_pending = True
                    pending.append(PendingResponse(
                        id=plan.query.id,
                        prompt=plan.prompt
                        + [self.tokens.unsafe, self.tokens.category(categories[i])],
                        category=categories[i],
                        response_language=plan.response_language,
                        verdict=verdict,
                    ))
            verdicts.append(verdict)
        return verdicts, pending

    def respond(
        self, pending: Sequence[PendingResponse]
    ) -> dict[str, tuple[str | None, str | None]]:
        """Decode the safety response of each pending verdict: `{id: (response, error)}`.

        Only the given items are decoded (one `generate` call for all of them). `error` is
        set when the output could not be read as the guardian format. The pending items'
        verdicts are left as they are (see `PendingResponse.fill`). For two items with the
        same id the later one's result is the one in the mapping (use `PendingResponse.fill`
        via `judge` when ids can repeat).
        """
        return {
            item.id: result
            for item, result in zip(pending, self._decode(pending), strict=True)
        }

    def _decode(self, pending: Sequence[PendingResponse]) -> list[tuple[str | None, str | None]]:
        """(response, error) per pending item, in order; records the decode time on each."""
        if not pending:
            return []
        t0 = time.perf_counter()
        outs = self.runner.generate([p.prompt for p in pending], self.max_new_tokens)
        results: list[tuple[str | None, str | None]] = []
        for item, out in zip(pending, outs, strict=True):
            parsed = parse_continuation(
                self.tokenizer, self.tokens, [self.tokens.category(item.category), *out],
                label_given="unsafe",
            )
            results.append((parsed.response, parsed.error))
        ms = (time.perf_counter() - t0) * 1000
        for item in pending:
            item.verdict.timings_ms["generate"] = ms
        return results
