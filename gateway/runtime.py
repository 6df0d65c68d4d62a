"""What a reload replaces: the current config and everything built from it, swapped whole.

The application state never changes after start-up; it holds one ``Runtime`` whose
``current`` attribute points at an immutable ``Generation`` (config, verifier, legacy
clients, wallets). A request takes the generation current when it arrives and uses it
to the end, so a reload never changes anything under a request in flight:

    gen = runtime.acquire()             # the middleware does this for every request
    try:
        wallet = gen.faces["platform"].wallets[partner_id]
    finally:
        runtime.release(gen)

``reload()`` loads and checks the config and every mapping again; a broken one is
refused (logged with file:line:field) and the old generation keeps serving. A replaced
generation closes its legacy connection pools once its last request has finished.

Settings bound to the listening socket, the store or the routes (``RESTART_FIELDS``)
need a restart: a reload keeps their old values and says so.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.config import Config, load_config
from gateway.errors import ConfigError
from gateway.ops import metrics
from gateway.ops.logs import update_logging
from gateway.outbound.legacy import LegacyClient
from gateway.ratelimit import AdaptiveLimit, Concurrency, Limiter
from gateway.store import Store

log = logging.getLogger("igsp.runtime")
upstream_log = logging.getLogger("igsp.upstream")

RESTART_FIELDS = ("host", "port", "internal_port", "workers", "drain_seconds", "shutdown_grace", "max_body_bytes",
                  "max_header_bytes", "store_url", "store_password", "store_namespace", "hooks_path", "provider_mount",
                  "queue_lease_seconds", "queue_poll_seconds", "tracing")

#: Builds a face's own objects for a generation being built (from its config, clients,
#: limiter; see gateway/faces/base.py).
Builder = Callable[["Generation", "Runtime"], Any]


@dataclass(eq=False)
class Generation:
    """One loaded config and everything built from it; never changed once built."""

    number: int
    config: Config
    clients: dict[str, LegacyClient]  # mapping name -> client (one pool per legacy API)
    limiter: Limiter  # one bucket per partner, shared by every face of this process
    faces: dict[str, Any] = field(default_factory=dict)  # face name -> what its build() made
    users: int = field(default=0, compare=False)  # requests and deliveries using it now
    retired: bool = field(default=False, compare=False)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


class Runtime:
    """Holds the current Generation and swaps it on reload."""

    def __init__(self, config: Config, store: Store, wake_queue: Callable[[], None] = lambda: None,
                 builders: dict[str, Builder] | None = None):
        self.store = store
        self.wake_queue = wake_queue
        self.builders = dict(builders or {})
        self.current = self.build(config, 1, None)
        _export_limits(self.current)
        self.drain_deadline: float | None = None  # loop time by which shutdown must be done
        self._lock = asyncio.Lock()
        self._retired: set[Generation] = set()
        self._closing: set[asyncio.Task] = set()

    def build(self, config: Config, number: int, previous: Generation | None) -> Generation:
        limiter = _limiter(config, previous.limiter if previous is not None else None, self.store)
        clients: dict[str, LegacyClient] = {}
        observe = observe_upstream
        if limiter.concurrency.adaptive:
            call_done = limiter.concurrency.call_done

            def observe(mapping: str, operation: str, kind: str, seconds: float) -> None:
                observe_upstream(mapping, operation, kind, seconds)
                call_done(mapping, seconds, kind)  # the latency an adaptive limit follows
        for partner in config.partners:
            if partner.mapping.name not in clients:
                clients[partner.mapping.name] = LegacyClient(partner.mapping, observe)
        gen = Generation(number, config, clients, limiter)
        gen.faces.update({name: build(gen, self) for name, build in self.builders.items()})
        return gen

    def acquire(self) -> Generation:
        """The current generation, kept open (its pools alive) until ``release(gen)``."""
        gen = self.current
        gen.users += 1
        return gen

    def release(self, gen: Generation) -> None:
        gen.users -= 1
        if gen.retired and gen.users == 0 and gen in self._retired:
            self._close(gen)

    @contextmanager
    def use(self) -> Iterator[Generation]:
        """``acquire``/``release`` around a block (the request path calls them directly:
        a generator-based context manager costs more than the rest of the bookkeeping)."""
        gen = self.acquire()
        try:
            yield gen
        finally:
            self.release(gen)

    async def reload(self, reason: str = "SIGHUP") -> bool:
        """Load the config file again; swap it in if it is valid, else keep serving the old one."""
        async with self._lock:
            old = self.current
            try:
                # Off the event loop: compiling templates and schemas must not stall requests.
                new = await asyncio.get_running_loop().run_in_executor(None, self._load, old)
            except ConfigError as exc:
                metrics.CONFIG_RELOADS.labels("refused").inc()
                metrics.CONFIG_LAST_RELOAD_OK.set(0)
                problems = [str(p) for p in exc.problems]
                log.error(f"config reload refused, still serving generation {old.number}: " + "; ".join(problems),
                          extra={"reason": reason, "problems": problems, "generation": old.number})
                return False
            except Exception as exc:  # noqa: BLE001 - a reload must never take the server down
                metrics.CONFIG_RELOADS.labels("refused").inc()
                metrics.CONFIG_LAST_RELOAD_OK.set(0)
                log.exception("config reload failed, still serving the previous config",
                              extra={"reason": reason, "error": type(exc).__name__, "generation": old.number})
                return False
            config = new.config
            update_logging(config.log_level, config.secrets)
            self.current = new
            _export_limits(new)
            # Start-up objects were frozen out of the GC (server.py): give them back, so the
            # retired generation's reference cycles can be collected once it is closed.
            gc.unfreeze()
            old.retired = True
            self._retired.add(old)
            if old.users == 0:
                self._close(old)
            metrics.CONFIG_RELOADS.labels("applied").inc()
            metrics.CONFIG_LAST_RELOAD_OK.set(1)
            metrics.init_config_series(config)  # a partner or mapping it added draws at once
            log.info("config reloaded", extra={"reason": reason, "generation": new.number,
                                               "partners": [p.id for p in config.partners],
                                               "mappings": sorted(new.clients)})
            return True

    def _load(self, old: Generation) -> Generation:
        """Load the config file again and build the next generation from it (in a thread)."""
        config = load_config(old.config.file)
        kept = sorted(name for name in RESTART_FIELDS if getattr(config, name) != getattr(old.config, name))
        if kept:
            log.warning("reload keeps these settings until a restart", extra={"settings": kept})
        config = replace(config, **{name: getattr(old.config, name) for name in RESTART_FIELDS})
        return self.build(config, old.number + 1, old)

    def _close(self, gen: Generation) -> None:
        self._retired.discard(gen)
        task = asyncio.get_running_loop().create_task(gen.close(), name=f"close-generation-{gen.number}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """At shutdown: close every pool, the current generation's and any still retiring."""
        for gen in (self.current, *self._retired):
            await gen.close()
        self._retired.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _limiter(config: Config, previous: Limiter | None, store: Store) -> Limiter:
    """The rate limiter of a generation; a partner whose limit did not change keeps its bucket
    (with ``rate_limits.shared`` the store's bucket, whatever changed)."""
    concurrency = Concurrency({p.id: p.max_concurrent for p in config.partners},
                              {p.id: p.mapping.name for p in config.partners}, config.upstream_concurrency,
                              config.concurrency_retry_after,
                              # Requests still running under the previous generation hold their
                              # slots; an adaptive limit whose settings are the same keeps its state.
                              counts=previous.concurrency.counts if previous and previous.concurrency else None,
                              adaptive=config.concurrency_adaptive,
                              previous=previous.concurrency if previous else None,
                              on_limit=export_limit)
    limiter = Limiter({p.id: p.rate_limit for p in config.partners},
                      on_limited=lambda pid: metrics.RATE_LIMITED.labels(pid).inc(),
                      store=store if config.rate_limits_shared else None,
                      on_store_error=config.rate_limits_on_store_error, concurrency=concurrency)
    for partner, bucket in (previous.buckets if previous is not None else {}).items():
        fresh = limiter.buckets.get(partner)
        if fresh is not None and (fresh.rate, fresh.capacity) == (bucket.rate, bucket.capacity):
            limiter.buckets[partner] = bucket
    return limiter


