"""deploy/ uses the same configuration keys as the code."""

from pathlib import Path

import yaml

from model.settings import GuardianSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _env_keys(obj, out: set[str]) -> set[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str) and k.startswith("GUARDIAN_"):
                out.add(k)
            if k == "name" and isinstance(v, str) and v.startswith("GUARDIAN_"):
                out.add(v)
            _env_keys(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _env_keys(v, out)
    return out


def test_every_guardian_key_is_a_settings_field():
    files = [DEPLOY / "compose.yaml", *sorted((DEPLOY / "k8s").glob("*.yaml"))]
    assert len(files) >= 4
    fields = set(GuardianSettings.model_fields)
    seen: set[str] = set()
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            for key in _env_keys(doc, set()):
                assert key[len("GUARDIAN_"):].lower() in fields, f"{f.name}: {key}"
                seen.add(key)
    assert {"GUARDIAN_KAFKA_BOOTSTRAP", "GUARDIAN_REDIS_URL", "GUARDIAN_BACKEND"} <= seen


def test_compose_and_k8s_shape():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka")
    worker = compose["services"]["worker"]
    assert worker["environment"]["GUARDIAN_BACKEND"] == "vllm"
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    dep = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    res = dep["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"]["nvidia.com/gpu"] == 1
    so = yaml.safe_load((DEPLOY / "k8s" / "scaledobject.yaml").read_text())
    assert so["kind"] == "ScaledObject" and so["spec"]["triggers"][0]["type"] == "kafka"
    cm = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())
    assert so["spec"]["triggers"][0]["metadata"]["consumerGroup"] == cm["data"]["GUARDIAN_APP_ID"]
    assert so["spec"]["triggers"][0]["metadata"]["topic"] == cm["data"]["GUARDIAN_TOPIC_QUERIES"]
