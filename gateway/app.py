"""``create_app(config)``: the aiohttp application, its routes and long-lived resources.

State lives under the typed ``web.AppKey`` constants of gateway/context.py; each resource
(store, legacy clients, delivery worker) is a ``cleanup_ctx`` generator; nothing changes
after start. Both faces plug in the same way (gateway/faces/base.py, ``FACE_TYPES``): their
routes, their objects for each config generation, their queued deliveries. What a
reload replaces lives in the ``RUNTIME`` holder (gateway/runtime.py): a request uses
``request["generation"]``, the one current when it arrived.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

import orjson
from aiohttp import web

from gateway import shed_front
from gateway.auth import AuthFailure
from gateway.config import Config
from gateway.context import CONFIG, FACES, INFLIGHT, LIFECYCLE, RUNTIME, SHED_LINES, STORE, WORKER, Lifecycle
from gateway.errors import ERROR_CODES, IgspError, UpstreamError
from gateway.faces.base import Delivery, Face
from gateway.faces.platform import PlatformFace
from gateway.faces.provider import ProviderFace
from gateway.faces.sweeper import Sweeper
from gateway.faces.wallet import error_body
from gateway.ids import new_id
from gateway.ops import metrics, tracing
from gateway.ops.admin import setup_admin
from gateway.ops.health import PROBE, UpstreamProbe, healthz, metrics_endpoint, readyz
from gateway.ops.logs import REQUEST_ID
from gateway.ops.shedlog import ShedLines
from gateway.ratelimit import HELD, Overloaded, RateLimited, release_slots
from gateway.retry_queue import DeliveryWorker
from gateway.runtime import Generation, Runtime
from gateway.store import QueueEntry, open_store

log = logging.getLogger("igsp.access")

#: The faces, in the order their routes are added.
FACE_TYPES: tuple[type[Face], ...] = (PlatformFace, ProviderFace)


def _error_response(error: IgspError, request_id: str) -> web.Response:
    status, body = error_body(error)
    headers = {"X-Request-ID": request_id}
    if isinstance(error, (RateLimited, Overloaded)):
        headers["Retry-After"] = str(error.retry_after)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


#: Routes answered on both ports (kubelet probes, load balancers, operators).
BOTH_PORTS = frozenset({"healthz", "readyz"})


def _internal_path(path: str) -> bool:
    return path == "/metrics" or path == "/admin" or path.startswith("/admin/")


def _on_internal_port(request: web.Request, lifecycle: Lifecycle) -> bool:
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    return bool(sockname) and sockname[1] == lifecycle.internal_port


def _served_here(request: web.Request, route: str | None, lifecycle: Lifecycle) -> bool:
    """The public port serves the iGSP API and the legacy callbacks; the internal port
    serves /metrics and /admin/; both serve /healthz and /readyz. Anything else is a 404,
    exactly as for a path that does not exist (a 405 would say that it does)."""
    if route in BOTH_PORTS:
        return True
    internal = _on_internal_port(request, lifecycle)
    if route is None:  # no route matched (404), or not with this method (405)
        return _internal_path(request.path) == internal
    return (route == "metrics" or route.startswith("admin.")) == internal


async def _not_found(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound()


#: Routes whose requests are counted, access-logged and traced (a SERVER span each).
SERVED_FACES = ("platform", "provider", "legacy")


@web.middleware
async def tracing_middleware(request: web.Request, handler) -> web.StreamResponse:
    """A SERVER span around everything gateway_middleware does (its access-log line too).
    Only in the middleware chain when tracing is configured (or installed by a test)."""
    if not tracing.ENABLED or request.match_info.route.name not in SERVED_FACES \
            or _on_internal_port(request, request.app[LIFECYCLE]):  # a 404 there: gateway_middleware
        return await handler(request)
    with tracing.server_span(request, request.match_info.route.resource.canonical) as span:
        response = await handler(request)
        if span.is_recording():
            _end_server_span(span, request, response)
        return response


def _end_server_span(span, request: web.Request, response: web.StreamResponse) -> None:
    """What the request turned out to be (5xx: an error; a 4xx is an answer)."""
    span.set_attribute("http.response.status_code", response.status)
    span.set_attribute("igsp.face", request.match_info.route.name)
    for key in ("request_id", "operation", "partner", "transaction_id", "auth_failure", "upstream_failure"):
        value = request.get(key)
        if value is not None:
            span.set_attribute(f"igsp.{key}", str(value))
    code = _error_code(request, response) or request.get("error")
    if code:
        span.set_attribute("igsp.error", code)
    if response.status >= 500:
        tracing.mark_error(span, code or str(response.status))


@web.middleware
async def gateway_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Request id, one access-log line, metrics, and every error as an iGSP ErrorResponse."""
    started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else new_id()
    request["request_id"] = request_id
    face = request.match_info.route.name
    app = request.app
    lifecycle = app[LIFECYCLE]
    if not _served_here(request, face, lifecycle):
        face, handler = None, _not_found
    face = face or "other"
    inflight, runtime = app[INFLIGHT], app[RUNTIME]
    inflight["n"] += 1
    logged = REQUEST_ID.set(request_id)  # every log line of this request carries its id
    gen = request["generation"] = runtime.acquire()
    held = []  # the concurrency slots this request takes (gateway/ratelimit.py)
    holding = HELD.set(held)
    try:
        response = await _answer(request, handler, request_id)
    finally:
        release_slots(held)
        if shed_front.FRONTS:
            shed_front.request_done(request)
        HELD.reset(holding)
        runtime.release(gen)
        inflight["n"] -= 1
        REQUEST_ID.reset(logged)
    if lifecycle.draining:
        # Shutting down: a client or proxy holding a keep-alive connection to this process
        # reconnects for its next request (to another replica, once this one is out of the
        # load balancer) instead of finding the connection closed under it.
        response.force_close()
    if shed_front.FRONTS:  # a front before this connection must know when the answer is out
        await shed_front.write_answer(request, response)
    if face in SERVED_FACES:
        elapsed = time.perf_counter() - started
        # What the handler noted, read once as a plain dict: a request's own mapping methods
        # are Python code, and each absent key costs them a raised KeyError.
        noted = dict(request)
        operation = noted.get("operation", "unknown")
        partner = noted.get("partner", "unknown")  # set only once a configured partner is verified
        outcome = metrics.outcome(response.status, _error_code(noted, response), "upstream_failure" in noted)
        metrics.child(metrics.REQUESTS, partner, face, operation, outcome).inc()
        metrics.child(metrics.REQUEST_SECONDS, partner, face, operation).observe(elapsed)
        shed_not_logged = app[SHED_LINES].admit(partner) if "shed" in noted else 0
        if gen.config.access_log and shed_not_logged is not None:
            line = {
                "request_id": request_id, "partner": partner, "face": face, "operation": operation,
                "status": response.status, "latency_ms": round(elapsed * 1000, 3),
                "transaction_id": noted.get("transaction_id"), "method": request.method, "path": request.path,
            }
            for key in ("auth_failure", "client_ip", "error"):
                if key in noted:
                    line[key] = noted[key]
            if shed_not_logged:
                line["shed_not_logged"] = shed_not_logged
            log.info("request", extra=line)
    return response


