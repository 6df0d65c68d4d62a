"""A casino wallet whose credit must name an open bet, answering everything HTTP 200 + a status.

The shape of many operator wallets built around a bet slip: a debit opens a *bet* (the
wallet gives it an id of its own), a credit settles one open bet by that id, a cancel
returns an open bet's stake. A win with no bet to name needs a zero bet opened first.
JSON ``POST``; amounts in integer cents; ``Authorization: Bearer TOKEN`` when a token is set.

    /wallet/balance  {player, session, ref}                         -> balance, currency
    /wallet/debit    {player, session, ref, tx, round, amount, currency, game}
                                                                     -> bet {id, tx, amount}
    /wallet/credit   {player, session, ref, bet_id, tx, amount}      -> bet {id, tx, amount}
    /wallet/cancel   {player, session, ref, tx, bet_id | bet_tx}     -> bet {id, tx, amount}

Every answer is HTTP 200 and copies ``ref`` and ``player``; success is ``status: "OK"``.

Habits, on purpose:

- "Already done" answers are statuses with the *original* bet, not errors: a debit whose
  ``tx`` was seen answers ``DUPLICATE`` with the bet it opened (moving nothing); a credit
  naming a settled bet answers ``ALREADY_SETTLED`` with the credit that settled it —
  whoever's it was; a cancel of a cancelled bet ``ALREADY_CANCELLED`` with that cancel.
- The credit is NOT idempotent by ``tx``: the same ``tx`` crediting another open bet pays
  again. Only a bet's own state (open, settled) stops a second payment.
- Errors have another shape: ``{"status": "ERROR", "error": {"code", "text"}}`` — codes
  ``NO_FUNDS``, ``SESSION_EXPIRED``, ``PLAYER_BLOCKED``, ``PLAYER_NOT_FOUND``, ``WRONG_CURRENCY``,
  ``BET_NOT_FOUND``, ``BET_SETTLED`` (cancel of a settled bet), ``BET_CANCELLED`` (credit of a
  cancelled bet), ``BAD_REQUEST``, ``AUTH_FAILED``; and two plain statuses the wallet's own
  stack sends: ``INTERNAL_ERROR`` (refused, nothing done) and ``UNKNOWN_ERROR`` (it lost
  track: maybe applied).
- On demand (``POST /_control/status {"endpoint", "status", "apply"}``) the next call to an
  endpoint answers ``INTERNAL_ERROR`` or ``UNKNOWN_ERROR``, after applying it when ``apply``;
  the common faults (``/_control/faults``: delay, HTML 500, reset, apply-then-hang, down) too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

from gateway.tools.simulators._common import BaseState, loads_exact, new_app, path_endpoints, run_main

__all__ = ["State", "make_app"]

PATHS = {"/wallet/balance": "balance", "/wallet/debit": "debit", "/wallet/credit": "credit",
         "/wallet/cancel": "cancel"}
REQUIRED = {"balance": ("player", "ref"), "debit": ("player", "session", "ref", "tx", "amount", "currency"),
            "credit": ("player", "session", "ref", "bet_id", "tx", "amount"), "cancel": ("player", "ref", "tx")}
DEMAND_STATUSES = ("INTERNAL_ERROR", "UNKNOWN_ERROR")


@dataclass
class State(BaseState):
    #: bet id -> {id, tx, player, round, stake (cents), state: open|settled|cancelled, settled_by, cancelled_by}
    bets: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: endpoint -> {"status", "apply"}: the next call's answer (``/_control/status``)
    demands: dict[str, dict[str, Any]] = field(default_factory=dict)


def cents(amount: Decimal) -> int:
    return int(amount.scaleb(2))


def make_app(state: State | None = None, *, token: str | None = None) -> web.Application:
    state = state if state is not None else State()
    app = new_app(state, path_endpoints(PATHS), content_type="application/json")

    def answer(data: dict, status: str, bet: dict | None = None, tx: str | None = None,
               amount: int | None = None) -> dict:
        body: dict[str, Any] = {"status": status, "ref": data.get("ref"), "player": data.get("player")}
        if bet is not None:
            body["bet"] = {"id": bet["id"], "tx": tx, "amount": amount}
        player = state.players.get(data.get("player"))
        if player is not None:
            body.update(balance=cents(player["balance"]), currency=player["currency"])
        return body

    def error(data: Any, code: str, text: str) -> dict:
        data = data if isinstance(data, dict) else {}
        return {"status": "ERROR", "ref": data.get("ref"), "player": data.get("player"),
                "error": {"code": code, "text": text}}

    def find(data: dict) -> dict | None:
        if data.get("bet_id") not in (None, ""):
            bet = state.bets.get(str(data["bet_id"]))
        else:
            bet = next((b for b in state.bets.values() if b["tx"] == data.get("bet_tx")), None)
        return bet if bet is not None and bet["player"] == data["player"] else None

    def debit(data: dict, player: dict) -> dict:
        prior = next((b for b in state.bets.values() if b["tx"] == data["tx"]), None)
        if prior is not None:
            return answer(data, "DUPLICATE", prior, prior["tx"], prior["stake"])
        if data["currency"] != player["currency"]:
            return error(data, "WRONG_CURRENCY", f"player account is in {player['currency']}")
        stake = Decimal(data["amount"]).scaleb(-2)
        if player["balance"] < stake:
            return error(data, "NO_FUNDS", "Insufficient funds")
        bet = {"id": f"B{len(state.bets) + 1:05d}", "tx": data["tx"], "player": data["player"],
               "round": data.get("round"), "stake": data["amount"], "state": "open", "settled_by": None,
               "win": None, "cancelled_by": None}
        state.bets[bet["id"]] = bet
        state.move("debit", data["tx"], data["player"], -stake)
        return answer(data, "OK", bet, bet["tx"], bet["stake"])

    def credit(data: dict) -> dict:
        bet = find(data)
        if bet is None:
            return error(data, "BET_NOT_FOUND", f"no bet {data.get('bet_id')} for this player")
        if bet["state"] == "settled":
            return answer(data, "ALREADY_SETTLED", bet, bet["settled_by"], bet["win"])
        if bet["state"] == "cancelled":
            return error(data, "BET_CANCELLED", f"bet {bet['id']} was cancelled")
        bet.update(state="settled", settled_by=data["tx"], win=data["amount"])
        state.move("credit", data["tx"], data["player"], Decimal(data["amount"]).scaleb(-2))
        return answer(data, "OK", bet, data["tx"], data["amount"])

    def cancel(data: dict) -> dict:
        bet = find(data)
        if bet is None:
            return error(data, "BET_NOT_FOUND", "no such bet for this player")
        if bet["state"] == "cancelled":
            return answer(data, "ALREADY_CANCELLED", bet, bet["cancelled_by"], bet["stake"])
        if bet["state"] == "settled":
            return error(data, "BET_SETTLED", f"bet {bet['id']} is settled")
        bet.update(state="cancelled", cancelled_by=data["tx"])
        state.move("cancel", data["tx"], data["player"], Decimal(bet["stake"]).scaleb(-2))
        return answer(data, "OK", bet, data["tx"], bet["stake"])

    def check(endpoint: str, request: web.Request, data: Any) -> dict | None:
        if token is not None and request.headers.get("Authorization") != f"Bearer {token}":
            return error(data, "AUTH_FAILED", "bad credentials")
        if not isinstance(data, dict) or any(data.get(k) in (None, "") for k in REQUIRED[endpoint]):
            return error(data, "BAD_REQUEST", "missing field")
        if "amount" in data and (isinstance(data["amount"], bool) or not isinstance(data["amount"], int)
                                 or data["amount"] < 0):
            return error(data, "BAD_REQUEST", "amount must be whole cents")
        player = state.players.get(data["player"])
        if player is None:
            return error(data, "PLAYER_NOT_FOUND", "unknown player")
        if player["disabled"]:
            return error(data, "PLAYER_BLOCKED", "player is blocked")
        if endpoint in ("debit", "credit") and player.get("session") not in (None, data.get("session")):
            return error(data, "SESSION_EXPIRED", "session expired")
        return None

    async def handle(request: web.Request) -> web.Response:
        endpoint = PATHS[request.path]
        try:
            data = loads_exact(await request.read())
        except ValueError:
            data = None
        demand = state.demands.pop(endpoint, None)
        body = check(endpoint, request, data)
        if body is None and (demand is None or demand["apply"]):
            if endpoint == "balance":
                body = answer(data, "OK")
            else:
                body = {"debit": debit, "credit": credit, "cancel": cancel}[endpoint](
                    *((data, state.players[data["player"]]) if endpoint == "debit" else (data,)))
        if demand is not None:
            body = {"status": demand["status"], "ref": (data or {}).get("ref") if isinstance(data, dict) else None,
                    "player": data.get("player") if isinstance(data, dict) else None}
        return web.json_response(body)

    async def demand(request: web.Request) -> web.Response:
        data = await request.json()
        if data.get("endpoint") not in PATHS.values() or data.get("status") not in DEMAND_STATUSES:
            return web.json_response({"error": f"endpoint in {sorted(PATHS.values())}, status in "
                                               f"{DEMAND_STATUSES}"}, status=400)
        state.demands[data["endpoint"]] = {"status": data["status"], "apply": bool(data.get("apply", False))}
        return web.json_response({"demands": state.demands})

    for path in PATHS:
        app.router.add_post(path, handle)
    app.router.add_post("/_control/status", demand)
    return app


def main(argv: list[str] | None = None) -> None:
    def options(parser: Any) -> None:
        parser.add_argument("--token", help="the Bearer token callers must send; none checked without it")

    run_main("Bet-reference casino wallet simulator (credit names an open bet)",
             lambda args: make_app(State(), token=args.token), argv, options)


if __name__ == "__main__":
    main()
