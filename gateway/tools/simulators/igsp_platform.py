"""A small iGSP-speaking casino platform: the wallet-hook receiver of PROTOCOL.md.

``POST /platforms/game-provider/hooks`` (the ``path`` option moves it) with actions
``balance``, ``bet``, ``win``, ``refund``. Unlike the legacy simulators it behaves
*correctly*, so it is the reference the gateway's iGSP side is tested against:

- every request is signed: ``Authorization: Bearer <api_key>``, ``X-Timestamp``,
  ``X-Signature = hex(HMAC-SHA256(secret, raw_body + X-Timestamp))`` over the bytes
  received. Missing ``Authorization`` or an unknown key -> 401 ``unauthorized``; a missing,
  unparsable or out-of-window (``max_skew`` seconds, default 300) timestamp, or a missing or
  wrong signature -> 403 ``invalid_signature``. ``secret`` may be a list (key rotation);
- JSON amounts are parsed as Decimal and balances answered as exact JSON numbers;
- ``transaction_id`` is the idempotency key: a repeat answers the stored original body
  (same balance, same platform ``transaction_id``) without moving money; the same id
  with another action, player or amount -> 409 ``transaction_conflict``;
- a refund voids its bet once: unknown bet (or another player's) -> 404
  ``transaction_not_found``; already refunded by another transaction -> 409
  ``already_refunded``; an ``amount`` other than the bet's -> 400 ``amount_mismatch``.
  A refund of an unknown bet leaves a tombstone: the bet, should it come later, is 409
  ``transaction_already_refunded`` and moves nothing;
- bet above the balance -> 402 ``insufficient_funds``; unknown player -> 404
  ``player_not_found``; disabled player -> 409 ``player_disabled``; currency other than
  the player's -> 400 ``currency_mismatch``; if the player was given ``sessions`` (a list)
  through the control API, any other ``session_id`` -> 400 ``invalid_session``;
- malformed JSON -> 400 ``invalid_json``; unknown action -> 400 ``unsupported_action``;
  missing/ill-typed fields -> 400 ``validation_error``;
- every error body is ``{"error", "message", "status"}``, including the 503 of a ``down``
  fault (``service_unavailable``).
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

from gateway.signing import parse_timestamp, verify
from gateway.tools.simulators._common import BaseState, fmt, loads_exact, new_app, run_main

__all__ = ["HOOK_PATH", "State", "make_app"]

HOOK_PATH = "/platforms/game-provider/hooks"
_MONEY = ("player_id", "amount", "currency", "game_id", "transaction_id", "session_id", "type")
REQUIRED = {
    "balance": ("player_id", "currency"),
    "bet": _MONEY,
    "win": _MONEY,
    "refund": (*_MONEY, "bet_transaction_id"),
}
TYPES = {
    "bet": {"bet", "tip", "freespin"},
    "win": {"win", "jackpot", "freespin", "tournament", "prize"},
    "refund": {"bet", "tip", "freespin"},
}


class HookError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class State(BaseState):
    #: provider transaction_id -> {action, player, amount, bet_transaction_id, refunded_by, response}
    transactions: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: bet transaction_id -> the refund that came before the bet
    tombstones: dict[str, str] = field(default_factory=dict)
    next_tx: int = 1


def number_json(body: dict[str, Any]) -> str:
    """A flat JSON object whose Decimal values are written as exact JSON numbers."""
    items = (f"{json.dumps(k)}: {fmt(v) if isinstance(v, Decimal) else json.dumps(v)}" for k, v in body.items())
    return "{" + ", ".join(items) + "}"


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message, "status": status}, status=status)


def validate(raw: bytes) -> dict[str, Any]:
    try:
        data = loads_exact(raw)
    except ValueError:
        raise HookError(400, "invalid_json", "body is not JSON") from None
    if not isinstance(data, dict):
        raise HookError(400, "invalid_json", "body is not a JSON object")
    action = data.get("action")
    if action not in REQUIRED:
        raise HookError(400, "unsupported_action", f"unsupported action {action!r}")
    missing = [name for name in REQUIRED[action] if name not in data]
    if missing:
        raise HookError(400, "validation_error", f"missing field(s): {', '.join(missing)}")
    for name in (*REQUIRED[action], "session_id", "round_id"):
        if name != "amount" and name in data and not isinstance(data[name], str):
            raise HookError(400, "validation_error", f"{name} must be a string")
    if action != "balance":
        amount = data["amount"]
        if isinstance(amount, bool) or not isinstance(amount, (int, Decimal)) or amount < 0:
            raise HookError(400, "validation_error", "amount must be a number >= 0")
        data["amount"] = Decimal(amount)
        if data["type"] not in TYPES[action]:
            raise HookError(400, "validation_error", f"type must be one of {sorted(TYPES[action])}")
    return data


def make_app(
    state: State | None = None,
    *,
    api_key: str = "test-key",
    secret: str | list[str] = "test-secret",  # noqa: S107 - a simulator's test credential
    max_skew: float | None = 300,
    path: str = HOOK_PATH,
) -> web.Application:
    state = state if state is not None else State()
    secrets = tuple(s.encode() for s in ([secret] if isinstance(secret, str) else secret))

    async def endpoint_of(request: web.Request) -> tuple[str, ...]:
        try:
            action = json.loads(await request.read()).get("action")
        except (ValueError, AttributeError):
            action = None
        return (action if isinstance(action, str) else "unknown",)

    def unavailable() -> web.Response:
        return error_response(503, "service_unavailable", "platform is temporarily unavailable")

    app = new_app(state, endpoint_of, content_type="application/json", down_response=unavailable)

    def authenticate(headers: Any, raw: bytes) -> None:
        scheme, _, key = headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not hmac.compare_digest(key.strip().encode(), api_key.encode()):
            raise HookError(401, "unauthorized", "missing or unknown API key")
        timestamp, signature = headers.get("X-Timestamp", ""), headers.get("X-Signature", "")
        when = parse_timestamp(timestamp)
        if when is None or (max_skew is not None and abs(time.time() - when) > max_skew):
            raise HookError(403, "invalid_signature", "missing timestamp or outside the allowed window")
        if not signature or not verify(secrets, raw, timestamp, signature):
            raise HookError(403, "invalid_signature", "Invalid signature")

    def player_for(data: dict[str, Any]) -> dict[str, Any]:
        player = state.players.get(data["player_id"])
        if player is None:
            raise HookError(404, "player_not_found", f"unknown player {data['player_id']!r}")
        if player["disabled"]:
            raise HookError(409, "player_disabled", "player is disabled")
        if data["currency"] != player["currency"]:
            raise HookError(400, "currency_mismatch", f"player currency is {player['currency']}")
        sessions = player.get("sessions")
        if sessions is not None and "session_id" in data and data["session_id"] not in sessions:
            raise HookError(400, "invalid_session", "unknown or expired session")
        return player

    def transact(data: dict[str, Any], player: dict[str, Any]) -> dict[str, Any]:
        action, txid, amount, player_id = data["action"], data["transaction_id"], data["amount"], data["player_id"]
        prior = state.transactions.get(txid)
        if prior is not None:
            if (prior["action"], prior["player"], prior["amount"]) != (action, player_id, amount):
                raise HookError(409, "transaction_conflict", f"transaction {txid} exists with other data")
            return prior["response"]  # a retry: same outcome, nothing moves
        bet = None
        if action == "bet" and txid in state.tombstones:
            raise HookError(409, "transaction_already_refunded", f"bet {txid} was refunded before it came "
                                                                 f"(by {state.tombstones[txid]})")
        if action == "bet" and player["balance"] < amount:
            raise HookError(402, "insufficient_funds", "balance is lower than the bet")
        if action == "refund":
            bet = state.transactions.get(data["bet_transaction_id"])
            if bet is None:
                state.tombstones.setdefault(data["bet_transaction_id"], txid)
            if bet is None or bet["action"] != "bet" or bet["player"] != player_id:
                raise HookError(404, "transaction_not_found", f"no bet {data['bet_transaction_id']!r}")
            if bet["refunded_by"] is not None:
                raise HookError(409, "already_refunded", f"bet already refunded by {bet['refunded_by']}")
            if amount != bet["amount"]:
                raise HookError(400, "amount_mismatch", f"the bet was {fmt(bet['amount'])}")
        balance = state.move(action, txid, player_id, -amount if action == "bet" else amount)
        if bet is not None:
            bet["refunded_by"] = txid
        response = {"balance": balance, "transaction_id": f"ptx-{state.next_tx:06d}"}
        state.next_tx += 1
        state.transactions[txid] = {
            "action": action,
            "player": player_id,
            "amount": amount,
            "bet_transaction_id": data.get("bet_transaction_id"),
            "refunded_by": None,
            "response": response,
        }
        return response

    async def hooks(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            authenticate(request.headers, raw)
            data = validate(raw)
            player = player_for(data)
            body = {"balance": player["balance"]} if data["action"] == "balance" else transact(data, player)
        except HookError as exc:
            return error_response(exc.status, exc.code, str(exc))
        return web.Response(text=number_json(body), content_type="application/json")

    app.router.add_post(path, hooks)
    return app


def main(argv: list[str] | None = None) -> None:
    def options(parser: Any) -> None:
        parser.add_argument("--api-key", default="test-key")
        parser.add_argument("--secret", action="append", help="signing secret (repeat for rotation)")
        parser.add_argument("--path", default=HOOK_PATH)

    def build(args: Any) -> web.Application:
        return make_app(State(), api_key=args.api_key, secret=args.secret or "test-secret", path=args.path)

    run_main("iGSP platform (wallet hooks) simulator", build, argv, options)


if __name__ == "__main__":
    main()
