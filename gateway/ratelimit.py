"""Per-partner rate limits: a token bucket per partner, in this process or in the store.

``requests_per_second`` tokens flow into a bucket that holds at most ``burst``; each
authenticated request takes one. An empty bucket answers ``429 rate_limited`` with
``Retry-After`` (whole seconds until a token is back). The check runs after the
signature is verified (so nobody can drain another partner's bucket with forged
requests) and before the replay cache records the signature (so a refused request can
be sent again as it was).

By default the buckets live in memory: with N processes or replicas behind a load balancer
the effective limit is up to N times the configured one. With ``rate_limits.shared`` every
process takes from one bucket per partner in the store (``Store.rate_take``: one Lua script
on Redis, batched with the other scripts of the event-loop turn; a row in the group
transaction on SQLite), so together they allow the configured rate.

When the store cannot answer, ``rate_limits.on_store_error`` decides, for the next
``STORE_RETRY_SECONDS`` without asking the store again (so an outage costs one slow call a
second, not one per request):

* ``local`` (default): this process's own bucket decides, the per-process limit (up to N
  times the configured rate for the whole fleet, for as long as the store is out);
* ``allow``: no limit while the store is out;
* ``refuse``: ``503 service_unavailable`` (retriable) for every request of a limited partner.

Concurrency limits (``concurrency``) shed load instead of queueing it: a partner with
``max_concurrent`` requests in progress in this process, or a legacy API (a mapping) with
``per_upstream`` requests in progress for its partners, gets ``503 service_unavailable``
with ``Retry-After`` for the next one at once — after the signature check, before the rate
limit takes a token, and before any ledger or legacy work (nothing was done: the retry is a
first attempt). A request holds its slots until its answer is ready (``HELD``, set for each
request by the app's middleware, and ``release_slots``). With ``concurrency.adaptive`` each
partner's share of a legacy API follows the latency of its calls (``AdaptiveLimit``), under the
configured limit.

    >>> bucket = TokenBucket(RateLimit(2, burst=2), now=0.0)
    >>> bucket.take(0.0), bucket.take(0.0), bucket.take(0.0), bucket.take(0.5)
    (0.0, 0.0, 0.5, 0.0)
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from gateway.errors import IgspError
from gateway.store.base import Store, StoreUnavailable

log = logging.getLogger("igsp.ratelimit")

#: What a shared limit does when the store cannot answer (``rate_limits.on_store_error``).
LOCAL, ALLOW, REFUSE = "local", "allow", "refuse"
ON_STORE_ERROR = (LOCAL, ALLOW, REFUSE)
#: After a store failure, shared limits do without the store this long before trying it again.
STORE_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class RateLimit:
    requests_per_second: float
    burst: int = 0  # 0: one second's worth (at least 1)

    @property
    def capacity(self) -> float:
        return float(self.burst or max(1, math.ceil(self.requests_per_second)))

    @classmethod
    def parse(cls, spec: dict | None) -> RateLimit | None:
        """From the config's ``{requests_per_second, burst}``; None (or null) means unlimited."""
        if not spec:
            return None
        return cls(float(spec["requests_per_second"]), int(spec.get("burst") or 0))


class RateLimited(IgspError):
    """429 ``rate_limited``; ``retry_after`` (seconds) goes into the Retry-After header."""

    def __init__(self, retry_after: int, partner: str | None = None):
        super().__init__("rate_limited", "too many requests for this credential; retry later")
        self.retry_after = retry_after
        self.partner = partner  # authenticated: logs and metrics may name it


class Overloaded(IgspError):
    """503 ``service_unavailable`` with ``Retry-After``: too many requests in progress."""

    def __init__(self, retry_after: int, partner: str, what: str):
        super().__init__("service_unavailable", f"too many requests in progress for this {what}; retry later")
        self.retry_after = retry_after
        self.partner = partner  # authenticated: logs and metrics may name it


#: The concurrency slots the current request holds: (counts, key) pairs, released by
#: ``release_slots`` once its answer is ready. None outside a request: nothing is counted.
HELD: ContextVar[list | None] = ContextVar("igsp_concurrency_held", default=None)


