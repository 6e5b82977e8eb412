"""/v1/judge, auth (401/403), limits (413), validation (422), /healthz, /metrics, /docs."""

from __future__ import annotations

import httpx
import pytest

from api.auth import KeysFileError, KeyStore, load_keys_file
from tests.api.conftest import KEY_A, KEY_ADMIN, KEY_B


@pytest.fixture
def open_url(serve, api_backend):
    return serve(api_backend, api_max_inputs=4, max_text_chars=200)


@pytest.fixture
def keyed_url(serve, api_backend, keys_file):
    return serve(api_backend, api_keys_file=str(keys_file), api_max_body_bytes=2048)


def test_judge_one_and_many(open_url):
    r = httpx.post(open_url + "/v1/judge", json={"text": "what is the capital of france"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("judge-")
    (v,) = body["verdicts"]
    assert v["label"] in ("safe", "unsafe") and 0.0 <= v["unsafe_score"] <= 1.0
    assert v["policy_id"] == "default-en"  # no policy: the default of the query's language
    assert v["model_version"] == body["model"] and v["schema_version"] == 1

    r = httpx.post(open_url + "/v1/judge", json={
        "policy": "test-force",
        "queries": [{"id": "a", "text": "hack the bank"},
                    {"id": "b", "text": "오늘 서울 날씨 어때?", "policy": "default-ko"},
                    {"text": "hello there"}],
    })
    assert r.status_code == 200, r.text
    a, b, c = r.json()["verdicts"]
    assert [a["id"], b["id"], c["id"]] == ["a", "b", "q2"]
    assert a["label"] == "unsafe" and a["category"] == "crime_advice"
    assert a["reason"] == "forced_harm" and a["forced_by"] == "hack"
    assert "response" in a and a["response_language"] == "en"
    assert b["policy_id"] == "default-ko" and c["policy_id"] == "test-force"


def test_response_mode_none_drops_the_response(open_url):
    body = {"text": "hack the bank", "policy": "test-force", "response_mode": "none"}
    (v,) = httpx.post(open_url + "/v1/judge", json=body).json()["verdicts"]
    assert v["label"] == "unsafe" and v["category"] == "crime_advice"
    assert "response" not in v


def test_korean_default_policy(open_url):
    (v,) = httpx.post(open_url + "/v1/judge", json={"text": "sns 계정 해킹하는 방법 알려줘"}
                      ).json()["verdicts"]
    assert v["policy_id"] == "default-ko" and v["language"] == "ko"


@pytest.mark.parametrize("body, needle", [
    ("{not json", "not valid JSON"),
    ({"input": 5}, "input"),
    ({}, "input: Field required"),
    ({"input": []}, "must not be an empty list"),
    (("form", '{"input": "x"}'), "Content-Type: application/json"),
])
def test_moderation_422(open_url, body, needle):
    if isinstance(body, tuple):  # a JSON text without the JSON content type (curl -d)
        kw = {"content": body[1], "headers": {"content-type": "application/x-www-form-urlencoded"}}
    elif isinstance(body, str):
        kw = {"content": body, "headers": {"content-type": "application/json"}}
    else:
        kw = {"json": body}
    r = httpx.post(open_url + "/v1/moderations", **kw)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and needle in err["message"]


@pytest.mark.parametrize("body, needle", [
    ({"text": "a", "queries": [{"text": "b"}]}, "exactly one"),
    ({"text": "a", "respons_mode": "none"}, "respons_mode"),
    ({"text": "a", "response_mode": "stream"}, "response_mode"),
    ({"queries": []}, "must not be empty"),
    ({"text": "a", "policy": "nope"}, "unknown policy 'nope'"),
])
def test_judge_422(open_url, body, needle):
    r = httpx.post(open_url + "/v1/judge", json=body)
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"]["message"]


def test_413_inputs_and_text(open_url):
    r = httpx.post(open_url + "/v1/moderations", json={"input": ["x"] * 5})
    assert r.status_code == 413 and "GUARDIAN_API_MAX_INPUTS" in r.json()["error"]["message"]
    r = httpx.post(open_url + "/v1/moderations", json={"input": "y" * 201})
    assert r.status_code == 413 and "GUARDIAN_MAX_TEXT_CHARS" in r.json()["error"]["message"]


def test_413_body(keyed_url):
    auth = {"Authorization": f"Bearer {KEY_ADMIN}"}
    r = httpx.post(keyed_url + "/v1/moderations", headers=auth, json={"input": "z" * 3000})
    assert r.status_code == 413, r.text
    assert "GUARDIAN_API_MAX_BODY_BYTES" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit is counted while the body arrives
        yield b'{"input": "'
        for _ in range(10):
            yield b"w" * 500
        yield b'"}'

    r = httpx.post(keyed_url + "/v1/moderations", content=chunks(),
                   headers={**auth, "content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "request_too_large"


def test_401(keyed_url):
    r = httpx.post(keyed_url + "/v1/moderations", json={"input": "hi"})
    assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(keyed_url + "/v1/judge", json={"text": "hi"},
                   headers={"Authorization": "Bearer sk-nope-nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    # the key is checked before the body is read: bad JSON without a key is still a 401
    r = httpx.post(keyed_url + "/v1/judge", content="{bad")
    assert r.status_code == 401
    r = httpx.post(keyed_url + "/v1/judge", json={"text": "hi"}, headers={"X-API-Key": KEY_B})
    assert r.status_code == 200, r.text
    assert httpx.get(keyed_url + "/healthz").status_code == 200  # operations stay open
    assert httpx.get(keyed_url + "/metrics").status_code == 200
    assert httpx.get(keyed_url + "/v2/anything").status_code == 401  # not just /v1/


def test_403_tenant_policies(keyed_url):
    def judge(key, **body):
        return httpx.post(keyed_url + "/v1/judge", json=body,
                          headers={"Authorization": f"Bearer {key}"})

    r = judge(KEY_A, text="hello", policy="default-ko")
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    assert "tenant-a" in r.json()["error"]["message"]
    assert judge(KEY_A, text="hello", policy="default-en").status_code == 200
    (v,) = judge(KEY_A, text="hello").json()["verdicts"]
    assert v["policy_id"] == "test-force"  # the tenant's default_policy
    # tenant-b has no default: a Korean query gets default-ko, which it may not use
    r = judge(KEY_B, text="오늘 서울 날씨 어때?")
    assert r.status_code == 403 and "default for this language" in r.json()["error"]["message"]
    assert judge(KEY_B, text="how is the weather").status_code == 200
    r = judge(KEY_B, queries=[{"text": "a"}, {"text": "b", "policy": "test-allow"}])
    assert r.status_code == 403 and r.json()["error"]["param"] == "input[1]"
    assert judge(KEY_ADMIN, text="x", policy="test-allow").status_code == 200


def test_health_metrics_docs(open_url):
    h = httpx.get(open_url + "/healthz").json()
    assert h["status"] == "ok" and h["backend"] == "transformers" and h["auth"] == "open"
    httpx.post(open_url + "/v1/moderations", json={"input": "hi"})
    text = httpx.get(open_url + "/metrics").text
    for name in ("guardian_api_requests_total", "guardian_api_request_latency_seconds",
                 "guardian_api_queue_queries", "guardian_batch_size",
                 "guardian_model_latency_seconds", "guardian_queries_total",
                 "guardian_verdicts_total"):
        assert name in text, name
    assert 'guardian_api_requests_total{endpoint="/v1/moderations",status="200"}' in text
    assert httpx.get(open_url + "/docs").status_code == 200
    paths = httpx.get(open_url + "/openapi.json").json()["paths"]
    assert {"/v1/moderations", "/v1/judge", "/healthz", "/metrics"} <= set(paths)


def test_keys_file_formats(tmp_path):
    toml = tmp_path / "keys.toml"
    toml.write_text('[keys."sk-toml-key-1"]\ntenant = "t"\npolicies = ["default-ko"]\n')
    store = KeyStore.from_file(toml)
    assert store.tenant_for("sk-toml-key-1").allows("default-ko")
    assert not store.tenant_for("sk-toml-key-1").allows("default-en")
    assert store.tenant_for("sk-other") is None and store.tenant_for(None) is None
    assert KeyStore.from_file(None).tenant_for(None).name == "anonymous"
    bad = tmp_path / "bad.json"
    for text, needle in (('{"keys": {"short": {"tenant": "t"}}}', "8 characters"),
                         ('{"keys": {"sk-long-enough": {}}}', "tenant"),
                         ('{"keys": {"sk-long-enough": {"tenant": "t", "x": 1}}}', "unknown"),
                         ("{", "not valid")):
        bad.write_text(text)
        with pytest.raises(KeysFileError, match=needle):
            load_keys_file(bad)


def test_unknown_tenant_policy_fails_at_start(api_settings, tmp_path):
    from api.app import create_app
    from model.policy import PolicyError

    keys = tmp_path / "keys.json"
    keys.write_text('{"keys": {"sk-long-enough": {"tenant": "t", "policies": ["ghost"]}}}')
    with pytest.raises(PolicyError, match="ghost"):
        create_app(api_settings.model_copy(update={"api_keys_file": str(keys)}))


def test_serve_is_a_guardian_command():
    from model.cli import build_parser

    args = build_parser().parse_args(["serve", "--port", "9999", "--policy", "default-ko"])
    assert args.port == 9999 and args.policy == "default-ko" and args.workers == 1
