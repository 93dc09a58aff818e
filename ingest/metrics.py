"""Prometheus metrics of the ingest tier.

Under gunicorn every worker is a process; with ``PROMETHEUS_MULTIPROC_DIR`` set (the gunicorn
config sets it) each worker writes its samples to that folder and ``/metrics`` sums them, so the
counters add up across workers whichever worker answers the scrape.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from common.metrics_text import render as render  # summed over all workers under gunicorn

WEBHOOKS = Counter(
    "vski_ingest_webhooks_total",
    "Webhooks answered, by outcome (stored, duplicate, or the error code)",
    ["outcome"],
)
LATENCY = Histogram(
    "vski_ingest_webhook_seconds",
    "Time to answer a webhook (inside the worker)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REDIS_ERRORS = Counter("vski_ingest_redis_errors_total", "Redis calls that failed or timed out")
CIRCUIT_TRIPS = Counter(
    "vski_ingest_redis_circuit_trips_total",
    "Times a worker found Redis unreachable and opened its circuit breaker",
)
CIRCUIT_OPEN = Gauge(
    "vski_ingest_redis_circuit_open",
    "1 while any worker's circuit breaker is open (webhooks answered 503 without trying Redis)",
    multiprocess_mode="livemax",
)
REPLICATION_TIMEOUTS = Counter(
    "vski_ingest_replication_timeouts_total",
    "Webhooks answered 503 because fewer replicas than INGEST_WAIT_REPLICAS confirmed in time",
)

# bound once: the success path should not look up label children per request
STORED = WEBHOOKS.labels("stored")
DUPLICATE = WEBHOOKS.labels("duplicate")


@lru_cache(maxsize=64)
def outcome(code: str) -> Any:
    """The counter child of one error code (codes are a small fixed set)."""
    return WEBHOOKS.labels(code)
