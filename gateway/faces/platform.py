"""The platform face: iGSP wallet hooks in (``POST {hooks_path}``), a legacy wallet out.

    POST {hooks_path}   balance / bet / win / refund from iGSP providers, HMAC-verified;
                        each platform-face partner's hooks go to its Wallet (wallet.py)
    queue route wallet  wins and refunds that could not be delivered, and rollbacks of
                        bets whose outcome was unknown (Wallet.deliver)

Plugged into the app like the provider face (gateway/faces/base.py): ``PlatformFace`` adds the
route once; ``build`` makes the verifier and one Wallet per partner for each config
generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from aiohttp import web

from gateway.auth import Verifier, client_address
from gateway.config import Config
from gateway.context import generation
from gateway.errors import IgspError
from gateway.faces.base import Face
from gateway.faces.wallet import MONEY_ACTIONS, WALLET_ROUTE, Wallet
from gateway.jsonio import igsp_object
from gateway.ops import metrics
from gateway.runtime import Generation, Runtime
from gateway.spec import HOOK_SCHEMAS, SpecValidators, hook_validators
from gateway.store import QueueEntry, TxRecord


@dataclass
class PlatformObjects:
    """What the hook handler uses under one config generation."""

    verifier: Verifier
    wallets: dict[str, Wallet]  # platform-face partner id -> wallet
    spec: SpecValidators


class PlatformFace(Face):
    name = "platform"

    def __init__(self, app: web.Application, config: Config):
        super().__init__(app, config)
        app.router.add_post(config.hooks_path, handle_hook, name=self.name)
        self.deliveries[WALLET_ROUTE] = deliver

    def build(self, gen: Generation, runtime: Runtime) -> PlatformObjects:
        config, store = gen.config, runtime.store
        verifier = Verifier({p.api_key: p for p in config.partners}, config.signature_window, store,
                            on_failure=lambda reason: metrics.SIGNATURE_FAILURES.labels(reason).inc(),
                            limiter=gen.limiter, client_address=client_address(config),
                            on_refused=metrics.ip_refusals(p for p in config.partners if p.face == "platform"))
        wallets = {
            partner.id: Wallet(
                partner.id, gen.clients[partner.mapping.name], store, retention=config.retention_seconds,
                currencies=config.currencies, wake_queue=runtime.wake_queue, orphan_after=config.queue_lease_seconds,
                on_replay=lambda action, pid=partner.id: metrics.REPLAYS.labels(pid, action).inc(),
                partial_refunds=partner.partial_refunds)
            for partner in config.partners if partner.face == "platform"
        }
        return PlatformObjects(verifier, wallets, hook_validators())

    def backoff(self, built: PlatformObjects, entry: QueueEntry) -> tuple[float, float]:
        wallet = built.wallets.get(entry.payload.get("partner"))
        if wallet is None:
            return super().backoff(built, entry)
        return wallet.mapping.backoff_initial, wallet.mapping.backoff_max


    async def settle(self, built: PlatformObjects, record: TxRecord) -> bool:
        wallet = built.wallets.get(record.partner)
        return wallet is not None and await wallet.settle_orphan(record)


def parse_hook(body: bytes, spec: SpecValidators) -> dict:
    """Decode (amounts as Decimal) and validate one hook against ``spec/``; 400 on any problem."""
    payload = igsp_object(body)
    action = payload.get("action")
    schema = HOOK_SCHEMAS.get(action) if isinstance(action, str) else None
    if schema is None:
        raise IgspError("unknown_action", f"action must be one of: {', '.join(HOOK_SCHEMAS)}")
    spec.check(schema, payload)
    if "amount" in payload and not isinstance(payload["amount"], Decimal):
        payload["amount"] = Decimal(payload["amount"])
    return payload


async def handle_hook(request: web.Request) -> web.Response:
    face: PlatformObjects = generation(request).faces[PlatformFace.name]
    body = await request.read()
    partner, once = await face.verifier.check(request.headers, body, "platform", request.remote)
    request["partner"] = partner.id
    payload = parse_hook(body, face.spec)
    request["operation"] = payload["action"]
    if "transaction_id" in payload:
        request["transaction_id"] = payload["transaction_id"]
    if once is not None and payload["action"] not in MONEY_ACTIONS:
        await face.verifier.claim(once)  # strict mode; a money hook's retry is the ledger's to answer
    status, out = await face.wallets[partner.id].handle(payload, request["request_id"])
    return web.Response(status=status, body=out, content_type="application/json")


async def deliver(face: PlatformObjects, entry: QueueEntry) -> None:
    """One queued wallet delivery, by the wallet of the partner it was queued for."""
    payload = entry.payload
    wallet = face.wallets.get(payload["partner"])
    if wallet is None:
        raise IgspError("internal_error", f"partner {payload['partner']!r} is no longer configured")
    await wallet.deliver(payload["op"], payload["hook"], payload.get("request_id", ""))
