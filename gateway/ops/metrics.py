"""Prometheus metrics, low-cardinality by design (no player or transaction ids).

Labels only ever take values from small, known sets: configured partner ids, route
names, operation names, iGSP outcome classes, failure kinds and reasons.

With several worker processes ``PROMETHEUS_MULTIPROC_DIR`` must be set *before* this
module is imported (``igsp-gateway serve --workers N`` does it) and every process's
samples are aggregated on scrape. The queue gauges then report the most recent value
of a live process, and a worker that exits is marked dead so its gauges disappear
while its counters keep counting.
"""

from __future__ import annotations

import os
from collections.abc import Callable

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
IP_REFUSED = Counter("igsp_ip_refused", "Requests refused 403 because the client address is not in the "
                     "partner's allowed_ips", ["partner"])
REPLAYS = Counter("igsp_idempotent_replays", "Duplicate transactions answered from the ledger",
                  ["partner", "action"])
QUEUE_DEPTH = Gauge("igsp_queue_depth", "Deliveries waiting in the retry queue",
                    multiprocess_mode="livemostrecent")
QUEUE_OLDEST = Gauge("igsp_queue_oldest_age_seconds", "Age of the oldest queued delivery",
                     multiprocess_mode="livemostrecent")
LEDGER_OLDEST_PENDING = Gauge(
    "igsp_ledger_oldest_pending_seconds",
    "Age of the oldest ledger record still pending (a transaction whose legacy call has not ended); "
    "past queue.lease_seconds the sweeper settles it", multiprocess_mode="livemostrecent")
ORPHANS_SETTLED = Counter("igsp_ledger_orphans_settled", "Pending ledger records settled by the sweeper", ["action"])
QUEUE_DEAD = Gauge("igsp_queue_dead_letters", "Entries in the dead-letter queue", multiprocess_mode="livemostrecent")
QUEUE_ATTEMPTS = Counter("igsp_queue_attempts", "Queued delivery attempts", ["route", "outcome"])
DEAD_LETTERS = Counter("igsp_dead_letters", "Deliveries moved to the dead-letter queue", ["route"])
CATALOGUE_CACHE = Counter("igsp_catalogue_cache", "Catalogue cache lookups", ["result"])
CONFIG_RELOADS = Counter("igsp_config_reloads", "Config reloads (SIGHUP or file change)", ["outcome"])

#: Label values known up front, exported at zero from start-up so rate() and the
#: dashboard work before the first event (and a missing series is never "no data").
SIGNATURE_REASONS = ("missing_credential", "unknown_api_key", "missing_signature", "stale_timestamp",
                     "bad_signature", "replayed_signature")
UPSTREAM_KINDS = ("timeout", "connect", "5xx", "bad_body", "reset", "uncorrelated")
QUEUE_OUTCOMES = ("delivered", "retry", "dead")
QUEUE_ROUTES = ("wallet",)


_children: dict = {}


def child(metric, *labels: str):
    """``metric.labels(*labels)``, remembered: labels() validates and locks on every call,
    and the hot path asks for the same few series again and again (labels are low-cardinality)."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def init_series() -> None:
    for reason in SIGNATURE_REASONS:
        SIGNATURE_FAILURES.labels(reason)
    for route in QUEUE_ROUTES:
        DEAD_LETTERS.labels(route)
        for outcome in QUEUE_OUTCOMES:
            QUEUE_ATTEMPTS.labels(route, outcome)
    for result in ("hit", "miss"):
        CATALOGUE_CACHE.labels(result)
    for outcome in ("applied", "refused"):
        CONFIG_RELOADS.labels(outcome)
    for action in ("bet", "win", "refund", "session"):
        ORPHANS_SETTLED.labels(action)


def ip_refusals(partners) -> Callable[[str], None]:
    """The Verifier's ``on_refused``: counts by partner id, each partner with an allowlist
    exported at zero from the generation that configures it."""
    for partner in partners:
        if partner.allowed_ips is not None:
            child(IP_REFUSED, partner.id)
    return lambda partner_id: child(IP_REFUSED, partner_id).inc()


def observe_upstream(mapping: str, operation: str, kind: str, seconds: float) -> None:
    """The LegacyClient observer: latency of every call, and a count of each failure kind."""
    child(UPSTREAM_SECONDS, mapping, operation).observe(seconds)
    if kind not in ("ok", "business"):
        child(UPSTREAM_ERRORS, mapping, operation, kind).inc()


def catalogue_lookup(hit: bool) -> None:
    CATALOGUE_CACHE.labels("hit" if hit else "miss").inc()


def render() -> bytes:
    """The exposition text: this process's registry, or all workers' in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()


# -- multiprocess bookkeeping (called by the pre-forking parent) -----------------------


def mark_process_dead(pid: int) -> None:
    """A worker exited: drop its live gauges (its counters stay, they still count)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


__all__ = ["CONTENT_TYPE", "catalogue_lookup", "child", "init_series", "ip_refusals", "observe_upstream", "render"]
