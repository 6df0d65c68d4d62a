"""Outbound iGSP wallet hooks: the gateway, as a provider, calling a platform.

Each hook is signed with the partner's credential pair (``gateway/signing.py``) and
POSTed to its ``hooks_url`` through one pooled client (``gateway.outbound.http``, which also
translates transport failures: timeouts, resets, malformed or oversized answers,
redirects). The platform's answer is judged here:

    2xx with a balance               -> the decoded answer (amounts as Decimal)
    4xx ErrorResponse                -> IgspError with the platform's code (fatal)
    401/403, 5xx, timeout, reset,
    an unreadable answer             -> UpstreamError (retriable: the legacy caller retries,
                                        and the platform dedupes by transaction_id)
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from adapters.codecs import dumps, loads
from gateway import signing
from gateway.errors import IgspError, UpstreamError
from gateway.ops import tracing
from gateway.outbound.http import Outbound


def hook_timestamp() -> str:
    """ISO-8601 UTC with microseconds: two hooks never share a signature (replay caches)."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}Z"


class HookClient:
    def __init__(self, observer=None, max_connections: int = 100):
        self.observer = observer  # (partner, action, outcome kind, seconds) -> None
        self.outbound = Outbound("the platform", max_connections=max_connections)

    async def close(self) -> None:
        await self.outbound.close()

    async def send(self, partner: Any, payload: dict, *, timeout: float, request_id: str = "",
                   propagate_trace: bool = True) -> dict:
        """POST one signed hook; return the platform's answer or raise IgspError/UpstreamError.

        Traced as a CLIENT span ``igsp.hook {action}`` (partner, action, HTTP status, outcome
        kind), whose ``traceparent`` goes with the hook unless ``propagate_trace`` is False.
        """
        if not tracing.ENABLED:
            return await self._send(partner, payload, timeout, request_id, None)
        action = str(payload.get("action", "?"))
        with tracing.span(f"igsp.hook {action}", tracing.CLIENT, {
                "igsp.partner": partner.id, "igsp.hook.action": action, "http.request.method": "POST",
                "server.address": tracing.host_of(partner.hooks_url or "")}) as span:
            return await self._send(partner, payload, timeout, request_id, span, propagate_trace)

    async def _send(self, partner: Any, payload: dict, timeout: float, request_id: str, span,
                    propagate_trace: bool = False) -> dict:
        body = dumps(payload)
        headers = signing.signed_headers(partner.api_key, partner.secrets[0], body, hook_timestamp())
        if request_id:
            headers["X-Request-ID"] = request_id
        if span is not None and propagate_trace:
            tracing.inject(headers)
        started, kind, status = time.perf_counter(), "ok", None
        try:
            try:
                reply = await self.outbound.request("POST", partner.hooks_url, data=body, headers=headers,
                                                    timeout=timeout)
            except UpstreamError as exc:
                kind = exc.kind
                raise
            raw, status = reply.body, reply.status
            try:
                answer = loads(raw)
            except (ValueError, UnicodeDecodeError):
                answer = None
            if 200 <= status < 300:
                if not isinstance(answer, dict) or "balance" not in answer:
                    kind = "bad_body"
                    raise UpstreamError("upstream_bad_response", "the platform's answer has no balance",
                                        kind=kind, applied=None)
                return answer
            code = answer.get("error") if isinstance(answer, dict) else None
            message = answer.get("message") if isinstance(answer, dict) else None
            if status >= 500 or status in (401, 403) or not isinstance(code, str):
                # Retriable: the platform is down, or refuses our credentials (an operator
                # fixes that; the legacy caller keeps retrying meanwhile).
                kind = "5xx" if status >= 500 else "refused"
                raise UpstreamError("upstream_unavailable" if status >= 500 else "upstream_error",
                                    f"the platform answered HTTP {status}" + (f" ({code})" if code else ""),
                                    kind=kind, applied=None)
            kind = "business"
            raise IgspError(code, str(message or code), status)
        finally:
            if self.observer is not None:
                self.observer(partner.id, payload.get("action", "?"), kind, time.perf_counter() - started)
            if span is not None:
                span.set_attribute("igsp.upstream.outcome", kind)
                if status is not None:
                    span.set_attribute("http.response.status_code", status)
