"""A casino wallet in the style of Hub88's Operator API (legacy-apis.md, section B).

The gateway calls it as the "aggregator": JSON ``POST`` to ``/user/balance``,
``/transaction/bet``, ``/transaction/win``, ``/transaction/rollback``; always HTTP 200
with a ``status``; amounts are integers in 1/100 000 of the unit (``1000000`` = 10.00).
Answer: ``{"user", "status", "request_uuid", "currency", "balance"}``; ``currency`` and
``balance`` are left out when the caller is not authenticated as a known, enabled player
(signature, syntax, type, user, token, disabled failures).

Checks, in order, and the status each failure gets (where Hub88's docs leave the choice open):

1. ``X-Hub88-Signature`` (base64 RSA-SHA256/PKCS1v15 of the raw body) against
   ``public_key_pem`` -> ``RS_ERROR_INVALID_SIGNATURE`` (no key configured = no check);
2. body not a JSON object or a required field missing -> ``RS_ERROR_WRONG_SYNTAX``;
   a field of the wrong type (``amount`` not a non-negative integer) -> ``RS_ERROR_WRONG_TYPES``;
3. unknown ``user`` -> ``RS_ERROR_UNKNOWN`` (Hub88 has no "no such user" code: the gateway
   must absorb this vague status);
4. empty ``token``, or not the player's pinned ``token`` when the control API set one ->
   ``RS_ERROR_INVALID_TOKEN`` (otherwise any token is accepted: the gateway passes the
   iGSP ``session_id``);
5. player ``disabled`` -> ``RS_ERROR_USER_DISABLED``;
6. ``currency`` differs from the player's -> ``RS_ERROR_WRONG_CURRENCY``;
7. bet above the balance -> ``RS_ERROR_NOT_ENOUGH_MONEY``.

Habits, on purpose:

- ``idempotency="none"`` (default): a repeated bet/win ``transaction_uuid`` is applied
  AGAIN. ``"original"`` answers the original outcome (with the new ``request_uuid``);
  ``"duplicate_error"`` answers ``RS_ERROR_DUPLICATE_TRANSACTION`` with the balance.
- A rollback reverses the referenced transaction once; later rollbacks of it, and (with
  ``rollback_unknown="ok"``, the default) rollbacks of a transaction never seen, are
  acknowledged ``RS_OK`` without moving money. ``rollback_unknown="error"`` answers
  ``RS_ERROR_TRANSACTION_DOES_NOT_EXIST`` instead.
- ``is_free: true`` bets are recorded but debit nothing (free rounds).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gateway.tools.simulators._common import BaseState, loads_exact, new_app, path_endpoints, run_main

__all__ = ["State", "from_units", "generate_keypair", "make_app", "sign_body", "to_units", "verify_body"]

IDEMPOTENCY_MODES = ("none", "original", "duplicate_error")
PATHS = {
    "/user/balance": "balance",
    "/transaction/bet": "bet",
    "/transaction/win": "win",
    "/transaction/rollback": "rollback",
}
_BASE = ("user", "token", "request_uuid")
REQUIRED = {
    "balance": _BASE,
    "bet": (*_BASE, "transaction_uuid", "round", "currency", "amount"),
    "win": (*_BASE, "transaction_uuid", "round", "currency", "amount"),
    "rollback": (*_BASE, "transaction_uuid", "reference_transaction_uuid"),
}
_STRINGS = ("user", "token", "request_uuid", "transaction_uuid", "reference_transaction_uuid", "round", "currency")


@dataclass
class State(BaseState):
    #: transaction_uuid -> {kind, user, amount (signed Decimal), rolled_back, response}
    transactions: dict[str, dict[str, Any]] = field(default_factory=dict)


def to_units(amount: Decimal) -> int:
    """Decimal units -> integer 1/100 000 units (exact; a finer amount raises ValueError)."""
    units = amount.scaleb(5)
    if units != units.to_integral_value():
        raise ValueError(f"{amount} is finer than 1/100000")
    return int(units)


def from_units(units: int) -> Decimal:
    """Integer 1/100 000 units -> Decimal units, exactly."""
    return Decimal(units).scaleb(-5)


def generate_keypair() -> tuple[str, str]:
    """A fresh RSA-2048 key pair as ``(private_pem, public_pem)`` strings."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem.decode(), public_pem.decode()