def release_slots(held: list) -> None:
    for counts, key, _ in held:
        counts[key] -= 1
    held.clear()


class Limit:
    """A fixed concurrency limit: at most ``value`` requests in progress."""

    adaptive = False

    def __init__(self, value: int):
        self.value = value


@dataclass(frozen=True)
class AdaptiveSettings:
    """``concurrency.adaptive``: the latency to keep and the lowest limit."""

    target_seconds: float
    floor: int = 1

    @classmethod
    def parse(cls, spec: dict | None) -> AdaptiveSettings | None:
        if not spec:
            return None
        return cls(float(spec["target_ms"]) / 1000, int(spec.get("min", 1)))


class AdaptiveLimit(Limit):
    """One partner's share of a legacy API, following the latency of its calls
    (``concurrency.adaptive``).

    Why: a fixed limit is right for one speed of the legacy API. When a wallet slows down
    under load (a lock, a failover, a full disk), each of the fixed number of requests in
    progress waits longer, until the mapping's timeout and the callers' expire — and every
    debit that timed out is an unknown outcome the gateway must settle afterwards. Admitting
    fewer at once keeps each admitted call fast and its outcome known; the rest are answered
    ``503`` + ``Retry-After`` at once, before any ledger or legacy work.

    A latency gradient, as TCP Vegas and Netflix's concurrency-limits use. A window closes
    once it holds ``min_calls`` calls and ``window`` seconds have passed since its first (one
    not full within ``stale`` seconds begins again). Its calls are
    *queueing* when their mean is above the target and more than ``queueing`` times the
    fastest successful call of the last ``memory`` windows (the wallet's own speed, learnt): then the
    limit shrinks in proportion (at most halving), and calls admitted before the cut are not
    counted in the next windows (they say nothing about the new limit). Otherwise it grows by
    its square root. A wallet that is slow at any load (its fastest call above the target
    too) is not queueing: the limit stays. Within ``[floor, ceiling]``: the configured limit
    is the ceiling, so it only ever admits fewer than the fixed limit would, never more.

    Per partner (each partner's share of the legacy API learns from its own calls: one
    partner's slow calls, or a flood of them, shrink its own share, not another's) and per
    process, like the counts.
    """

    adaptive = True
    window = 0.5
    min_calls = 5
    stale = 5.0
    queueing = 2.0
    memory = 20

    def __init__(self, ceiling: int, settings: AdaptiveSettings, now: float, start: float | None = None,
                 warned: bool = False):
        self.ceiling, self.settings = ceiling, settings
        self.floor = min(settings.floor, ceiling)
        self._limit = float(ceiling if start is None else min(ceiling, max(self.floor, start)))
        super().__init__(int(self._limit))
        self._since, self._total, self._calls, self._fastest = now, 0.0, 0, math.inf
        self._fastest_by_window: deque[float] = deque(maxlen=self.memory)
        self._cut_at = -math.inf  # when the limit last shrank
        self.warned = warned  # the "slower than its target" line was logged, "back" not yet

    def carried(self, ceiling: int, settings: AdaptiveSettings, now: float) -> AdaptiveLimit:
        """This limit under a reloaded config: the same object if nothing changed; else a new
        one that starts where this one is (never above its new ceiling), not at the ceiling."""
        if (ceiling, settings) == (self.ceiling, self.settings):
            return self
        return AdaptiveLimit(ceiling, settings, now, start=self._limit, warned=self.warned)

    def call_done(self, seconds: float, now: float, answered: bool = True) -> None:
        """A call of ``seconds`` ended at ``now``; ``answered``: the wallet did the call's work
        (a timeout, a 5xx or a refusal may come faster or slower than the work, and would
        teach a wrong speed: they count in the mean, not as the fastest call)."""
        if now - seconds < self._cut_at:
            return  # admitted under the limit before the last cut
        if not self._calls or now - self._since > self.stale:
            # A window is timed from its first call, and one that took longer than ``stale``
            # to fill is begun again: calls minutes apart say nothing together.
            self._since, self._total, self._calls, self._fastest = now, 0.0, 0, math.inf
        self._total += seconds
        self._calls += 1
        if answered:
            self._fastest = min(self._fastest, seconds)
        if self._calls < self.min_calls or now - self._since < self.window:
            return
        mean = self._total / self._calls
        if self._fastest < math.inf:
            self._fastest_by_window.append(self._fastest)
        target = self.settings.target_seconds
        allowed = max(target, self.queueing * min(self._fastest_by_window)) if self._fastest_by_window else target
        if mean > allowed:
            self._limit *= max(0.5, allowed / mean)
            self._cut_at = now
        else:
            self._limit += math.sqrt(self._limit)
        self._limit = min(float(self.ceiling), max(float(self.floor), self._limit))
        self.value = int(self._limit)
        self._since, self._total, self._calls, self._fastest = now, 0.0, 0, math.inf


