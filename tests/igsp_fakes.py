"""Small iGSP servers for testing the conformance kit: correct by default, broken on request.

``provider_app`` is a game provider (``/igsp/v1/games``, ``/providers``, ``/sessions``)
and ``platform_app`` a casino platform (the wallet hook). ``broken`` names the laws to
break, one switch per law, so a test can assert exactly which checks fail:

- ``signature``: accepts any request, signed or not (both);
- ``double_debit``: a retried bet debits again, as a non-idempotent wallet does (platform);
- ``replay_refusal``: a signature seen before is refused with 403, even a retried bet's or
  a balance poll's (platform);
- ``no_tombstone``: a refund of an unknown bet leaves no trace, so the bet arriving later
  debits (platform);
- ``refund_any``: a refund voids the bet it names whoever sends it, for whatever amount and
  currency, and credits what it says (platform);
- ``refund_overtakes`` (no law broken, a schedule forced): each bet waits until a refund
  naming it was answered, so a bet sent together with its refund always arrives second
  (platform; a bet nobody refunds waits 10 s).
- ``pagination_duplicates`` / ``pagination_gaps``: the next cursor points one item too
  early (repeats) or one too late (skips) (provider).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from aiohttp import web

from gateway import signing
from gateway.errors import IgspError
from gateway.spec import HOOKS_SPEC, PROVIDER_SPEC, SpecValidators
from gateway.tools.conformance.client import dumps

NAMESPACE = uuid.UUID("6f1b6b8e-8a4b-4cf0-9d35-0c1f7a1f0c11")
EPOCH = datetime(2025, 1, 1, tzinfo=timezone.utc)


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message, "status": status}, status=status)


def authenticate(request: web.Request, body: bytes, api_key: str, secret: str, broken: frozenset) -> None:
    if "signature" in broken:
        return
    if request.headers.get("Authorization", "") != f"Bearer {api_key}":
        raise IgspError("unauthorized", "missing or unknown API key", 401)
    timestamp = request.headers.get("X-Timestamp", "")
    when = signing.parse_timestamp(timestamp)
    if when is None or abs(time.time() - when) > 300:
        raise IgspError("invalid_signature", "timestamp outside the window", 403)
    if not signing.verify((secret.encode(),), body, timestamp, request.headers.get("X-Signature", "")):
        raise IgspError("invalid_signature", "Invalid signature", 403)


@web.middleware
async def igsp_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except IgspError as exc:
        return error(exc.status, exc.code, exc.message)


# -- provider ----------------------------------------------------------------------------------------

def _stamp(days: float) -> str:
    return (EPOCH + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def catalogue(n_games: int = 23) -> tuple[list[dict], list[dict]]:
    providers = [{"id": str(uuid.uuid5(NAMESPACE, f"provider-{i}")), "name": f"Studio {i}", "currencies": ["EUR"],
                  "updated_at": _stamp(i * 10)} for i in range(3)]
    games = [{"id": str(uuid.uuid5(NAMESPACE, f"game-{i}")), "provider_id": providers[i % 3]["id"],
              "name": f"Game {i}", "rtp": Decimal("0.96"), "status": "deprecated" if i == 0 else "active",
              "categories": ["slots"], "updated_at": _stamp(i // 2), "deleted_at": None} for i in range(n_games)]
    return sorted(games, key=lambda g: g["id"]), sorted(providers, key=lambda p: p["id"])


def provider_app(api_key: str, secret: str, broken: frozenset = frozenset(), n_games: int = 23) -> web.Application:
    games, providers = catalogue(n_games)
    spec = SpecValidators(PROVIDER_SPEC)
    sessions: dict[str, tuple[bytes, dict]] = {}
    skew = {"pagination_duplicates": -1, "pagination_gaps": 1}
    step = sum(v for k, v in skew.items() if k in broken)

    def page(request: web.Request, rows: list[dict]) -> web.Response:
        query = request.query
        try:
            limit = int(query.get("limit", "50"))
            offset = json.loads(base64.urlsafe_b64decode(query["cursor"]))["o"] if "cursor" in query else 0
        except (ValueError, KeyError, TypeError):
            raise IgspError("invalid_request", "bad limit or cursor", 400) from None
        if not 1 <= limit <= 200 or not isinstance(offset, int):
            raise IgspError("invalid_request", "limit must be 1-200", 400)
        if "updated_after" in query:
            after = signing.parse_timestamp(query["updated_after"])
            if after is None:
                raise IgspError("invalid_request", "updated_after is not a date-time", 400)
            rows = [r for r in rows if signing.parse_timestamp(r["updated_at"]) > after]
        chunk = rows[offset:offset + limit]
        more = offset + limit < len(rows)

        def cursor(at: int) -> str:
            return base64.urlsafe_b64encode(json.dumps({"o": at}).encode()).decode()

        body = {"data": chunk, "cursor": {"next": cursor(offset + limit + step) if more else None,
                                          "previous": cursor(max(0, offset - limit)) if offset else None},
                "meta": {"limit": limit, "returned": len(chunk), "has_more": more}}
        return web.Response(body=dumps(body), content_type="application/json")

    async def list_games(request: web.Request) -> web.Response:
        authenticate(request, b"", api_key, secret, broken)
        return page(request, games)

    async def list_providers(request: web.Request) -> web.Response:
        authenticate(request, b"", api_key, secret, broken)
        return page(request, providers)

    async def create_session(request: web.Request) -> web.Response:
        body = await request.read()
        authenticate(request, body, api_key, secret, broken)
        try:
            data = json.loads(body, parse_float=Decimal)
        except ValueError:
            raise IgspError("invalid_json", "body is not JSON", 400) from None
        spec.check("SessionRequest", data)
        if not any(g["id"] == data["game_id"] for g in games):
            raise IgspError("game_not_found", "no such game", 400)
        known = sessions.get(data["session_id"])
        if known is not None:
            if known[0] != body:
                raise IgspError("session_conflict", "session_id was used for another launch", 409)
            return web.json_response(known[1], status=201)
        answer = {"url": f"https://games.example.com/play/{uuid.uuid4().hex}"}
        sessions[data["session_id"]] = (body, answer)
        return web.json_response(answer, status=201)

    app = web.Application(middlewares=[igsp_errors])
    app.router.add_get("/igsp/v1/games", list_games)
    app.router.add_get("/igsp/v1/providers", list_providers)
    app.router.add_post("/igsp/v1/sessions", create_session)
    return app


# -- platform ----------------------------------------------------------------------------------------

def platform_app(api_key: str, secret: str, broken: frozenset = frozenset(), players: dict | None = None
                 ) -> web.Application:
    spec = SpecValidators(HOOKS_SPEC)
    balances = {k: Decimal(v) for k, v in (players or {"p1": "100.00"}).items()}
    done: dict[str, dict] = {}  # transaction_id -> {"fields", "answer", "refunded_by"}
    tombstones: dict[str, str] = {}  # bet transaction_id -> the refund that came first
    refund_answered: dict[str, asyncio.Event] = {}  # bet transaction_id -> (refund_overtakes)
    signatures: set[str] = set()  # (replay_refusal)
    counter = iter(range(1, 1_000_000))

    def answer(data: dict) -> dict:
        return {"balance": balances[data["player_id"]], "transaction_id": f"plat-{next(counter)}"}

    def transact(data: dict) -> dict:
        action, amount, player = data["action"], data["amount"], data["player_id"]
        fields = (action, player, amount, data["currency"], data.get("bet_transaction_id"))
        prior = done.get(data["transaction_id"])
        if prior is not None and not (action == "bet" and "double_debit" in broken):
            if prior["fields"] != fields:
                raise IgspError("transaction_conflict", "transaction_id reused with other data", 409)
            return prior["answer"]
        if action == "bet" and data["transaction_id"] in tombstones and "no_tombstone" not in broken:
            raise IgspError("transaction_already_refunded", "the bet was refunded before it came", 409)
        if action == "bet":
            if balances[player] < amount:
                raise IgspError("insufficient_funds", "balance too low", 402)
            balances[player] -= amount
        elif action == "win":
            balances[player] += amount
        else:
            bet = done.get(data["bet_transaction_id"])
            if bet is None or bet["fields"][0] != "bet":
                tombstones.setdefault(data["bet_transaction_id"], data["transaction_id"])
                raise IgspError("transaction_not_found", "no such bet", 404)
            if bet["refunded_by"] is not None:
                raise IgspError("transaction_already_refunded", "bet already refunded", 409)
            if "refund_any" in broken:
                credit = amount
            elif bet["fields"][1:4] != (player, amount, data["currency"]):
                raise IgspError("transaction_conflict", "the refund does not match its bet", 409)
            else:
                credit = bet["fields"][2]
            bet["refunded_by"] = data["transaction_id"]
            balances[player] += credit
        result = answer(data)
        done[data["transaction_id"]] = {"fields": fields, "answer": result, "refunded_by": None}
        return result

    async def hooks(request: web.Request) -> web.Response:
        body = await request.read()
        authenticate(request, body, api_key, secret, broken)
        if "replay_refusal" in broken:
            if request.headers["X-Signature"] in signatures:
                raise IgspError("invalid_signature", "this signature was used before", 403)
            signatures.add(request.headers["X-Signature"])
        try:
            data = json.loads(body, parse_float=Decimal)
        except ValueError:
            raise IgspError("invalid_json", "body is not JSON", 400) from None
        schema = {"balance": "BalanceRequest", "bet": "BetRequest", "win": "WinRequest", "refund": "RefundRequest"}
        if not isinstance(data, dict) or data.get("action") not in schema:
            raise IgspError("unknown_action", "unknown action", 400)
        spec.check(schema[data["action"]], data)
        if data["player_id"] not in balances:
            raise IgspError("player_not_found", "no such player", 404)
        if data["action"] == "balance":
            result = {"balance": balances[data["player_id"]]}
        elif data["action"] == "refund":
            data["amount"] = Decimal(data["amount"])
            try:
                result = transact(data)
            finally:
                refund_answered.setdefault(data["bet_transaction_id"], asyncio.Event()).set()
        else:
            data["amount"] = Decimal(data["amount"])
            if data["action"] == "bet" and "refund_overtakes" in broken:
                refunded = refund_answered.setdefault(data["transaction_id"], asyncio.Event())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(refunded.wait(), 10)
            result = transact(data)
        return web.Response(body=dumps(result), content_type="application/json")

    app = web.Application(middlewares=[igsp_errors])
    app.router.add_post("/platforms/game-provider/hooks", hooks)
    return app
