"""Legacy wallet callbacks in, signed iGSP hooks out (provider face).

The legacy game server believes the gateway is the casino's seamless wallet. For each
call to ``/legacy/<mapping>/<endpoint>`` the mapping's ``callbacks`` section says how to
check the caller (an adapter's ``verify``, e.g. ``md5_params``), which iGSP hook it is,
how to read the hook's fields from the request, and how to answer — or fail — in the
legacy format with the legacy error codes.

    legacy token  -> the session stored at launch (player, currency, session_id, game)
    legacy ids    -> hook transaction_id / bet_transaction_id, verbatim and stable, so a
                     legacy retry reaches the platform as the same transaction (it dedupes)
    platform 4xx  -> the legacy code the mapping gives that iGSP error (else default_error)
    platform 5xx, timeout, outage -> ``retriable_error`` (the legacy caller retries)

A refund whose amount the legacy caller does not send takes it from the gateway's record
of the bet; a refund of a bet nobody knows is answered as ``succeed_on`` says.
"""

from __future__ import annotations

import logging
import time
import uuid
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from adapters.codecs import dumps, loads
from gateway.adapter_api import InboundRequest, LegacyRequest
from gateway.engine.provider_mapping import Endpoint, LegacyCode
from gateway.errors import IgspError, UpstreamError
from gateway.faces.catalogue import legacy_uuid
from gateway.faces.sessions import PLAYER_NS, SESSION_NS
from gateway.ops import tracing
from gateway.outbound.hooks import HookClient
from gateway.retry_queue import hook_from_queue, to_queue
from gateway.spec import HOOK_SCHEMAS, SpecValidators
from gateway.store import QueueEntry, Store

log = logging.getLogger("igsp.callbacks")

HOOKQ_NS = "hookq"  # "<partner>:<transaction_id>" -> a queued delivery exists
#: Route of queued hook deliveries in the durable queue (gateway/app.py runs them).
HOOK_ROUTE = "hook"
BET_NS = "pbet"  # "<mapping>:<partner>:<bet transaction_id>" -> what the bet was
_TEXT_FIELDS = ("transaction_id", "bet_transaction_id", "round_id")


