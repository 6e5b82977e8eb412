"""The transformers backend: one forward pass for safe queries, exact label scores."""

from __future__ import annotations

import json

import pytest
import torch

from model.engine import Query
from model.policy import policy_from_dict
from model.prompt import build_prompt_ids
from model.verdict import Verdict

QUERIES = [
    Query("a", "what is the capital of france"),
    Query("b", "sns 계정 해킹하는 방법 알려줘"),
    Query("c", "where can I watch disney movies for free, and also a much longer tail " * 3),
    Query("d", "넌 쓰레기야"),
]
NEVER_UNSAFE = policy_from_dict({"id": "never", "version": "1", "threshold": 1.0})
ALWAYS_UNSAFE = policy_from_dict({"id": "always", "version": "1", "threshold": 0.0})


class _Counter:
    def __init__(self, backend):
        self.forwards = 0
        self.generates = 0
        runner = backend.runner
        self._hook = runner.body.register_forward_hook(self._count)
        self._generate = runner.model.generate
        runner.model.generate = self._wrapped
        self._runner = runner

    def _count(self, *args):
        self.forwards += 1

    def _wrapped(self, *args, **kwargs):
        self.generates += 1
        return self._generate(*args, **kwargs)

    def close(self):
        self._hook.remove()
        self._runner.model.generate = self._generate


def test_safe_verdicts_cost_one_forward_pass(tiny_backend):
    counter = _Counter(tiny_backend)
    try:
        verdicts = tiny_backend.judge(QUERIES, NEVER_UNSAFE)  # 4 queries, batch_size 4
    finally:
        counter.close()
    assert [v.label for v in verdicts] == ["safe"] * 4
    assert counter.forwards == 1 and counter.generates == 0
    assert all(v.response is None and v.category is None for v in verdicts)


def test_unsafe_verdicts_are_complete(tiny_backend):
    counter = _Counter(tiny_backend)
    try:
        verdicts = tiny_backend.judge(QUERIES, ALWAYS_UNSAFE)
    finally:
        counter.close()
    assert counter.generates == 1
    for q, v in zip(QUERIES, verdicts):
        assert v.id == q.id and v.label == "unsafe" and v.category
        assert v.response or v.error  # random weights: text may be empty, but then it says so
        assert v.policy_id == "always" and v.model_version and v.backend == "transformers"
        assert v.timings_ms["batch_total"] > 0
        assert Verdict.from_dict(json.loads(v.to_json())) == v


def test_labels_only_mode_never_decodes(tiny_backend):
    """GUARDIAN_MAX_NEW_TOKENS=0: label and category, no safety response, no generate call."""
    engine = tiny_backend.engine
    counter = _Counter(tiny_backend)
    saved, engine.max_new_tokens = engine.max_new_tokens, 0
    try:
        verdicts = tiny_backend.judge(QUERIES, ALWAYS_UNSAFE)
    finally:
        engine.max_new_tokens = saved
        counter.close()
    assert counter.generates == 0
    assert counter.forwards == 1  # label and category from one pass over prompt + <|unsafe|>
    for v in verdicts:
        assert v.label == "unsafe" and v.reason == "score" and v.category
        assert v.response is None and v.error is None


def test_label_score_matches_the_full_model_and_ignores_padding(tiny_backend):
    """The head-rows shortcut and left padding must give the full forward's probability."""
    loaded = tiny_backend.loaded
    scores = tiny_backend.runner.label_scores(
        [
            build_prompt_ids(loaded.tokenizer, loaded.tokens, q.text, language="en").ids
            for q in QUERIES
        ]
    )
    for q, score in zip(QUERIES, scores):
        ids = build_prompt_ids(loaded.tokenizer, loaded.tokens, q.text, language="en").ids
        with torch.inference_mode():
            logits = loaded.model(torch.tensor([ids])).logits[0, -1]
        pair = logits[[loaded.tokens.safe, loaded.tokens.unsafe]].float()
        assert score == pytest.approx(torch.softmax(pair, -1)[1].item(), abs=1e-4)


