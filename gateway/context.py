"""Typed state of the running application, shared by the app, both faces and operations.

The application keeps its long-lived resources under these ``web.AppKey``s, set once at
start-up (gateway/app.py) and never changed after; a request runs under one config
generation for its whole life (``generation(request)``, set by the middleware). They live
here, not in app.py, so that every module serving requests can reach them without
importing the module that imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.config import Config
from gateway.ops.shedlog import ShedLines
from gateway.retry_queue import DeliveryWorker
from gateway.runtime import Generation, Runtime
from gateway.store import Store


@dataclass
class Lifecycle:
    """Where the process is in its life, as the listeners and probes see it (gateway/server.py)."""

    #: SIGTERM arrived: /readyz answers 503 "draining" and every answer closes its connection,
    #: while the gateway keeps serving for ``server.shutdown_grace_seconds``.
    draining: bool = False
    #: The port /metrics and /admin/ are served on (bound by the server; 0 until then).
    internal_port: int = 0


CONFIG = web.AppKey("config", Config)  # as started: listen address, store, routes
STORE = web.AppKey("store", Store)
RUNTIME = web.AppKey("runtime", Runtime)  # the current Generation (config, clients, faces)
WORKER = web.AppKey("worker", DeliveryWorker)
INFLIGHT = web.AppKey("inflight", dict)  # {"n": requests being answered now}
FACES = web.AppKey("faces", dict)  # face name -> Face (gateway/faces/base.py)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
SHED_LINES = web.AppKey("shed_lines", ShedLines)  # which shed requests are access-logged


def generation(request: web.Request) -> Generation:
    """The config generation this request runs under (fixed for its whole life)."""
    return request["generation"]
