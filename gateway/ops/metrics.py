"""Prometheus metrics, low-cardinality by design (no player or transaction ids).

Labels only ever take values from small, known sets: configured partner ids, route
names, operation names, iGSP outcome classes (``OUTCOMES``), failure kinds and reasons.

``init_series(config)`` runs at start-up: it adds the configured legacy timeouts to the
latency buckets (``LATENCY_BUCKETS`` has the usual ones) and exports the request, latency
and legacy-call series of every configured partner and mapping at zero, so a fresh install
draws and rate() works before the first request.

With several worker processes ``PROMETHEUS_MULTIPROC_DIR`` must be set *before* this
module is imported (``igsp-gateway serve --workers N`` does it) and every process's
samples are aggregated on scrape. The queue gauges then report the most recent value
of a live process, and a worker that exits is marked dead so its gauges disappear
while its counters keep counting. prometheus_client has no process metrics in that
mode; ``render`` adds them for every live gateway process, labelled ``pid``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: N811
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway.errors import ERROR_CODES

#: Latency bucket edges (seconds), with the legacy timeouts mappings usually set (0.5 to
#: 10 s); ``init_series`` adds any other timeout the config sets, so a call that ran into
#: its timeout lands just above an edge of its own.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5,
                   3.0, 5.0, 10.0)

#: What ``outcome`` of ``igsp_requests_total`` says about an answer, by its iGSP error code
#: (every code of gateway/errors.py ERROR_CODES has one; the README lists them):
#:
#:     ok              answered without error
#:     declined        a business refusal in normal play: the player's, the session's or the
#:                     transaction's state forbids it (insufficient funds, a limit, ...)
#:     caller_error    the caller's request is wrong (invalid, unknown, conflicting, too big,
#:                     over its rate limit): an integration problem on the partner's side
#:     auth_failure    credentials or signature refused (401, 403)
#:     upstream_error  the legacy side failed, timed out or has not settled the transaction yet
#:     internal_error  the gateway or its store failed (500, 503 service_unavailable)
OUTCOMES = ("ok", "declined", "caller_error", "auth_failure", "upstream_error", "internal_error")
DECLINES = frozenset({
    "insufficient_funds", "limit_exceeded", "bet_not_allowed", "player_blocked", "session_not_found",
    "transaction_not_found", "transaction_already_refunded", "transaction_voided", "transaction_not_applied",
})
AUTH_FAILURES = frozenset({"unauthorized", "invalid_signature", "forbidden"})
UPSTREAM_FAILURES = frozenset({
    "upstream_error", "upstream_bad_response", "upstream_unavailable", "upstream_timeout",
    "transaction_in_progress",  # waits on the legacy side: a slow or failed first call
})
INTERNAL_FAILURES = frozenset({"internal_error", "service_unavailable"})
OUTCOME_OF_CODE: dict[str, str] = {
    code: ("declined" if code in DECLINES else "auth_failure" if code in AUTH_FAILURES
           else "upstream_error" if code in UPSTREAM_FAILURES else "internal_error" if code in INTERNAL_FAILURES
           else "caller_error")
    for code in ERROR_CODES
}


def outcome(status: int, error: str | None = None, upstream: bool = False) -> str:
    """The ``outcome`` label of an answer: its HTTP status, the iGSP error code it carries (if
    known) and whether an UpstreamError caused it. A legacy-format answer (legacy face) may
    carry an error under any status: the code decides."""
    if upstream:
        return "upstream_error"
    if error is not None:
        found = OUTCOME_OF_CODE.get(error)
        if found is not None:
            return found
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "auth_failure"
    if status < 500:
        return "caller_error"
    return "upstream_error" if status in (502, 503, 504) else "internal_error"


REQUESTS = Counter("igsp_requests", "iGSP requests answered", ["partner", "face", "operation", "outcome"])
REQUEST_SECONDS = Histogram("igsp_request_duration_seconds", "Time to answer an iGSP request",
                            ["partner", "face", "operation"], buckets=LATENCY_BUCKETS)
UPSTREAM_SECONDS = Histogram("igsp_upstream_duration_seconds", "Legacy API call latency",
                             ["mapping", "operation"], buckets=LATENCY_BUCKETS)
UPSTREAM_ERRORS = Counter("igsp_upstream_errors", "Legacy API failures by kind",
                          ["mapping", "operation", "kind"])
SIGNATURE_FAILURES = Counter("igsp_signature_failures", "Rejected iGSP credentials or signatures", ["reason"])
CONCURRENCY_LIMIT = Gauge(
    "igsp_concurrency_limit", "With concurrency.adaptive: a partner's share of a legacy API now (it follows the "
    "latency of the partner's calls, at most concurrency.per_upstream), summed over this replica's processes",
    ["mapping", "partner"], multiprocess_mode="livesum")
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
CONFIG_LAST_RELOAD_OK = Gauge(
    "igsp_config_last_reload_successful",
    "1 when the last config reload was applied (or none was tried since start), 0 when it was refused: "
    "the running config is not the one on disk", multiprocess_mode="livemostrecent")
STORE_UP = Gauge("igsp_store_up", "1 when the store answered the queue worker's last poll (every queue.poll_seconds), "
                 "0 when it failed", multiprocess_mode="livemostrecent")

#: Label values known up front, exported at zero from start-up so rate() and the
#: dashboard work before the first event (and a missing series is never "no data").
SIGNATURE_REASONS = ("missing_credential", "unknown_api_key", "missing_signature", "stale_timestamp",
                     "bad_signature", "replayed_signature")
UPSTREAM_KINDS = ("timeout", "connect", "5xx", "bad_body", "reset", "uncorrelated")
QUEUE_OUTCOMES = ("delivered", "retry", "dead")
QUEUE_ROUTES = ("wallet",)
#: The ``operation`` of each face's requests (platform: the hook's action; provider: the
#: resource; legacy: the mapping's callback endpoint names) and of the signed hooks the
#: provider face sends (``HOOKS_MAPPING``, one per hook action).
PLATFORM_OPERATIONS = ("balance", "bet", "win", "refund")
PROVIDER_OPERATIONS = ("games", "providers", "sessions")
HOOKS_MAPPING = "platform-hooks"


_children: dict = {}


def child(metric, *labels: str):
    """``metric.labels(*labels)``, remembered: labels() validates and locks on every call,
    and the hot path asks for the same few series again and again (labels are low-cardinality)."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def init_series(config=None) -> None:
    """At start-up: latency buckets for the configured timeouts, then every series known up front."""
    if config is not None:
        _use_buckets(configured_timeouts(config))
    for reason in SIGNATURE_REASONS:
        SIGNATURE_FAILURES.labels(reason)
    for route in QUEUE_ROUTES:
        DEAD_LETTERS.labels(route)
        for outcome_ in QUEUE_OUTCOMES:
            QUEUE_ATTEMPTS.labels(route, outcome_)
    for result in ("hit", "miss"):
        CATALOGUE_CACHE.labels(result)
    for outcome_ in ("applied", "refused"):
        CONFIG_RELOADS.labels(outcome_)
    for action in ("bet", "win", "refund", "session"):
        ORPHANS_SETTLED.labels(action)
    CONFIG_LAST_RELOAD_OK.set(1)
    STORE_UP.set(1)  # the store was opened before anything else started
    if config is not None:
        init_config_series(config)


