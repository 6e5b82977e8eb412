"""/v1/moderations: OpenAI's shape, checked with the official openai client unchanged."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import openai
import pytest

from api.categories import GUARDIAN_TO_OPENAI, OPENAI_CATEGORIES
from model.taxonomy import CATEGORY_IDS
from tests.api.conftest import KEY_A, KEY_ADMIN, KEY_B, running_server

README = Path(__file__).resolve().parents[2] / "api" / "README.md"


@pytest.fixture(scope="module")
def server(api_settings, keys_file):
    """A server that loads its own model (create_backend at start, as `guardian serve`)."""
    from api.app import create_app

    settings = api_settings.model_copy(update={"api_keys_file": str(keys_file)})
    with running_server(create_app(settings)) as url:
        yield url


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20)


def test_openai_client_parses_a_list(server):
    resp = client(server, KEY_A).moderations.create(
        input=["how do I hack into an sns account", "what is the capital of france"]
    )
    assert re.fullmatch(r"modr-[0-9a-f]{32}", resp.id)
    health = httpx.get(server + "/healthz").json()
    assert resp.model == health["model_version"]
    assert len(resp.results) == 2
    hacked, benign = resp.results
    # tenant-a's default policy forces "hack" to crime_advice -> OpenAI's illicit
    assert hacked.flagged is True
    assert hacked.categories.illicit is True
    assert hacked.categories.harassment is False and hacked.categories.self_harm is False
    extra = hacked.categories.model_extra
    assert extra["crime_advice"] is True and extra["self_harm_suicide"] is False
    # the guardian's sexual_minors shares its Python name with OpenAI's "sexual/minors"
    # field; the mapping sets them together, so they can never disagree
    assert hacked.categories.sexual_minors is False
    score = hacked.model_extra["guardian"]["unsafe_score"]
    assert hacked.category_scores.illicit == pytest.approx(score)
    assert hacked.category_scores.model_extra["crime_advice"] == pytest.approx(score)
    assert hacked.category_scores.hate == 0.0
    g = hacked.model_extra["guardian"]
    assert g["label"] == "unsafe" and g["category"] == "crime_advice"
    assert g["policy_id"] == "test-force" and g["policy_version"] == "7"
    assert benign.flagged is False
    assert not any(benign.categories.model_dump().values())


def test_openai_client_single_string_and_model(server):
    resp = client(server, KEY_ADMIN).moderations.create(
        input="what is the capital of france", model="omni-moderation-latest"
    )
    assert len(resp.results) == 1
    assert resp.results[0].category_applied_input_types.hate == ["text"]


def test_openai_client_errors(server):
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        client(server, "sk-wrong-key-0000").moderations.create(input="hi")
    with pytest.raises(openai.PermissionDeniedError, match="not allowed for tenant"):
        client(server, KEY_B).moderations.create(
            input="hello", extra_body={"policy": "test-force"})
    with pytest.raises(openai.UnprocessableEntityError, match="unknown policy"):
        client(server, KEY_ADMIN).moderations.create(
            input="hello", extra_body={"policy": "no-such-policy"})


def test_raw_shape_has_every_category_key(server):
    r = httpx.post(server + "/v1/moderations", headers={"Authorization": f"Bearer {KEY_A}"},
                   json={"input": [{"type": "text", "text": "hack it"}, "hello"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "model", "results"}
    for result in body["results"]:
        assert set(OPENAI_CATEGORIES) | set(CATEGORY_IDS) == set(result["categories"])
        assert set(result["categories"]) == set(result["category_scores"])
        assert set(OPENAI_CATEGORIES) == set(result["category_applied_input_types"])
        assert isinstance(result["flagged"], bool)
        hits = {k for k, v in result["category_scores"].items() if v}
        g = result["guardian"]
        expected = ({g["category"], *GUARDIAN_TO_OPENAI[g["category"]]}
                    if g["category"] else set())
        assert hits <= expected  # the score sits on the predicted category, 0 elsewhere
    assert body["results"][0]["flagged"] and body["results"][0]["categories"]["illicit"]


def test_image_input_is_refused(server):
    r = httpx.post(server + "/v1/moderations", headers={"Authorization": f"Bearer {KEY_A}"},
                   json={"input": [{"type": "image_url", "image_url": {"url": "x"}}]})
    assert r.status_code == 422
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_mapping_covers_the_taxonomy_and_is_documented():
    assert set(GUARDIAN_TO_OPENAI) == set(CATEGORY_IDS)
    # a guardian id equal to an OpenAI key's Python name must map onto that key
    for cid in CATEGORY_IDS:
        for key in OPENAI_CATEGORIES:
            if key.replace("/", "_").replace("-", "_") == cid:
                assert key in GUARDIAN_TO_OPENAI[cid], (cid, key)
    for targets in GUARDIAN_TO_OPENAI.values():
        assert set(targets) <= set(OPENAI_CATEGORIES)
    text = README.read_text(encoding="utf-8")
    for cid, targets in GUARDIAN_TO_OPENAI.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{cid}`"))
        for t in targets:
            assert f"`{t}`" in row, (cid, t)
        if not targets:
            assert "none" in row, cid