def _error_code(noted, response: web.StreamResponse) -> str | None:
    """The iGSP error code of an answer: noted by the handler (a raised error, a legacy-format
    refusal) in ``noted`` (the request, or a dict of what it holds), else read from an
    ErrorResponse body a face answered itself (a wallet's stored answer). Only a code of
    ERROR_CODES counts; anything else is judged by its status."""
    code = noted.get("error")
    if code is None and response.status >= 400 and isinstance(response, web.Response) \
            and isinstance(response.body, bytes) and response.content_type == "application/json":
        try:
            code = orjson.loads(response.body).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            return None
    return code if isinstance(code, str) and code in ERROR_CODES else None


class _BodyTimeout(Exception):
    """The request body did not arrive within ``server.read_timeout_seconds``."""


async def _read_body(request: web.Request) -> None:
    """Read the body before any handler runs, within the read timeout: aiohttp bounds its size
    (client_max_size) but not its pace, and a body sent a byte at a time would otherwise hold
    a handler and its connection for as long as the client likes. Handlers get the same bytes
    from ``request.read()`` (aiohttp keeps them)."""
    if request.body_exists and not request.content.is_eof():
        try:
            async with asyncio.timeout(request.app[CONFIG].read_timeout):
                await request.read()
        except TimeoutError:
            raise _BodyTimeout from None