class Callbacks:
    """The inbound legacy wallet API of one provider mapping."""

    def __init__(self, mapping: Any, store: Store, hooks: HookClient, partners: dict, hook_spec: SpecValidators,
                 currencies: dict | None = None):
        self.mapping = mapping
        self.spec = mapping.provider.callbacks
        self.scope = mapping.provider.catalogue.id_scope
        self.ttl = mapping.provider.launch.session_ttl
        self.store = store
        self.hooks = hooks
        self.partners = partners  # partner id -> Partner (provider face, this mapping)
        self.hook_spec = hook_spec
        self.currencies = currencies or {}

    async def handle(self, request: web.Request, endpoint: Endpoint) -> web.Response:
        """Always a legacy-format answer: nothing here may surface as an iGSP error."""
        request["operation"] = endpoint.name
        context: dict = {"req": {}, "session": None, "secrets": self.mapping.secrets}
        try:
            data = context["req"] = await self._read(request)
            session = context["session"] = await self._session(data)
            partner = self.partners[session["partner"]]
            request["partner"] = partner.id
            return await self._answer(request, endpoint, context, partner)
        except IgspError as exc:
            error = exc
        except Exception:  # noqa: BLE001 - never a traceback to the legacy caller
            log.exception("legacy callback failed", extra={"request_id": request.get("request_id"),
                                                           "endpoint": endpoint.name})
            error = IgspError("internal_error", "internal error")
        # The answer is in the legacy format, often a 200: the metrics judge it by this code.
        request["error"] = error.code
        if isinstance(error, UpstreamError):
            request["upstream_failure"] = error.kind
        if error.status >= 500 and endpoint.queued and context.get("hook") and "partner" in request:
            await self._enqueue(request["partner"], context["hook"], request.get("request_id", ""))
        rule = self._rule(error)
        log.info("legacy callback refused", extra={
            "request_id": request.get("request_id"), "mapping": self.mapping.name, "endpoint": endpoint.name,
            "code": error.code, "legacy_code": rule.code, "reason": error.message})
        return self._error(error, rule, context)

    # -- reading ---------------------------------------------------------------------------
    async def _read(self, request: web.Request) -> dict:
        try:
            raw = await request.read()
        except web.HTTPException:
            raise IgspError("invalid_request", "request body is too large") from None
        try:
            fields = self.spec.codec.decode(raw, request.headers.get("Content-Type", "")) if raw else {}
        except Exception:  # noqa: BLE001 - any codec failure is a malformed request
            raise IgspError("invalid_request", "request body cannot be read") from None
        if not isinstance(fields, dict):
            raise IgspError("invalid_request", "request body is not a set of named values")
        params = dict(request.query)
        inbound = InboundRequest(request.method, request.path, dict(request.headers), params, fields, raw)
        if self.spec.verify is not None and not self.spec.verify.verify(inbound):
            raise IgspError("invalid_signature", "the legacy request's signature is wrong")
        return {**params, **fields}

    async def _session(self, data: dict) -> dict:
        name = self.mapping.name
        token = self.spec.search(self.spec.token, data)
        key = f"{name}:{token}" if token not in (None, "") else None
        if key is None and self.spec.player is not None:
            player = self.spec.search(self.spec.player, data)
            latest = await self.store.kv_get(PLAYER_NS, f"{name}:{player}") if player not in (None, "") else None
            key = f"{name}:{latest.decode()}" if latest is not None else None
        record = await self.store.kv_get(SESSION_NS, key) if key is not None else None
        if record is None:
            raise IgspError("session_not_found", "unknown or expired token")
        session = loads(record)
        if session.get("partner") not in self.partners:
            raise IgspError("session_not_found", "the session's partner is no longer configured")
        return session

    def _hook(self, endpoint: Endpoint, context: dict) -> dict:
        """The iGSP hook for this call: the session's identity plus the mapping's fields."""
        session, data = context["session"], context["req"]
        hook: dict = {"action": endpoint.hook, "player_id": session["player_id"], "currency": session["currency"],
                      "session_id": session["session_id"]}
        try:
            values = {name: field.read(data, context) for name, field in endpoint.fields.items()}
        except Exception as exc:  # noqa: BLE001 - a template or expression failing on this request
            raise IgspError("invalid_request", f"cannot read the legacy request ({type(exc).__name__})") from None
        values = {k: v for k, v in values.items() if v not in (None, "")}
        if endpoint.hook == "balance":
            return {**values, **hook}
        hook["game_id"] = legacy_uuid(self.scope, "games", values.pop("game_id", session["legacy_game_id"]))
        hook["type"] = endpoint.type
        if "amount" in values:
            try:
                amount = self.mapping.amounts.from_legacy(values.pop("amount"), session["currency"], self.currencies)
            except IgspError:
                raise IgspError("invalid_amount", "amount is not a number") from None
            hook["amount"] = self.mapping.amounts.check(amount, session["currency"], self.currencies)
        for name in _TEXT_FIELDS:
            if name in values:
                hook[name] = str(values.pop(name))
        if "finished" in values:
            hook["finished"] = values.pop("finished") in (True, "true", "1", 1, "True")
        return {**values, **hook}

    # -- answering ---------------------------------------------------------------------------
    async def _answer(self, request: web.Request, endpoint: Endpoint, context: dict, partner: Any) -> web.Response:
        request_id = request.get("request_id", "")
        hook = self._hook(endpoint, context)
        request["transaction_id"] = hook.get("transaction_id")
        context["hook"] = hook
        try:
            if endpoint.hook == "refund":
                await self._fill_refund(hook, partner)
            self.hook_spec.check(HOOK_SCHEMAS[endpoint.hook], hook)
            answer = await self.hooks.send(partner, hook, timeout=self.spec.hook_timeout, request_id=request_id,
                                           propagate_trace=self.mapping.propagate_trace)
        except IgspError as exc:
            if exc.code not in endpoint.succeed_on or endpoint.hook == "balance":
                raise
            # The legacy habit (e.g. "refund of an unknown bet: nothing to undo, success").
            balance_hook = {"action": "balance", "player_id": hook["player_id"], "currency": hook["currency"],
                            "session_id": hook["session_id"]}
            answer = await self.hooks.send(partner, balance_hook, timeout=self.spec.hook_timeout,
                                           request_id=request_id, propagate_trace=self.mapping.propagate_trace)
            answer = {"balance": answer["balance"], "transaction_id": hook.get("transaction_id")}
        if endpoint.hook == "bet":
            await self.store.kv_put(BET_NS, f"{self.mapping.name}:{partner.id}:{hook['transaction_id']}",
                                    dumps({k: hook.get(k) for k in ("amount", "game_id", "round_id")}), ttl=self.ttl)
        balance = answer["balance"]
        if isinstance(balance, bool) or not isinstance(balance, (int, Decimal)):
            raise IgspError("upstream_bad_response", "the platform's balance is not a number", 502)
        currency = hook["currency"]
        context.update(balance=Decimal(balance), legacy_balance=self.mapping.amounts.to_legacy(Decimal(balance), currency,
                                                                                         self.currencies),
                       transaction_id=answer.get("transaction_id", hook.get("transaction_id")), currency=currency)
        return self._render(endpoint.reply, context)

    async def _fill_refund(self, hook: dict, partner: Any) -> None:
        """Complete a refund from the gateway's record of its bet (the legacy caller may not repeat it)."""
        bet_txid = hook.get("bet_transaction_id")
        if not bet_txid:
            raise IgspError("invalid_request", "bet_transaction_id: is required")
        if "amount" in hook and "round_id" in hook:
            return
        raw = await self.store.kv_get(BET_NS, f"{self.mapping.name}:{partner.id}:{bet_txid}")
        if raw is None:
            if "amount" not in hook:
                raise IgspError("transaction_not_found", f"no bet {bet_txid} to refund")
            return
        bet = loads(raw)
        hook.setdefault("amount", Decimal(str(bet["amount"])))
        if bet.get("round_id"):
            hook.setdefault("round_id", bet["round_id"])

    # -- queued deliveries -------------------------------------------------------------------
    async def _enqueue(self, partner_id: str, hook: dict, request_id: str) -> None:
        """Put a win/refund the platform could not take on the durable queue, once per transaction.

        The legacy caller still gets its retriable code and may retry; the platform dedupes
        by ``transaction_id``, so the queue and the legacy retries can never pay twice.
        """
        if not await self.store.kv_put(HOOKQ_NS, f"{partner_id}:{hook['transaction_id']}", b"1", ttl=self.ttl,
                                       only_new=True):
            return
        wait = max(5.0, 2 * self.spec.hook_timeout)  # the legacy caller's own retries go first
        await self.store.q_put(QueueEntry(
            id=uuid.uuid4().hex, route=HOOK_ROUTE, next_at=time.time() + wait,
            payload={"mapping": self.mapping.name, "partner": partner_id, "request_id": request_id,
                     "hook": to_queue(hook), **tracing.carrier()}))

    async def deliver(self, partner_id: str, hook: dict, request_id: str) -> None:
        """Send one queued hook; a retriable failure raises (retried, then dead-lettered)."""
        partner = self.partners.get(partner_id)
        if partner is None:
            raise IgspError("internal_error", f"partner {partner_id!r} is no longer configured")
        hook = hook_from_queue(hook)
        try:
            await self.hooks.send(partner, hook, timeout=self.spec.hook_timeout, request_id=request_id,
                                  propagate_trace=self.mapping.propagate_trace)
        except IgspError as exc:
            if exc.retriable:
                raise
            # The platform decided (e.g. the bet was never placed): nothing left to deliver.
            log.warning("queued hook refused by the platform", extra={
                "partner": partner_id, "transaction_id": hook.get("transaction_id"), "code": exc.code})

    def _render(self, tree: Any, context: dict, status: int | None = None) -> web.Response:
        req = LegacyRequest(operation="reply", method="POST", url="", fields=tree(context))
        self.spec.reply_codec.encode(req)
        content_type = req.headers.get("Content-Type", "application/json")
        return web.Response(status=status or self.spec.reply_status, body=req.body,
                            headers={"Content-Type": content_type})

    def _rule(self, error: IgspError) -> LegacyCode:
        spec = self.spec
        return spec.retriable_error if error.status >= 500 else spec.errors.get(error.code, spec.default_error)

    def _error(self, error: IgspError, rule: LegacyCode, context: dict) -> web.Response:
        spec = self.spec
        context = {**context, "legacy_code": rule.code, "legacy_message": rule.message or error.message,
                   "error": error.body()}
        try:
            return self._render(spec.error_reply, context)
        except Exception:  # noqa: BLE001 - the error template itself failed: still answer something
            log.exception("legacy error reply failed")
            body = orjson.dumps({"error": rule.code, "description": rule.message})
            return web.Response(status=spec.reply_status, body=body, content_type="application/json")