#: The Concurrency whose adaptive limits the gauge shows: the current generation's (a retired
#: one's requests still running must not write over it, nor move a share it no longer has).
_EXPORTED: list[Concurrency | None] = [None]


def export_limit(limit: AdaptiveLimit, upstream: str, partner: str) -> None:
    current = _EXPORTED[0]
    if current is not None and current.adaptive.get((upstream, partner)) is limit:
        metrics.CONCURRENCY_LIMIT.labels(upstream, partner).set(limit.value)  # (rare: not cached, see remove)


def _export_limits(gen: Generation) -> None:
    """At start and after a swap: the gauge follows this generation's adaptive limits, and
    the series of shares it no longer has go."""
    previous, now = _EXPORTED[0], gen.limiter.concurrency
    _EXPORTED[0] = now
    for key in (previous.adaptive.keys() - now.adaptive.keys()) if previous is not None else ():
        try:
            metrics.CONCURRENCY_LIMIT.remove(*key)
        except KeyError:
            pass
    now.export()


def observe_upstream(mapping: str, operation: str, kind: str, seconds: float) -> None:
    """Every legacy call: metrics, and a warning line for a failure (with the request id)."""
    metrics.observe_upstream(mapping, operation, kind, seconds)
    if kind not in ("ok", "business"):
        upstream_log.warning("legacy call failed", extra={"mapping": mapping, "operation": operation, "kind": kind,
                                                          "latency_ms": round(seconds * 1000, 3)})


def watched_mtimes(config: Config) -> dict[str, int]:
    """Modification times of the config and mapping files (``--watch``)."""
    found = {}
    for file in config.files:
        try:
            found[file] = os.stat(file).st_mtime_ns
        except OSError:
            found[file] = -1
    return found


async def watch(runtime: Runtime, interval: float) -> None:
    """Reload when a watched file changes; a broken edit is refused like a SIGHUP's."""
    seen = watched_mtimes(runtime.current.config)
    while True:
        await asyncio.sleep(interval)
        now = watched_mtimes(runtime.current.config)
        if now != seen:
            applied = await runtime.reload("file change")
            # A refused edit is not retried until a file changes again; an applied one
            # may name other mapping files, which are watched from now on.
            seen = watched_mtimes(runtime.current.config) if applied else now
