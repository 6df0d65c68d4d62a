"""``POST /sessions``: an iGSP launch turned into the legacy launch flow.

The platform's ``session_id`` is the idempotency key, kept in the store's ledger under
``(partner, "session:<session_id>")`` before any legacy call:

    same session_id, same body   -> the stored 201 and URL again; the legacy side is not called
    same session_id, other body  -> 409 session_conflict
    a copy still launching       -> waits for it briefly, else 503 (retriable)
    the launch failed            -> the record is dropped, so a retry starts afresh

The legacy flow is the mapping's ``launch.steps`` (operations run in order, each one's
response fields joining the template context) and ``launch.url``. The session — player,
currency, session_id, game — is stored under the legacy token the launch handed to the
legacy game server, so its wallet callbacks can be turned into iGSP hooks.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any

import orjson

from adapters.codecs import dumps
from gateway.errors import IgspError
from gateway.faces import ledger
from gateway.faces.catalogue import Catalogue
from gateway.outbound.legacy import LegacyClient
from gateway.store import Store, TxRecord
from gateway.store.base import PENDING

SESSION_NS = "psession"  # "<mapping>:<legacy token>" -> session record
PLAYER_NS = "pplayer"  # "<mapping>:<player_id>" -> latest legacy token




class Launcher:
    """Launches for one provider mapping (shared by every partner that uses it)."""

    def __init__(self, mapping: Any, client: LegacyClient, catalogue: Catalogue, store: Store, *,
                 retention: float, wait_seconds: float = 2.0):
        self.mapping = mapping
        self.spec = mapping.provider.launch
        self.client = client
        self.catalogue = catalogue
        self.store = store
        self.retention = retention
        self.wait_seconds = wait_seconds

    async def launch(self, partner: Any, payload: dict, request_id: str) -> tuple[int, bytes]:
        """Answer ``(status, body)`` for a validated SessionRequest."""
        rec = TxRecord(partner.id, f"session:{payload['session_id']}", "session", ledger.fingerprint(payload))
        existing = await self.store.tx_begin(rec, max(self.retention, self.spec.session_ttl))
        if existing is not None:
            return await self._replay(existing, rec.fingerprint)
        try:
            url = await self._run(partner, payload, request_id)
        except BaseException:
            # Nothing progressed: a retry of this session_id may try again.
            await self.store.tx_forget(partner.id, rec.txid)
            raise
        body = orjson.dumps({"url": url})
        await self.store.tx_finish(partner.id, rec.txid, "done", 201, body, max(self.retention, self.spec.session_ttl))
        return 201, body

    async def settle_orphan(self, record: TxRecord) -> bool:
        """A launch its gateway left pending moved no money: forget it (the sweeper's part),
        so the platform's retry of this session_id launches afresh."""
        if record.action != "session":
            return False
        await self.store.tx_forget(record.partner, record.txid)
        return True

    async def _replay(self, existing: TxRecord, fp: str) -> tuple[int, bytes]:
        if existing.fingerprint != fp:
            raise IgspError("session_conflict", "session_id was already used for a different launch")
        existing = await ledger.settled(self.store, existing, self.wait_seconds)
        if existing.state == PENDING:
            raise IgspError("transaction_in_progress", "a launch with this session_id is still running; retry")
        return existing.status, existing.body

    async def _run(self, partner: Any, payload: dict, request_id: str) -> str:
        entry = await self.catalogue.find("games", payload["game_id"], request_id)
        if entry is None:
            raise IgspError("game_not_found", f"game {payload['game_id']} is not in the catalogue")
        game = entry[3]
        if self.spec.check_currency:
            await self._check_currency(game, payload["currency"], request_id)
        now = datetime.now(timezone.utc)
        context = {"device": "mobile", "is_demo": False, **payload, "game": game, "legacy_game_id": entry[2],
                   "token": secrets.token_urlsafe(18), "partner": partner.id, "request_id": request_id,
                   "secrets": self.mapping.secrets, "now": now, "now_ms": int(now.timestamp() * 1000)}
        for step in self.spec.steps:
            reply = await self.client.call(step, context)
            context.update({k: v for k, v in reply.fields.items() if v is not None})
        try:
            url = self.spec.url(context)
            token = self.spec.token(context) if self.spec.token is not None else context["token"]
        except Exception as exc:  # noqa: BLE001 - a template that fails on this answer
            raise IgspError("upstream_bad_response", f"cannot build the launch URL: {type(exc).__name__}") from exc
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise IgspError("upstream_bad_response", "the legacy launch gave no usable URL")
        if not token:
            raise IgspError("upstream_bad_response", "the legacy launch gave no token")
        session = {"partner": partner.id, "session_id": payload["session_id"], "player_id": payload["player_id"],
                   "player_name": payload["player_name"], "currency": payload["currency"],
                   "game_id": game["id"], "legacy_game_id": entry[2], "token": str(token),
                   "is_demo": bool(payload.get("is_demo", False)), "created_at": now.timestamp()}
        ttl = self.spec.session_ttl
        await self.store.kv_put(SESSION_NS, f"{self.mapping.name}:{token}", dumps(session), ttl=ttl)
        await self.store.kv_put(PLAYER_NS, f"{self.mapping.name}:{payload['player_id']}", str(token).encode(), ttl=ttl)
        return url

    async def _check_currency(self, game: dict, currency: str, request_id: str) -> None:
        allowed = game.get("currencies")
        if allowed is None and "provider_id" in game:
            provider = await self.catalogue.find("providers", game["provider_id"], request_id)
            allowed = provider[3].get("currencies") if provider is not None else None
        if allowed is not None and currency not in allowed:
            raise IgspError("unsupported_currency", f"currency {currency} is not supported for this game")
