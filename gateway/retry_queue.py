"""The delivery worker: runs queued deliveries until they succeed or run out of attempts.

Backoff is exponential with full jitter; after ``max_attempts`` an entry moves to the
dead-letter queue. A crashed worker's leased entries become claimable again when their
lease expires, so another process finishes them. Every delivery carries its original
transaction id, which is what makes at-least-once delivery safe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

import orjson

from gateway.errors import IgspError
from gateway.ops import metrics
from gateway.store import QueueEntry, Store
from gateway.store.base import StoreUnavailable

log = logging.getLogger("igsp.queue")

Handler = Callable[[QueueEntry], Awaitable[None]]


def to_queue(value):
    """A JSON-safe copy of a payload for the queue: every Decimal, however deep (extra hook
    fields may hold numbers), as its exact text. ``hook_from_queue`` reads a hook back."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return {k: to_queue(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_queue(v) for v in value]
    return value


def _decimal_text(value):
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps_for_queue(value) -> bytes:
    """``orjson.dumps(to_queue(value))`` in one pass: orjson walks the payload and asks only
    about the Decimals (the hot path keeps every money hook in the ledger this way)."""
    try:
        return orjson.dumps(value, default=_decimal_text)
    except TypeError:
        # orjson stops at 64-bit integers; extra hook fields may hold any JSON number.
        return json.dumps(value, default=_decimal_text, separators=(",", ":")).encode()


def hook_from_queue(hook: dict) -> dict:
    """A queued hook as it was put: ``amount`` a Decimal again (other fields travel as text)."""
    return {k: (Decimal(v) if k == "amount" else v) for k, v in hook.items()}


class DeadLetter(Exception):
    """Raised by a handler when retrying could do harm: the entry goes to the dead letters at once."""


def backoff(attempts: int, initial: float, maximum: float) -> float:
    """Seconds before the next attempt: full jitter over an exponential ceiling."""
    return random.uniform(initial / 2, min(maximum, initial * 2 ** max(0, attempts - 1)))


class DeliveryWorker:
    def __init__(self, store: Store, handlers: dict[str, Handler], *, consumer: str, lease_seconds: float = 30.0,
                 poll_seconds: float = 0.5, batch: int = 20, backoff_for: Callable[[QueueEntry], tuple] | None = None):
        self.store = store
        self.handlers = handlers
        self.consumer = consumer
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.batch = batch
        self.backoff_for = backoff_for or (lambda entry: (1.0, 300.0))
        self.wake = asyncio.Event()
        self.stopping = False
        self.busy = 0

    async def run(self) -> None:
        while not self.stopping:
            try:
                worked = await self.run_once()
                await self.refresh_gauges()
            except StoreUnavailable:  # an expected state (a failover, a restart): no traceback
                log.warning("queue worker iteration failed: the store is unavailable")
                metrics.STORE_UP.set(0)
                worked = 0
            except Exception:  # noqa: BLE001 - the worker must outlive a store blip
                log.exception("queue worker iteration failed")
                metrics.STORE_UP.set(0)
                worked = 0
            else:
                metrics.STORE_UP.set(1)
            if not worked and not self.stopping:
                try:
                    await asyncio.wait_for(self.wake.wait(), self.poll_seconds)
                except TimeoutError:
                    pass
                self.wake.clear()

    async def run_once(self) -> int:
        entries = await self.store.q_claim(self.consumer, self.batch, self.lease_seconds)
        claimed_at = time.monotonic()
        for entry in entries:
            # Past half the lease, the rest of the batch is left to expire and be claimed
            # again, rather than delivered while another worker may be taking it over.
            if self.stopping or time.monotonic() - claimed_at > self.lease_seconds / 2:
                break
            self.busy += 1
            try:
                await self.deliver(entry)
            finally:
                self.busy -= 1
        return len(entries)

    async def deliver(self, entry: QueueEntry) -> None:
        handler = self.handlers.get(entry.route)
        try:
            if handler is None:
                raise IgspError("internal_error", f"no handler for route {entry.route!r}")
            await handler(entry)
        except Exception as exc:  # noqa: BLE001 - every failure is retried or dead-lettered
            reason = f"{type(exc).__name__}: {exc}"
            if entry.attempts + 1 >= entry.max_attempts or isinstance(exc, DeadLetter):
                entry.attempts += 1
                await self.store.q_dead(entry, reason)
                metrics.QUEUE_ATTEMPTS.labels(entry.route, "dead").inc()
                metrics.DEAD_LETTERS.labels(entry.route).inc()
                log.warning("delivery dead-lettered", extra={"entry": entry.id, "attempts": entry.attempts,
                                                             "error": reason})
                return
            initial, maximum = self.backoff_for(entry)
            await self.store.q_retry(entry, time.time() + backoff(entry.attempts + 1, initial, maximum), reason)
            metrics.QUEUE_ATTEMPTS.labels(entry.route, "retry").inc()
            return
        await self.store.q_ack(entry)
        metrics.QUEUE_ATTEMPTS.labels(entry.route, "delivered").inc()

    async def refresh_gauges(self) -> None:
        stats = await self.store.q_stats()
        metrics.QUEUE_DEPTH.set(stats["depth"])
        metrics.QUEUE_OLDEST.set(stats["oldest_age"])
        metrics.QUEUE_DEAD.set(stats["dead"])
