"""A casino wallet that signs sorted parameters with HMAC-SHA1 plus nonce and timestamp headers.

The style of several aggregator seamless-wallet APIs: the gateway calls it as the
aggregator with ``POST /wallet``, ``application/x-www-form-urlencoded``, one ``action``
field (``balance``, ``bet``, ``win``, ``refund``) and the call's fields: ``player_id``,
``session_id``, ``currency``, ``amount`` (an integer in the currency's minor units:
``1234`` = 12.34 EUR), ``transaction_id``, ``bet_transaction_id`` (refund), ``round_id``,
``game_uuid``, ``type``. Four headers authenticate every call:

- ``X-Merchant-Id``: the caller's merchant id;
- ``X-Timestamp``: Unix seconds, refused outside ``window`` seconds of the wallet's clock;
- ``X-Nonce``: refused when already seen (a replayed request never runs twice);
- ``X-Sign``: hex HMAC-SHA1, keyed with the merchant key, of every form field and the three
  headers above, sorted by name and url-encoded as ``k1=v1&k2=v2…``.

Answers (HTTP 200): ``{"balance": 8766, "transaction_id": "T-3"}`` (the wallet's own id on
money calls), or ``{"error_code": "…", "error_description": "…"}``:
with the ``balance`` too once the player is known: ``INSUFFICIENT_FUNDS``, ``SESSION_EXPIRED`` (a ``session_id`` other than the player's
pinned ``token``; wins and refunds are taken on an expired session), ``PLAYER_NOT_FOUND``,
``PLAYER_BLOCKED``, ``CURRENCY_MISMATCH``, ``DUPLICATE_TRANSACTION`` (a known
``transaction_id`` with other terms), ``TRANSACTION_NOT_FOUND`` (a refund of a bet never
seen: it leaves a tombstone), ``BET_REFUNDED`` (a bet whose id was refunded before it came,
or a second refund of a bet), ``INTERNAL_ERROR`` (nothing applied: retry).

Habits, on purpose:

- Idempotent only by ``transaction_id``: the exact same call again answers the ORIGINAL
  outcome (the balance of then), whatever nonce it carries; a debit under a new id debits
  again.
- Its refusals of the caller are in another shape and status: HTTP 403
  ``{"error": {"code": 1001, "text": "timestamp expired"}}`` (1001 stale timestamp, 1002
  nonce already used, 1003 bad signature, 1004 unknown merchant, 1005 missing or malformed
  field). Nothing is applied then.
- The faults of ``_common`` (HTML 500, apply-then-hang, reset, garbage, delay) on demand,
  by action name; ``POST /_control/clock {"offset": 60}`` moves its clock, so a test can
  make the caller's timestamps stale without waiting; ``POST /_control/internal_error
  {"action": "bet"}`` makes the next call of an action answer ``INTERNAL_ERROR``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from gateway.tools.simulators._common import BaseState, loads_exact, new_app, run_main, to_decimal

__all__ = ["ACTIONS", "HEADERS", "State", "make_app", "signature"]

ACTIONS = ("balance", "bet", "win", "refund")
#: The headers that take part in the signature, besides the form fields.
HEADERS = ("X-Merchant-Id", "X-Nonce", "X-Timestamp")
EXPONENTS = {"JPY": 0, "KRW": 0, "BHD": 3, "KWD": 3}


def signature(key: str, fields: dict[str, str], headers: dict[str, str]) -> str:
    """Hex HMAC-SHA1 of the fields and ``HEADERS`` sorted by name, url-encoded ``k=v&…``."""
    values = {**fields, **{name: headers.get(name, "") for name in HEADERS}}
    text = urlencode(sorted(values.items()))
    return hmac.new(key.encode(), text.encode(), hashlib.sha1).hexdigest()


@dataclass
class State(BaseState):
    #: transaction_id -> {"action", "terms", "answer", "player", "amount" (signed, major units)}
    transactions: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: bet transaction_id -> the refund's transaction_id (tombstones included)
    refunded: dict[str, str] = field(default_factory=dict)
    nonces: set = field(default_factory=set)
    #: refusals of the caller by code (1001 stale, 1002 nonce reused, …)
    refusals: dict[str, int] = field(default_factory=dict)
    #: seconds added to the wallet's clock
    clock_offset: float = 0.0
    #: actions whose next call answers INTERNAL_ERROR without applying anything
    internal_errors: list = field(default_factory=list)
    #: the last well-formed call: {"fields", "headers"} as received
    last_request: dict[str, Any] = field(default_factory=dict)
    next_tx: int = 1


class Refused(Exception):
    """The caller is refused before anything is looked at (HTTP 403, the odd body)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def _minor(amount: Any, currency: str):
    return to_decimal(amount).scaleb(EXPONENTS.get(currency, 2))


