"""The admin API under ``/admin/``: the dead-letter queue and queue health, for operators.

Mounted only when ``admin.token`` is configured (otherwise ``/admin/…`` is a plain 404),
and every call needs ``Authorization: Bearer <admin.token>`` (compared in constant time).

    GET    /admin/queue              {"depth", "oldest_age", "dead"}
    GET    /admin/dlq?limit=100      {"entries": [entry, …], "count": n}
    GET    /admin/dlq/{id}           entry
    POST   /admin/dlq/{id}/replay    {"replayed": id}     back to the queue, attempts reset
    DELETE /admin/dlq/{id}           {"purged": 1}
    DELETE /admin/dlq                {"purged": n}        every dead letter

Errors are iGSP ErrorResponses (401 ``unauthorized``, 404 ``not_found``, 400 ``invalid_request``).
"""

from __future__ import annotations

import functools
import hmac
import logging

from aiohttp import web

from gateway.context import STORE, WORKER, generation
from gateway.errors import IgspError

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


async def dlq_purge_one(request: web.Request) -> web.Response:
    entry_id = request.match_info["id"]
    if not await _store(request).dlq_purge(entry_id):
        raise IgspError("not_found", "no such dead letter")
    log.warning("dead letter purged", extra={"entry": entry_id, "by": "admin-api"})
    return web.json_response({"purged": 1})


async def dlq_purge_all(request: web.Request) -> web.Response:
    count = await _store(request).dlq_purge(None)
    log.warning("dead letters purged", extra={"count": count, "by": "admin-api"})
    return web.json_response({"purged": count})


def setup_admin(app: web.Application) -> None:
    """Add the admin routes to ``app`` (call only when a token is configured)."""
    routes = [("GET", "/admin/queue", queue_stats), ("GET", "/admin/dlq", dlq_list),
              ("DELETE", "/admin/dlq", dlq_purge_all), ("GET", "/admin/dlq/{id}", dlq_show),
              ("DELETE", "/admin/dlq/{id}", dlq_purge_one), ("POST", "/admin/dlq/{id}/replay", dlq_replay)]
    for method, path, handler in routes:
        app.router.add_route(method, path, _authorized(handler), name=f"admin.{handler.__name__}")
