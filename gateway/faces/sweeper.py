"""The sweeper: settles what a gateway that died mid-call left pending.

A ledger record is ``pending`` only while its legacy call runs. One still pending past
``queue.lease_seconds`` (longer than any legacy call) belongs to a gateway that was killed
(``kill -9``, OOM, a node lost) between recording the transaction and learning its outcome.
Nobody would otherwise settle it until the partner retried — and a provider may never
retry. The sweeper finds such records in the store (``Store.tx_pending``) and hands each to
the face that owns its partner (``Face.settle``): a bet gets its compensating rollback, a
win or refund is queued for delivery, a launch is forgotten so a retry starts afresh.

Every process with a queue worker runs one; replicas sweeping the same record race through
the same compare-and-set a retry uses (``Wallet.take_over``), so one settles it. It also
keeps ``igsp_ledger_oldest_pending_seconds`` current, which the chart's alert watches.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.ops import metrics
from gateway.runtime import Runtime
from gateway.store import Store

log = logging.getLogger("gateway.sweeper")


class Sweeper:
    def __init__(self, store: Store, runtime: Runtime, faces: dict, *, orphan_after: float,
                 interval: float | None = None, batch: int = 200):
        self.store = store
        self.runtime = runtime
        self.faces = faces  # name -> Face
        self.orphan_after = orphan_after
        self.interval = interval if interval is not None else min(10.0, orphan_after / 2)
        self.batch = batch
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        while not self.stopping.is_set():
            try:
                await self.sweep_once()
            except Exception:  # noqa: BLE001 - the sweeper must outlive a store blip
                log.exception("ledger sweep failed")
            try:
                await asyncio.wait_for(self.stopping.wait(), self.interval)
            except TimeoutError:
                pass

    async def sweep_once(self) -> int:
        """Settle the orphans of this moment; return how many were settled."""
        now = time.time()
        oldest = await self.store.tx_pending(now, limit=1)
        metrics.LEDGER_OLDEST_PENDING.set(now - oldest[0].created_at if oldest else 0.0)
        orphans = await self.store.tx_pending(now - self.orphan_after, limit=self.batch)
        if not orphans:
            return 0
        settled = 0
        gen = self.runtime.acquire()
        try:
            for rec in orphans:
                for face in self.faces.values():
                    if await face.settle(gen.faces[face.name], rec):
                        settled += 1
                        metrics.ORPHANS_SETTLED.labels(rec.action).inc()
                        log.warning("settled a transaction left pending", extra={
                            "partner": rec.partner, "transaction_id": rec.txid, "action": rec.action,
                            "age_seconds": round(now - rec.created_at, 1)})
                        break
                else:
                    log.warning("a transaction left pending cannot be settled here", extra={
                        "partner": rec.partner, "transaction_id": rec.txid, "action": rec.action})
        finally:
            self.runtime.release(gen)
        return settled
