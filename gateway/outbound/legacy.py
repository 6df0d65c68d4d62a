"""Calling a legacy API as a mapping describes, with one pooled client per mapping.

Transport failures are translated by ``gateway.outbound.http`` (one map for every outbound
call) into an UpstreamError that says whether money may have moved (``applied``); the
answer's HTTP status and body are judged here:

    connect refused / connect timeout        -> upstream_unavailable, applied=False
    TLS certificate not trusted              -> upstream_unavailable, applied=False (kind "tls")
    HTTP 503 without a readable answer       -> upstream_unavailable, applied=False
    read timeout, reset, other 5xx, garbage,
    a redirect, an oversized answer          -> upstream_timeout / _unavailable / _bad_response, applied=None
    a template needing a variable the call
      lacks (the request cannot be built)    -> upstream_error, applied=False (kind "mapping"): the
                                                mapping's problem, never a final 4xx (build_error)
    a mapped legacy business error           -> its iGSP code (IgspError), nothing applied
    an answer (success or business error)
      that does not echo the request         -> upstream_bad_response, applied=None (kind "uncorrelated");
                                                its connection is closed (gateway/engine/echo.py)
    a mapped code with ``outcome: unknown``  -> its iGSP code (5xx), applied=None (kind "unknown")
    an "already done" success code whose
      ``proves`` echoes do not match         -> upstream_bad_response, applied=None (kind "unproven")
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Undefined

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
    #: The values the operation's ``keep:`` read from its answer(s), for the ledger.
    kept: dict = field(default_factory=dict)


#: Called after every legacy call: (mapping, operation, outcome kind, seconds).
Observer = Callable[[str, str, str, float], None]


class LegacyClient:
    """Runs a mapping's operations against its upstream."""

    def __init__(self, mapping: Mapping, observer: Observer | None = None):
        self.mapping = mapping
        self.observer = observer
        self.outbound = Outbound("legacy API", max_connections=mapping.max_connections,
                                 connect_timeout=mapping.connect_timeout, tls_verify=mapping.tls_verify,
                                 headers=mapping.static_headers, max_response_bytes=mapping.max_response_bytes,
                                 reuse_connections=mapping.reuse_connections)
        # Only adapters that override ``run`` cost anything per call.
        self._flows = tuple(a for a in (mapping.codec, mapping.signer, *mapping.extensions)
                            if a is not None and type(a).run is not Adapter.run)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsigned: list[tuple[LegacyRequest, asyncio.Future]] = []  # see _signed
        # Every call by name: the operations, and the steps of multi-step ones ("win.open").
        self.calls: dict[str, Operation] = {**mapping.operations, **{
            step.name: step for op in mapping.operations.values() for step in op.steps}}

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
        op: Operation = self.calls[name]
        if op.steps:
            raise IgspError("internal_error", f"operation {name!r} has steps: build each ({op.steps[0].name}, …)")
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
        """Operation ``name`` exactly as the mapping declares it: one legacy call, or its steps.

        A single call is traced as a CLIENT span ``legacy {operation}`` (mapping, operation,
        the legacy HTTP status and the outcome kind; never the URL's path or query, nor a
        body), whose ``traceparent`` goes out with the call unless ``upstream.propagate_trace``
        is off. Each step of a multi-step operation is such a call, with a span of its own.
        """
        m = self.mapping
        op: Operation | None = self.calls.get(name)
        if op is None:
            raise IgspError("internal_error", f"mapping {m.name!r} has no operation {name!r}")
        if op.steps:
            return await self._steps(op, context)
        if not tracing.ENABLED:
            return await self._step(name, op, context, None)
        with tracing.span(f"legacy {name}", tracing.CLIENT, {
                "igsp.mapping": m.name, "igsp.operation": name, "server.address": tracing.host_of(m.base_url),
                "http.request.method": op.method}) as span:
            return await self._step(name, op, context, span)

    async def _step(self, name: str, op: Operation, context: dict, span) -> LegacyReply:
        """One legacy call of operation ``op`` (``span``: its CLIENT span, None untraced)."""
        m = self.mapping
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
        except Exception as exc:  # noqa: BLE001 - a template that fails on this input
            error = self.build_error(name, context, exc)
            if error is exc:
                raise
            raise error from exc
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
            return LegacyReply(fields, data, answer.status, time.perf_counter() - started, self._kept(op, data))
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

    def build_error(self, name: str, context: dict, exc: Exception, *, where: bool = False) -> IgspError:
        """The error for a request of operation ``name`` that could not be built from ``context``.

        A template needing a variable this call lacks (an optional hook field the hook left
        out, an extra field, a step's output) is the mapping's problem, not the caller's: a
        retriable ``502 upstream_error`` that sent nothing (``applied=False``), so a bet is
        forgotten and a win or refund queued until the mapping is fixed — never a final 4xx in
        the ledger. The message names the variable and the field (``where``: also the mapping
        file and line, for ``try``; the log always has them). Any other failure (a filter
        refusing this input) is the request's: ``400 invalid_request``, and an IgspError an
        adapter raised stays what it is. Runs on the error path only: it renders again.
        """
        m = self.mapping
        op = self.calls.get(name)
        missing = op.missing(context) if op is not None else None
        if missing is None:
            if isinstance(exc, IgspError):
                return exc
            return IgspError("invalid_request", f"cannot build the legacy request: {type(exc).__name__}")
        field, line, why = missing
        at = f"{m.file}:{line}: " if line else f"{m.file}: "
        if not where:
            log.error("mapping cannot build a legacy request", extra={
                "mapping": m.name, "operation": name, "field": field, "at": at.rstrip(": "), "reason": why})
        return UpstreamError("upstream_error", f"mapping {m.name} cannot build the legacy {name} request: "
                             f"{at if where else ''}{field}: {why} for this call; nothing was sent",
                             kind="mapping", applied=False)

    async def _steps(self, op: Operation, context: dict) -> LegacyReply:
        """The steps of ``op`` in order, each seeing the earlier ones' fields as ``steps.NAME``;
        the last one's answer is the operation's. A failing step fails the operation (named in
        the message): certainly not applied only if no earlier step may have moved money."""
        done: dict[str, dict | None] = {}
        ctx = {**context, "steps": done}
        started, moved, reply, kept = time.perf_counter(), False, None, {}
        for index, step in enumerate(op.steps, 1):
            try:
                if step.when is not None and not self._runs(step, ctx):
                    done[step.step] = None  # skipped: later steps read steps.NAME as none
                    continue
                reply = await self.step(step.name, ctx)
            except IgspError as exc:
                raise in_step(exc, step, index, len(op.steps), moved) from exc
            done[step.step] = reply.fields
            kept.update(reply.kept)
            moved = moved or step.moves_money
        return LegacyReply(reply.fields, reply.data, reply.status, time.perf_counter() - started, kept)

    def _runs(self, step: Operation, context: dict) -> bool:
        """Whether ``step``'s ``when`` holds for ``context``; one that cannot be rendered (a
        variable this call lacks) is the mapping's problem, as a request that cannot be built."""
        try:
            value = step.when(context)
            if isinstance(value, Undefined):
                value._fail_with_undefined_error()
        except Exception as exc:  # noqa: BLE001 - a condition that fails on this input
            error = self.build_error(step.name, context, exc)
            if error is exc:
                raise
            raise error from exc
        if isinstance(value, str):
            return value.strip().lower() not in ("", "false", "0", "none", "no")
        return bool(value)

    def _kept(self, op: Operation, data: Any) -> dict:
        """The values ``op``'s ``keep:`` reads from a successful answer (none where absent)."""
        if not op.keep:
            return {}
        found = {}
        for name, expression in op.keep.items():
            try:
                found[name] = self.mapping.search(expression, data)
            except Exception:  # noqa: BLE001 - an answer of another shape keeps nothing there
                found[name] = None
        return found

    async def send(self, req: LegacyRequest, timeout: float | None = None) -> Answer:
        """Send a built request and read its whole answer (status, content type, body);
        transport failures translated."""
        return await self.outbound.request(req.method, req.url, params=req.params or None, data=req.body or None,
                                           headers=req.headers, timeout=timeout or self.mapping.timeout)

    def expect(self, name: str, context: dict) -> Expected | None:
        """What the answer to operation ``name`` must echo for ``context``, and what an "already
        done" answer must carry to prove it is this transaction's (``proofs``); None: nothing
        declared."""
        op: Operation = self.calls[name]
        if not op.echo and not op.result.proofs:
            return None
        found = Expected(echo.expect(op.echo, context) if op.echo else {})
        found.proofs = {code: echo.expect(proofs, context) for code, proofs in op.result.proofs.items()}
        return found

    def read(self, name: str, status: int, content_type: str, raw: bytes,
             expected: dict | None = None) -> tuple[dict, Any]:
        """Decode a legacy answer and apply the operation's result rules: ``(fields, data)``.

        Raises the mapped IgspError, or an UpstreamError for an unreadable or failed answer,
        or for one that does not echo ``expected`` (``expect``): another request's answer.
        """
        op: Operation = self.calls[name]
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
        proving = None
        if not ok and code is not None and str(code) in rules.success_codes:
            ok, proving = True, rules.proofs.get(str(code))
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
            if rule.outcome == "unknown":
                # The wallet says it does not know: money may have moved (a bet is rolled back).
                raise UpstreamError(error.code, error.message, kind="unknown", applied=None, status=error.status)
            if error.status >= 500:
                # A legacy "internal error, retry" code: retriable, and nothing was applied.
                raise UpstreamError(error.code, error.message, kind="business", applied=False, status=error.status)
            raise error
        self._correlate(op, data, expected)
        if proving is not None:
            self._prove(str(code), proving, data, expected)
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


    def _prove(self, code: str, proofs: tuple, data: Any, expected: dict | None) -> None:
        """An "already done" answer (``code``) counts as success only if it proves the earlier
        attempt was this transaction: each of its ``proves`` echoes matches (at least one is
        checked). Otherwise it may be another transaction's under the same id, or say nothing of
        whose: the outcome is unknown, never a success."""
        wanted = (getattr(expected, "proofs", None) or {}).get(code) or {}
        rows = echo.compare(proofs, wanted, self.mapping.search, data)
        failed = next((row for row in rows if not row[3]), None)
        if rows and failed is None:
            return
        why = "nothing to check" if not rows else f"{failed[0]} {'is missing' if failed[2] is None else 'differs'}"
        raise UpstreamError("upstream_bad_response", f"legacy answer {code} says already done, but does not prove it "
                            f"was this transaction ({why}); outcome unknown", kind="unproven", applied=None)


class Expected(dict):
    """Echo path -> expected value (``echo.expect``), with ``proofs``: success code -> the same
    for the answer that proves an "already done" is this transaction's."""

    proofs: dict = {}  # noqa: RUF012 - replaced per instance by LegacyClient.expect


_UNREADABLE = object()


def in_step(exc: IgspError, step: Operation, index: int, count: int, moved: bool) -> IgspError:
    """``exc`` of step ``index`` of ``count`` as the operation's error. ``moved``: an earlier
    step may have moved money, so "certainly not applied" no longer holds for the whole."""
    message = f"step {index}/{count} {step.step}: {exc.message}"
    if isinstance(exc, UpstreamError):
        applied = None if moved and exc.applied is False else exc.applied
        return UpstreamError(exc.code, message, kind=exc.kind, applied=applied, status=exc.status)
    return IgspError(exc.code, message, exc.status)


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
