"""Once-only work on the ledger, the same for both faces.

A bet, win or refund (platform face) and a launch (provider face) are each recorded by
``(partner, key)`` in the store's ledger *before* anything is sent to the legacy side.
The record's fingerprint says what must match for a second copy to be a retry rather
than a conflict; a copy that finds the record still ``pending`` waits for it briefly.
Both faces use these two functions, so "what is a retry" and "how long does a retry
wait for the first copy" have one answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from decimal import Decimal

import orjson

from gateway.store import Store, TxRecord
from gateway.store.base import PENDING


def _canonical(value: object) -> object:
    return format(value.normalize(), "f") if isinstance(value, Decimal) else value


def fingerprint(payload: dict, fields: tuple[str, ...] | None = None) -> str:
    """The digest a retry must match: ``10`` and ``10.00`` are the same amount.

    With ``fields``, only those values count, in that order (a money hook: action, player,
    currency, amount, bet); without, the whole payload in any key order (a launch). The two
    text forms are the ones the ledger has always stored, so records written before an
    upgrade still match their retries.
    """
    if fields is not None:
        text = "\x1f".join(str(_canonical(payload.get(name))) for name in fields).encode()
    else:
        canonical = {k: _canonical(v) for k, v in payload.items()}
        try:
            text = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS, default=str)
        except TypeError:
            # orjson stops at 64-bit integers; extra fields may hold any JSON number.
            text = json.dumps(canonical, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(text).hexdigest()[:32]


async def settled(store: Store, record: TxRecord, wait_seconds: float) -> TxRecord:
    """``record`` once it is no longer pending, or as it stands after ``wait_seconds``.

    A second copy that arrives while the first is still at the legacy API (concurrent
    retries, or a retry after the caller's own timeout) waits here instead of answering
    "in progress" at once; the poll interval grows from 5 to 50 ms, so a short first copy
    is seen quickly and a long one costs few store reads.
    """
    deadline = time.monotonic() + wait_seconds
    interval = 0.005
    while record.state == PENDING and time.monotonic() < deadline:
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 2, 0.05)
        record = await store.tx_get(record.partner, record.txid) or record
    return record