def init_config_series(config) -> None:
    """Every request and legacy-call series the config's partners and mappings will have, at
    zero (at start-up and after each applied reload, for partners it added)."""
    for partner in config.partners:
        mapping = partner.mapping
        faces: list[tuple[str, Iterable[str]]] = []
        if partner.face == "platform":
            faces.append(("platform", PLATFORM_OPERATIONS))
            for action in PLATFORM_OPERATIONS[1:]:
                child(REPLAYS, partner.id, action)
        else:
            faces.append(("provider", PROVIDER_OPERATIONS))
            callbacks = getattr(mapping.provider, "callbacks", None)
            if callbacks is not None:
                faces.append(("legacy", sorted({ep.name for ep in callbacks.endpoints.values()})))
                for action in PLATFORM_OPERATIONS:
                    child(UPSTREAM_SECONDS, HOOKS_MAPPING, action)
        for face, operations in faces:
            for operation in operations:
                child(REQUEST_SECONDS, partner.id, face, operation)
                for outcome_ in OUTCOMES:
                    child(REQUESTS, partner.id, face, operation, outcome_)
        child(RATE_LIMITED, partner.id)
        for operation in mapping.operations:
            child(UPSTREAM_SECONDS, mapping.name, operation)


def configured_timeouts(config) -> set[float]:
    """Every legacy call timeout the config sets (seconds): each mapping's connect and read
    timeouts, its operations' own, its callbacks' hook timeout."""
    found: set[float] = set()
    for partner in config.partners:
        mapping = partner.mapping
        found |= {mapping.timeout, mapping.connect_timeout}
        found |= {op.timeout for op in mapping.operations.values() if op.timeout}
        callbacks = getattr(mapping.provider, "callbacks", None)
        if callbacks is not None:
            found.add(callbacks.hook_timeout)
    return {round(float(t), 3) for t in found if t and 0 < t < float("inf")}