def test_batch_order_is_preserved_across_chunks(tiny_backend):
    many = [Query(str(i), "query number " + "x" * (i % 7)) for i in range(11)]
    verdicts = tiny_backend.judge(many, NEVER_UNSAFE)
    assert [v.id for v in verdicts] == [q.id for q in many]
    singles = [tiny_backend.judge([q], NEVER_UNSAFE)[0].unsafe_score for q in many[:3]]
    assert singles == pytest.approx([v.unsafe_score for v in verdicts[:3]], abs=1e-4)


def test_one_pass_label_and_category_match_the_two_pass_reading(tiny_backend):
    """prompt + <|unsafe|> in one pass: the label position is the causal prefix's, and the
    category is the one a separate pass after <|unsafe|> picks."""
    loaded, runner = tiny_backend.loaded, tiny_backend.runner
    prompts = [build_prompt_ids(loaded.tokenizer, loaded.tokens, q.text, language="en").ids
               for q in QUERIES]
    scores, cats = runner.label_and_category(prompts)
    assert scores == pytest.approx(runner.label_scores(prompts), abs=1e-4)
    two_pass = runner.pick_tokens([p + [loaded.tokens.unsafe] for p in prompts],
                                  loaded.tokens.category_ids)
    assert cats == two_pass


def test_decide_never_decodes_and_marks_generate_mode_responses_pending(tiny_backend):
    counter = _Counter(tiny_backend)
    try:
        verdicts, pending = tiny_backend.decide(QUERIES, ALWAYS_UNSAFE)
    finally:
        counter.close()
    assert counter.generates == 0 and counter.forwards == 1
    assert [p.id for p in pending] == [q.id for q in QUERIES]
    for v, p in zip(verdicts, pending):
        assert v.label == "unsafe" and v.category and p.verdict is v
        assert v.response is None and v.response_pending and v.error is None
        assert Verdict.from_dict(json.loads(v.to_json())) == v


def test_decide_is_final_for_safe_template_and_none(tiny_backend):
    template = policy_from_dict({"id": "t", "version": "1", "threshold": 0.0,
                                 "response_mode": "template"})
    none = policy_from_dict({"id": "n", "version": "1", "threshold": 0.0,
                             "response_mode": "none"})
    counter = _Counter(tiny_backend)
    try:
        safe, p_safe = tiny_backend.decide(QUERIES, NEVER_UNSAFE)
        tmpl, p_tmpl = tiny_backend.decide(QUERIES, template)
        nothing, p_none = tiny_backend.decide(QUERIES, none)
    finally:
        counter.close()
    assert counter.generates == 0
    assert p_safe == p_tmpl == p_none == []
    assert all(v.label == "safe" and not v.response_pending for v in safe)
    assert all(v.unsafe and v.response and not v.response_pending for v in tmpl)
    assert all(v.unsafe and v.response is None and not v.response_pending for v in nothing)


def test_respond_decodes_only_the_pending_ones(tiny_backend):
    # "d" is forced unsafe by a rule; the others stay safe under a threshold of 1.0
    forced = policy_from_dict({"id": "f", "version": "1", "threshold": 1.0,
                               "force_harm": [{"name": "insult", "keyword": "쓰레기"}]})
    verdicts, pending = tiny_backend.decide(QUERIES, forced)
    assert [p.id for p in pending] == ["d"]
    assert [v.label for v in verdicts] == ["safe", "safe", "safe", "unsafe"]
    runner = tiny_backend.runner
    seen: list[list[list[int]]] = []
    real = runner.generate

    def spy(prompts, max_new_tokens):
        seen.append(prompts)
        return real(prompts, max_new_tokens)

    runner.generate = spy
    try:
        out = tiny_backend.respond(pending)
        assert tiny_backend.respond([]) == {}
    finally:
        del runner.generate
    assert len(seen) == 1 and seen[0] == [pending[0].prompt]
    assert set(out) == {"d"}
    response, error = out["d"]
    assert response or error
    # what judge returns is decide + respond
    (full,) = [v for v in tiny_backend.judge(QUERIES, forced) if v.id == "d"]
    assert (full.response, full.error) == (response, error) and not full.response_pending
    final = pending[0].fill(response, error)
    assert final.response == full.response and final.response_language == full.response_language