class Concurrency:
    """Requests in progress per partner and per upstream (mapping), in this process.

    ``counts`` is shared with the previous config generation's (a reload must not forget the
    requests still running), and so are the adaptive limits (``previous``: that generation's
    Concurrency; see ``AdaptiveLimit.carried``); limits of 0 or None are no limit.
    """

    def __init__(self, partner_limits: dict[str, int | None], upstream_of: dict[str, str],
                 upstream_limits: dict[str, int | None], retry_after: int = 1, counts: dict | None = None, *,
                 adaptive: AdaptiveSettings | None = None, previous: Concurrency | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_limit: Callable[[AdaptiveLimit, str, str], None] = lambda *_: None):
        self.clock, self.on_limit = clock, on_limit
        #: (upstream, partner) -> that partner's adaptive share of the upstream.
        self.adaptive: dict[tuple[str, str], AdaptiveLimit] = {}
        self.slots = {}  # partner -> [(key, Limit, what), ...]
        for partner, upstream in upstream_of.items():
            mine, ceiling = partner_limits.get(partner), upstream_limits.get(upstream)
            slots = []
            if mine:
                slots.append((("partner", partner), Limit(mine), "partner"))
            if ceiling:
                slots.append((("upstream", upstream), Limit(ceiling), "upstream"))
                if adaptive is not None:
                    kept = previous.adaptive.get((upstream, partner)) if previous is not None else None
                    share = (kept.carried(ceiling, adaptive, clock()) if kept is not None
                             else AdaptiveLimit(ceiling, adaptive, clock()))
                    self.adaptive[(upstream, partner)] = share
                    slots.append((("adaptive", upstream, partner), share, "upstream"))
            self.slots[partner] = slots
        self.retry_after = retry_after
        self.counts: dict = counts if counts is not None else {}

    def export(self) -> None:
        """Every adaptive limit to ``on_limit`` (the gauge), as it is now."""
        for (upstream, partner), limit in self.adaptive.items():
            self.on_limit(limit, upstream, partner)

    def enter(self, partner_id: str) -> None:
        held = HELD.get()
        slots = self.slots.get(partner_id)
        if held is None or not slots:
            return
        counts = self.counts
        for key, limit, what in slots:
            if counts.get(key, 0) >= limit.value:
                raise Overloaded(self.retry_after, partner_id, what)
        for key, limit, _ in slots:
            counts[key] = counts.get(key, 0) + 1
            held.append((counts, key, limit))

    def call_done(self, upstream: str, seconds: float, kind: str) -> None:
        """A legacy call of the current request ended (the LegacyClient observer): its
        duration feeds the adaptive limit the request holds for ``upstream``. A call outside a
        request (a queued delivery) holds none; one that failed before the wallet could be slow
        (refused connection, reset, mapping error) says nothing about its latency."""
        held = HELD.get()
        if not held or kind not in LATENCY_KINDS:
            return
        for _, key, limit in held:
            if limit.adaptive and key[1] == upstream:
                before = limit.value
                limit.call_done(seconds, self.clock(), kind == "ok")
                if limit.value != before:
                    self._moved(upstream, key[2], limit)

    def _moved(self, upstream: str, partner: str, limit: AdaptiveLimit) -> None:
        self.on_limit(limit, upstream, partner)
        # One line each way, with some hysteresis: a limit that wavers near its ceiling says
        # nothing an on-call must read; one at half of it or less does.
        if not limit.warned and limit.value <= limit.ceiling // 2:
            limit.warned = True
            log.warning("legacy API slower than its latency target: fewer of a partner's requests admitted",
                        extra={"mapping": upstream, "partner": partner, "limit": limit.value,
                               "ceiling": limit.ceiling, "target_ms": limit.settings.target_seconds * 1000})
        elif limit.warned and limit.value == limit.ceiling:
            limit.warned = False
            log.info("legacy API back within its latency target: the partner's limit is the configured one again",
                     extra={"mapping": upstream, "partner": partner, "limit": limit.value})