_buckets: tuple[float, ...] = LATENCY_BUCKETS


def latency_buckets() -> tuple[float, ...]:
    """The bucket edges the latency histograms use now."""
    return _buckets


def _use_buckets(timeouts: Iterable[float]) -> None:
    """Add edges to the latency histograms (only ever more: a process that started several apps
    keeps every edge). Histograms cannot change their buckets, so they are made again, before
    their first observation (at start-up)."""
    global _buckets, REQUEST_SECONDS, UPSTREAM_SECONDS
    edges = tuple(sorted(set(_buckets) | set(timeouts)))
    if edges == _buckets:
        return
    _buckets = edges
    for old in (REQUEST_SECONDS, UPSTREAM_SECONDS):
        REGISTRY.unregister(old)
        for key in [key for key in _children if key[0] is old]:
            del _children[key]
    REQUEST_SECONDS = Histogram("igsp_request_duration_seconds", "Time to answer an iGSP request",
                                ["partner", "face", "operation"], buckets=edges)
    UPSTREAM_SECONDS = Histogram("igsp_upstream_duration_seconds", "Legacy API call latency",
                                 ["mapping", "operation"], buckets=edges)


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
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(GatewayProcesses(path))
        registry.register(PlatformCollector(registry=None))
        return generate_latest(registry)
    return generate_latest()


class GatewayProcesses:
    """The standard ``process_*`` metrics (CPU, memory, open fds, start time) of every live
    gateway process, labelled ``pid``: in multiprocess mode a scrape reaches one worker, whose
    own ProcessCollector would describe only itself.

    The processes are those that keep files in the multiprocess directory (every worker, and
    the parent that forked them), restricted to this process, its parent and its siblings,
    so a dead worker's files (its counters are kept) or a reused pid never add a stranger.
    """

    _FILE = re.compile(r"[a-z_]+_(\d+)\.db")

    def __init__(self, path: str, proc: str = "/proc"):
        self.path, self.proc = path, proc

    def pids(self) -> list[int]:
        me, parent = os.getpid(), os.getppid()
        found = {me}
        try:
            names = os.listdir(self.path)
        except OSError:
            names = []
        for name in names:
            match = self._FILE.fullmatch(name)
            pid = int(match.group(1)) if match else None
            if pid is not None and pid not in found and (pid == parent or self._parent_of(pid) == parent):
                found.add(pid)
        return sorted(found)

    def _parent_of(self, pid: int) -> int | None:
        """The parent of a running process; None once it has exited (a dead worker's counters
        stay in the directory), a zombie included."""
        try:
            with open(os.path.join(self.proc, str(pid), "stat"), "rb") as stat:
                state, parent = stat.read().rsplit(b")", 1)[1].split()[:2]
        except (OSError, ValueError):
            return None
        return None if state in (b"Z", b"X") else int(parent)

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for pid in self.pids():
            for family in ProcessCollector(pid=lambda pid=pid: pid, proc=self.proc, registry=None).collect():
                into = merged.get(family.name)
                if into is None:
                    kind = CounterMetricFamily if family.type == "counter" else GaugeMetricFamily
                    into = merged[family.name] = kind(family.name, family.documentation, labels=["pid"])
                for sample in family.samples:
                    into.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        return list(merged.values())


# -- multiprocess bookkeeping (called by the pre-forking parent) -----------------------


def mark_process_dead(pid: int) -> None:
    """A worker exited: drop its live gauges (its counters stay, they still count)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


__all__ = ["CONTENT_TYPE", "OUTCOMES", "catalogue_lookup", "child", "init_config_series", "init_series",
           "ip_refusals", "observe_upstream", "outcome", "render"]
