"""Prometheus metrics, low-cardinality by design (no player or transaction ids).

With several worker processes set ``PROMETHEUS_MULTIPROC_DIR`` (``igsp-gateway serve
--workers N`` does it for you) and every process's samples are aggregated on scrape.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: N811
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter("igsp_requests", "iGSP requests answered", ["partner", "face", "operation", "outcome"])
REQUEST_SECONDS = Histogram("igsp_request_duration_seconds", "Time to answer an iGSP request",
                            ["face", "operation"], buckets=_LATENCY_BUCKETS)
UPSTREAM_SECONDS = Histogram("igsp_upstream_duration_seconds", "Legacy API call latency",
                             ["mapping", "operation"], buckets=_LATENCY_BUCKETS)
UPSTREAM_ERRORS = Counter("igsp_upstream_errors", "Legacy API failures by kind",
                          ["mapping", "operation", "kind"])
SIGNATURE_FAILURES = Counter("igsp_signature_failures", "Rejected iGSP credentials or signatures", ["reason"])
RATE_LIMITED = Counter("igsp_rate_limited", "Requests refused by a partner's rate limit", ["partner"])
REPLAYS = Counter("igsp_idempotent_replays", "Duplicate transactions answered from the ledger",
                  ["partner", "action"])
QUEUE_DEPTH = Gauge("igsp_queue_depth", "Deliveries waiting in the retry queue", multiprocess_mode="max")
QUEUE_OLDEST = Gauge("igsp_queue_oldest_age_seconds", "Age of the oldest queued delivery", multiprocess_mode="max")
QUEUE_DEAD = Gauge("igsp_queue_dead_letters", "Entries in the dead-letter queue", multiprocess_mode="max")
QUEUE_ATTEMPTS = Counter("igsp_queue_attempts", "Queued delivery attempts", ["route", "outcome"])
DEAD_LETTERS = Counter("igsp_dead_letters", "Deliveries moved to the dead-letter queue", ["route"])
CATALOGUE_CACHE = Counter("igsp_catalogue_cache", "Catalogue cache lookups", ["result"])


def observe_upstream(mapping: str, operation: str, kind: str, seconds: float) -> None:
    UPSTREAM_SECONDS.labels(mapping, operation).observe(seconds)
    if kind not in ("ok", "business"):
        UPSTREAM_ERRORS.labels(mapping, operation, kind).inc()


def render() -> bytes:
    """The exposition text: this process's registry, or all workers' in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()


__all__ = ["CONTENT_TYPE", "render", "observe_upstream"]
