"""deploy/ runs the API as its own service with the GuardianSettings keys."""

from pathlib import Path

import yaml

from model.settings import GuardianSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_compose_api_service():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    api = compose["services"]["api"]
    assert api["command"] == ["serve"]
    env = api["environment"]
    fields = set(GuardianSettings.model_fields)
    assert all(k.startswith("GUARDIAN_") and k[9:].lower() in fields for k in env)
    assert env["GUARDIAN_API_HOST"] == "0.0.0.0"
    assert api["ports"] == [f"{env['GUARDIAN_API_PORT']}:{env['GUARDIAN_API_PORT']}"]
    assert env["GUARDIAN_REDIS_URL"] == compose["services"]["worker"]["environment"][
        "GUARDIAN_REDIS_URL"]  # the worker's cache
    assert "COPY api api" in (DEPLOY / "Dockerfile").read_text()


def test_k8s_api_deployment_and_service():
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "api-deployment.yaml").read_text()))
    dep = next(d for d in docs if d["kind"] == "Deployment")
    svc = next(d for d in docs if d["kind"] == "Service")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["serve"]
    env = {e["name"]: e["value"] for e in container["env"]}
    port = int(env["GUARDIAN_API_PORT"])
    assert container["ports"][0]["containerPort"] == port
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["envFrom"][0]["configMapRef"]["name"] == "guardian-config"
    keys_dir = str(Path(env["GUARDIAN_API_KEYS_FILE"]).parent)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == keys_dir)
    vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "secret" in vol
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
