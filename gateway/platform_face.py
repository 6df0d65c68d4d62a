"""``POST /platforms/game-provider/hooks``: iGSP wallet hooks in, the legacy wallet out."""

from __future__ import annotations

from decimal import Decimal

from aiohttp import web

from gateway.errors import IgspError
from gateway.jsonio import igsp_object
from gateway.spec import SpecValidators
from gateway.store import Replayed

_SCHEMAS = {"balance": "BalanceRequest", "bet": "BetRequest", "win": "WinRequest", "refund": "RefundRequest"}


def parse_hook(body: bytes, spec: SpecValidators) -> dict:
    """Decode (amounts as Decimal) and validate one hook against ``spec/``; 400 on any problem."""
    payload = igsp_object(body)
    action = payload.get("action")
    schema = _SCHEMAS.get(action) if isinstance(action, str) else None
    if schema is None:
        raise IgspError("unknown_action", f"action must be one of: {', '.join(_SCHEMAS)}")
    spec.check(schema, payload)
    if "amount" in payload and not isinstance(payload["amount"], Decimal):
        payload["amount"] = Decimal(payload["amount"])
    return payload


async def handle_hook(request: web.Request) -> web.Response:
    from gateway.app import HOOK_SPEC, generation

    app, gen = request.app, generation(request)
    body = await request.read()
    partner, once = gen.verifier.check(request.headers, body, "platform")
    request["partner"] = partner.id
    payload = parse_hook(body, app[HOOK_SPEC])
    request["operation"] = payload["action"]
    if "transaction_id" in payload:
        request["transaction_id"] = payload["transaction_id"]
    try:
        # A money hook claims its signature with its ledger record, in one commit.
        status, out = await gen.wallets[partner.id].handle(payload, request["request_id"], once)
    except Replayed:
        raise gen.verifier.replayed() from None
    return web.Response(status=status, body=out, content_type="application/json")
