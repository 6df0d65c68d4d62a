"""The shared store for several replicas: Redis, standalone or behind Sentinel (not Cluster).

``redis://host:port/db`` (or ``rediss://``), or
``redis+sentinel://host:port[,host:port…]/service-name[?db=N]`` — the master of the Sentinel
service ``service-name``, found and followed through failovers by redis-py's own asyncio
Sentinel client (user and password in the URL are the Redis servers', not the sentinels').
One pooled redis-py asyncio client per process; replies are parsed by hiredis. Every read-modify-write is a Lua script (``redis_scripts.py``),
so concurrent replicas never race, and every ledger operation is one round trip (EVALSHA of
a registered script). Key layout, all under ``{namespace}:`` (``igsp`` by default) so
several gateways, or test runs, can share one Redis::

    {ns}:tx:{partner}:{txid}   hash    ledger record: owner action fingerprint state status body
                                       voided_by void_token created_at payload; expires after
                                       the retention TTL
    {ns}:pending               zset    ledger records still pending, as JSON [partner, txid],
                                       scored by created_at (the sweeper's worklist)
    {ns}:kv:{space}:{key}      string  sessions, replay cache, id maps; expires with its TTL
    {ns}:q:stream              stream  due deliveries, one message {id: <entry id>} each;
                                       consumer group "workers", one consumer per process
    {ns}:q:delayed             zset    entry ids not due yet, scored by next_at
    {ns}:q:live                zset    every queued (not dead) entry id, scored by created_at
    {ns}:q:dead                zset    dead-letter entry ids, scored by created_at
    {ns}:q:e:{id}              hash    the entry: route, payload (JSON), attempts, max_attempts,
                                       next_at, created_at, last_error, sid (its current
                                       stream id, '' while delayed or dead), lease (token of
                                       the claim holding it, ''), dead ('0'/'1'), settled_by,
                                       replayed_by; once delivered or purged a tombstone
                                       {gone: 1} for an hour; once closed by an operator
                                       (dlq_settle) a tombstone holding the resolution:
                                       settled partner txid status body unvoid settled_at
                                       ledger, for the retention TTL
    {ns}:q:cursor              string  where the next XAUTOCLAIM scan of pending entries starts
    {ns}:memo:{token}          string  one call's answer, kept 10 minutes (see below)
    {ns}:rl:{key}              string  a shared rate limit's bucket (RATE_TAKE): when it is full
                                       again, Unix microseconds; expires then
    {ns}:rl:{key}:seen         zset    tokens of the requests it granted in the last minute

A claim moves due delayed entries into the stream, takes over entries another consumer
has held longer than the lease (XAUTOCLAIM: a crashed process's work is finished by a live
one; the lease is the claimer's, so every replica runs with the same ``queue.lease_seconds``)
and reads new ones (XREADGROUP). Ack, retry and dead-lettering XACK+XDEL the message.
Durability is Redis's: run it with ``appendonly yes`` (``appendfsync everysec`` loses at
most a second of writes on a crash of the Redis host; ``always`` loses nothing).

A command whose connection broke, or whose answer did not come within ``socket_timeout``,
is sent again on a new connection (``RESENDS`` times): the first send may have run. Every
script is written to be safe to run twice with the same arguments (redis_scripts.py says
why, script by script: owner tokens, memos, tombstones), and the plain commands are reads
or a SET of the same value. When Redis cannot serve, every method raises StoreUnavailable
(a retriable ``503 service_unavailable``), never a redis-py exception.

Replication (``?wait_replicas=N[&wait_timeout_ms=T]`` on either URL, default 0 and 1000):
Redis acknowledges a write before its replicas have it, so a master lost right after a write
can take it with it when a replica is promoted. With ``wait_replicas`` every write of the
store (scripts and SETs; not the rate limit's) is followed, in the same pipeline, by ``WAIT N
T``: a write that fewer than N replicas acknowledged within T ms fails with StoreUnavailable
(it may still stand on the master; the caller handles it like any lost reply). N replicas must
then be up for the store's scripts to be answered. SECURITY.md says what it does and does not
cover.

Commands are serialized by hiredis's ``pack_command`` (C), as redis-py's own synchronous
client does, instead of redis-py asyncio's Python packer, which rebuilds the command's whole
buffer once per argument (a bet's two ledger scripts have 25 arguments): 13 -> 7 µs of CPU
per bet measured in isolation. Each argument is encoded exactly as redis-py's ``Encoder``
encodes it, so the bytes on the wire are the same (tests/test_store.py compares them).

Pool settings, measured with ``python -m bench.redis_store``: a ``BlockingConnectionPool``
(a burst above ``max_connections`` waits for a connection; a plain ``ConnectionPool``, about
15 % less client CPU, fails it with "Too many connections"), no ``health_check_interval``
(it spends a PING round trip on a connection idle for longer than it; a dead idle
connection fails its command, which is then resent).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import time
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit

import hiredis
import orjson
import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ResponseError
from redis.maint_notifications import MaintNotificationsConfig

from gateway.ids import new_id
from gateway.store import redis_scripts as lua
from gateway.store.base import (
    PENDING,
    OnceKey,
    QueueEntry,
    Resolution,
    Store,
    StoreUnavailable,
    TransactionBusy,
    TransactionOpen,
    TxRecord,
)

log = logging.getLogger("igsp.store")

GROUP = "workers"
#: How many times a command whose connection broke (or timed out) is sent again on a new
#: connection. Every script is safe to run twice with the same arguments (redis_scripts.py).
RESENDS = 3
#: Redis cannot serve (unreachable, too slow, loading, out of memory, a read-only replica,
#: a refused login, a garbled reply): the caller gets StoreUnavailable (503, retriable).
_UNAVAILABLE = (rx.ConnectionError, rx.TimeoutError, rx.InvalidResponse, rx.OutOfMemoryError, rx.ReadOnlyError,
                rx.NoPermissionError, rx.ClusterDownError, rx.TryAgainError)
_UNAVAILABLE_REPLIES = ("MISCONF", "NOAUTH", "NOREPLICAS", "LOADING", "MASTERDOWN")
_PRUNE_EVERY = 600.0  # seconds between sweeps of consumers left behind by dead processes
_PRUNE_IDLE_MS = 3600_000
#: Scripts whose writes need no replica's acknowledgement (``wait_replicas``): a rate limit's
#: bucket lost in a failover only lets a burst through again.
_NOT_WAITED = frozenset({"RATE_TAKE"})
SENTINEL_SCHEME = "redis+sentinel"


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """redis-py's Sentinel pool (a new connection asks the sentinels for the master, a
    connection to a demoted master is dropped) with BlockingConnectionPool's checkout: a burst
    above ``max_connections`` waits for a connection, as on a plain URL."""


def parse_url(url: str) -> dict:
    """Split a store URL into what ``RedisStore`` needs.

    ``{"url": ..., "wait_replicas": int, "wait_timeout_ms": int}`` for ``redis://`` (the URL
    without the store's own query options, for redis-py), plus ``sentinels`` [(host, port)],
    ``service``, ``db``, ``username`` and ``password`` for ``redis+sentinel://``.

    >>> parse_url("redis+sentinel://:pw@s1:26379,s2/mymaster?db=2&wait_replicas=1")["sentinels"]
    [('s1', 26379), ('s2', 26379)]
    """
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    try:
        out = {"wait_replicas": int(query.pop("wait_replicas", ["0"])[-1]),
               "wait_timeout_ms": int(query.pop("wait_timeout_ms", ["1000"])[-1])}
    except ValueError:
        raise ValueError("wait_replicas and wait_timeout_ms must be whole numbers") from None
    if out["wait_replicas"] < 0 or out["wait_timeout_ms"] < 1:
        raise ValueError("wait_replicas must be 0 or more and wait_timeout_ms at least 1")
    if parts.scheme != SENTINEL_SCHEME:
        out["url"] = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        return out
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = []
    for host in hosts.split(","):
        name, colon, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        if not colon:
            name, port = host, "26379"
        name = name.strip("[]")
        if not name or not port.isdigit():
            raise ValueError(f"{SENTINEL_SCHEME}:// needs host:port[,host:port…], got {hosts!r}")
        sentinels.append((name, int(port)))
    service = unquote(parts.path.strip("/"))
    if not service or "/" in service:
        raise ValueError(f"{SENTINEL_SCHEME}://hosts/SERVICE-NAME: name the Sentinel service (its master)")
    db = query.pop("db", ["0"])[-1]
    if not db.isdigit():
        raise ValueError(f"db must be a whole number, got {db!r}")
    if query:
        raise ValueError(f"unknown {SENTINEL_SCHEME}:// option(s): {', '.join(sorted(query))}")
    out.update(sentinels=sentinels, service=service, db=int(db), username=unquote(username) or None,
               password=unquote(password) or None)
    return out


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, rounded up: a record never expires early."""
    return max(1, math.ceil(seconds * 1000))


