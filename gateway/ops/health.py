"""``/healthz`` (the process answers), ``/readyz`` (it can do its job) and ``/metrics``.

``/healthz`` and ``/readyz`` answer on both ports, ``/metrics`` on the internal one only
(gateway/app.py). Readiness means: not shutting down (from SIGTERM on, ``/readyz`` answers
503 ``draining`` while the gateway still serves, so load balancers stop sending it traffic
before it stops accepting), the store answers, mappings are loaded, and — when
``server.probe_upstreams`` is on — every legacy API accepts a TCP connection. Upstream
probes are cached a few seconds so a tight probe interval (or several probers) does not
turn into a connection storm against the legacy side. Checks name mappings, never URLs.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

from aiohttp import web

from gateway.context import LIFECYCLE, RUNTIME, STORE
from gateway.ops import metrics


class UpstreamProbe:
    """TCP connect to ``host:port`` of a base URL, the result cached for ``ttl`` seconds."""

    def __init__(self, ttl: float = 5.0, timeout: float = 1.0):
        self.ttl, self.timeout = ttl, timeout
        self._cache: dict[tuple[str, int], tuple[float, str]] = {}

    async def check(self, base_url: str) -> str:
        parts = urlsplit(base_url)
        target = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        cached = self._cache.get(target)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(*target), self.timeout)
            writer.close()
            result = "ok"
        except (OSError, TimeoutError) as exc:
            result = f"unreachable: {type(exc).__name__}"
        self._cache[target] = (time.monotonic(), result)
        return result


PROBE = web.AppKey("upstream_probe", UpstreamProbe)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    gen = app[RUNTIME].current
    if app[LIFECYCLE].draining:
        return web.json_response({"status": "draining", "generation": gen.number,
                                  "checks": {"shutdown": "draining"}}, status=503)
    checks = {"mappings": "ok" if gen.config.partners else "none loaded"}
    try:
        await asyncio.wait_for(app[STORE].ping(), 2.0)
        checks["store"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["store"] = f"unreachable: {type(exc).__name__}"
    if gen.config.probe_upstreams:
        names = sorted(gen.clients)
        results = await asyncio.gather(*(app[PROBE].check(gen.clients[n].mapping.base_url) for n in names))
        checks.update({f"upstream:{name}": result for name, result in zip(names, results, strict=True)})
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"status": "ready" if ready else "not ready", "generation": gen.number,
                              "checks": checks}, status=200 if ready else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})
