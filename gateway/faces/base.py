"""What a face is to the application: both faces plug in the same way.

A face is one side of the gateway's work — ``platform`` (iGSP wallet hooks in, a legacy
wallet out) and ``provider`` (iGSP catalogue and launch in, a legacy provider out, its
wallet callbacks turned into iGSP hooks). The app (gateway/app.py) knows faces only
through this class:

* ``__init__(app, config)``, once at start-up: add its routes, open what lives as long
  as the process (e.g. the pooled hook client), and register its cleanup;
* ``build(gen, runtime)``, for every config generation (start-up and each reload): the
  objects its handlers use while that generation serves — a request uses those of the
  generation it arrived under (``generation(request).faces[name]``);
* ``deliveries``: the durable queue's routes it owns, each a coroutine
  ``(built objects, entry)`` that runs one queued delivery (gateway/retry_queue.py);
* ``backoff(built, entry)``: seconds (initial, max) between attempts of one of them;
* ``settle(built, record)``: settle a ledger record of one of its partners that a crashed
  gateway left pending (gateway/faces/sweeper.py); False when the record is not its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from aiohttp import web

from gateway.config import Config
from gateway.runtime import Generation, Runtime
from gateway.store import QueueEntry, TxRecord

Delivery = Callable[[Any, QueueEntry], Awaitable[None]]


class Face:
    name: ClassVar[str]

    def __init__(self, app: web.Application, config: Config):
        self.deliveries: dict[str, Delivery] = {}

    def build(self, gen: Generation, runtime: Runtime) -> Any:
        raise NotImplementedError

    def backoff(self, built: Any, entry: QueueEntry) -> tuple[float, float]:
        return 1.0, 300.0

    async def settle(self, built: Any, record: TxRecord) -> bool:
        return False
