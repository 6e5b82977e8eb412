"""API test fixtures: the tiny real guardian behind a real uvicorn server on 127.0.0.1.

The model is the session's tiny transformers guardian (tests/tiny_model.py), built through
`model.backends.create_backend`. `CountingBackend` wraps it to count `judge` calls (the
batching tests) and, with a gate, to hold the model thread busy (the 429 test); every
verdict still comes from the real model.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).resolve().parent
POLICIES = HERE / "policies"

KEY_A = "sk-tenant-a-0001"   # tenant-a: test-force (its default) and default-en
KEY_B = "sk-tenant-b-0001"   # tenant-b: default-en only, no default of its own
KEY_ADMIN = "sk-admin-000001"  # every policy


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    path.write_text(json.dumps({"keys": {
        KEY_A: {"tenant": "tenant-a", "policies": ["test-force", "default-en"],
                "default_policy": "test-force"},
        KEY_B: {"tenant": "tenant-b", "policies": ["default-en"]},
        KEY_ADMIN: {"tenant": "admin", "policies": "*"},
    }}))
    return path


@pytest.fixture(scope="session")
def api_settings(tiny_settings):
    """The tiny guardian's settings plus the test policies; open API (no keys file)."""
    return tiny_settings.model_copy(update={"policy_dir": str(POLICIES)})


@pytest.fixture(scope="session")
def api_backend(api_settings):
    from model.backends import create_backend

    return create_backend(api_settings)


class CountingBackend:
    """The real backend, with its judge calls counted (and optionally held at a gate)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.model_id = inner.model_id
        self.model_version = inner.model_version
        self.calls: list[tuple[int, str]] = []
        self.entered = threading.Event()
        self.gate: threading.Event | None = None

    def judge(self, queries, policy):
        self.calls.append((len(queries), policy.id))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(15), "test gate never opened"
        return self.inner.judge(queries, policy)


@pytest.fixture
def counting(api_backend) -> CountingBackend:
    return CountingBackend(api_backend)


@contextmanager
def running_server(app, timeout: float = 15.0):
    """Serve `app` with uvicorn in a thread on a free loopback port; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    try:
        while httpx.get(url + "/healthz").status_code != 200:  # model loaded
            if time.monotonic() > deadline:
                raise RuntimeError("the guardian did not become healthy: "
                                   + httpx.get(url + "/healthz").text)
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def serve(api_settings):
    """serve(backend=None, **settings overrides) -> base URL of a running server."""
    from api.app import create_app

    stack = []

    def start(backend=None, **overrides):
        settings = api_settings.model_copy(update=overrides)
        cm = running_server(create_app(settings, backend=backend))
        url = cm.__enter__()
        stack.append(cm)
        return url

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)
