"""Calling a legacy API as a mapping describes, with one pooled client per mapping.

Transport failures are translated by ``gateway.outbound.http`` (one map for every outbound
call) into an UpstreamError that says whether money may have moved (``applied``); the
answer's HTTP status and body are judged here:

    connect refused / connect timeout        -> upstream_unavailable, applied=False
    TLS certificate not trusted              -> upstream_unavailable, applied=False (kind "tls")
    HTTP 503 without a readable answer       -> upstream_unavailable, applied=False
    read timeout, reset, other 5xx, garbage,
    a redirect, an oversized answer          -> upstream_timeout / _unavailable / _bad_response, applied=None
    a mapped legacy business error           -> its iGSP code (IgspError), nothing applied
    an answer (success or business error)
      that does not echo the request         -> upstream_bad_response, applied=None (kind "uncorrelated");
                                                its connection is closed (gateway/engine/echo.py)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adapters.codecs import form_value
from gateway.adapter_api import Adapter, LegacyRequest
from gateway.engine import echo
from gateway.engine.mapping import Mapping, Operation
from gateway.errors import IgspError, UpstreamError
from gateway.ops import tracing
from gateway.outbound.http import Answer, Outbound

log = logging.getLogger("igsp.upstream")


@dataclass
class LegacyReply:
    """A successful legacy answer, read through the operation's ``response`` paths."""

    fields: dict
    data: Any
    status: int
    elapsed: float


#: Called after every legacy call: (mapping, operation, outcome kind, seconds).
Observer = Callable[[str, str, str, float], None]


