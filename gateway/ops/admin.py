"""The admin API under ``/admin/``: the dead-letter queue and queue health, for operators.

Mounted only when ``admin.token`` is configured (otherwise ``/admin/…`` is a plain 404),
served on the internal port only (``server.internal_port``; the public port answers 404, see
gateway/app.py), and every call needs ``Authorization: Bearer <admin.token>`` (compared in
constant time).

    GET    /admin/queue              {"depth", "oldest_age", "dead"}
    GET    /admin/dlq?limit=100      {"entries": [entry, …], "count": n}
    GET    /admin/dlq/{id}           entry
    POST   /admin/dlq/{id}/replay    {"replayed": id}     back to the queue, attempts reset
    POST   /admin/dlq/{id}/resolve   {"applied": true|false} -> the resolution's report
                                     (gateway/ops/dead_letters.py): the same on every call
    DELETE /admin/dlq/{id}           {"purged": 1}        409 while its transaction is open
    DELETE /admin/dlq                {"purged": n, "kept": [id, …]}  every dead letter whose
                                     transaction is final; ``kept``: still open, resolve them

Errors are iGSP ErrorResponses (401 ``unauthorized``, 404 ``not_found``, 400 ``invalid_request``,
409 ``transaction_conflict`` when refused, the legacy wallet's own when its balance cannot be read).
"""

from __future__ import annotations

import functools
import hmac
import logging

import orjson
from aiohttp import web

from gateway.context import STORE, WORKER, generation
from gateway.errors import IgspError
from gateway.ops import dead_letters

log = logging.getLogger("igsp.admin")


def _store(request: web.Request):
    return request.app[STORE]


def _authorized(handler):
    """Refuse the call unless it carries the configured bearer token."""

    @functools.wraps(handler)
    async def check(request: web.Request) -> web.Response:
        token = generation(request).config.admin_token or ""  # a reload may rotate it
        given = request.headers.get("Authorization", "")
        if not (token and given.startswith("Bearer ")
                and hmac.compare_digest(given[7:].strip().encode(), token.encode())):
            raise IgspError("unauthorized", "missing or wrong admin token")
        return await handler(request)

    return check


async def queue_stats(request: web.Request) -> web.Response:
    return web.json_response(await _store(request).q_stats())


async def dlq_list(request: web.Request) -> web.Response:
    raw = request.query.get("limit", "100")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 10000:
        raise IgspError("invalid_request", "limit must be an integer from 1 to 10000")
    entries = await _store(request).dlq_list(int(raw))
    return web.json_response({"entries": [e.describe() for e in entries], "count": len(entries)})


async def dlq_show(request: web.Request) -> web.Response:
    entry = await _store(request).dlq_get(request.match_info["id"])
    if entry is None:
        raise IgspError("not_found", "no such dead letter")
    return web.json_response(entry.describe())


async def dlq_replay(request: web.Request) -> web.Response:
    entry_id = request.match_info["id"]
    if not await _store(request).dlq_replay(entry_id):
        raise IgspError("not_found", "no such dead letter")
    log.warning("dead letter replayed", extra={"entry": entry_id, "by": "admin-api"})
    request.app[WORKER].wake.set()
    return web.json_response({"replayed": entry_id})


async def dlq_resolve(request: web.Request) -> web.Response:
    entry_id = request.match_info["id"]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not (isinstance(body, dict) and set(body) == {"applied"} and isinstance(body["applied"], bool)):
        raise IgspError("invalid_request", 'the body must be the JSON object {"applied": true} (the legacy wallet '
                                           'applied it: the money moved) or {"applied": false} (it did not)')
    gen = generation(request)
    wallets = gen.faces["platform"].wallets if "platform" in gen.faces else {}

    def wallet_for(partner: str):
        if partner not in wallets:
            raise IgspError("invalid_request", f"partner {partner!r} is not a platform partner of this gateway: its "
                                               "wallet cannot be read; nothing was changed")
        return wallets[partner]

    report = await dead_letters.resolve(_store(request), entry_id, body["applied"], wallet_for=wallet_for,
                                        retention=gen.config.retention_seconds)
    log.warning("dead letter resolved", extra={"entry": entry_id, "outcome": report["outcome"], "by": "admin-api"})
    return web.json_response(report)


async def dlq_purge_one(request: web.Request) -> web.Response:
    entry_id = request.match_info["id"]
    if not await dead_letters.purge(_store(request), entry_id):
        raise IgspError("not_found", "no such dead letter")
    log.warning("dead letter purged", extra={"entry": entry_id, "by": "admin-api"})
    return web.json_response({"purged": 1})


async def dlq_purge_all(request: web.Request) -> web.Response:
    result = await dead_letters.purge_all(_store(request))
    log.warning("dead letters purged", extra={"count": result["purged"], "kept": len(result["kept"]),
                                              "by": "admin-api"})
    return web.json_response(result)


def setup_admin(app: web.Application) -> None:
    """Add the admin routes to ``app`` (call only when a token is configured)."""
    routes = [("GET", "/admin/queue", queue_stats), ("GET", "/admin/dlq", dlq_list),
              ("DELETE", "/admin/dlq", dlq_purge_all), ("GET", "/admin/dlq/{id}", dlq_show),
              ("DELETE", "/admin/dlq/{id}", dlq_purge_one), ("POST", "/admin/dlq/{id}/replay", dlq_replay),
              ("POST", "/admin/dlq/{id}/resolve", dlq_resolve)]
    for method, path, handler in routes:
        app.router.add_route(method, path, _authorized(handler), name=f"admin.{handler.__name__}")