def _guarded(method):
    """Redis's own failures leave the store as StoreUnavailable, never as a driver exception
    (a 503 ``service_unavailable`` to the caller, not a 500)."""

    @functools.wraps(method)
    async def guarded(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable() from exc
        except ResponseError as exc:
            if str(exc).startswith(_UNAVAILABLE_REPLIES):
                raise StoreUnavailable() from exc
            raise

    return guarded


def _settle(done: asyncio.Future, outcome: object) -> None:
    """Hand a script's answer (or the exception in its place) to the caller still waiting."""
    if done.done():
        return  # the caller was cancelled; the script ran or not, as a lost reply would
    if isinstance(outcome, asyncio.CancelledError):
        done.cancel()
    elif isinstance(outcome, BaseException):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)


class _HiredisPacking:
    """A redis-py asyncio connection whose commands are packed by ``hiredis.pack_command``.

    The same bytes as redis-py's Python packer (``AbstractConnection.pack_command``): the
    command name split on spaces the same way, every argument encoded by the connection's
    own ``Encoder`` (which refuses what redis-py refuses), then serialized in C in one pass.
    """

    def pack_command(self, *args) -> list[bytes]:
        assert not isinstance(args[0], float)
        if isinstance(args[0], str):
            args = tuple(args[0].encode().split()) + args[1:]
        elif b" " in args[0]:
            args = tuple(args[0].split()) + args[1:]
        encoder = self.encoder
        encoding, errors = encoder.encoding, encoder.encoding_errors
        # What Encoder.encode makes of bytes and str, without a method call each; anything
        # else goes through it (numbers, and the types it refuses).
        return [hiredis.pack_command(tuple([
            arg if arg.__class__ is bytes else arg.encode(encoding, errors) if arg.__class__ is str
            else bytes(encoder.encode(arg)) for arg in args]))]


