"""Prometheus metrics of the worker, plus a tiny aiohttp server for /metrics and /healthz.

One module owns the metric objects so the app, cache and sink count into the same registry.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

QUERIES = Counter("guardian_queries_total", "Input records consumed", ["outcome"])
VERDICTS = Counter("guardian_verdicts_total", "Verdicts published", ["label", "source"])
BATCH_SIZE = Histogram(
    "guardian_batch_size", "Records per micro-batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
MODEL_LATENCY = Histogram(
    "guardian_model_latency_seconds", "Time of one backend.judge call (one policy group)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
E2E_LATENCY = Histogram(
    "guardian_end_to_end_latency_seconds",
    "From the input record's Kafka timestamp to its verdict being acknowledged",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RESPONSES_PENDING = Gauge(
    "guardian_responses_pending",
    "Generate-mode unsafe verdicts published whose response is not published yet",
)
RESPONSE_LATENCY = Histogram(
    "guardian_response_latency_seconds",
    "From a pending verdict's handover to the response stage to its response being acked",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
CACHE_HITS = Counter("guardian_cache_hits_total", "Verdicts served from Redis")
CACHE_MISSES = Counter("guardian_cache_misses_total", "Lookups that went to the model")
CACHE_ERRORS = Counter("guardian_cache_errors_total", "Redis errors and timeouts (no cache)")
DLQ = Counter("guardian_dlq_total", "Records sent to the DLQ", ["reason"])
MODEL_FAILURES = Counter(
    "guardian_model_failures_total",
    "Backend calls that raised: on a whole policy group (retried, then split) or on one "
    "query judged alone (that query goes to the DLQ)", ["stage"],
)
BATCH_RETRIES = Counter(
    "guardian_batch_retries_total",
    "Micro-batches processed again after a failure outside the model (publishing); outputs "
    "Kafka already acknowledged are not sent again",
)
REDELIVERED = Counter(
    "guardian_redelivered_total",
    "Input records delivered again (rebalance, broker restart) that this worker had already "
    "published: acked, not judged or published again",
)
TRUNCATED = Counter(
    "guardian_truncated_queries_total",
    "Queries longer than GUARDIAN_MAX_TEXT_CHARS, judged on their first characters",
)
CONSUMER_LAG = Gauge("guardian_consumer_lag", "Highwater minus next offset", ["partition"])
FLAGGED_FILES = Counter("guardian_flagged_files_total", "Parquet files written")
MODEL_INFO = Gauge(
    "guardian_model_info", "The model judging this worker's batches (1 for the serving one)",
    ["model_id", "version"],
)
REGISTRY_LOADS = Counter(
    "guardian_registry_loads_total",
    "Registry versions a following worker loaded (GUARDIAN_FOLLOW_REGISTRY)", ["outcome"],
)


def set_serving_model(model_id: str, version: str) -> None:
    """Point guardian_model_info at the serving model (one labelled series at a time)."""
    MODEL_INFO.clear()
    MODEL_INFO.labels(str(model_id), str(version)).set(1)


async def start_http(port: int, health) -> object:
    """Serve /metrics and /healthz on `port` (0 = any free port); returns the runner."""
    from aiohttp import web

    async def metrics_view(_request):
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_view(_request):
        ok, info = health()
        return web.json_response(info, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", health_view)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "0.0.0.0", port)
    await site.start()
    return runner