class LegacyClient:
    """Runs a mapping's operations against its upstream."""

    def __init__(self, mapping: Mapping, observer: Observer | None = None):
        self.mapping = mapping
        self.observer = observer
        self.outbound = Outbound("legacy API", max_connections=mapping.max_connections,
                                 connect_timeout=mapping.connect_timeout, tls_verify=mapping.tls_verify,
                                 headers=mapping.static_headers, max_response_bytes=mapping.max_response_bytes)
        # Only adapters that override ``run`` cost anything per call.
        self._flows = tuple(a for a in (mapping.codec, mapping.signer, *mapping.extensions)
                            if a is not None and type(a).run is not Adapter.run)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsigned: list[tuple[LegacyRequest, asyncio.Future]] = []  # see _signed

    @property
    def session(self):
        """The mapping's pooled aiohttp session (one per legacy API, shared by its partners)."""
        return self.outbound.session

    async def close(self) -> None:
        await self.outbound.close()

    def build(self, name: str, context: dict) -> LegacyRequest:
        """Render, encode and sign the legacy request for ``name`` (no I/O; used by ``try``)."""
        req = self._build(name, context)
        if self.mapping.signer is not None:
            self.mapping.signer.sign(req)
        return _finish(req)

    def _build(self, name: str, context: dict) -> LegacyRequest:
        """The legacy request for ``name``, rendered and encoded, not yet signed (then ``_finish``)."""
        m = self.mapping
        op: Operation = m.operations[name]
        req = LegacyRequest(
            operation=name,
            method=op.method,
            url=m.base_url + op.path(context),
            headers={k: str(v) for k, v in (op.headers(context) if op.headers else {}).items()},
            params={k: v for k, v in (op.query(context) if op.query else {}).items() if v is not None},
            fields=op.body(context) if op.body else None,
        )
        if request_id := context.get("request_id"):
            req.headers.setdefault("X-Request-ID", str(request_id))
        if m.signer is not None:
            m.signer.prepare(req)
        m.codec.encode(req)
        return req

    def _signed(self, req: LegacyRequest) -> asyncio.Future:
        """Sign ``req`` together with the other requests of this loop turn.

        An RSA signature evicts much of what the CPU caches hold for the request path;
        signing a turn's requests back to back, then carrying each on, measured 7 % less
        CPU per RSA-signed bet than signing each in the middle of its request. A failing
        signature fails its own request only.
        """
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._unsigned.append((req, done))
        if len(self._unsigned) == 1:
            loop.call_soon(self._sign_all)
        return done

    def _sign_all(self) -> None:
        batch, self._unsigned = self._unsigned, []
        signer = self.mapping.signer
        for req, done in batch:
            if done.done():
                continue
            try:
                signer.sign(req)
            except Exception as exc:  # noqa: BLE001 - the caller's to report
                done.set_exception(exc)
            else:
                done.set_result(req)

    async def call(self, name: str, context: dict) -> LegacyReply:
        """Run operation ``name``; return the read answer or raise IgspError/UpstreamError.

        An adapter whose ``run`` takes the operation over (a multi-step flow) gets a
        ``call(op, context)`` callback that runs one of the mapping's own operations.
        """
        if self._flows:
            reply = await self._run_flows(name, context)
            if reply is not None:
                return reply
        return await self.step(name, context)

    async def step(self, name: str, context: dict) -> LegacyReply:
        """One legacy call exactly as the mapping declares operation ``name``.

        Traced as a CLIENT span ``legacy {operation}`` (mapping, operation, the legacy HTTP
        status and the outcome kind; never the URL's path or query, nor a body), whose
        ``traceparent`` goes out with the call unless ``upstream.propagate_trace`` is off.
        """
        m = self.mapping
        if name not in m.operations:
            raise IgspError("internal_error", f"mapping {m.name!r} has no operation {name!r}")
        if not tracing.ENABLED:
            return await self._step(name, context, None)
        with tracing.span(f"legacy {name}", tracing.CLIENT, {
                "igsp.mapping": m.name, "igsp.operation": name, "server.address": tracing.host_of(m.base_url),
                "http.request.method": m.operations[name].method}) as span:
            return await self._step(name, context, span)

    async def _step(self, name: str, context: dict, span) -> LegacyReply:
        m = self.mapping
        op: Operation = m.operations[name]
        try:
            req = self._build(name, context)
            if span is not None and m.propagate_trace:
                tracing.inject(req.headers)
            expected = self.expect(name, context)
            if m.signer is not None:
                if m.signer.sign_in_batches:
                    await self._signed(req)
                else:
                    m.signer.sign(req)
            _finish(req)
        except IgspError:
            raise
        except Exception as exc:  # noqa: BLE001 - a template that fails on this input
            raise IgspError("invalid_request", f"cannot build the legacy request: {type(exc).__name__}") from exc
        started = time.perf_counter()
        kind = "ok"
        answer = None
        try:
            answer = await self.send(req, op.timeout)
            try:
                fields, data = self.read(name, answer.status, answer.content_type, answer.body, expected)
            except UpstreamError as exc:
                if exc.kind == "uncorrelated":
                    # Another request's answer: what follows on its connection is off by one too.
                    self.outbound.discard(answer)
                    log.warning("legacy answer does not echo its request; its connection is closed",
                                extra={"mapping": m.name, "operation": name, "reason": exc.message})
                raise
            return LegacyReply(fields, data, answer.status, time.perf_counter() - started)
        except UpstreamError as exc:
            kind = exc.kind
            raise
        except IgspError:
            kind = "business"
            raise
        finally:
            if self.observer is not None:
                self.observer(m.name, name, kind, time.perf_counter() - started)
            if span is not None:
                span.set_attribute("igsp.upstream.outcome", kind)
                if answer is not None:
                    span.set_attribute("http.response.status_code", answer.status)

    async def send(self, req: LegacyRequest, timeout: float | None = None) -> Answer:
        """Send a built request and read its whole answer (status, content type, body);
        transport failures translated."""
        return await self.outbound.request(req.method, req.url, params=req.params or None, data=req.body or None,
                                           headers=req.headers, timeout=timeout or self.mapping.timeout)

    def expect(self, name: str, context: dict) -> dict | None:
        """What the answer to operation ``name`` must echo for ``context`` (None: nothing declared)."""
        op: Operation = self.mapping.operations[name]
        return echo.expect(op.echo, context) if op.echo else None

    def read(self, name: str, status: int, content_type: str, raw: bytes,
             expected: dict | None = None) -> tuple[dict, Any]:
        """Decode a legacy answer and apply the operation's result rules: ``(fields, data)``.

        Raises the mapped IgspError, or an UpstreamError for an unreadable or failed answer,
        or for one that does not echo ``expected`` (``expect``): another request's answer.
        """
        op: Operation = self.mapping.operations[name]
        try:
            data = self.mapping.codec.decode(raw, content_type) if raw else None
        except Exception:  # noqa: BLE001 - any codec failure is a bad body
            data = _UNREADABLE
        if data is _UNREADABLE or (data is None and status < 300):
            raise _http_failure(status, "legacy API answered an unreadable body")
        if status >= 500 and op.result.code is None:
            raise _http_failure(status, f"legacy API answered HTTP {status}")
        return self._read(op, data, status, expected), data

    async def _run_flows(self, name: str, context: dict) -> LegacyReply | None:
        sent: list[str] = []

        async def call(op: str, ctx: dict) -> dict:
            sent.append(op)
            return (await self.step(op, ctx)).fields

        started = time.perf_counter()
        for adapter in self._flows:
            try:
                fields = await adapter.run(name, context, call)
            except IgspError:
                raise
            except Exception as exc:  # noqa: BLE001 - third-party code: a bug is an upstream failure
                log.exception("adapter run failed", extra={"mapping": self.mapping.name, "operation": name})
                # Money can only have moved if a step reached the legacy API.
                raise UpstreamError("upstream_error", f"adapter {type(adapter).__name__} failed: "
                                    f"{type(exc).__name__}", kind="adapter", applied=None if sent else False) from exc
            if fields is None:
                continue
            if not isinstance(fields, dict):
                raise UpstreamError("upstream_error", f"adapter {type(adapter).__name__}.run returned "
                                    f"{type(fields).__name__}, not a dict", kind="adapter",
                                    applied=None if sent else False)
            return LegacyReply(fields, fields, 200, time.perf_counter() - started)
        return None

    def _read(self, op: Operation, data: Any, status: int, expected: dict | None = None) -> dict:
        m, rules = self.mapping, op.result
        try:
            code = m.search(rules.code, data) if rules.code is not None else None
            ok = bool(m.search(rules.success, data)) if rules.success is not None else 200 <= status < 300
        except Exception as exc:  # noqa: BLE001 - JMESPath type errors on a body of another shape
            if status >= 500:
                raise _http_failure(status, f"legacy API answered HTTP {status}") from exc
            raise UpstreamError("upstream_bad_response", "legacy answer has an unexpected shape",
                                kind="bad_body", applied=None) from exc
        if not ok and code is not None and str(code) in rules.success_codes:
            ok = True
        if not ok:
            if status >= 500 and (code is None or str(code) not in rules.errors):
                raise _http_failure(status, f"legacy API answered HTTP {status}")
            # A refusal is the wallet's answer only if it is this request's: another
            # request's (a stale one) says nothing about what happened to this one.
            self._correlate(op, data, expected)
            try:
                message = m.search(rules.message, data) if rules.message is not None else None
            except Exception:  # noqa: BLE001 - the text is a nicety; the code decides
                message = None
            rule = rules.errors.get(str(code), rules.default_error)
            error = rule.error(code, message)
            if error.status >= 500:
                # A legacy "internal error, retry" code: retriable, and nothing was applied.
                raise UpstreamError(error.code, error.message, kind="business", applied=False, status=error.status)
            raise error
        self._correlate(op, data, expected)
        try:
            return {name: m.search(expr, data) for name, expr in op.response.items()}
        except Exception as exc:  # noqa: BLE001 - JMESPath type errors on odd bodies
            raise UpstreamError("upstream_bad_response", "legacy answer has an unexpected shape",
                                kind="bad_body", applied=None) from exc


    def _correlate(self, op: Operation, data: Any, expected: dict | None) -> None:
        """Raise an unknown outcome unless ``data`` echoes what ``expected`` says (gateway/engine/echo.py)."""
        if not expected:
            return
        why = echo.mismatch(op.echo, expected, self.mapping.search, data)
        if why is not None:
            raise UpstreamError("upstream_bad_response", f"legacy answer is not this request's ({why}); "
                                "outcome unknown", kind="uncorrelated", applied=None)


_UNREADABLE = object()


def _http_failure(status: int, message: str) -> UpstreamError:
    if status == 503:
        return UpstreamError("upstream_unavailable", message, kind="5xx", applied=False)
    if status >= 500:
        return UpstreamError("upstream_unavailable", message, kind="5xx", applied=None)
    return UpstreamError("upstream_bad_response", message, kind="bad_body", applied=None)


def _finish(req: LegacyRequest) -> LegacyRequest:
    """Query values as the wire will carry them (also those a signer added)."""
    req.params = {k: form_value(v) for k, v in req.params.items()}
    return req
