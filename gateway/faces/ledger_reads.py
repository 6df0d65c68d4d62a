"""The ``ledger`` template variable: what a win, refund or rollback reads of its bet.

A wallet whose credit must name the bet's wallet-side id, or whose cancel needs the bet's
own reference, needs what it answered for the bet. The gateway has that bet in its ledger;
this module gives it to the operation's templates as ``ledger.NAME.FIELD`` (the names and
fields are gateway/engine/ledger_names.py), from three things the store keeps beside the
ledger record, each in its key/value space with the ledger's retention:

- ``keep``: the values a ``bet`` operation's ``keep:`` read from the wallet's answer,
  written before the bet's record is finished, so any reader that sees the bet done sees
  them too (a record finished is never changed again);
- the round index: the first bet of each player's ``round_id`` (a round id names a round
  of a game or table, shared by every player at it, so the index is per player; written
  as the bet starts, so a win
  arriving while its bet is still at the wallet waits for it, as a refund does), replaced by
  a later bet of the round the wallet accepted when that first one was refused or forgotten;
- the choice: which bet each read of a transaction found, written once by its first run.
  **Every later run of the same transaction — a provider's retry of a forgotten one, a
  queued redelivery — reads the same bet**, even if the ledger changed in between (the
  round's bet finished, was refunded, expired): a rerun takes the path its first run took,
  and reruns a step it may already have sent with the same values, which the wallet
  dedupes. A read that found nothing stays empty for that transaction.

A read still waiting for its bet (pending past the wait) makes nothing and is not recorded:
the operation fails as certainly not applied (``upstream_unavailable``), so a win or refund
is queued and reads again on delivery.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from gateway.errors import IgspError, UpstreamError
from gateway.faces import ledger
from gateway.retry_queue import hook_from_queue
from gateway.store import Store
from gateway.store.base import PENDING

KEPT = "ledger-kept"  # partner, bet txid -> the bet's kept values
ROUND = "ledger-round"  # partner, player_id, round_id -> the round's first bet txid of that player
FIRST_WIN = "ledger-first-win"  # partner, bet txid -> the first win that read it as round_bet
CHOICE = "ledger-read"  # partner, txid -> {name: {"txid", "first_win"} or None}


def _key(*parts: str) -> str:
    return "\x1f".join(parts)


def _round_key(partner: str, payload: dict) -> str:
    """A round's index key: the player's round (another player's bet of a shared round id is
    never this player's round bet)."""
    return _key(partner, str(payload.get("player_id")), str(payload["round_id"]))


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(type(value).__name__)


class LedgerReads:
    """One partner's ledger reads, over its store (see the module docstring)."""

    def __init__(self, partner: str, store: Store, mapping, *, retention: float, wait_seconds: float,
                 currencies: dict | None = None):
        self.partner, self.store, self.mapping = partner, store, mapping
        self.retention, self.wait_seconds, self.currencies = retention, wait_seconds, currencies or {}
        ops = mapping.operations
        self.rounds = any("round_bet" in op.ledger for op in ops.values())
        self.bet_op = ops.get("bet")
        self.kept_names = tuple(self.bet_op.keep) if self.bet_op is not None else ()

    # -- writes, on the bet's side -----------------------------------------------------------
    async def bet_started(self, payload: dict) -> None:
        """Index a bet by its round (the round's first bet only), before its legacy call."""
        if self.rounds and payload.get("round_id") not in (None, ""):
            await self.store.kv_put(ROUND, _round_key(self.partner, payload),
                                    str(payload["transaction_id"]).encode(), self.retention, only_new=True)

    async def bet_accepted(self, payload: dict, kept: dict) -> None:
        """A bet the wallet accepted, before its record is finished: keep its answer values,
        and make it its round's bet if the one indexed first was refused or forgotten."""
        txid = str(payload["transaction_id"])
        if kept:
            await self.store.kv_put(KEPT, _key(self.partner, txid), orjson.dumps(kept, default=_json), self.retention)
        if not self.rounds or payload.get("round_id") in (None, ""):
            return
        where = _round_key(self.partner, payload)
        indexed = await self.store.kv_get(ROUND, where)
        if indexed is None or indexed.decode() == txid:
            return
        first = await self.store.tx_get(self.partner, indexed.decode())
        if first is None or (first.state != PENDING and first.status != 200):
            await self.store.kv_put(ROUND, where, txid.encode(), self.retention)

    # -- reads, for a win, refund or rollback ---------------------------------------------------
    async def view(self, operation: str, payload: dict) -> dict | None:
        """The ``ledger`` variable of ``operation`` for ``payload`` (None: it reads nothing).
        Raises the declared error of a read that is empty and declared ``missing``."""
        op = self.mapping.operations.get(operation)
        if op is None or not op.ledger:
            return None
        where = _key(self.partner, str(payload["transaction_id"]))
        stored = await self.store.kv_get(CHOICE, where)
        if stored is None:
            choice = {name: await self._choose(name, payload) for name in op.ledger}
            if not await self.store.kv_put(CHOICE, where, orjson.dumps(choice), self.retention, only_new=True):
                stored = await self.store.kv_get(CHOICE, where)  # a concurrent run chose first
        choice = orjson.loads(stored) if stored is not None else choice
        found = {}
        for name, rule in op.ledger.items():
            entry = choice.get(name)
            value = await self._load(entry) if entry else None
            if value is None and rule is not None:
                message = rule.message or f"ledger.{name} is empty for this {operation}"
                if (rule.status or IgspError(rule.code, "").status) >= 500:
                    raise UpstreamError(rule.code, message, kind="ledger", applied=False, status=rule.status)
                raise IgspError(rule.code, message, rule.status)
            found[name] = value
        return found

    async def _choose(self, name: str, payload: dict) -> dict | None:
        """Which bet read ``name`` finds for ``payload`` now: ``{"txid", "first_win"}`` or None."""
        if name == "bet":
            record = await self._settled(str(payload["bet_transaction_id"]))
            return None if record is None or record.action != "bet" else {"txid": record.txid}
        round_id = payload.get("round_id")
        if round_id in (None, ""):
            return None
        bet_txid = await self.store.kv_get(ROUND, _round_key(self.partner, payload))
        if bet_txid is None:
            return None
        record = await self._settled(bet_txid.decode())
        if record is None or record.action != "bet" or record.status != 200 or record.voided_by is not None \
                or record.payload is None:
            return None
        bet = hook_from_queue(orjson.loads(record.payload))
        if str(bet.get("player_id")) != str(payload.get("player_id")) or bet.get("currency") != payload.get("currency"):
            return None  # never another player's bet, nor one in another currency
        claim = _key(self.partner, record.txid)
        await self.store.kv_put(FIRST_WIN, claim, str(payload["transaction_id"]).encode(), self.retention,
                                only_new=True)
        first = await self.store.kv_get(FIRST_WIN, claim)
        return {"txid": record.txid, "first_win": first.decode() if first is not None else None}

    async def _settled(self, txid: str):
        record = await self.store.tx_get(self.partner, txid)
        if record is not None and record.state == PENDING:
            record = await ledger.settled(self.store, record, self.wait_seconds)
            if record.state == PENDING:
                raise UpstreamError("upstream_unavailable", f"bet {txid} is still in progress; read again later",
                                    kind="waiting", applied=False)
        return record

    async def _load(self, entry: dict) -> dict | None:
        """The fields of the bet ``entry`` names, or None when it left the ledger."""
        record = await self.store.tx_get(self.partner, entry["txid"])
        if record is None or record.payload is None:
            return None
        bet = hook_from_queue(orjson.loads(record.payload))
        amounts, currency = self.mapping.amounts, bet["currency"]
        legacy_id = None
        if record.status == 200 and record.body and self.bet_op is not None and "transaction_id" in self.bet_op.response:
            legacy_id = orjson.loads(record.body).get("transaction_id")
        found = {"transaction_id": bet["transaction_id"], "player_id": bet.get("player_id"), "currency": currency,
                 "amount": bet["amount"], "legacy_amount": amounts.to_legacy(bet["amount"], currency, self.currencies),
                 "round_id": bet.get("round_id"), "legacy_transaction_id": legacy_id,
                 **dict.fromkeys(self.kept_names)}
        if "first_win" in entry:
            found["first_win"] = entry["first_win"]
        kept = await self.store.kv_get(KEPT, _key(self.partner, record.txid))
        if kept is not None:
            found.update({k: v for k, v in orjson.loads(kept).items() if k in self.kept_names})
        return found


__all__ = ["LedgerReads"]
