"""``create_app(config)``: the aiohttp application, its routes and long-lived resources.

State lives under typed ``web.AppKey`` constants; each resource (store, legacy
clients, delivery worker) is a ``cleanup_ctx`` generator; nothing changes after start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

from aiohttp import web

from gateway import metrics
from gateway.admin import setup_admin
from gateway.auth import AuthFailure, Verifier
from gateway.config import Config
from gateway.errors import IgspError, UpstreamError
from gateway.platform_face import handle_hook
from gateway.provider_face import setup_provider_face
from gateway.ratelimit import Limiter, RateLimited
from gateway.retry_queue import DeliveryWorker
from gateway.spec import HOOKS_SPEC, SpecValidators
from gateway.store import QueueEntry, Store, open_store
from gateway.upstream import LegacyClient
from gateway.wallet import Wallet, error_body

log = logging.getLogger("igsp.access")

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
VERIFIER = web.AppKey("verifier", Verifier)
HOOK_SPEC = web.AppKey("hook_spec", SpecValidators)
CLIENTS = web.AppKey("clients", dict)
WALLETS = web.AppKey("wallets", dict)
WORKER = web.AppKey("worker", DeliveryWorker)
INFLIGHT = web.AppKey("inflight", dict)
LIMITER = web.AppKey("limiter", Limiter)


def _error_response(error: IgspError, request_id: str) -> web.Response:
    status, body = error_body(error)
    headers = {"X-Request-ID": request_id}
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(error.retry_after)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


@web.middleware
async def gateway_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Request id, one access-log line, metrics, and every error as an iGSP ErrorResponse."""
    started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else uuid.uuid4().hex
    request["request_id"] = request_id
    face = request.match_info.route.name or "other"
    inflight = request.app[INFLIGHT]
    inflight["n"] += 1
    try:
        try:
            response = await handler(request)
            response.headers["X-Request-ID"] = request_id
        except IgspError as exc:
            response = _error_response(exc, request_id)
            if isinstance(exc, AuthFailure):
                request["auth_failure"] = exc.reason
            elif isinstance(exc, UpstreamError):
                request["upstream_failure"] = exc.kind
        except web.HTTPRequestEntityTooLarge:
            response = _error_response(IgspError("payload_too_large", "request body is too large"), request_id)
        except web.HTTPException as exc:
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "invalid_request")
            response = _error_response(IgspError(code, exc.reason or "request refused", exc.status), request_id)
        except Exception:  # noqa: BLE001 - never a traceback to a client
            log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
            response = _error_response(IgspError("internal_error", "internal error"), request_id)
    finally:
        inflight["n"] -= 1
    if face in ("platform", "provider", "legacy"):
        elapsed = time.perf_counter() - started
        operation = request.get("operation", "unknown")
        partner = request.get("partner", "unknown")
        outcome = "ok" if response.status < 400 else ("client_error" if response.status < 500 else "server_error")
        metrics.REQUESTS.labels(partner, face, operation, outcome).inc()
        metrics.REQUEST_SECONDS.labels(face, operation).observe(elapsed)
        if request.app[CONFIG].access_log:
            log.info("request", extra={
                "request_id": request_id, "partner": partner, "face": face, "operation": operation,
                "status": response.status, "latency_ms": round(elapsed * 1000, 3),
                "transaction_id": request.get("transaction_id"), "method": request.method, "path": request.path,
                **({"auth_failure": request["auth_failure"]} if "auth_failure" in request else {}),
            })
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    checks = {"mappings": "ok" if app[CONFIG].partners else "none loaded"}
    try:
        await asyncio.wait_for(app[STORE].ping(), 2.0)
        checks["store"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["store"] = f"unreachable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"status": "ready" if ready else "not ready", "checks": checks},
                             status=200 if ready else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})


async def _store_ctx(app: web.Application):
    store = open_store(app[CONFIG].store_url, namespace=app[CONFIG].store_namespace)
    await store.open()
    app[STORE] = store
    yield
    await store.close()


async def _faces_ctx(app: web.Application):
    config = app[CONFIG]
    store = app[STORE]
    app[VERIFIER] = Verifier({p.api_key: p for p in config.partners}, config.signature_window, store,
                             config.replay_protection,
                             on_failure=lambda reason: metrics.SIGNATURE_FAILURES.labels(reason).inc(),
                             limiter=app[LIMITER])
    clients: dict[str, LegacyClient] = {}
    wallets: dict[str, Wallet] = {}
    worker = DeliveryWorker(store, {}, consumer=f"{socket.gethostname()}-{os.getpid()}",
                            backoff_for=lambda entry: _backoff_for(app, entry),
                            lease_seconds=config.queue_lease_seconds, poll_seconds=config.queue_poll_seconds)
    for partner in config.partners:
        client = clients.setdefault(partner.mapping.name, LegacyClient(partner.mapping, metrics.observe_upstream))
        if partner.face == "platform":
            wallets[partner.id] = Wallet(partner.id, client, store, retention=config.retention_seconds,
                                         currencies=config.currencies, wake_queue=worker.wake.set,
                                         orphan_after=config.queue_lease_seconds,
                                         on_replay=lambda action, pid=partner.id: metrics.REPLAYS.labels(pid, action).inc())
    app[CLIENTS], app[WALLETS], app[WORKER] = clients, wallets, worker

    async def deliver_wallet(entry: QueueEntry) -> None:
        wallet = wallets.get(entry.payload["partner"])
        if wallet is None:
            raise IgspError("internal_error", f"partner {entry.payload['partner']!r} is no longer configured")
        await wallet.deliver(entry.payload["op"], entry.payload["hook"], entry.payload.get("request_id", ""))

    worker.handlers["wallet"] = deliver_wallet
    task = asyncio.create_task(worker.run(), name="delivery-worker")
    yield
    # Graceful stop: let the current delivery finish, then close the pools.
    worker.stopping = True
    worker.wake.set()
    try:
        await asyncio.wait_for(task, timeout=config.drain_seconds or 1.0)
    except TimeoutError:
        task.cancel()
    for client in clients.values():
        await client.close()


def _backoff_for(app: web.Application, entry: QueueEntry) -> tuple[float, float]:
    wallet = app[WALLETS].get(entry.payload.get("partner"))
    if wallet is None:
        return 1.0, 300.0
    return wallet.mapping.backoff_initial, wallet.mapping.backoff_max


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[gateway_middleware], client_max_size=config.max_body_bytes,
                          handler_args={"max_field_size": config.max_header_bytes,
                                        "max_line_size": config.max_header_bytes})
    app[CONFIG] = config
    app[HOOK_SPEC] = SpecValidators(HOOKS_SPEC)
    app[INFLIGHT] = {"n": 0}
    # One bucket per partner, shared by every face of this process.
    app[LIMITER] = Limiter({p.id: p.rate_limit for p in config.partners},
                           on_limited=lambda pid: metrics.RATE_LIMITED.labels(pid).inc())
    for name in ("BalanceRequest", "BetRequest", "WinRequest", "RefundRequest"):
        app[HOOK_SPEC].validator(name)  # compile at start-up, not on the first request
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_faces_ctx)
    app.router.add_post(config.hooks_path, handle_hook, name="platform")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/metrics", metrics_endpoint, name="metrics")
    setup_provider_face(app, config)
    if config.admin_token:
        setup_admin(app)
    return app
