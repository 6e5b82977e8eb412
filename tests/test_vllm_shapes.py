"""What can be tested of the vLLM backend without CUDA: its reading of vLLM outputs.

The objects below have the shape of vLLM's RequestOutput / CompletionOutput / Logprob;
the label score and the parser must read them as the transformers backend reads logits.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from model.backends.vllm import first_token, label_score_from_logprobs
from model.prompt import parse_continuation


def _out(token_ids, logprobs=None):
    return SimpleNamespace(outputs=[SimpleNamespace(token_ids=token_ids, logprobs=logprobs)])


def test_label_score_from_processed_logprobs():
    step = {8: SimpleNamespace(logprob=math.log(0.2)), 9: SimpleNamespace(logprob=math.log(0.6))}
    assert label_score_from_logprobs(step, 8, 9) == pytest.approx(0.75)
    assert label_score_from_logprobs({9: -0.1}, 8, 9) == 1.0
    assert label_score_from_logprobs({8: -0.1}, 8, 9) == 0.0
    assert label_score_from_logprobs({}, 8, 9) == 0.5
    assert label_score_from_logprobs(None, 8, 9) == 0.5


def test_vllm_completion_parses_like_transformers(tiny_backend):
    loaded = tiny_backend.loaded
    tok, tokens = loaded.tokenizer, loaded.tokens
    response_ids = tok("I cannot help with that.", add_special_tokens=False)["input_ids"]
    out = _out([tokens.category("privacy_violation"), *response_ids, tok.eos_token_id, 5, 5])
    assert first_token(out) == tokens.category("privacy_violation")
    parsed = parse_continuation(tok, tokens, out.outputs[0].token_ids, label_given="unsafe")
    assert parsed.category == "privacy_violation"
    assert parsed.response == "I cannot help with that."
    assert first_token(_out([])) is None


def test_vllm_is_not_needed_to_import_the_backend_module():
    import importlib.util

    assert importlib.util.find_spec("model.backends.vllm") is not None
    from model.backends import create_backend
    from model.settings import GuardianSettings

    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(RuntimeError, match="needs vLLM"):
            create_backend(GuardianSettings(backend="vllm"))