#: The outcomes of a legacy call whose duration is the wallet's latency: an answer (whatever
#: it said) or none within the timeout. Not a refused connection, a reset, a mapping error.
LATENCY_KINDS = frozenset(("ok", "business", "timeout", "5xx", "unknown", "unproven", "bad_body"))


class TokenBucket:
    def __init__(self, limit: RateLimit, now: float | None = None):
        self.rate = limit.requests_per_second
        self.capacity = limit.capacity
        self.tokens = self.capacity
        self.updated = time.monotonic() if now is None else now

    def take(self, now: float | None = None) -> float:
        """Take one token; return 0.0 when granted, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Limiter:
    """The buckets of every rate-limited partner (partners without a limit are not tracked).

    With a ``store``, the limits are shared by every process on it (see the module docstring);
    the in-process buckets then only decide while the store is out (``on_store_error`` local).
    """

    def __init__(self, limits: dict[str, RateLimit | None], on_limited: Callable[[str], None] | None = None,
                 *, store: Store | None = None, on_store_error: str = LOCAL, concurrency: Concurrency | None = None):
        if on_store_error not in ON_STORE_ERROR:
            raise ValueError(f"on_store_error must be one of {', '.join(ON_STORE_ERROR)}")
        self.buckets = {partner: TokenBucket(limit) for partner, limit in limits.items() if limit is not None}
        self.on_limited = on_limited
        self.store = store
        self.on_store_error = on_store_error
        self.store_down_until = 0.0  # time.monotonic() before which the store is not asked
        self.concurrency = concurrency

    @property
    def shared(self) -> bool:
        return self.store is not None

    async def check(self, partner_id: str) -> None:
        """Admit one request of ``partner_id``: its concurrency slots, then its rate limit."""
        if self.concurrency is not None:
            self.concurrency.enter(partner_id)
        bucket = self.buckets.get(partner_id)
        if bucket is None:
            return
        wait = bucket.take() if self.store is None else await self._take_shared(partner_id, bucket)
        if wait > 0:
            if self.on_limited is not None:
                self.on_limited(partner_id)
            raise RateLimited(max(1, math.ceil(wait)), partner_id)

    async def _take_shared(self, partner_id: str, bucket: TokenBucket) -> float:
        if time.monotonic() >= self.store_down_until:
            try:
                wait = await self.store.rate_take(partner_id, bucket.rate, bucket.capacity)
            except StoreUnavailable:
                if self.store_down_until == 0.0:
                    log.warning("shared rate limits: the store is unavailable, limiting as on_store_error says",
                                extra={"on_store_error": self.on_store_error})
                self.store_down_until = time.monotonic() + STORE_RETRY_SECONDS
            else:
                if self.store_down_until:
                    log.info("shared rate limits: the store answers again")
                    self.store_down_until = 0.0
                return wait
        if self.on_store_error == REFUSE:
            raise StoreUnavailable()
        if self.on_store_error == ALLOW:
            return 0.0
        return bucket.take()


__all__ = ["ALLOW", "HELD", "LOCAL", "REFUSE", "AdaptiveLimit", "AdaptiveSettings", "Concurrency", "Limit", "Limiter",
           "Overloaded", "RateLimit", "RateLimited", "TokenBucket", "release_slots"]
