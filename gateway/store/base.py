"""The Store contract every backend implements (and the shared test-suite checks).

Ledger: one record per (partner, transaction_id), created *before* the legacy call
(state ``pending``) and finished after it, so a duplicate can never reach the legacy
wallet twice. Key/value: sessions, id maps, replay cache, catalogue cache, with TTLs.
Queue: durable deliveries with leases, backoff and a dead-letter list; an operator closes a
dead letter for good with ``dlq_settle`` (resolved applied / not applied, or purged).
Rate limits: one shared bucket per partner (``rate_take``) when ``rate_limits.shared`` is on.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from gateway.errors import IgspError

PENDING, DONE, QUEUED = "pending", "done", "queued"
#: How an operator closed a dead letter (``Resolution.outcome``).
APPLIED, NOT_APPLIED, PURGED = "applied", "not_applied", "purged"
#: What closing it did to its transaction's ledger record (``Resolution.ledger``).
FINISHED, KEPT, ABSENT = "finished", "kept", "absent"


class StoreUnavailable(IgspError):
    """The store cannot be read or written (disk full, I/O error, locked, unreachable).

    Answered ``503 service_unavailable`` (retriable). Backends raise it instead of their
    driver's exceptions so no caller ever sees those.
    """

    def __init__(self, message: str = "the gateway's store is unavailable; retry later"):
        super().__init__("service_unavailable", message)


class TransactionOpen(IgspError):
    """A dead letter was not purged: its transaction's record is still ``queued`` (retries get
    ``503 transaction_in_progress``). Only a resolution (applied / not applied) closes it."""

    def __init__(self, message: str = "the dead letter's transaction is still open; resolve it instead"):
        super().__init__("transaction_conflict", message)


class TransactionBusy(IgspError):
    """A dead letter was not closed: its transaction's record is ``pending`` (a legacy call for
    it may be running right now). Retriable."""

    def __init__(self, message: str = "the dead letter's transaction is being answered right now; try again"):
        super().__init__("transaction_in_progress", message)


@dataclass(frozen=True, slots=True)
class OnceKey:
    """A key that may be claimed once within ``ttl`` seconds (a request signature).

    Claimed exactly like ``kv_put(ns, key, b"1", ttl, only_new=True)``.
    """

    ns: str
    key: str
    ttl: float


@dataclass
class TxRecord:
    """What the gateway knows about one wallet transaction."""

    partner: str
    txid: str
    action: str
    fingerprint: str
    state: str = PENDING
    status: int | None = None  # HTTP status answered to the caller
    body: bytes | None = None  # exact response body answered (replayed on duplicates)
    voided_by: str | None = None  # refund transaction that voided this bet
    created_at: float = 0.0
    #: The request as received (JSON, the queue's codec): what the sweeper needs to settle a
    #: record its gateway left pending, and what a refund is checked against. None for
    #: records written before it was kept.
    payload: bytes | None = None


@dataclass
class QueueEntry:
    """A delivery that must eventually happen (a win, a refund, a rollback, a hook)."""

    id: str
    route: str  # what to do, e.g. "wallet:acme-games" — resolved by the queue worker
    payload: dict
    attempts: int = 0
    max_attempts: int = 10
    next_at: float = 0.0
    created_at: float = 0.0
    last_error: str | None = None
    extra: dict = field(default_factory=dict)  # backend bookkeeping (e.g. a stream id)

    def describe(self) -> dict:
        """What an operator sees of it (``/admin/`` and ``igsp-gateway dlq`` alike)."""
        return {"id": self.id, "route": self.route, "attempts": self.attempts, "max_attempts": self.max_attempts,
                "created_at": self.created_at, "next_at": self.next_at, "last_error": self.last_error,
                "payload": self.payload}


@dataclass(frozen=True)
class Resolution:
    """How an operator closed a dead letter for good (``Store.dlq_settle``), and what its
    transaction answers from then on.

    Asked with ``outcome``, the record to finish (``partner``, ``txid``; '' for none), the answer
    it gets (``status``, ``body``; applied / not applied) and ``unvoid``; returned as recorded,
    with ``at`` and ``ledger`` filled in and ``status``/``body`` what the record really answers.
    """

    outcome: str  # APPLIED, NOT_APPLIED or PURGED
    partner: str = ""
    txid: str = ""
    status: int | None = None
    body: bytes | None = None
    #: A refund not applied: the bet whose void marker (set by ``txid``) is released, so that
    #: a new refund can refund it.
    unvoid: str = ""
    at: float = 0.0  # when it was closed
    ledger: str = ""  # FINISHED, KEPT (already done: its answer stands), ABSENT (expired), '' (none named)


class Store(abc.ABC):
    """Async persistence used by the gateway; both backends pass tests/test_store.py."""

    url: str

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect / create tables."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise when the store is unreachable (readiness probe)."""

    # -- transaction ledger -------------------------------------------------------
    @abc.abstractmethod
    async def tx_begin(self, rec: TxRecord, ttl: float) -> TxRecord | None:
        """Atomically create ``rec``; return the existing record instead if any.

        Usually ``rec`` is ``pending``; a ``done`` one (with its status, body and
        ``voided_by``) is a tombstone: the answer a transaction gets should it arrive later
        (a bet whose refund came first).
        """

    @abc.abstractmethod
    async def tx_pending(self, before: float, limit: int = 100) -> list[TxRecord]:
        """Records still ``pending`` that were created before ``before`` (oldest first).

        A record pending past the longest legacy call was left by a gateway that died
        mid-call; the sweeper (gateway/faces/sweeper.py) settles it.
        """

    @abc.abstractmethod
    async def tx_get(self, partner: str, txid: str) -> TxRecord | None: ...

    @abc.abstractmethod
    async def tx_finish(self, partner: str, txid: str, state: str, status: int, body: bytes, ttl: float) -> None:
        """Store the outcome answered for a transaction (``done`` or ``queued``).

        A ``done`` record stays done: a late ``queued`` write (one delayed or resent while the
        queue delivered the transaction and finished it) must not hide the final answer.
        """

    @abc.abstractmethod
    async def tx_forget(self, partner: str, txid: str) -> None:
        """Drop a record whose legacy call certainly had no effect, so a retry starts afresh."""

    @abc.abstractmethod
    async def tx_void(self, partner: str, bet_txid: str, by_txid: str) -> str | None:
        """Mark a bet voided by ``by_txid`` unless already voided; return the earlier voider or None."""

    @abc.abstractmethod
    async def tx_unvoid(self, partner: str, bet_txid: str, by_txid: str) -> None:
        """Undo ``tx_void`` when the refund was definitely refused by the legacy side."""

    # -- shared rate limits -------------------------------------------------------------
    @abc.abstractmethod
    async def rate_take(self, key: str, rate: float, capacity: float) -> float:
        """Take one request from the bucket ``key`` shared by every process on this store.

        The bucket (GCRA, the token bucket of gateway/ratelimit.py in one timestamp) holds
        at most ``capacity`` requests and refills at ``rate`` per second; a bucket never
        used is full. Returns 0.0 when granted, else the seconds until a request would be
        (and takes nothing). The time is the store's own clock (Redis's ``TIME``, the host's
        for SQLite), so the gateways' clocks do not need to agree.
        """

    async def claim(self, once: OnceKey) -> bool:
        """Claim a once-only key on its own; False when it is already taken."""
        return await self.kv_put(once.ns, once.key, b"1", once.ttl, only_new=True)

    # -- key/value with expiry -------------------------------------------------------
    @abc.abstractmethod
    async def kv_put(self, ns: str, key: str, value: bytes, ttl: float | None = None, *, only_new: bool = False) -> bool:
        """Store a value; with ``only_new`` refuse (return False) when the key exists."""

    @abc.abstractmethod
    async def kv_get(self, ns: str, key: str) -> bytes | None: ...

    # -- durable queue --------------------------------------------------------------
    @abc.abstractmethod
    async def q_put(self, entry: QueueEntry, *, dead: bool = False) -> None:
        """Queue ``entry`` once: an id already queued (or delivered, on Redis for an hour) is
        left as it is, so a put that may have run already can be sent again. ``dead``: put it
        straight into the dead letters, in the same write (a crash between a put and a
        dead-lettering must never leave it deliverable)."""

    @abc.abstractmethod
    async def q_claim(self, consumer: str, limit: int, lease_seconds: float) -> list[QueueEntry]:
        """Lease up to ``limit`` due entries (including ones whose lease expired)."""

    @abc.abstractmethod
    async def q_ack(self, entry: QueueEntry) -> None:
        """Delivered: remove for good."""

    @abc.abstractmethod
    async def q_retry(self, entry: QueueEntry, next_at: float, error: str) -> None:
        """Failed: count the attempt and schedule again at ``next_at``."""

    @abc.abstractmethod
    async def q_dead(self, entry: QueueEntry, error: str) -> None:
        """Out of attempts: move to the dead-letter list."""

    @abc.abstractmethod
    async def q_stats(self) -> dict:
        """``{"depth": int, "oldest_age": float, "dead": int}``."""

    @abc.abstractmethod
    async def dlq_list(self, limit: int = 100) -> list[QueueEntry]: ...

    @abc.abstractmethod
    async def dlq_get(self, entry_id: str) -> QueueEntry | None: ...

    @abc.abstractmethod
    async def dlq_replay(self, entry_id: str) -> bool:
        """Move a dead letter back to the queue with its attempts reset."""

    @abc.abstractmethod
    async def dlq_purge(self, entry_id: str | None = None) -> int:
        """Delete one dead letter, or all when ``entry_id`` is None; return how many.

        Low level: it does not look at the ledger. Operators purge through ``dlq_settle``
        (gateway/ops/dead_letters.py), which never leaves a transaction ``queued``."""

    @abc.abstractmethod
    async def dlq_settle(self, entry_id: str, resolution: Resolution, ttl: float) -> Resolution | None:
        """Close dead letter ``entry_id`` for good, in one atomic step:

        * ``applied`` / ``not_applied``: the record ``(partner, txid)``, if still ``queued``, is
          finished ``done`` with ``status`` and ``body`` (kept at least ``ttl`` seconds), and
          with ``unvoid`` the bet ``unvoid`` loses its void marker if ``txid`` set it. A ``done``
          record stays as it is (``ledger`` KEPT, and its own answer is the one recorded);
        * ``purged``: refused with TransactionOpen while the record is ``queued``;
        * a record still ``pending`` refuses every outcome (TransactionBusy), changing nothing;
        * the entry leaves the dead letters (neither replayed nor purged any more).

        The resolution is remembered ``ttl`` seconds under ``entry_id``: asked again (an
        operator resolving twice, a resent command whose reply was lost), the entry answers the
        resolution as first recorded and changes nothing, whatever ``resolution`` says now
        (the caller compares). None when ``entry_id`` is neither a dead letter nor settled.
        """

    @abc.abstractmethod
    async def dlq_resolution(self, entry_id: str) -> Resolution | None:
        """How ``entry_id`` was closed by ``dlq_settle`` (while remembered), else None."""
