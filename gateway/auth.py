"""Verifying inbound iGSP requests: who is calling, and did they sign these bytes now.

401 ``unauthorized`` for a missing or unknown credential, 403 ``forbidden`` for a partner
with ``allowed_ips`` called from another address (checked before the signature, see
gateway/clientip.py), 403 ``invalid_signature`` for a bad signature or a timestamp outside
the window. The caller only learns the status; the precise reason goes to logs and
metrics. A verified partner over its rate limit gets 429 before anything is written
(gateway/ratelimit.py).

A valid signature sent again (a byte-identical retry) is **not** refused by default: a
retry must get the first answer, and every write it could repeat is idempotent anyway
(the ledger answers a money hook's retry, a launch is idempotent by ``session_id``).
A partner in strict mode (``replay_protection``) has the signatures of its balance hooks
and launches accepted once (403 on a replay); money hooks are never refused as replays.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway import signing
from gateway.clientip import Address, ClientAddress, allowed
from gateway.config import Config, Partner
from gateway.errors import IgspError
from gateway.ops import tracing
from gateway.ratelimit import Limiter
from gateway.store import OnceKey, Store


class AuthFailure(IgspError):
    """An authentication failure with a ``reason`` for logs and metrics only."""

    def __init__(self, code: str, reason: str, client: Address | None = None):
        super().__init__(code, _MESSAGES.get(code, "signature or timestamp rejected"))
        self.reason = reason
        self.client = client  # a refused client address, for the access log


_MESSAGES = {"unauthorized": "missing or unknown credential", "forbidden": "client address not allowed"}


def client_address(config: Config) -> ClientAddress:
    """The client address resolver of a config (its trusted proxies and their header)."""
    return ClientAddress(config.trusted_proxies, config.forwarded_header)


class Verifier:
    def __init__(self, partners: dict[str, Partner], window: int, store: Store | None,
                 on_failure: Callable[[str], None] | None = None, limiter: Limiter | None = None,
                 client_address: ClientAddress | None = None, on_refused: Callable[[str], None] | None = None):
        self.partners = partners  # api_key -> Partner
        self.client_address = client_address or ClientAddress()
        self.on_refused = on_refused  # partner id of a request refused for its address
        self.limiter = limiter
        self.window = window
        self.store = store  # None: no signature is ever remembered (catalogue reads)
        self.on_failure = on_failure

    def _fail(self, code: str, reason: str) -> AuthFailure:
        if self.on_failure is not None:
            self.on_failure(reason)
        tracing.current().set_attribute("igsp.auth_failure", reason)
        return AuthFailure(code, reason)

    async def verify(self, headers, body: bytes, face: str, peer: str | None = None) -> Partner:
        """Check the request and claim its signature (see ``check``)."""
        partner, once = await self.check(headers, body, face, peer)
        if once is not None:
            await self.claim(once)
        return partner

    async def check(self, headers, body: bytes, face: str, peer: str | None = None) -> tuple[Partner, OnceKey | None]:
        """Who is calling, from where, and did they sign these bytes now; the store is only
        asked for a shared rate limit (gateway/ratelimit.py).

        ``peer`` is the TCP peer's address (``request.remote``); the client address is
        resolved from it only for a partner with ``allowed_ips``. Returns the partner and,
        for a partner in strict mode, the signature's once-only key: the caller claims it
        (``claim()``) before acting on a request it protects. Traced as ``igsp.authenticate``.
        """
        if not tracing.ENABLED:
            return await self._check(headers, body, face, peer)
        with tracing.span("igsp.authenticate") as span:
            partner, once = await self._check(headers, body, face, peer)
            span.set_attribute("igsp.partner", partner.id)
            return partner, once

    async def _check(self, headers, body: bytes, face: str, peer: str | None) -> tuple[Partner, OnceKey | None]:
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            raise self._fail("unauthorized", "missing_credential")
        partner = self.partners.get(auth[7:].strip())
        if partner is None or partner.face != face:
            raise self._fail("unauthorized", "unknown_api_key")
        if partner.allowed_ips is not None:
            client = self.client_address(peer, headers)
            if not allowed(client, partner.allowed_ips):
                if self.on_refused is not None:
                    self.on_refused(partner.id)
                tracing.current().set_attribute("igsp.auth_failure", "address_not_allowed")
                raise AuthFailure("forbidden", "address_not_allowed", client)
        timestamp, signature = headers.get("X-Timestamp", ""), headers.get("X-Signature", "")
        if not timestamp or not signature:
            raise self._fail("invalid_signature", "missing_signature")
        when = signing.parse_timestamp(timestamp)
        if when is None or abs(time.time() - when) > self.window:
            raise self._fail("invalid_signature", "stale_timestamp")
        if not signing.verify(partner.secrets, body, timestamp, signature):
            raise self._fail("invalid_signature", "bad_signature")
        if self.limiter is not None:
            await self.limiter.check(partner.id)
        if self.store is None or not partner.replay_protection:
            return partner, None
        # Strict mode: a valid signature is accepted once, a captured request replayed
        # inside the window is refused. Remembered a little longer than the window. The key leads
        # with the signed timestamp (a replay carries the same one, or its signature would
        # not match), so the keys written together sort together: a SQLite commit then
        # touches one page of them, not one page per request.
        return partner, OnceKey("sig", f"{int(when):011d}:{partner.id}:{signature.strip().lower()}",
                                2 * self.window + 5)

    async def claim(self, once: OnceKey) -> None:
        if not await self.store.claim(once):
            raise self.replayed()

    def replayed(self) -> AuthFailure:
        return self._fail("invalid_signature", "replayed_signature")