async def _answer(request: web.Request, handler, request_id: str) -> web.StreamResponse:
    try:
        await _read_body(request)
        response = await handler(request)
        response.headers["X-Request-ID"] = request_id
        return response
    except IgspError as exc:
        request["error"] = exc.code
        if isinstance(exc, AuthFailure):
            request["auth_failure"] = exc.reason
            if exc.code == "forbidden":  # the refused address (None: an unreadable forwarded hop)
                request["client_ip"] = str(exc.client) if exc.client is not None else None
        elif isinstance(exc, (RateLimited, Overloaded)) and exc.partner:
            request["partner"] = exc.partner
            if isinstance(exc, Overloaded):
                request["shed"] = True  # its access-log line is thinned (gateway/ops/shedlog.py)
        elif isinstance(exc, UpstreamError):
            request["upstream_failure"] = exc.kind
        return _error_response(exc, request_id)
    except web.HTTPRequestEntityTooLarge:
        request["error"] = "payload_too_large"
        response = _error_response(IgspError("payload_too_large", "request body is too large"), request_id)
        response.force_close()  # the rest of the body is not worth reading
        return response
    except _BodyTimeout:
        request["error"] = "invalid_request"
        response = _error_response(IgspError("invalid_request", "request body not received in time"), request_id)
        response.force_close()
        return response
    except web.RequestPayloadError:  # e.g. a Content-Encoding the body does not decode with
        request["error"] = "invalid_request"
        response = _error_response(IgspError("invalid_request", "request body could not be read"), request_id)
        response.force_close()
        return response
    except web.HTTPException as exc:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "invalid_request")
        return _error_response(IgspError(code, exc.reason or "request refused", exc.status), request_id)
    except Exception:  # noqa: BLE001 - never a traceback to a client
        log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
        return _error_response(IgspError("internal_error", "internal error"), request_id)


async def _tracing_ctx(app: web.Application):
    """Tracing for this process (each worker starts its own exporter), flushed at the end,
    after the last delivery. A provider already installed (a test's) is left alone."""
    started = tracing.start(app[CONFIG].tracing)
    yield
    if started:
        await tracing.stop(timeout=5.0)


async def _store_ctx(app: web.Application):
    store = open_store(app[CONFIG].store_url, namespace=app[CONFIG].store_namespace)
    await store.open()
    app[STORE] = tracing.traced_store(store, app[CONFIG].store_url)
    yield
    await store.close()


async def _faces_ctx(app: web.Application):
    config, store, faces = app[CONFIG], app[STORE], app[FACES]
    routes = {route: face for face in faces.values() for route in face.deliveries}
    worker = DeliveryWorker(store, {}, consumer=f"{socket.gethostname()}-{os.getpid()}",
                            backoff_for=lambda entry: _backoff_for(runtime.current, routes, entry),
                            lease_seconds=config.queue_lease_seconds, poll_seconds=config.queue_poll_seconds)
    runtime = Runtime(config, store, wake_queue=worker.wake.set,
                      builders={name: face.build for name, face in faces.items()})
    app[RUNTIME], app[WORKER] = runtime, worker
    metrics.init_series(config)
    for route, face in routes.items():
        worker.handlers[route] = _delivery(runtime, face.name, face.deliveries[route])
    task = asyncio.create_task(worker.run(), name="delivery-worker")
    sweeper = Sweeper(store, runtime, faces, orphan_after=config.queue_lease_seconds)
    sweeping = asyncio.create_task(sweeper.run(), name="ledger-sweeper")
    yield
    # Graceful stop (began in begin_drain): the current delivery may finish within
    # what is left of server.drain_seconds; the rest of the batch stays leased and is
    # claimed again after a restart. Then the pools close.
    begin_drain(app)
    remaining = max(0.0, runtime.drain_deadline - asyncio.get_running_loop().time())
    try:
        await asyncio.wait_for(task, timeout=remaining or 0.1)
    except TimeoutError:
        pass  # wait_for has cancelled it
    sweeper.stopping.set()
    try:
        await asyncio.wait_for(sweeping, timeout=max(0.1, runtime.drain_deadline - asyncio.get_running_loop().time()))
    except TimeoutError:
        pass  # a settlement cut short leaves its record as it was: the next sweep settles it
    await runtime.close()


