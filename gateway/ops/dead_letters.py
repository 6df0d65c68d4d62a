"""Closing dead letters for good, the same way for ``igsp-gateway dlq`` and the admin API.

    resolve(id, applied=True)    the operator checked the legacy wallet: the money moved. A win
                                 or refund answers 200 with the player's balance (read from the
                                 wallet now; unreachable: nothing changes); a rollback closes.
    resolve(id, applied=False)   the money did not move: a win or refund answers
                                 ``409 transaction_not_applied`` (a refund's bet may be refunded
                                 by a new refund); refused for a rollback (replay it instead).
    purge(id) / purge_all()      drop dead letters whose transaction is final; one whose record
                                 is still ``queued`` is kept (resolve it), so no provider retry
                                 is left with ``503 transaction_in_progress`` for ever.

Each is one atomic ``Store.dlq_settle``. A resolution is final and remembered for the
store's retention: resolving again answers the same report (not a different one), and the
other answer is refused. Errors are IgspErrors: ``not_found``, ``transaction_conflict``
(refused; nothing changed), ``transaction_in_progress`` (try again), the wallet's own.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

from gateway.errors import IgspError
from gateway.faces.wallet import Wallet, resolution, transaction_of
from gateway.store import Store
from gateway.store.base import APPLIED, NOT_APPLIED, PURGED, Resolution, TransactionBusy, TransactionOpen

#: How long a purge is remembered (a resolution: the ledger's retention).
PURGE_MEMORY = 3600.0
#: Dead letters looked at per round of ``purge_all``.
PAGE = 500

WalletFor = Callable[[str], Wallet]


def report(entry_id: str, res: Resolution) -> dict:
    """What an operator is told of a closed dead letter: the same every time it is asked."""
    out: dict = {"id": entry_id, "outcome": res.outcome.replace("_", "-"), "at": res.at}
    if res.partner:
        out.update(partner=res.partner, transaction_id=res.txid, ledger=res.ledger or None)
    if res.status is not None:
        out.update(status=res.status, answer=(res.body or b"").decode("utf-8", "replace"))
    return out


def describe(rep: dict) -> str:
    """One line for the terminal."""
    at = datetime.fromtimestamp(rep["at"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    verb = "purged" if rep["outcome"] == "purged" else f"resolved as {rep['outcome']}"
    text = f"dead letter {rep['id']} {verb} at {at}"
    if "transaction_id" in rep:
        text += f"; transaction {rep['transaction_id']} ({rep['partner']})"
        if rep.get("ledger") == "absent":
            text += " has no ledger record any more (past retention)"
        elif "status" in rep:
            text += f" answers {rep['status']} {rep['answer']}"
    return text


async def resolve(store: Store, entry_id: str, applied: bool, *, wallet_for: WalletFor, retention: float) -> dict:
    """Close dead letter ``entry_id`` as applied or not; the report of its resolution."""
    entry = await store.dlq_get(entry_id)
    if entry is None:
        return _same(entry_id, await _earlier(store, entry_id), applied)
    res = await resolution(entry, applied, store, wallet_for)
    done = await _settle(store, entry_id, res, retention)
    if done is None:
        raise IgspError("not_found", f"{entry_id!r} is no longer a dead letter (replayed meanwhile?)")
    return _same(entry_id, done, applied)


async def purge(store: Store, entry_id: str) -> bool:
    """Drop one dead letter whose transaction is final; TransactionOpen (409) while it is open."""
    entry = await store.dlq_get(entry_id)
    if entry is None:
        raise IgspError("not_found", f"no dead letter {entry_id!r}")
    where = transaction_of(entry)
    res = Resolution(PURGED, *where) if where else Resolution(PURGED)
    try:
        done = await _settle(store, entry_id, res, PURGE_MEMORY)
    except TransactionOpen:
        raise TransactionOpen(
            f"dead letter {entry_id}: transaction {where[1]} is still open (its retries get 503 "
            "transaction_in_progress); resolve it (igsp-gateway dlq resolve ID --applied|--not-applied, or "
            "POST /admin/dlq/ID/resolve) or replay it; not purged") from None
    return done is not None and done.outcome == PURGED


async def purge_all(store: Store) -> dict:
    """Purge every dead letter whose transaction is final: ``{"purged": n, "kept": [ids]}``,
    ``kept`` being those still open (resolve them)."""
    purged, kept = 0, []
    while True:
        fresh = [e for e in await store.dlq_list(len(kept) + PAGE) if e.id not in kept]
        if not fresh:
            return {"purged": purged, "kept": kept}
        for entry in fresh:
            try:
                purged += await purge(store, entry.id)
            except (TransactionOpen, TransactionBusy):
                kept.append(entry.id)
            except IgspError as exc:
                if exc.code != "not_found":  # gone meanwhile (replayed, resolved): nothing to do
                    raise


async def _settle(store: Store, entry_id: str, res: Resolution, ttl: float) -> Resolution | None:
    try:
        return await store.dlq_settle(entry_id, res, ttl)
    except TransactionBusy:
        raise TransactionBusy(f"dead letter {entry_id}: transaction {res.txid} is being answered right now "
                              "(its record is pending); try again in a moment") from None


async def _earlier(store: Store, entry_id: str) -> Resolution:
    done = await store.dlq_resolution(entry_id)
    if done is None:
        raise IgspError("not_found", f"no dead letter {entry_id!r}")
    return done


def _same(entry_id: str, done: Resolution, applied: bool) -> dict:
    """The report of ``done`` if it is the resolution asked for; refused otherwise (final)."""
    rep = report(entry_id, done)
    if done.outcome != (APPLIED if applied else NOT_APPLIED):
        raise IgspError("transaction_conflict", describe(rep) + "; a resolution is final, it cannot be changed")
    return rep
