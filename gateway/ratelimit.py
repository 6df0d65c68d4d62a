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
request by the app's middleware, and ``release_slots``).

    >>> bucket = TokenBucket(RateLimit(2, burst=2), now=0.0)
    >>> bucket.take(0.0), bucket.take(0.0), bucket.take(0.0), bucket.take(0.5)
    (0.0, 0.0, 0.5, 0.0)
"""

from __future__ import annotations

import logging
import math
import time
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
    for counts, key in held:
        counts[key] -= 1
    held.clear()


class Concurrency:
    """Requests in progress per partner and per upstream (mapping), in this process.

    ``counts`` is shared with the previous config generation's (a reload must not forget the
    requests still running); limits of 0 or None are no limit.
    """

    def __init__(self, partner_limits: dict[str, int | None], upstream_of: dict[str, str],
                 upstream_limits: dict[str, int | None], retry_after: int = 1, counts: dict | None = None):
        self.slots = {}  # partner -> [(key, limit, what), ...]
        for partner, upstream in upstream_of.items():
            wanted = [(("partner", partner), partner_limits.get(partner), "partner"),
                      (("upstream", upstream), upstream_limits.get(upstream), "upstream")]
            self.slots[partner] = [slot for slot in wanted if slot[1]]
        self.retry_after = retry_after
        self.counts: dict = counts if counts is not None else {}

    def enter(self, partner_id: str) -> None:
        held = HELD.get()
        slots = self.slots.get(partner_id)
        if held is None or not slots:
            return
        counts = self.counts
        for key, limit, what in slots:
            if counts.get(key, 0) >= limit:
                raise Overloaded(self.retry_after, partner_id, what)
        for key, _, _ in slots:
            counts[key] = counts.get(key, 0) + 1
            held.append((counts, key))


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


__all__ = ["ALLOW", "HELD", "LOCAL", "REFUSE", "Concurrency", "Limiter", "Overloaded", "RateLimit", "RateLimited",
           "TokenBucket", "release_slots"]