def _delivery(runtime: Runtime, face_name: str, deliver: Delivery):
    """A queue handler that runs ``deliver`` under the current generation, logged with the
    request id of the request that queued it."""

    async def run(entry: QueueEntry) -> None:
        logged = REQUEST_ID.set(entry.payload.get("request_id") or None)
        gen = runtime.acquire()
        try:
            with tracing.delivery_span(entry):
                await deliver(gen.faces[face_name], entry)
        finally:
            runtime.release(gen)
            REQUEST_ID.reset(logged)

    return run


def stop_taking_work(app: web.Application) -> None:
    """SIGTERM: /readyz answers 503 "draining", answers close their connection, and the
    delivery worker claims nothing new (other replicas take the queue) — while requests
    are still served, for ``server.shutdown_grace_seconds`` (gateway/server.py)."""
    app[LIFECYCLE].draining = True
    app[WORKER].stopping = True
    app[WORKER].wake.set()


def begin_drain(app: web.Application) -> None:
    """On shutdown (the grace is over, the listeners closed): the drain budget starts;
    no delivery is claimed any more while in-flight requests finish."""
    runtime = app[RUNTIME]
    if runtime.drain_deadline is None:
        runtime.drain_deadline = asyncio.get_running_loop().time() + app[CONFIG].drain_seconds
    app[WORKER].stopping = True
    app[WORKER].wake.set()


async def _on_shutdown(app: web.Application) -> None:
    begin_drain(app)


def _backoff_for(gen: Generation, routes: dict[str, Face], entry: QueueEntry) -> tuple[float, float]:
    face = routes.get(entry.route)
    if face is None:
        return 1.0, 300.0
    return face.backoff(gen.faces[face.name], entry)


def create_app(config: Config) -> web.Application:
    # Every limit on what a client sends is aiohttp's (llhttp parses the head), set from the
    # config rather than left to aiohttp's defaults, which may change between releases.
    # aiohttp has no timeout for a request head of its own: its keep-alive timer, armed when a
    # connection opens and after each answer, closes a connection still waiting for a whole
    # head, so it is the head's read timeout (and the idle keep-alive timeout).
    traced = config.tracing.enabled or tracing.ENABLED
    app = web.Application(middlewares=[tracing_middleware, gateway_middleware] if traced else [gateway_middleware],
                          client_max_size=config.max_body_bytes,
                          handler_args={"max_field_size": config.max_header_bytes,
                                        "max_line_size": config.max_header_bytes,
                                        "max_headers": config.max_header_fields,
                                        "keepalive_timeout": config.read_timeout})
    app[CONFIG] = config
    app[INFLIGHT] = {"n": 0}
    app[SHED_LINES] = ShedLines()
    app[LIFECYCLE] = Lifecycle()
    app.cleanup_ctx.append(_tracing_ctx)
    app.cleanup_ctx.append(_store_ctx)
    app[FACES] = {face.name: face for face in (face_type(app, config) for face_type in FACE_TYPES)}
    app.cleanup_ctx.append(_faces_ctx)
    app.on_shutdown.append(_on_shutdown)
    app[PROBE] = UpstreamProbe()
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/metrics", metrics_endpoint, name="metrics")
    if config.admin_token:
        setup_admin(app)
    return app