def sign_body(private_pem: str, body: bytes) -> str:
    """The ``X-Hub88-Signature`` value for ``body``: base64 RSA-SHA256 (PKCS1v15)."""
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return base64.b64encode(key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()


def verify_body(public_key: Any, body: bytes, signature: str) -> bool:
    """True when ``signature`` (base64) signs ``body`` under ``public_key`` (PEM str or key object)."""
    if isinstance(public_key, str):
        public_key = serialization.load_pem_public_key(public_key.encode())
    try:
        public_key.verify(base64.b64decode(signature, validate=True), body, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def make_app(
    state: State | None = None,
    *,
    public_key_pem: str | None = None,
    idempotency: str = "none",
    rollback_unknown: str = "ok",
) -> web.Application:
    if idempotency not in IDEMPOTENCY_MODES:
        raise ValueError(f"idempotency must be one of {IDEMPOTENCY_MODES}")
    if rollback_unknown not in ("ok", "error"):
        raise ValueError("rollback_unknown must be 'ok' or 'error'")
    state = state if state is not None else State()
    public_key = serialization.load_pem_public_key(public_key_pem.encode()) if public_key_pem else None
    app = new_app(state, path_endpoints(PATHS), content_type="application/json")

    def reply(data: Any, status: str, player_id: str | None = None) -> dict[str, Any]:
        data = data if isinstance(data, dict) else {}
        body = {"user": data.get("user"), "status": status, "request_uuid": data.get("request_uuid")}
        player = state.players.get(player_id) if player_id else None
        if player is not None:
            body.update(currency=player["currency"], balance=to_units(player["balance"]))
        return body

    def check(endpoint: str, raw: bytes, signature: str | None) -> tuple[Any, str | None]:
        """(parsed body, failing status or None)."""
        try:
            data = loads_exact(raw)
        except ValueError:
            data = None
        if public_key is not None and not (signature and verify_body(public_key, raw, signature)):
            return data, "RS_ERROR_INVALID_SIGNATURE"
        if not isinstance(data, dict) or any(name not in data for name in REQUIRED[endpoint]):
            return data, "RS_ERROR_WRONG_SYNTAX"
        if any(k in data and not isinstance(data[k], str) for k in _STRINGS):
            return data, "RS_ERROR_WRONG_TYPES"
        amount = data.get("amount", 0)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            return data, "RS_ERROR_WRONG_TYPES"
        player = state.players.get(data["user"])
        if player is None:
            return data, "RS_ERROR_UNKNOWN"
        if not data["token"] or player.get("token") not in (None, data["token"]):
            return data, "RS_ERROR_INVALID_TOKEN"
        if player["disabled"]:
            return data, "RS_ERROR_USER_DISABLED"
        if "currency" in data and data["currency"] != player["currency"]:
            return data, "RS_ERROR_WRONG_CURRENCY"
        return data, None

    def transfer(kind: str, data: dict[str, Any]) -> dict[str, Any]:
        user, uuid = data["user"], data["transaction_uuid"]
        prior = state.transactions.get(uuid)
        if prior is not None and idempotency == "original":
            return dict(prior["response"], request_uuid=data["request_uuid"])
        if prior is not None and idempotency == "duplicate_error":
            return reply(data, "RS_ERROR_DUPLICATE_TRANSACTION", user)
        amount = from_units(data["amount"])
        if kind == "bet":
            amount = Decimal(0) if data.get("is_free") is True else amount
            if state.players[user]["balance"] < amount:
                return reply(data, "RS_ERROR_NOT_ENOUGH_MONEY", user)
            amount = -amount
        state.move(kind, uuid, user, amount)
        response = reply(data, "RS_OK", user)
        # In "none" mode a duplicate moves money again, but only the first is on record
        # (so only the first can be rolled back): the bug the gateway's ledger must hide.
        state.transactions.setdefault(
            uuid, {"kind": kind, "user": user, "amount": amount, "rolled_back": False, "response": response}
        )
        return response

    def rollback(data: dict[str, Any]) -> dict[str, Any]:
        user = data["user"]
        target = state.transactions.get(data["reference_transaction_uuid"])
        if target is None or target["user"] != user:
            status = "RS_OK" if rollback_unknown == "ok" else "RS_ERROR_TRANSACTION_DOES_NOT_EXIST"
            return reply(data, status, user)
        if target["rolled_back"]:
            return reply(data, "RS_OK", user)
        if state.players[user]["balance"] < target["amount"]:  # undoing a win
            return reply(data, "RS_ERROR_NOT_ENOUGH_MONEY", user)
        state.move("rollback", data["transaction_uuid"], user, -target["amount"])
        target["rolled_back"] = True
        return reply(data, "RS_OK", user)

    async def handle(request: web.Request) -> web.Response:
        endpoint = PATHS[request.path]
        data, failure = check(endpoint, await request.read(), request.headers.get("X-Hub88-Signature"))
        if failure is not None:
            # Only an authenticated caller learns the balance.
            body = reply(data, failure, data["user"] if failure == "RS_ERROR_WRONG_CURRENCY" else None)
        elif endpoint == "balance":
            body = reply(data, "RS_OK", data["user"])
        elif endpoint == "rollback":
            body = rollback(data)
        else:
            body = transfer(endpoint, data)
        return web.json_response(body)

    for path in PATHS:
        app.router.add_post(path, handle)
    return app


def main(argv: list[str] | None = None) -> None:
    def options(parser: Any) -> None:
        parser.add_argument("--public-key-file", help="PEM public key; signatures are not checked without it")
        parser.add_argument("--idempotency", choices=IDEMPOTENCY_MODES, default="none")
        parser.add_argument("--rollback-unknown", choices=("ok", "error"), default="ok")

    def build(args: Any) -> web.Application:
        pem = open(args.public_key_file).read() if args.public_key_file else None
        return make_app(
            State(), public_key_pem=pem, idempotency=args.idempotency, rollback_unknown=args.rollback_unknown
        )

    run_main("Hub88-style casino wallet simulator", build, argv, options)


if __name__ == "__main__":
    main()