@functools.cache
def _packing(connection_class: type) -> type:
    """``connection_class`` (plain, TLS, unix socket or Sentinel-managed, as the URL chose)
    with hiredis packing."""
    return type(connection_class.__name__, (_HiredisPacking, connection_class), {})


def _member(partner: str, txid: str) -> bytes:
    """A ledger record's name in the pending index (any characters in either id)."""
    return orjson.dumps([partner, txid])


def _str(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


class RedisStore(Store):
    #: Pool settings (see the module docstring); the benchmark varies them.
    blocking_pool = True
    health_check_interval = 0
    socket_timeout = 5.0
    connect_timeout = 2.0

    def __init__(self, url: str, namespace: str = "igsp", *, max_connections: int = 64):
        self.url = url
        self.options = parse_url(url)  # a malformed URL fails here, before anything connects
        self.wait_replicas, self.wait_timeout_ms = self.options["wait_replicas"], self.options["wait_timeout_ms"]
        self._sentinel: Sentinel | None = None
        self._unreplicated_logged = 0.0
        self.ns = namespace
        self.max_connections = max_connections
        self._redis: aioredis.Redis | None = None
        q = f"{namespace}:q:"
        self.k_stream, self.k_delayed, self.k_live, self.k_dead = q + "stream", q + "delayed", q + "live", q + "dead"
        self.k_pending = f"{namespace}:pending"  # zset: ledger records still pending, by created_at
        self.k_cursor, self.k_entry = q + "cursor", q + "e:"
        self._pruned_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch: list = []  # scripts asked for in this turn of the loop (see _run)
        self._sending: set[asyncio.Task] = set()

    @_guarded
    async def open(self) -> None:
        options = dict(
            max_connections=self.max_connections, socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.connect_timeout, health_check_interval=self.health_check_interval,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=RESENDS),
            retry_on_error=[rx.ConnectionError, rx.TimeoutError],
            # Off, and not redis-py's default "auto": with maintenance notifications on, the
            # pool skips its check that a pooled connection has no unread data before handing
            # it out, so a reply nobody asked for (a late or doubled one) would be read as the
            # next command's answer. The store uses no RESP3 push messages.
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
        if self.blocking_pool:
            options["timeout"] = self.socket_timeout
        if "sentinels" in self.options:
            o = self.options
            self._sentinel = Sentinel(o["sentinels"], sentinel_kwargs={
                "socket_timeout": self.socket_timeout, "socket_connect_timeout": self.connect_timeout})
            self._redis = self._sentinel.master_for(
                o["service"], connection_pool_class=_BlockingSentinelPool if self.blocking_pool else SentinelConnectionPool,
                db=o["db"], username=o["username"], password=o["password"], **options)
        else:
            pool_class = aioredis.BlockingConnectionPool if self.blocking_pool else aioredis.ConnectionPool
            self._redis = aioredis.Redis(connection_pool=pool_class.from_url(self.options["url"], **options))
        pool = self._redis.connection_pool  # no connection made yet: each will pack with hiredis
        pool.connection_class = _packing(pool.connection_class)
        self._scripts = {name: self._redis.register_script(getattr(lua, name)) for name in lua.SCRIPTS}
        try:
            await self._ensure_group()
            if self.wait_replicas:
                replicas = (await self.r.info("replication")).get("connected_slaves", 0)
                if replicas < self.wait_replicas:
                    log.warning("store: fewer replicas connected than wait_replicas; writes fail until they are",
                                extra={"connected_replicas": replicas, "wait_replicas": self.wait_replicas})
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._sending:  # scripts already sent: their callers get their answers first
            await asyncio.gather(*self._sending, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose(close_connection_pool=True)
            self._redis = None
        if self._sentinel is not None:
            await self._sentinel.aclose()
            self._sentinel = None

    @property
    def r(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("store is not open")
        return self._redis

    async def _run(self, name: str, keys: list[str], args: list) -> object:
        """Run one script: EVALSHA, sent with the other scripts of this event-loop turn.

        Concurrent requests each need a script at about the same time (a bet's record, a
        win's answer); the scripts asked for in one turn of the loop leave in one redis-py
        pipeline (not a transaction: each script is atomic on its own), so N requests cost
        one round trip and one connection checkout instead of N. A lone script goes
        through redis-py's ``Script`` as before.
        """
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._batch.append((name, keys, args, done))
        if len(self._batch) == 1:
            loop.call_soon(self._send_batch)
        return await done

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        task = self._loop.create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list) -> None:
        wait = self.wait_replicas > 0 and any(name not in _NOT_WAITED for name, *_ in batch)
        if len(batch) == 1 and not wait:
            name, keys, args, done = batch[0]
            try:
                result = await self._scripts[name](keys=keys, args=args, client=self.r)
            except BaseException as exc:  # noqa: BLE001 - the caller's to handle (StoreUnavailable...)
                _settle(done, exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                _settle(done, result)
            return
        try:
            pipe = self.r.pipeline(transaction=False)
            for name, keys, args, _ in batch:
                pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)
            if wait:  # on the same connection, after the writes: their replication
                pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch learns it
            for *_, done in batch:
                _settle(done, exc)
            if not isinstance(exc, Exception):
                raise
            return
        unreplicated = wait and not self._replicated(results.pop())
        missing = []
        for (name, keys, args, done), result in zip(batch, results, strict=True):
            if isinstance(result, rx.NoScriptError):
                # Redis lost its script cache (a restart, SCRIPT FLUSH, a promoted replica):
                # this script did not run, so running it once loaded is its first run.
                missing.append((name, keys, args, done))
            elif unreplicated and name not in _NOT_WAITED and not isinstance(result, Exception):
                _settle(done, StoreUnavailable())
            else:
                _settle(done, result)
        if missing:
            task = self._loop.create_task(self._load_and_send(missing))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _load_and_send(self, batch: list) -> None:
        try:
            for name in {name for name, *_ in batch}:
                await self.r.script_load(getattr(lua, name))
        except BaseException as exc:  # noqa: BLE001 - their callers learn it
            for *_, done in batch:
                _settle(done, exc)
            if not isinstance(exc, Exception):
                raise
            return
        await self._send(batch)

    def _replicated(self, acknowledged: object) -> bool:
        """Whether WAIT's answer covers ``wait_replicas``; a shortfall is logged (every 10 s at most)."""
        if isinstance(acknowledged, int) and acknowledged >= self.wait_replicas:
            return True
        if time.monotonic() - self._unreplicated_logged > 10:
            self._unreplicated_logged = time.monotonic()
            log.warning("store: a write was not acknowledged by wait_replicas replicas in time; answered 503",
                        extra={"acknowledged": acknowledged if isinstance(acknowledged, int) else repr(acknowledged),
                               "wait_replicas": self.wait_replicas, "wait_timeout_ms": self.wait_timeout_ms})
        return False

    async def _ensure_group(self) -> None:
        try:
            await self.r.xgroup_create(self.k_stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _memo(self, token: str | None = None) -> str:
        """The key of one call's memo (see redis_scripts.py): its answer, should it run twice."""
        return f"{self.ns}:memo:{token or new_id()}"

    @_guarded
    async def ping(self) -> None:
        await self.r.ping()

    # -- ledger ------------------------------------------------------------------------
    def _tx_key(self, partner: str, txid: str) -> str:
        return f"{self.ns}:tx:{partner}:{txid}"

    @_guarded
    async def tx_begin(self, rec: TxRecord, ttl: float) -> TxRecord | None:
        now = time.time()
        existing = await self._run("TX_BEGIN", [self._tx_key(rec.partner, rec.txid), self.k_pending], [
            new_id(), _ms(ttl), rec.action, rec.fingerprint, rec.state, repr(now), rec.payload or b"",
            "" if rec.status is None else rec.status, rec.body or b"", rec.voided_by or "",
            _member(rec.partner, rec.txid)])
        if existing is None:
            rec.created_at = now
            return None
        return self._record(rec.partner, rec.txid, dict(zip(existing[::2], existing[1::2], strict=True)))

    @staticmethod
    def _record(partner: str, txid: str, h: dict) -> TxRecord:
        status = h.get(b"status")
        return TxRecord(partner, txid, h[b"action"].decode(), h[b"fingerprint"].decode(), h[b"state"].decode(),
                        int(status) if status else None, h.get(b"body"), _str(h.get(b"voided_by")),
                        float(h[b"created_at"]), h.get(b"payload"))

    @_guarded
    async def tx_pending(self, before: float, limit: int = 100) -> list[TxRecord]:
        members = await self.r.zrangebyscore(self.k_pending, "-inf", f"({before!r}", start=0, num=limit)
        if not members:
            return []
        names = [orjson.loads(m) for m in members]
        pipe = self.r.pipeline(transaction=False)
        for partner, txid in names:
            pipe.hgetall(self._tx_key(partner, txid))
        found, stale = [], []
        for member, (partner, txid), h in zip(members, names, await pipe.execute(), strict=True):
            if h and h.get(b"state") == PENDING.encode():
                found.append(self._record(partner, txid, h))
            else:
                stale.append(member)  # expired while pending: nothing left to settle
        if stale:
            await self.r.zrem(self.k_pending, *stale)  # sent twice: removes nothing more
        return found

    @_guarded
    async def tx_get(self, partner: str, txid: str) -> TxRecord | None:
        h = await self.r.hgetall(self._tx_key(partner, txid))
        return self._record(partner, txid, h) if h else None

    @_guarded
    async def tx_finish(self, partner: str, txid: str, state: str, status: int, body: bytes, ttl: float) -> None:
        await self._run("TX_FINISH", [self._tx_key(partner, txid), self.k_pending],
                        [state, status, body, _ms(ttl), _member(partner, txid)])

    @_guarded
    async def tx_forget(self, partner: str, txid: str) -> None:
        await self._run("TX_FORGET", [self._tx_key(partner, txid), self._memo(), self.k_pending],
                        [lua.MEMO_MS, _member(partner, txid)])

    @_guarded
    async def tx_void(self, partner: str, bet_txid: str, by_txid: str) -> str | None:
        return _str(await self._run("TX_VOID", [self._tx_key(partner, bet_txid)], [by_txid, new_id()]))

    @_guarded
    async def tx_unvoid(self, partner: str, bet_txid: str, by_txid: str) -> None:
        await self._run("TX_UNVOID", [self._tx_key(partner, bet_txid)], [by_txid])

    # -- shared rate limits ------------------------------------------------------------
    @_guarded
    async def rate_take(self, key: str, rate: float, capacity: float) -> float:
        bucket = f"{self.ns}:rl:{key}"
        wait_ms = await self._run("RATE_TAKE", [bucket, bucket + ":seen"],
                                  [new_id(), repr(1e6 / rate), repr(float(capacity)), lua.RATE_SEEN_MS])
        return wait_ms / 1000

    # -- kv ----------------------------------------------------------------------------
    @_guarded
    async def claim(self, once: OnceKey) -> bool:
        """The key holds a token of this call (as a ledger record holds its owner's), not
        ``1``: a resent claim recognises its own and is not taken for a replay."""
        return bool(await self._run("CLAIM", [f"{self.ns}:kv:{once.ns}:{once.key}"], [new_id(), _ms(once.ttl)]))

    @_guarded
    async def kv_put(self, ns: str, key: str, value: bytes, ttl: float | None = None, *, only_new: bool = False) -> bool:
        key = f"{self.ns}:kv:{ns}:{key}"
        if only_new:
            return bool(await self._run("KV_PUT_NEW", [key, self._memo()], [value, _ms(ttl) if ttl else "", lua.MEMO_MS]))
        # A plain SET sent twice writes the same value twice.
        if not self.wait_replicas:
            return bool(await self.r.set(key, value, px=_ms(ttl) if ttl else None))
        pipe = self.r.pipeline(transaction=False)
        pipe.set(key, value, px=_ms(ttl) if ttl else None)
        pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        stored, acknowledged = await pipe.execute()
        if not self._replicated(acknowledged):
            raise StoreUnavailable()
        return bool(stored)

    @_guarded
    async def kv_get(self, ns: str, key: str) -> bytes | None:
        return await self.r.get(f"{self.ns}:kv:{ns}:{key}")

    # -- queue -------------------------------------------------------------------------
    def _q_keys(self, entry_id: str) -> list[str]:
        return [self.k_entry + entry_id, self.k_stream, self.k_delayed, self.k_live, self.k_dead]

    @staticmethod
    def _entry(entry_id: str, h: dict) -> QueueEntry:
        return QueueEntry(id=entry_id, route=h[b"route"].decode(), payload=json.loads(h[b"payload"]),
                          attempts=int(h[b"attempts"]), max_attempts=int(h[b"max_attempts"]),
                          next_at=float(h[b"next_at"]), created_at=float(h[b"created_at"]),
                          last_error=_str(h.get(b"last_error")) or None,
                          extra={"sid": h.get(b"sid", b"").decode(), "lease": h.get(b"lease", b"").decode()})

    @_guarded
    async def q_put(self, entry: QueueEntry, *, dead: bool = False) -> None:
        now = time.time()
        entry.id = entry.id or os.urandom(16).hex()
        entry.created_at = entry.created_at or now
        entry.next_at = entry.next_at or entry.created_at
        sid = await self._run("Q_PUT", self._q_keys(entry.id), [
            GROUP, entry.id, entry.route, json.dumps(entry.payload), entry.attempts, entry.max_attempts,
            repr(entry.next_at), repr(entry.created_at), entry.last_error or "", repr(now), "1" if dead else "0"])
        entry.extra.update(sid=sid.decode(), lease="")

    @_guarded
    async def q_claim(self, consumer: str, limit: int, lease_seconds: float) -> list[QueueEntry]:
        if time.monotonic() - self._pruned_at > _PRUNE_EVERY:
            await self._prune_consumers(consumer)
        token = new_id()
        keys = [self.k_cursor, self.k_stream, self.k_delayed, self._memo(token)]
        args = [GROUP, consumer, repr(time.time()), limit, _ms(lease_seconds), self.k_entry, token]
        try:
            rows = await self._run("Q_CLAIM", keys, args)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._ensure_group()  # Redis lost its data (no persistence?): start over
            rows = await self._run("Q_CLAIM", keys, args)
        return [self._entry(row[0].decode(), dict(zip(row[1][::2], row[1][1::2], strict=True))) for row in rows]

    async def _prune_consumers(self, me: str) -> None:
        """Forget consumers of processes long gone (nothing pending, idle for an hour)."""
        self._pruned_at = time.monotonic()
        try:
            consumers = await self.r.xinfo_consumers(self.k_stream, GROUP)
        except ResponseError:  # no group yet: the claim creates it
            return
        for info in consumers:
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if name != me and info["pending"] == 0 and info["idle"] > _PRUNE_IDLE_MS:
                await self.r.xgroup_delconsumer(self.k_stream, GROUP, name)

    @_guarded
    async def q_ack(self, entry: QueueEntry) -> None:
        await self._run("Q_ACK", self._q_keys(entry.id), [GROUP, entry.id, entry.extra.get("sid", "")])

    @_guarded
    async def q_retry(self, entry: QueueEntry, next_at: float, error: str) -> None:
        entry.attempts += 1
        await self._run("Q_RETRY", self._q_keys(entry.id),
                        [GROUP, entry.id, entry.extra.get("lease", ""), new_id(), entry.attempts, repr(next_at),
                         error[:500]])

    @_guarded
    async def q_dead(self, entry: QueueEntry, error: str) -> None:
        await self._run("Q_DEAD", self._q_keys(entry.id),
                        [GROUP, entry.id, entry.extra.get("lease", ""), new_id(), entry.attempts, error[:500]])

    @_guarded
    async def q_stats(self) -> dict:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.xlen(self.k_stream).zcard(self.k_delayed).zrange(self.k_live, 0, 0, withscores=True)
            pipe.zcard(self.k_dead)
            due, delayed, oldest, dead = await pipe.execute()
        age = max(0.0, time.time() - oldest[0][1]) if oldest else 0.0
        return {"depth": due + delayed, "oldest_age": age, "dead": dead}

    @_guarded
    async def dlq_list(self, limit: int = 100) -> list[QueueEntry]:
        ids = [i.decode() for i in await self.r.zrange(self.k_dead, 0, max(0, limit - 1))]
        async with self.r.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.hgetall(self.k_entry + entry_id)
            hashes = await pipe.execute()
        return [self._entry(i, h) for i, h in zip(ids, hashes, strict=True) if h.get(b"dead") == b"1"]

    @_guarded
    async def dlq_get(self, entry_id: str) -> QueueEntry | None:
        h = await self.r.hgetall(self.k_entry + entry_id)
        return self._entry(entry_id, h) if h.get(b"dead") == b"1" else None

    @_guarded
    async def dlq_replay(self, entry_id: str) -> bool:
        return bool(await self._run("DLQ_REPLAY", self._q_keys(entry_id), [GROUP, entry_id, repr(time.time()), new_id()]))

    @_guarded
    async def dlq_purge(self, entry_id: str | None = None) -> int:
        if entry_id is not None:
            return int(await self._run("DLQ_PURGE", [self.k_dead, self._memo()], [self.k_entry, entry_id, lua.MEMO_MS]))
        total = 0
        while n := int(await self._run("DLQ_PURGE", [self.k_dead, self._memo()], [self.k_entry, "", lua.MEMO_MS])):
            total += n
        return total

    @_guarded
    async def dlq_settle(self, entry_id: str, resolution: Resolution, ttl: float) -> Resolution | None:
        res, key = resolution, self.k_entry + entry_id
        record = self._tx_key(res.partner, res.txid) if res.partner else key
        bet = self._tx_key(res.partner, res.unvoid) if res.partner and res.unvoid else key
        out = await self._run("DLQ_SETTLE", [key, self.k_dead, record, bet], [
            entry_id, res.outcome, res.partner, res.txid, "" if res.status is None else res.status,
            res.body or b"", res.unvoid, repr(time.time()), _ms(ttl)])
        if out == b"busy":
            raise TransactionBusy()
        if out == b"open":
            raise TransactionOpen()
        return None if out is None else self._resolution(out)

    @_guarded
    async def dlq_resolution(self, entry_id: str) -> Resolution | None:
        out = await self.r.hmget(self.k_entry + entry_id, "settled", "partner", "txid", "status", "body", "unvoid",
                                 "settled_at", "ledger")
        return None if out[0] is None else self._resolution(out)

    @staticmethod
    def _resolution(out: list) -> Resolution:
        outcome, partner, txid, status, body, unvoid, at, ledger = out
        return Resolution(outcome.decode(), partner.decode(), txid.decode(), int(status) if status else None,
                          body or None, unvoid.decode(), float(at), ledger.decode())
