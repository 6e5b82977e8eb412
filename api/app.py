"""The FastAPI app: /v1/moderations (OpenAI's shape), /v1/judge, /healthz, /metrics, /docs.

`create_app(settings)` builds one app with one guardian, loaded through
`model.backends.create_backend` in the model thread when the server starts (/healthz says
"starting" until then). Every request goes: auth (401) and body size (413) in
`GuardMiddleware`, field validation (422), policy resolution and tenant check (422 / 403),
the Redis cache when GUARDIAN_REDIS_URL is set, then the shared batcher (429 when full).
Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so the
OpenAI SDKs raise their usual exceptions with the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import metrics
from api.auth import KeyStore, Tenant
from api.batcher import Batcher, Overloaded, ShuttingDown
from api.categories import openai_result
from api.schemas import JudgeRequest, JudgeResponse, ModerationRequest, ModerationResponse
from model.engine import Query
from model.policy import AUTO, PolicyError, PolicyStore
from model.settings import GuardianSettings

log = logging.getLogger("guardian.api")

TENANT_SCOPE_KEY = "guardian.tenant"
#: Paths answered without a key; every other path needs one (so a new route, or a proxy
#: prefix, can never bypass auth).
OPEN_PATHS = frozenset({"/healthz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc",
                        "/openapi.json"})
ENDPOINTS = frozenset({"/v1/moderations", "/v1/judge", *OPEN_PATHS})


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.code, self.param, self.headers = code, param, headers


def error_body(message: str, type: str, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


_STATUS_TYPES = {
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "policy_not_allowed"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "overloaded"),
    503: ("server_error", "unavailable"),
}


# -- auth, size limit and request metrics: one pure ASGI middleware ------------------------
class GuardMiddleware:
    """401 for a missing/unknown key and 413 for a body over the limit, before any parsing
    (so neither costs a JSON parse); counts every request by endpoint and status."""

    def __init__(self, app, *, keys: KeyStore, max_body_bytes: int) -> None:
        self.app = app
        self.keys = keys
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        endpoint = path if path in ENDPOINTS else "other"
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_counted(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if path not in OPEN_PATHS:
                headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                           for k, v in scope.get("headers", [])}
                rejection = self._check(scope, headers)
                if rejection is not None:
                    metrics.REJECTED.labels(rejection[2]).inc()
                    await _send_json(send_counted, rejection[0], rejection[1],
                                     {"WWW-Authenticate": "Bearer"}
                                     if rejection[0] == 401 else None)
                    return
                receive = self._limited(receive)
            await self.app(scope, receive, send_counted)
        finally:
            metrics.REQUESTS.labels(endpoint, str(status["code"])).inc()
            metrics.REQUEST_LATENCY.labels(endpoint).observe(time.perf_counter() - t0)

    def _check(self, scope, headers: dict[str, str]):
        key = None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
        key = key or headers.get("x-api-key") or None
        tenant = self.keys.tenant_for(key)
        if tenant is None:
            msg = ("missing API key: send 'Authorization: Bearer KEY'" if not key
                   else "invalid API key")
            return 401, error_body(msg, "authentication_error", "invalid_api_key"), "unauthorized"
        scope[TENANT_SCOPE_KEY] = tenant
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return 413, error_body(_too_large(int(length), self.max_body_bytes),
                                   "invalid_request_error", "request_too_large"), "too_large"
        return None

    def _limited(self, receive):
        limit = self.max_body_bytes
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    metrics.REJECTED.labels("too_large").inc()
                    # FastAPI re-raises an HTTPException from body reading: a 413, not a 400
                    raise HTTPException(413, _too_large(seen, limit))
            return message

        return limited


def _too_large(size: int, limit: int) -> str:
    return (f"request body of {size} bytes or more is over the limit of {limit} bytes "
            "(GUARDIAN_API_MAX_BODY_BYTES)")


async def _send_json(send, status: int, body: dict, headers: dict[str, str] | None = None):
    payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


# -- the service: model, policies, cache and batcher of one process -------------------------
def load_config(settings: GuardianSettings) -> tuple[PolicyStore, KeyStore]:
    """The policy store and key store; fails at start, not on the first request, for a
    policy id (default or a tenant's) that no policy file has."""
    store = PolicyStore.from_settings(settings)
    keys = KeyStore.from_file(settings.api_keys_file or None)
    known = set(store.ids())
    refs = [("GUARDIAN_DEFAULT_POLICY", settings.default_policy)]
    for tenant in keys.tenants():
        refs += [(f"tenant {tenant.name}", p) for p in sorted(tenant.policies or ())]
        if tenant.default_policy:
            refs.append((f"tenant {tenant.name} default_policy", tenant.default_policy))
    for where, ref in refs:
        if ref and ref != AUTO and ref not in known:
            raise PolicyError(f"{where}: unknown policy {ref!r}; known: {sorted(known)}")
    if settings.api_max_inputs > settings.api_max_queue:
        log.warning("GUARDIAN_API_MAX_INPUTS=%d is over GUARDIAN_API_MAX_QUEUE=%d: requests "
                    "with more inputs than the queue holds always get 429",
                    settings.api_max_inputs, settings.api_max_queue)
    return store, keys


class GuardianService:
    def __init__(self, settings: GuardianSettings, backend=None) -> None:
        self.settings = settings
        self.store, self.keys = load_config(settings)
        self.backend = backend
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="guardian-model")
        self.batcher: Batcher | None = None
        self.cache = None
        self.load_error: str | None = None
        self._load_task: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self.batcher is not None and self.load_error is None

    async def start(self) -> None:
        if self.settings.redis_url:
            from stream.cache import VerdictCache

            self.cache = VerdictCache(self.settings.redis_url, self.settings.cache_ttl_s)
        if self.backend is not None:
            self._start_batcher()
        else:
            self._load_task = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        from model.backends import create_backend

        try:
            self.backend = await asyncio.get_running_loop().run_in_executor(
                self.executor, create_backend, self.settings)
        except Exception as exc:  # noqa: BLE001 - reported by /healthz
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("could not load the guardian backend")
            return
        self._start_batcher()

    def _start_batcher(self) -> None:
        s = self.settings
        self.batcher = Batcher(self.backend, max_batch=s.api_max_batch,
                               max_wait_ms=s.api_max_wait_ms, max_queue=s.api_max_queue,
                               executor=self.executor)
        self.batcher.start()
        log.info("guardian ready: %s %s (%s)", self.backend.model_id,
                 self.backend.model_version, self.backend.name)

    async def stop(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self.batcher is not None:
            await self.batcher.stop()
        if self.cache is not None:
            await self.cache.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def health(self) -> tuple[bool, dict[str, Any]]:
        b = self.batcher
        return self.ready, {
            "status": "ok" if self.ready else ("error" if self.load_error else "starting"),
            "error": self.load_error,
            "model_id": getattr(self.backend, "model_id", None),
            "model_version": getattr(self.backend, "model_version", None),
            "backend": getattr(self.backend, "name", None),
            "batches": b.batches if b else 0,
            "model_calls": b.model_calls if b else 0,
            "last_batch_at": b.last_batch_at if b else None,
            "queue": b.waiting if b else 0,
            "cache": "on" if (self.cache is not None and self.cache.enabled) else "off",
            "auth": "open" if self.keys.open else "keys",
        }

    @property
    def model_version(self) -> str:
        return str(getattr(self.backend, "model_version", "") or "guardian")

    async def judge(self, items: list[tuple[str, str, str | None]], tenant: Tenant,
                    default_ref: str | None) -> list[dict[str, Any]]:
        """Verdict dicts for (id, text, policy ref) items, in order."""
        s = self.settings
        if tenant is None:  # only reachable if a route bypassed GuardMiddleware
            raise APIError(401, "missing API key", type="authentication_error",
                           code="invalid_api_key")
        if not self.ready:
            if self.load_error:
                raise APIError(503, f"the guardian failed to load: {self.load_error}",
                               type="server_error", code="model_unavailable")
            raise APIError(503, "the guardian model is still loading; retry shortly",
                           type="server_error", code="model_loading",
                           headers={"Retry-After": "5"})
        if len(items) > s.api_max_inputs:
            metrics.REJECTED.labels("too_many_inputs").inc()
            raise APIError(413, f"{len(items)} inputs in one request; the limit is "
                           f"{s.api_max_inputs} (GUARDIAN_API_MAX_INPUTS)",
                           code="too_many_inputs", param="input")
        for i, (_, text, _) in enumerate(items):
            if len(text) > s.max_text_chars:
                metrics.REJECTED.labels("text_too_long").inc()
                raise APIError(413, f"input[{i}] has {len(text)} characters; the limit is "
                               f"{s.max_text_chars} (GUARDIAN_MAX_TEXT_CHARS)",
                               code="text_too_long", param=f"input[{i}]")
        metrics.INPUTS_PER_REQUEST.observe(len(items))
        fallback = default_ref or tenant.default_policy or s.default_policy or AUTO
        policies = []
        for i, (_, text, ref) in enumerate(items):
            try:
                policy = self.store.for_text(ref or fallback, text)
            except PolicyError as exc:
                metrics.REJECTED.labels("unknown_policy").inc()
                raise APIError(422, str(exc), code="unknown_policy", param="policy") from None
            if not tenant.allows(policy.id):
                metrics.REJECTED.labels("forbidden").inc()
                how = "" if (ref or fallback) != AUTO else " (the default for this language)"
                raise APIError(403, f"policy {policy.id!r}{how} is not allowed for tenant "
                               f"{tenant.name!r}; allowed: {sorted(tenant.policies or ())}",
                               type="permission_error", code="policy_not_allowed",
                               param=f"input[{i}]")
            policies.append(policy)

        verdicts: list[dict[str, Any] | None] = [None] * len(items)
        keys: list[str] = []
        if self.cache is not None:
            from stream.cache import cache_key

            keys = [cache_key(text, p.key, self.model_version)
                    for (_, text, _), p in zip(items, policies)]
            now = time.time()
            for i, hit in enumerate(await self.cache.get_many(keys)):
                if hit is not None and hit.get("label") in ("safe", "unsafe"):
                    hit.update(id=items[i][0], created_at=now, cache_hit=True)
                    verdicts[i] = hit
                    metrics.CACHE_HITS.inc()
                else:
                    metrics.CACHE_MISSES.inc()
        todo = [i for i, v in enumerate(verdicts) if v is None]
        if todo:
            try:
                future = self.batcher.submit([Query(items[i][0], items[i][1]) for i in todo],
                                             [policies[i] for i in todo])
            except Overloaded as exc:
                metrics.REJECTED.labels("overloaded").inc()
                raise APIError(429, f"server overloaded: {exc}", type="rate_limit_error",
                               code="overloaded", headers={"Retry-After": "1"}) from None
            except ShuttingDown as exc:
                raise APIError(503, str(exc), type="server_error", code="unavailable") from None
            try:
                out = await future
            except ShuttingDown as exc:
                raise APIError(503, str(exc), type="server_error", code="unavailable") from None
            except Exception as exc:  # noqa: BLE001 - a model failure: 500 with the reason
                raise APIError(500, f"the guardian failed on this batch: "
                               f"{type(exc).__name__}: {exc}", type="server_error",
                               code="model_error") from None
            fresh: dict[str, str] = {}
            for i, verdict in zip(todo, out, strict=True):
                d = verdict.to_dict()
                verdicts[i] = d
                if keys:
                    fresh[keys[i]] = json.dumps(d, ensure_ascii=False)
            if fresh:
                await self.cache.set_many(fresh)
        metrics.QUERIES.labels("judged").inc(len(items))
        for v in verdicts:
            metrics.VERDICTS.labels(v["label"], "cache" if v.get("cache_hit") else "model").inc()
        return verdicts


# -- the app ---------------------------------------------------------------------------
def create_app(settings: GuardianSettings | None = None, *, backend=None) -> FastAPI:
    """The API app. `backend` (anything with `judge(queries, policy)`, `name`, `model_id`,
    `model_version`) skips loading; by default the server loads
    `create_backend(settings)` at start."""
    settings = settings or GuardianSettings()
    service = GuardianService(settings, backend)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="guardian moderation API",
        version="1",
        description="OpenAI-compatible `/v1/moderations` and the native `/v1/judge` of the "
        "guardian (one small model: label, harm category and safety response). "
        "Authenticate with `Authorization: Bearer KEY` when the server has a keys file.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(GuardMiddleware, keys=service.keys,
                       max_body_bytes=settings.api_max_body_bytes)

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError):
        return JSONResponse(error_body(exc.message, exc.type, exc.code, exc.param),
                            status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        raw = exc.errors()
        for e in raw:  # exceptions in ctx (pydantic's ValueError) become their message
            if isinstance(e.get("ctx"), dict) and isinstance(e["ctx"].get("error"), Exception):
                e["ctx"] = {**e["ctx"], "error": str(e["ctx"]["error"])}
        errors = jsonable_encoder(raw)
        parts, params = [], []
        for e in errors:
            ctx = (e.get("ctx") or {}).get("error")
            if e.get("type") == "json_invalid":
                pos = e.get("loc", ("body", "?"))[-1]
                parts.append(f"body is not valid JSON at position {pos}: {ctx}")
                continue
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            params.append(loc or None)
            ctype = request.headers.get("content-type", "")
            if not loc and e.get("type") == "model_attributes_type" and "json" not in ctype:
                parts.append(f"the body must be a JSON object sent with 'Content-Type: "
                             f"application/json' (got {ctype or 'no content type'!r})")
                continue
            parts.append(f"{loc or 'body'}: {e.get('msg')}")
        metrics.REJECTED.labels("invalid").inc()
        param = params[0] if params else None
        body = error_body("invalid request: " + "; ".join(parts), "invalid_request_error",
                          "invalid_request", param)
        body["detail"] = errors
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        type_, code = _STATUS_TYPES.get(exc.status_code, ("invalid_request_error", None))
        return JSONResponse(error_body(str(exc.detail), type_, code),
                            status_code=exc.status_code, headers=exc.headers)

    errors = {
        401: {"description": "missing or invalid API key"},
        403: {"description": "policy not allowed for the key's tenant"},
        413: {"description": "body, input count or text over the limit"},
        422: {"description": "bad JSON, bad fields or unknown policy (with the reason)"},
        429: {"description": "too many queries waiting for the model"},
        503: {"description": "the model is loading or failed to load"},
    }

    @app.post("/v1/moderations", response_model=ModerationResponse, responses=errors,
              tags=["moderation"], summary="OpenAI-compatible moderation")
    async def moderations(body: ModerationRequest, request: Request):
        rid = "modr-" + uuid.uuid4().hex
        texts = body.texts()
        items = [(f"{rid}-{i}", t, None) for i, t in enumerate(texts)]
        verdicts = await service.judge(items, request.scope.get(TENANT_SCOPE_KEY), body.policy)
        return {"id": rid, "model": service.model_version,
                "results": [openai_result(v) for v in verdicts]}

    @app.post("/v1/judge", response_model=JudgeResponse, responses=errors,
              tags=["moderation"], summary="Full guardian verdicts")
    async def judge(body: JudgeRequest, request: Request):
        rid = "judge-" + uuid.uuid4().hex
        items = [(q.id or f"q{i}", q.text, q.policy) for i, q in enumerate(body.items())]
        verdicts = await service.judge(items, request.scope.get(TENANT_SCOPE_KEY), body.policy)
        if body.response_mode == "none":
            for v in verdicts:
                v.pop("response", None)
        return {"id": rid, "model": service.model_version, "verdicts": verdicts}

    @app.get("/healthz", tags=["operations"], summary="200 once the model is loaded")
    async def healthz():
        ok, info = service.health()
        return JSONResponse(info, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def prometheus_metrics():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` (each worker process builds its own app)."""
    return create_app(GuardianSettings())
