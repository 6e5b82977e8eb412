"""Prometheus metrics of the HTTP API.

The model-side metrics are the stream worker's own objects (stream.metrics), so a dashboard
reads `guardian_queries_total`, `guardian_verdicts_total{source}`, `guardian_batch_size`,
`guardian_model_latency_seconds` and `guardian_cache_*` the same way for both; what only an
HTTP server has is counted here under `guardian_api_*`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from stream.metrics import (  # noqa: F401 - re-exported: the shared model-side metrics
    BATCH_SIZE,
    CACHE_HITS,
    CACHE_MISSES,
    MODEL_LATENCY,
    QUERIES,
    VERDICTS,
)

REQUESTS = Counter(
    "guardian_api_requests_total", "HTTP requests answered", ["endpoint", "status"]
)
REQUEST_LATENCY = Histogram(
    "guardian_api_request_latency_seconds", "From request received to response sent",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
REJECTED = Counter(
    "guardian_api_rejected_total", "Requests refused before the model", ["reason"]
)
QUEUE_DEPTH = Gauge("guardian_api_queue_queries", "Queries waiting for the model")
INPUTS_PER_REQUEST = Histogram(
    "guardian_api_inputs_per_request", "Queries in one request",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
