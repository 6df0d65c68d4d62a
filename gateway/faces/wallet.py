"""Platform face money semantics: iGSP wallet hooks against a legacy wallet.

Every bet/win/refund is recorded in the ledger by (partner, transaction_id) *before*
the legacy call, so duplicates — sequential or concurrent, on any replica — get the
first outcome byte for byte and never reach the legacy wallet twice.

Outcomes of a legacy call, and what the caller and the ledger get:

    success / business error   -> answered and stored; retries replay it
    certainly not applied      -> bet: answered 5xx, record dropped (a retry starts afresh)
                                  win/refund: queued for delivery, retries get 503 until done
    outcome unknown (timeout)  -> bet: 5xx now, compensating rollback queued, retries get 409
                                  win/refund: queued if the wallet is idempotent, else dead-lettered

A retry is any copy with the same ``transaction_id`` and the same terms (RETRY_FIELDS):
re-signed or byte-identical, sequential or concurrent, it gets the first answer.

Refunds, as real wallets do them:

    refund of an unknown bet   -> 404, and a tombstone for the bet: should it arrive later it
                                  is refused (409) and never reaches the wallet
    refund of another's bet    -> 409 when player or currency differ, or the amount (unless
                                  the partner declares partial refunds: then at most the bet's)
    refund of a bet in flight  -> waits for the bet briefly; if it is still running, the refund
                                  is queued (503 for now) and delivered once the bet settled

A win or refund dead-lettered with its outcome unknown keeps its record ``queued`` (retries
get 503) until an operator checks the legacy wallet and resolves it (``resolution``, run by
``igsp-gateway dlq resolve`` and the admin API): applied -> 200 with the balance read then,
not applied -> ``409 transaction_not_applied`` (a refund's bet may then be refunded anew).

A record still ``pending`` after ``orphan_after`` seconds was left by a gateway that died
mid-call (``kill -9``, OOM). The sweeper (``settle_orphan``, run by the queue worker's
process) settles it as an unknown outcome without waiting for anyone to retry; a retry or a
refund that finds it first does the same.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import orjson

from gateway import money
from gateway.engine.templating import IGSP_NAMESPACE
from gateway.errors import IgspError, UpstreamError
from gateway.faces import ledger
from gateway.faces.ledger_reads import LedgerReads
from gateway.ids import new_id
from gateway.ops import metrics, tracing
from gateway.outbound.legacy import LegacyClient
from gateway.retry_queue import DeadLetter, dumps_for_queue, hook_from_queue, to_queue
from gateway.store import QueueEntry, Store, TxRecord
from gateway.store.base import APPLIED, DONE, NOT_APPLIED, PENDING, QUEUED, Resolution

#: voided_by marker of a bet whose unknown outcome is being rolled back by the gateway.
COMPENSATION = "~compensation"
MONEY_ACTIONS = ("bet", "win", "refund")
#: Route of the wallet's deliveries in the durable queue (gateway/faces/platform.py runs them).
WALLET_ROUTE = "wallet"
#: The final answer of a win or refund an operator found the wallet did not apply
#: (``igsp-gateway dlq resolve ID --not-applied``). Its retries get it byte for byte.
NOT_APPLIED_ERROR = IgspError(
    "transaction_not_applied",
    "the wallet did not apply this transaction (checked by an operator) and never will; send a new one if still due")


def error_body(error: IgspError) -> tuple[int, bytes]:
    return error.status, orjson.dumps(error.body())


def amount_json(value: Decimal) -> orjson.Fragment:
    """An exact JSON number: ``Decimal('97.50')`` -> ``97.50``."""
    return orjson.Fragment(format(value, "f"))


#: What must match for a duplicate money hook to be a retry rather than a conflict.
RETRY_FIELDS = ("action", "player_id", "currency", "amount", "bet_transaction_id")


def fingerprint(payload: dict) -> str:
    return ledger.fingerprint(payload, RETRY_FIELDS)


def encode_hook(payload: dict) -> bytes:
    """A hook as the ledger keeps it (the queue's codec: amounts as exact text)."""
    return dumps_for_queue(payload)


def decode_hook(data: bytes) -> dict:
    return hook_from_queue(orjson.loads(data))


def bet_of(refund: dict) -> dict:
    """The bet a refund names, as far as the refund tells it (for its tombstone)."""
    bet = {k: v for k, v in refund.items() if k != "bet_transaction_id"}
    bet.update(action="bet", transaction_id=refund["bet_transaction_id"])
    return bet


class Wallet:
    """One platform-face partner: its legacy wallet client, the store and the queue."""

    def __init__(self, partner_id: str, client: LegacyClient, store: Store, *, retention: float,
                 currencies: dict | None = None, wait_seconds: float | None = None, wake_queue=None,
                 on_replay=None, orphan_after: float = 30.0, partial_refunds: bool = False):
        self.partner_id = partner_id
        self.client = client
        self.mapping = client.mapping
        self.store = store
        self.retention = retention
        self.currencies = currencies or {}
        # A concurrent copy waits for the first one's legacy call to end (at most its timeout)
        # and gets its answer, rather than a 503 to retry.
        self.wait_seconds = wait_seconds if wait_seconds is not None else max(2.0, 0.5 + max(
            [self.mapping.timeout] + [op.timeout for op in self.mapping.operations.values() if op.timeout]))
        self.partial_refunds = partial_refunds
        self.wake_queue = wake_queue or (lambda: None)
        self.on_replay = on_replay or (lambda action: None)
        self.orphan_after = orphan_after  # > any legacy call's duration (config: queue.lease_seconds)
        self.rollback_op = "rollback" if "rollback" in self.mapping.operations else "refund"
        self.reads = LedgerReads(partner_id, store, self.mapping, retention=retention, wait_seconds=self.wait_seconds,
                                 currencies=self.currencies) if store is not None else None

    # -- context -------------------------------------------------------------------
    def context(self, payload: dict, request_id: str, *, checked: bool = False) -> dict:
        """Template variables for a legacy call built from an iGSP hook. ``checked``: this
        wallet's ``handle`` has just checked the amount (the same mapping, the same limits)."""
        now = datetime.now(timezone.utc)
        ctx = dict(payload)
        ctx.update(request_id=request_id, partner=self.partner_id, now=now, now_ms=int(now.timestamp() * 1000),
                   secrets=self.mapping.secrets)
        if "amount" in payload:
            # handle() checked it before the ledger saw it; checked again here for a queued
            # delivery, which may meet a reloaded mapping with another limit. Either way an amount
            # the unit cannot hold is an explicit invalid_amount, never a request that fails to build.
            amounts, currency, amount = self.mapping.amounts, payload["currency"], payload["amount"]
            if not checked:
                amounts.check(amount, currency, self.currencies)
            ctx["legacy_amount"] = amounts.to_legacy(amount, currency, self.currencies)
        return ctx

    async def call_context(self, operation: str, payload: dict, request_id: str, *, checked: bool = False) -> dict:
        """``context`` plus, for an operation that reads the ledger, its ``ledger`` variable
        (gateway/faces/ledger_reads.py): the same bet on every run of this transaction."""
        ctx = self.context(payload, request_id, checked=checked)
        if self.reads is not None and self.mapping.operations.get(operation) is not None \
                and self.mapping.operations[operation].ledger:
            ctx["ledger"] = await self.reads.view(operation, payload)
        return ctx

    def balance_of(self, fields: dict, currency: str) -> Decimal:
        balance = self.mapping.amounts.from_legacy(fields.get("balance"), currency, self.currencies)
        return balance.quantize(Decimal(1).scaleb(-money.exponent(currency, self.currencies)))

    def platform_txid(self, fields: dict, txid: str) -> str:
        legacy = fields.get("transaction_id")
        return str(legacy) if legacy not in (None, "") else str(uuid.uuid5(IGSP_NAMESPACE, f"{self.partner_id}:{txid}"))

    # -- entry point ---------------------------------------------------------------
    async def handle(self, payload: dict, request_id: str) -> tuple[int, bytes]:
        """Answer one hook: a balance read, or a money hook once per ``transaction_id``."""
        action = payload["action"]
        if "amount" in payload:
            # Before the ledger and the wallet: an amount the currency or the legacy unit cannot
            # carry is a 400 naming the limit, not a failure to build the legacy request.
            self.mapping.amounts.check(payload["amount"], payload["currency"], self.currencies)
        if action == "balance":
            reply = await self.client.call("balance", self.context(payload, request_id, checked=True))
            check_currency(reply.fields, payload["currency"])
            return 200, orjson.dumps({"balance": amount_json(self.balance_of(reply.fields, payload["currency"]))})

        txid = payload["transaction_id"]
        rec = TxRecord(self.partner_id, txid, action, fingerprint(payload), payload=encode_hook(payload))
        existing = await self.store.tx_begin(rec, self.retention)
        if existing is not None:
            return await self.replay(existing, rec.fingerprint, payload, request_id)
        try:
            if action == "refund":
                return await self.refund(payload, request_id, checked=True)
            return await self.transfer(payload, request_id, checked=True)
        except BaseException:
            # Never leave a record pending for ever: an unexpected failure (or a
            # cancellation) mid-call is an unknown outcome.
            current = await self.store.tx_get(self.partner_id, txid)
            if current is not None and current.state == PENDING:
                await self.unknown_outcome(payload, request_id,
                                           UpstreamError("internal_error", "internal error", kind="internal",
                                                         applied=None))
            raise

    async def replay(self, existing: TxRecord, fp: str, payload: dict, request_id: str) -> tuple[int, bytes]:
        if existing.fingerprint != fp:
            return error_body(IgspError("transaction_conflict",
                                        "transaction_id was already used with a different payload"))
        existing = await ledger.settled(self.store, existing, self.wait_seconds)
        if self.orphaned(existing):
            await self.take_over(payload, request_id)
            existing = await self.store.tx_get(existing.partner, existing.txid) or existing
        if existing.state == PENDING:
            return error_body(IgspError("transaction_in_progress", "the first copy of this transaction is still running"))
        self.on_replay(existing.action)
        return existing.status, existing.body

    def orphaned(self, rec: TxRecord) -> bool:
        return rec.state == PENDING and time.time() - rec.created_at > self.orphan_after

    async def settle_orphan(self, rec: TxRecord) -> bool:
        """The sweeper's part: settle a record its gateway left pending (see the module
        docstring); False when the record cannot say what it was (written before payloads
        were kept) and waits for a retry to tell."""
        if rec.payload is None or rec.action not in MONEY_ACTIONS:
            return False
        # Still pending though a settlement claimed it long ago: its settler died between two
        # of the settlement's writes. Each of them is safe to redo (unknown_outcome).
        cut_short = rec.voided_by == COMPENSATION and time.time() - rec.created_at > 2 * self.orphan_after
        await self.take_over(decode_hook(rec.payload), "sweeper", redo=cut_short)
        return True

    async def take_over(self, payload: dict, request_id: str, *, redo: bool = False) -> None:
        """Settle an orphaned pending record as an unknown outcome. Replicas race for it with a
        compare-and-set on ``voided_by`` (unused by a pending record): one settles, the others
        wait. ``redo``: the claim is there already, left by a settler that died."""
        claimed = await self.store.tx_void(self.partner_id, payload["transaction_id"], COMPENSATION)
        if claimed is None or (redo and claimed == COMPENSATION):
            await self.unknown_outcome(payload, request_id, UpstreamError(
                "upstream_timeout", "the gateway handling this transaction stopped mid-call", kind="orphan",
                applied=None))

    async def balance_answer(self, payload: dict, request_id: str) -> bytes:
        """The success answer of a win or refund whose legacy reply is not at hand (an operator
        found it applied): the player's balance read now, the gateway's own id for it."""
        reply = await self.client.call("balance", self.context(payload, request_id))
        check_currency(reply.fields, payload["currency"])
        return orjson.dumps({"balance": amount_json(self.balance_of(reply.fields, payload["currency"])),
                             "transaction_id": self.platform_txid({}, payload["transaction_id"])})

    async def finish(self, txid: str, status: int, body: bytes, state: str = DONE) -> tuple[int, bytes]:
        await self.store.tx_finish(self.partner_id, txid, state, status, body, self.retention)
        return status, body

    # -- bet / win -----------------------------------------------------------------
    async def transfer(self, payload: dict, request_id: str, *, checked: bool = False) -> tuple[int, bytes]:
        action, txid = payload["action"], payload["transaction_id"]
        if action == "bet" and self.reads is not None:
            await self.reads.bet_started(payload)  # before the call: a win of its round waits for it
        try:
            reply = await self.client.call(action, await self.call_context(action, payload, request_id, checked=checked))
        except UpstreamError as exc:
            if exc.applied is False and action == "bet":
                await self.store.tx_forget(self.partner_id, txid)
                return error_body(exc)
            return await self.unknown_outcome(payload, request_id, exc)
        except IgspError as exc:
            return await self.finish(txid, *error_body(exc))
        if action == "bet" and self.reads is not None:
            # Before the record is finished: whoever sees the bet done sees what it kept.
            await self.reads.bet_accepted(payload, reply.kept)
        body = orjson.dumps({"balance": amount_json(self.balance_of(reply.fields, payload["currency"])),
                             "transaction_id": self.platform_txid(reply.fields, txid)})
        return await self.finish(txid, 200, body)

    async def unknown_outcome(self, payload: dict, request_id: str, exc: UpstreamError) -> tuple[int, bytes]:
        """A money call that failed in a way that must still be made right later."""
        action, txid = payload["action"], payload["transaction_id"]
        if action == "bet":
            # Money may have left the player: roll it back for sure, then tell retries so.
            await self.store.tx_void(self.partner_id, txid, COMPENSATION)
            await self.enqueue("rollback", compensation_payload(payload), request_id, exc)
            await self.store.tx_finish(self.partner_id, txid, DONE, *error_body(IgspError(
                "transaction_voided", "the bet's outcome was unknown and it has been rolled back; place a new bet")),
                self.retention)
            return error_body(exc)
        # A win or refund must reach the player eventually: deliver it from the queue.
        if action == "refund" and not await self.voids_its_bet(payload):
            # Stopped before the refund claimed its bet, so before any legacy call: the
            # queue runs the whole refund (its checks, then the call) once the bet settled.
            await self.enqueue("refund_after_bet", payload, request_id, exc, delay=self.mapping.backoff_initial)
        else:
            dead = exc.applied is None and not self.mapping.idempotent
            await self.enqueue(action, payload, request_id, exc, dead=dead)
        await self.store.tx_finish(self.partner_id, txid, QUEUED, *error_body(IgspError(
            "transaction_in_progress", "accepted for delivery to the wallet; retry later for the outcome")),
            self.retention)
        return error_body(exc)

    async def enqueue(self, op: str, payload: dict, request_id: str, exc: Exception, *, dead: bool = False,
                      delay: float | None = None) -> None:
        if delay is None:
            # A late legacy answer may still be in flight: a rollback that overtakes
            # its own bet would be acknowledged as "unknown" and undo nothing.
            delay = max(self.mapping.backoff_initial, 2 * self.mapping.timeout)
        entry = QueueEntry(
            # One id per (partner, operation, transaction): a settlement redone after a crash
            # cut it short puts the same entry, which the store keeps once.
            id=uuid.uuid5(IGSP_NAMESPACE, f"{self.partner_id}:{op}:{payload['transaction_id']}").hex,
            route=WALLET_ROUTE,
            payload={"partner": self.partner_id, "op": op, "request_id": request_id, "hook": to_queue(payload),
                     **tracing.carrier()},  # the queued delivery's trace links to this one
            max_attempts=self.mapping.max_attempts,
            next_at=time.time() + delay,
            last_error=str(exc),
        )
        if dead:
            # Unknown outcome on a wallet that does not dedupe: a redelivery could pay
            # twice, so an operator reconciles and replays it (igsp-gateway dlq).
            entry.last_error = f"unknown outcome on a non-idempotent wallet: {exc}"
            await self.store.q_put(entry, dead=True)
            metrics.DEAD_LETTERS.labels(entry.route).inc()
        else:
            await self.store.q_put(entry)
            self.wake_queue()

    # -- refund ---------------------------------------------------------------------
    async def refund(self, payload: dict, request_id: str, *, queued: bool = False,
                     checked: bool = False) -> tuple[int, bytes]:
        """Refund the bet ``payload`` names: once, only the player's own, never before the bet
        settled. ``queued``: run by the queue (the refund was deferred behind its bet);
        ``checked``: its amount was checked by ``handle`` (see ``context``)."""
        txid, bet_txid = payload["transaction_id"], payload["bet_transaction_id"]
        bet = await self.store.tx_get(self.partner_id, bet_txid)
        if bet is None:
            # Refund before bet: leave a tombstone in the bet's place, so that the bet, should
            # it arrive after all, is refused and never debited.
            bet = await self.store.tx_begin(self.tombstone(payload), self.retention)
            if bet is None:
                return await self.finish(txid, *error_body(IgspError(
                    "transaction_not_found", f"bet {bet_txid} is not known; should it arrive later it will be refused")))
        if bet.action != "bet":
            return await self.finish(txid, *error_body(IgspError("transaction_not_found",
                                                                 f"bet {bet_txid} is not known")))
        mismatch = self.refund_mismatch(bet, payload)
        if mismatch is not None:
            return await self.finish(txid, *error_body(IgspError(
                "transaction_conflict", f"the refund does not match bet {bet_txid}: {mismatch}")))
        if bet.state == PENDING:
            bet = await ledger.settled(self.store, bet, 0 if queued else self.wait_seconds)
            if self.orphaned(bet):
                await self.take_over(bet_of(payload) if bet.payload is None else decode_hook(bet.payload), request_id)
                bet = await self.store.tx_get(self.partner_id, bet_txid) or bet
            if bet.state == PENDING:
                if queued:
                    raise UpstreamError("upstream_unavailable", f"bet {bet_txid} is still in progress",
                                        kind="waiting", applied=False)
                # The bet may yet go through: refund it once it has settled, from the queue,
                # without waiting for the provider to retry.
                await self.enqueue("refund_after_bet", payload, request_id,
                                   IgspError("transaction_in_progress", f"bet {bet_txid} was still in progress"),
                                   delay=self.mapping.backoff_initial)
                return await self.finish(txid, *error_body(IgspError(
                    "transaction_in_progress", f"bet {bet_txid} is still in progress; the refund will follow it")),
                    state=QUEUED)
        previous = await self.store.tx_void(self.partner_id, bet_txid, txid)
        if previous == COMPENSATION:
            # The gateway is already rolling this bet back: nothing more to move.
            reply = await self.client.call("balance", self.context(payload, request_id))
            body = orjson.dumps({"balance": amount_json(self.balance_of(reply.fields, payload["currency"])),
                                 "transaction_id": self.platform_txid({}, txid)})
            return await self.finish(txid, 200, body)
        if previous is not None and previous != txid:
            return await self.finish(txid, *error_body(IgspError("transaction_already_refunded",
                                                                 f"bet {bet_txid} was already refunded")))
        if bet.status != 200:
            await self.store.tx_unvoid(self.partner_id, bet_txid, txid)
            return await self.finish(txid, *error_body(IgspError("transaction_not_found",
                                                                 f"bet {bet_txid} was not accepted, nothing to refund")))
        try:
            reply = await self.client.call("refund", await self.call_context("refund", payload, request_id,
                                                                             checked=checked))
        except UpstreamError as exc:
            return await self.unknown_outcome(payload, request_id, exc)
        except IgspError as exc:
            await self.store.tx_unvoid(self.partner_id, bet_txid, txid)
            return await self.finish(txid, *error_body(exc))
        body = orjson.dumps({"balance": amount_json(self.balance_of(reply.fields, payload["currency"])),
                             "transaction_id": self.platform_txid(reply.fields, txid)})
        return await self.finish(txid, 200, body)

    async def voids_its_bet(self, refund: dict) -> bool:
        """Whether ``refund`` has claimed its bet (so its legacy call may have been made)."""
        bet = await self.store.tx_get(self.partner_id, refund["bet_transaction_id"])
        return bet is not None and bet.voided_by == refund["transaction_id"]

    def tombstone(self, refund: dict) -> TxRecord:
        """The record a refund that came first leaves in its bet's place: a final 409."""
        bet = bet_of(refund)
        status, body = error_body(IgspError(
            "transaction_already_refunded",
            f"bet {bet['transaction_id']} was refunded ({refund['transaction_id']}) before it arrived; not debited"))
        return TxRecord(self.partner_id, bet["transaction_id"], "bet", fingerprint(bet), state=DONE, status=status,
                        body=body, voided_by=refund["transaction_id"], payload=encode_hook(bet))

    def refund_mismatch(self, bet: TxRecord, refund: dict) -> str | None:
        """Why ``refund`` may not refund ``bet`` (another player's, another currency, another
        amount), or None. Nothing of the bet is told back but which field differs."""
        if bet.payload is None:  # a record from before payloads were kept: its digest must match
            return None if bet.fingerprint == fingerprint(bet_of(refund)) else "player, currency or amount differ"
        placed = decode_hook(bet.payload)
        for name in ("player_id", "currency"):
            if placed.get(name) != refund.get(name):
                return f"{name} differs from the bet's"
        if self.partial_refunds:
            if refund["amount"] > placed["amount"]:
                return "amount is more than the bet's"
        elif refund["amount"] != placed["amount"]:
            return "amount differs from the bet's (this partner does not declare partial refunds)"
        return None

    # -- queued deliveries ------------------------------------------------------------
    async def deliver(self, op: str, hook: dict, request_id: str) -> None:
        """Run one queued delivery; raise UpstreamError to retry it later."""
        payload = hook_from_queue(hook)
        if op == "refund_after_bet":
            current = await self.store.tx_get(self.partner_id, payload["transaction_id"])
            if current is None or current.state != DONE:  # a redelivery after it finished has nothing to do
                await self.refund(payload, request_id, queued=True)
            return
        name = self.rollback_op if op == "rollback" else op
        try:
            reply = await self.client.call(name, await self.call_context(name, payload, request_id))
        except UpstreamError as exc:
            if exc.applied is None and op != "rollback" and not self.mapping.idempotent:
                # Paid or not, nobody knows, and the wallet would pay a resend again: an
                # operator reconciles and replays it (igsp-gateway dlq), the queue does not.
                raise DeadLetter(f"unknown outcome on a non-idempotent wallet: {exc}") from exc
            raise
        except IgspError as exc:
            if op == "rollback":
                raise  # a refused rollback needs an operator: retried, then dead-lettered
            await self.finish(payload["transaction_id"], *error_body(exc))
            return
        if op != "rollback":
            body = orjson.dumps({"balance": amount_json(self.balance_of(reply.fields, payload["currency"])),
                                 "transaction_id": self.platform_txid(reply.fields, payload["transaction_id"])})
            await self.finish(payload["transaction_id"], 200, body)


def transaction_of(entry: QueueEntry) -> tuple[str, str] | None:
    """``(partner, transaction_id)`` of the ledger record a wallet delivery is about: its win's
    or refund's (``queued`` until delivered or resolved), or, for a rollback, the bet's it
    undoes (already final: ``409 transaction_voided``). None for another route's entry."""
    if entry.route != WALLET_ROUTE:
        return None
    payload, hook = entry.payload, entry.payload.get("hook") or {}
    txid = hook.get("bet_transaction_id") if payload.get("op") == "rollback" else hook.get("transaction_id")
    return (payload["partner"], str(txid)) if payload.get("partner") and txid else None


async def resolution(entry: QueueEntry, applied: bool, store: Store, wallet_for) -> Resolution:
    """How dead letter ``entry`` closes once an operator checked the legacy wallet (for
    ``Store.dlq_settle``). ``applied``: a win or refund answers 200 with the player's balance
    read now through ``wallet_for(partner)`` (a Wallet; its failure changes nothing); a
    rollback just closes. Not applied: a win or refund answers ``409
    transaction_not_applied`` and a refund releases its bet. Raises IgspError when the entry
    cannot be closed that way."""
    where = transaction_of(entry)
    if where is None:
        raise IgspError("transaction_conflict", f"dead letter {entry.id} is a queued {entry.route!r} delivery, not a "
                                                "wallet transaction: nothing to resolve; replay or purge it")
    partner, txid = where
    op, hook = entry.payload["op"], hook_from_queue(entry.payload["hook"])
    if op == "rollback":
        if not applied:
            raise IgspError("transaction_conflict", (
                f"dead letter {entry.id} rolls back bet {txid}, whose outcome was unknown: 'not applied' would "
                f"leave the player debited, so it is not an answer here. Replay it (igsp-gateway dlq replay "
                f"{entry.id}) to send the rollback again; resolve --applied only if the wallet shows the bet undone"))
        return Resolution(APPLIED, partner, txid)
    bet_txid = str(hook.get("bet_transaction_id") or "") if hook.get("action") == "refund" else ""
    if not applied:
        return Resolution(NOT_APPLIED, partner, txid, *error_body(NOT_APPLIED_ERROR), unvoid=bet_txid)
    if op == "refund_after_bet":
        bet = await store.tx_get(partner, bet_txid)
        if bet is None or bet.voided_by != txid:
            raise IgspError("transaction_conflict", (
                f"refund {txid} was waiting for bet {bet_txid} and never reached the wallet, so it cannot have "
                "been applied: resolve it --not-applied, or replay it"))
    wallet = wallet_for(partner)
    try:
        body = await wallet.balance_answer(hook, new_id())
    except IgspError as exc:
        raise IgspError(exc.code, f"the player's balance could not be read from the legacy wallet ({exc.message}); "
                                  "nothing was changed: try again", exc.status) from exc
    return Resolution(APPLIED, partner, txid, 200, body)


def check_currency(fields: dict, currency: str) -> None:
    """A balance read with a ``currency`` must be in the hook's currency (never relabel money)."""
    legacy = fields.get("currency")
    if legacy not in (None, "") and str(legacy).upper() != currency:
        raise IgspError("currency_mismatch", f"the wallet keeps this player's balance in {legacy}, not {currency}")



def compensation_payload(bet: dict) -> dict:
    """The refund-shaped request that undoes ``bet`` (its own stable transaction id)."""
    payload = dict(bet)
    payload.update(action="refund", transaction_id=f"{bet['transaction_id']}:rollback",
                   bet_transaction_id=bet["transaction_id"])
    return payload
