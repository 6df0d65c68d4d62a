"""Per-partner rate limits: a token bucket per partner, in this process.

``requests_per_second`` tokens flow into a bucket that holds at most ``burst``; each
authenticated request takes one. An empty bucket answers ``429 rate_limited`` with
``Retry-After`` (whole seconds until a token is back). The check runs after the
signature is verified (so nobody can drain another partner's bucket with forged
requests) and before the replay cache records the signature (so a refused request can
be sent again as it was).

The buckets live in memory: with N processes or replicas behind a load balancer the
effective limit is up to N times the configured one. Size it per process.

    >>> bucket = TokenBucket(RateLimit(2, burst=2), now=0.0)
    >>> bucket.take(0.0), bucket.take(0.0), bucket.take(0.0), bucket.take(0.5)
    (0.0, 0.0, 0.5, 0.0)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import IgspError


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
    """The buckets of every rate-limited partner (partners without a limit are not tracked)."""

    def __init__(self, limits: dict[str, RateLimit | None], on_limited: Callable[[str], None] | None = None):
        self.buckets = {partner: TokenBucket(limit) for partner, limit in limits.items() if limit is not None}
        self.on_limited = on_limited

    def check(self, partner_id: str) -> None:
        bucket = self.buckets.get(partner_id)
        if bucket is None:
            return
        wait = bucket.take()
        if wait > 0:
            if self.on_limited is not None:
                self.on_limited(partner_id)
            raise RateLimited(max(1, math.ceil(wait)), partner_id)


__all__ = ["Limiter", "RateLimit", "RateLimited", "TokenBucket"]