def make_app(state: State | None = None, *, key: str, merchant_id: str, window: float = 30.0) -> web.Application:
    state = state if state is not None else State()

    async def endpoint_of(request: web.Request) -> tuple[str, ...]:
        try:
            fields = dict(parse_qsl((await request.read()).decode(errors="replace")))
        except ValueError:
            fields = {}
        return (fields.get("action") or "unknown",)

    app = new_app(state, endpoint_of, content_type="application/json")

    def authenticate(fields: dict[str, str], headers: Any) -> None:
        given = {name: headers.get(name, "") for name in HEADERS}
        if given["X-Merchant-Id"] != merchant_id:
            raise Refused(1004, "unknown merchant")
        if not hmac.compare_digest(signature(key, fields, given), headers.get("X-Sign", "").lower()):
            raise Refused(1003, "bad signature")
        try:
            stamp = int(given["X-Timestamp"])
        except ValueError:
            raise Refused(1005, "X-Timestamp is not Unix seconds") from None
        if abs(time.time() + state.clock_offset - stamp) > window:
            raise Refused(1001, "timestamp expired")
        nonce = given["X-Nonce"]
        if not nonce or nonce in state.nonces:
            raise Refused(1002, "nonce already used")
        state.nonces.add(nonce)

    def error(code: str, description: str) -> dict[str, Any]:
        return {"error_code": code, "error_description": description}

    def need(fields: dict[str, str], *names: str) -> None:
        missing = [n for n in names if not fields.get(n)]
        if missing:
            raise Refused(1005, f"missing field(s): {', '.join(missing)}")

    def amount_of(fields: dict[str, str], player: dict[str, Any]):
        text = fields.get("amount", "")
        if not text.isdigit():
            raise Refused(1005, f"amount {text!r} is not an integer of minor units")
        return to_decimal(text).scaleb(-EXPONENTS.get(player["currency"], 2))

    def units(player: dict[str, Any]) -> int:
        return int(_minor(player["balance"], player["currency"]))

    def transfer(action: str, fields: dict[str, str], player_id: str) -> dict[str, Any]:
        need(fields, "transaction_id", "amount")
        player = state.players[player_id]
        txid = fields["transaction_id"]
        terms = {k: fields.get(k) for k in ("action", "player_id", "amount", "currency", "bet_transaction_id")}
        prior = state.transactions.get(txid)
        if prior is not None:
            return prior["answer"] if prior["terms"] == terms else error(
                "DUPLICATE_TRANSACTION", "transaction_id already used with other terms")
        if action == "bet" and txid in state.refunded:
            return error("BET_REFUNDED", "this bet was refunded already")
        amount = amount_of(fields, player)
        if action == "bet":
            if player["balance"] < amount:
                return error("INSUFFICIENT_FUNDS", "not enough money")
            amount = -amount
        state.move(action, txid, player_id, amount)
        return record(txid, terms, player_id, amount)

    def record(txid: str, terms: dict, player_id: str, amount) -> dict[str, Any]:
        answer = {"balance": units(state.players[player_id]), "transaction_id": f"T-{state.next_tx}"}
        state.next_tx += 1
        state.transactions[txid] = {"terms": terms, "answer": answer, "player": player_id, "amount": amount}
        return answer

    def refund(fields: dict[str, str], player_id: str) -> dict[str, Any]:
        need(fields, "transaction_id", "bet_transaction_id")
        txid, bet_id = fields["transaction_id"], fields["bet_transaction_id"]
        terms = {k: fields.get(k) for k in ("action", "player_id", "bet_transaction_id")}
        prior = state.transactions.get(txid)
        if prior is not None:
            return prior["answer"] if prior["terms"] == terms else error(
                "DUPLICATE_TRANSACTION", "transaction_id already used with other terms")
        if bet_id in state.refunded:
            return error("BET_REFUNDED", "this bet was refunded already")
        target = state.transactions.get(bet_id)
        if target is None or target["terms"]["action"] != "bet" or target["player"] != player_id:
            state.refunded[bet_id] = txid  # a tombstone: the late bet will be refused
            return error("TRANSACTION_NOT_FOUND", "no such bet")
        state.refunded[bet_id] = txid
        state.move("refund", txid, player_id, -target["amount"])
        return record(txid, terms, player_id, -target["amount"])

    def operate(fields: dict[str, str]) -> dict[str, Any]:
        need(fields, "action", "player_id")
        action = fields["action"]
        if action not in ACTIONS:
            raise Refused(1005, f"unknown action {action!r}")
        if action in state.internal_errors:
            state.internal_errors.remove(action)
            return error("INTERNAL_ERROR", "internal error, try again")
        player = state.players.get(fields["player_id"])
        if player is None:
            return error("PLAYER_NOT_FOUND", "unknown player")
        if player["disabled"]:
            return error("PLAYER_BLOCKED", "player is blocked")
        if action in ("balance", "bet") and player.get("token") not in (None, fields.get("session_id")):
            return error("SESSION_EXPIRED", "session expired")
        if fields.get("currency") and fields["currency"] != player["currency"]:
            return error("CURRENCY_MISMATCH", f"the player plays in {player['currency']}")
        if action == "balance":
            return {"balance": units(player)}
        answer = refund(fields, fields["player_id"]) if action == "refund" else transfer(
            action, fields, fields["player_id"])
        if "error_code" in answer:  # its business errors carry the player's balance too
            answer = {**answer, "balance": units(player)}
        return answer

    async def wallet(request: web.Request) -> web.Response:
        raw = (await request.read()).decode(errors="replace")
        try:
            fields = dict(parse_qsl(raw, keep_blank_values=True, strict_parsing=bool(raw)))
        except ValueError:
            fields = {}
        try:
            authenticate(fields, request.headers)
            state.last_request = {"fields": fields, "headers": {n: request.headers.get(n) for n in (*HEADERS, "X-Sign")}}
            answer = operate(fields)
        except Refused as exc:
            state.refusals[str(exc.code)] = state.refusals.get(str(exc.code), 0) + 1
            return web.json_response({"error": {"code": exc.code, "text": str(exc)}}, status=403)
        return web.json_response(answer)

    async def clock(request: web.Request) -> web.Response:
        data = loads_exact(await request.read())
        state.clock_offset = float(data.get("offset", 0))  # seconds, not money
        return web.json_response({"offset": state.clock_offset})

    async def internal_error(request: web.Request) -> web.Response:
        state.internal_errors.append(str(loads_exact(await request.read()).get("action")))
        return web.json_response({"internal_errors": state.internal_errors})

    app.router.add_post("/wallet", wallet)
    app.router.add_post("/_control/clock", clock)
    app.router.add_post("/_control/internal_error", internal_error)
    return app


def main(argv: list[str] | None = None) -> None:
    def options(parser: Any) -> None:
        parser.add_argument("--key", required=True, help="the merchant key every X-Sign is made with")
        parser.add_argument("--merchant-id", required=True)
        parser.add_argument("--window", type=float, default=30.0, help="seconds a timestamp stays valid")

    run_main("HMAC-SHA1 signed-parameters wallet simulator",
             lambda args: make_app(State(), key=args.key, merchant_id=args.merchant_id, window=args.window),
             argv, options)


if __name__ == "__main__":
    main()
