"""Typed state of the running application, shared by the app, both faces and operations.

The application keeps its long-lived resources under these ``web.AppKey``s, set once at
start-up (gateway/app.py) and never changed after; a request runs under one config
generation for its whole life (``generation(request)``, set by the middleware). They live
here, not in app.py, so that every module serving requests can reach them without
importing the module that imports it.
"""

from __future__ import annotations

from aiohttp import web

from gateway.config import Config
from gateway.retry_queue import DeliveryWorker
from gateway.runtime import Generation, Runtime
from gateway.store import Store

CONFIG = web.AppKey("config", Config)  # as started: listen address, store, routes
STORE = web.AppKey("store", Store)
RUNTIME = web.AppKey("runtime", Runtime)  # the current Generation (config, clients, faces)
WORKER = web.AppKey("worker", DeliveryWorker)
INFLIGHT = web.AppKey("inflight", dict)  # {"n": requests being answered now}
FACES = web.AppKey("faces", dict)  # face name -> Face (gateway/faces/base.py)


def generation(request: web.Request) -> Generation:
    """The config generation this request runs under (fixed for its whole life)."""
    return request["generation"]
