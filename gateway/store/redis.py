"""The shared store for several replicas: Redis, standalone, behind Sentinel, or a Cluster.

``redis://host:port/db`` (or ``rediss://``),
``redis+sentinel://host:port[,host:port…]/service-name[?db=N]`` — the master of the Sentinel
service ``service-name``, found and followed through failovers by redis-py's own asyncio
Sentinel client (user and password in the URL are the Redis servers'; the sentinels' too with
``?sentinel_auth=yes``, else the sentinels are asked without credentials) — or
``redis+cluster://host:port[,host:port…]/``: a Redis Cluster
through redis-py's own asyncio ``RedisCluster`` (it learns the slot map from any of the nodes
named, follows ``MOVED``/``ASK`` and a failover's new map).
With TLS: ``rediss://`` (redis-py's own options, e.g. ``?ssl_ca_certs=/path/ca.pem``),
``rediss+sentinel://…/service-name?ssl_ca_certs=…`` (TLS to the sentinels and to the master,
one CA for both) and ``rediss+cluster://…/?ssl_ca_certs=…`` (every node). Without
``ssl_ca_certs`` the system's CAs are trusted; redis-py checks the certificate's chain and that
it names the host connected to (the one in the URL, or the address a sentinel or the cluster's
slot map gives).
One pooled redis-py asyncio client per process; replies are parsed by hiredis. Every read-modify-write is a Lua script (``redis_scripts.py``),
so concurrent replicas never race, and every ledger operation is one round trip (EVALSHA of
a registered script).

Key layout. Every script's keys share one hash slot (``{…}`` is the Redis Cluster hash tag),
and the same names are used on every kind of Redis, so there is one code path. The ledger is
split into ``SHARDS`` ledger shards by partner (a partner's records, its pending index and
the markers of its closed dead letters live together: a refund's record and its bet's are on
one slot); the queue into ``SHARDS`` queue shards by entry id, each a stream with its own
consumer group, delayed, live and dead sets, so no single node holds all the queue's work and
every replica consumes every shard. (One partner's ledger is on one slot, so on one master: the
ledger's load spreads with the number of partners.) All under ``{namespace}:`` (``igsp`` by default) so
several gateways, or test runs, can share one Redis; ``L``/``Q`` is a shard number 0…15::

    {ns}:{Lk}:tx:{partner}:{txid}  hash    ledger record: owner action fingerprint state status
                                           body voided_by void_token created_at payload;
                                           expires after the retention TTL
    {ns}:{Lk}:pending              zset    the shard's records still pending, as JSON
                                           [partner, txid], scored by created_at (the sweeper's)
    {ns}:{Lk}:settle:{entry id}    hash    what closing a dead letter did to its record
                                           (TX_SETTLE), for the retention TTL
    {ns}:{Lk}:memo:{token}         string  one call's answer (TX_FORGET), 10 minutes
    {ns}:{kv:{space}:{key}}        string  sessions, replay cache, id maps; expires with its TTL
    {ns}:{kv:{space}:{key}}:memo:{token}   one KV_PUT_NEW's answer, 10 minutes
    {ns}:{Qk}:stream               stream  due deliveries, one message {id: <entry id>} each;
                                           consumer group "workers", one consumer per process
    {ns}:{Qk}:delayed              zset    entry ids not due yet, scored by next_at
    {ns}:{Qk}:live                 zset    every queued (not dead) entry id, scored by created_at
    {ns}:{Qk}:dead                 zset    dead-letter entry ids, scored by created_at
    {ns}:{Qk}:e:{id}               hash    the entry: route, payload (JSON), attempts,
                                           max_attempts, next_at, created_at, last_error, sid
                                           (its current stream id, '' while delayed or dead),
                                           lease (token of the claim holding it, ''), dead
                                           ('0'/'1'), settled_by, replayed_by, s_* (a closing
                                           under way); once delivered or purged a tombstone
                                           {gone: 1} for an hour; once closed by an operator
                                           (dlq_settle) a tombstone holding the resolution:
                                           settled partner txid status body unvoid settled_at
                                           ledger, for the retention TTL
    {ns}:{Qk}:cursor               string  where the shard's next XAUTOCLAIM scan starts
    {ns}:{Qk}:memo:{token}         string  one claim's messages (Q_CLAIM), as long as the lease
    {ns}:{rl:{key}}                string  a shared rate limit's bucket (RATE_TAKE): when it is
                                           full again, Unix microseconds; expires then
    {ns}:{rl:{key}}:seen           zset    tokens of the requests it granted in the last minute
    {ns}:{…}:wait                  string  a marker a cluster's WAIT confirms (_confirm), a minute
    {ns}:layout                    string  "2": this layout (see below)

A claim looks at every queue shard in one pipeline (due delayed entries, stream lengths),
moves due delayed entries into their stream (Q_PROMOTE), then, shard after shard from a
rotating start until ``limit`` entries are taken, takes over messages another consumer has
held longer than the lease (XAUTOCLAIM: a crashed process's work is finished by a live one;
the lease is the claimer's, so every replica runs with the same ``queue.lease_seconds``) and
reads new ones (XREADGROUP) (Q_CLAIM), and leases each entry (Q_LEASE). Ack, retry and
dead-lettering XACK+XDEL the message. Durability is Redis's: run it with ``appendonly yes``
(``appendfsync everysec`` loses at most a second of writes on a crash of the Redis host;
``always`` loses nothing).

Data written before this layout (keys ``{ns}:tx:…``, ``{ns}:kv:…``, ``{ns}:q:…``, a single
stream): a standalone or Sentinel Redis is moved to it once, at the first ``open`` of a store
that finds no ``{ns}:layout`` key (``_migrate``: records, pending index, kv keys with their
TTLs, queue entries into their shards, dead letters; a delivery that was in flight is
delivered again, as after a takeover). Every gateway of the old version must be stopped first
(a rolling upgrade would let an old replica miss a record written under the new name). A
cluster never held the old names.

A command whose connection broke, or whose answer did not come within ``socket_timeout``,
is sent again on a new connection (``RESENDS`` times): the first send may have run. Every
script is written to be safe to run twice with the same arguments (redis_scripts.py says
why, script by script: owner tokens, memos, tombstones), and the plain commands are reads
or a SET of the same value. When Redis cannot serve, every method raises StoreUnavailable
(a retriable ``503 service_unavailable``), never a redis-py exception.

Replication (``?wait_replicas=N[&wait_timeout_ms=T]`` on any URL, default 0 and 1000):
Redis acknowledges a write before its replicas have it, so a master lost right after a write
can take it with it when a replica is promoted. With ``wait_replicas`` every write of the
store (scripts and SETs; not the rate limit's) is followed, in the same pipeline, by ``WAIT N
T`` — on a cluster one ``WAIT`` to each master that took a write of the batch, on the
connection that carried it: a write that fewer than N replicas acknowledged within T ms fails
with StoreUnavailable (it may still stand on the master; the caller handles it like any lost
reply), and so does a cluster batch during which a slot moved (a write redirected by ``MOVED``
went to a master its ``WAIT`` did not ask). N replicas must then be up for the store's
scripts to be answered. SECURITY.md says what it does and does not cover.

Pool settings, measured with ``python -m bench.redis_store``: a ``BlockingConnectionPool``
(a burst above ``max_connections`` waits for a connection; a plain ``ConnectionPool``, about
15 % less client CPU, fails it with "Too many connections"), no ``health_check_interval``
(it spends a PING round trip on a connection idle for longer than it; a dead idle
connection fails its command, which is then resent). A cluster client has a pool per node and
no blocking variant: a burst above ``max_connections`` to one node fails (StoreUnavailable);
the batching keeps the connections in use few.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import json
import logging
import math
import os
import time
import zlib
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
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
#: How many ledger shards and queue shards (hash-tagged key groups; see the module docstring).
#: Fixed: changing it would move keys.
SHARDS = 16
#: The key layout this code writes (``{ns}:layout``); older data is moved at open.
LAYOUT = b"2"
#: How many times a command whose connection broke (or timed out) is sent again on a new
#: connection. Every script is safe to run twice with the same arguments (redis_scripts.py).
RESENDS = 3
#: Redis cannot serve (unreachable, too slow, loading, out of memory, a read-only replica,
#: a refused login, a garbled reply, a cluster without a master for a slot, or one whose
#: redirections did not settle within redis-py's limit — ``ClusterError``, "TTL exhausted": met
#: while a slot moves under concurrent calls, as redis-py 8 may send ``ASKING`` and the command
#: on two connections of the node's pool): the caller gets StoreUnavailable (503, retriable).
_UNAVAILABLE = (rx.ConnectionError, rx.TimeoutError, rx.InvalidResponse, rx.OutOfMemoryError, rx.ReadOnlyError,
                rx.NoPermissionError, rx.ClusterDownError, rx.TryAgainError, rx.SlotNotCoveredError,
                rx.MasterDownError, rx.ClusterError)
_UNAVAILABLE_REPLIES = ("MISCONF", "NOAUTH", "NOREPLICAS", "LOADING", "MASTERDOWN", "CLUSTERDOWN")
_PRUNE_EVERY = 600.0  # seconds between sweeps of consumers left behind by dead processes
_PRUNE_IDLE_MS = 3600_000
#: Scripts whose writes need no replica's acknowledgement (``wait_replicas``): a rate limit's
#: bucket lost in a failover only lets a burst through again.
_NOT_WAITED = frozenset({"RATE_TAKE"})
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: The TLS options a ``rediss+sentinel://`` or ``rediss+cluster://`` URL takes (a plain
#: ``rediss://`` URL takes all of redis-py's own).
_TLS_OPTIONS = ("ssl_ca_certs",)


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """redis-py's Sentinel pool (a new connection asks the sentinels for the master, a
    connection to a demoted master is dropped) with BlockingConnectionPool's checkout: a burst
    above ``max_connections`` waits for a connection, as on a plain URL."""


def _hosts(scheme: str, hosts: str, default_port: int) -> list[tuple[str, int]]:
    """``host:port[,host:port…]`` (``[v6]:port``; the port defaults) as [(host, port)]."""
    out = []
    for host in hosts.split(","):
        name, colon, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        if not colon:
            name, port = host, str(default_port)
        name = name.strip("[]")
        if not name or not port.isdigit():
            raise ValueError(f"{scheme}:// needs host:port[,host:port…], got {hosts!r}")
        out.append((name, int(port)))
    return out


def parse_url(url: str) -> dict:
    """Split a store URL into what ``RedisStore`` needs.

    ``{"url": ..., "wait_replicas": int, "wait_timeout_ms": int}`` for ``redis://`` (the URL
    without the store's own query options, for redis-py), plus ``sentinels`` [(host, port)],
    ``service``, ``db``, ``username``, ``password``, ``tls`` and ``sentinel_auth`` (the sentinels
    take the same user and password: ``?sentinel_auth=yes``) for ``redis+sentinel://``, and
    ``nodes`` [(host, port)], ``username``, ``password`` and ``tls`` for ``redis+cluster://``.
    ``tls`` is None without TLS, else redis-py's TLS keyword arguments (``ssl=True`` and
    ``ssl_ca_certs`` when the URL names a CA bundle: ``rediss+…://…?ssl_ca_certs=/path``).

    >>> parse_url("redis+sentinel://:pw@s1:26379,s2/mymaster?db=2&wait_replicas=1")["sentinels"]
    [('s1', 26379), ('s2', 26379)]
    >>> parse_url("redis+cluster://n1:7000,n2/")["nodes"]
    [('n1', 7000), ('n2', 6379)]
    >>> parse_url("rediss+cluster://n1:7000/?ssl_ca_certs=/ca.pem")["tls"]
    {'ssl': True, 'ssl_ca_certs': '/ca.pem'}
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
    if parts.scheme not in (*SENTINEL_SCHEMES, *CLUSTER_SCHEMES):
        out["url"] = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        return out
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    out.update(username=unquote(username) or None, password=unquote(password) or None, tls=None)
    tls = {name: query.pop(name)[-1] for name in _TLS_OPTIONS if name in query}
    if parts.scheme.startswith("rediss+"):
        if not all(tls.values()):
            raise ValueError(f"{parts.scheme}://: an empty TLS option ({', '.join(sorted(tls))})")
        out["tls"] = {"ssl": True, **tls}
    elif tls:
        raise ValueError(f"{', '.join(sorted(tls))} is a TLS option: use {parts.scheme.replace('redis+', 'rediss+')}://")
    if parts.scheme in CLUSTER_SCHEMES:
        if parts.path.strip("/"):
            raise ValueError(f"{parts.scheme}://host:port[,host:port…]/ takes no path (a cluster has one database), "
                             f"got {parts.path!r}")
        if query:
            raise ValueError(f"unknown {parts.scheme}:// option(s): {', '.join(sorted(query))}")
        out.update(nodes=_hosts(parts.scheme, hosts, 6379))
        return out
    service = unquote(parts.path.strip("/"))
    if not service or "/" in service:
        raise ValueError(f"{parts.scheme}://hosts/SERVICE-NAME: name the Sentinel service (its master)")
    db = query.pop("db", ["0"])[-1]
    if not db.isdigit():
        raise ValueError(f"db must be a whole number, got {db!r}")
    sentinel_auth = query.pop("sentinel_auth", ["no"])[-1]
    if sentinel_auth not in ("yes", "no"):
        raise ValueError(f"sentinel_auth must be yes or no, got {sentinel_auth!r}")
    if sentinel_auth == "yes" and not out["password"]:
        raise ValueError("sentinel_auth=yes logs in to the sentinels with the URL's password: the URL has none")
    if query:
        raise ValueError(f"unknown {parts.scheme}:// option(s): {', '.join(sorted(query))}")
    out.update(sentinels=_hosts(parts.scheme, hosts, 26379), service=service, db=int(db),
               sentinel_auth=sentinel_auth == "yes")
    return out


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, rounded up: a record never expires early."""
    return max(1, math.ceil(seconds * 1000))


def _shard(name: str) -> int:
    """The shard (0 … SHARDS-1) of a partner (ledger) or an entry id (queue): the same on
    every process, whatever its Python hash seed."""
    return zlib.crc32(name.encode()) % SHARDS


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
        if "{" in namespace or "}" in namespace:
            raise ValueError(f"store namespace {namespace!r}: braces would change the keys' hash slots")
        self.url = url
        self.options = parse_url(url)  # a malformed URL fails here, before anything connects
        self.cluster = "nodes" in self.options
        self.wait_replicas, self.wait_timeout_ms = self.options["wait_replicas"], self.options["wait_timeout_ms"]
        self._sentinel: Sentinel | None = None
        self._unreplicated_logged = 0.0
        self.ns = namespace
        self.max_connections = max_connections
        self._redis: aioredis.Redis | RedisCluster | None = None
        self._ledger = [f"{namespace}:{{L{k}}}:" for k in range(SHARDS)]  # key prefixes, one per shard
        self._queue = [f"{namespace}:{{Q{k}}}:" for k in range(SHARDS)]
        self._next_shard = 0  # where the next claim starts (every shard gets served first in turn)
        self._pruned_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch: list = []  # scripts asked for in this turn of the loop (see _run)
        self._sending: set[asyncio.Task] = set()
        self._in_flight = asyncio.Semaphore(max_connections)  # a cluster's script calls at once

    @_guarded
    async def open(self) -> None:
        options = dict(
            max_connections=self.max_connections, socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.connect_timeout, health_check_interval=self.health_check_interval,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=RESENDS),
            # Off, and not redis-py's default "auto": with maintenance notifications on, the
            # pool skips its check that a pooled connection has no unread data before handing
            # it out, so a reply nobody asked for (a late or doubled one) would be read as the
            # next command's answer. The store uses no RESP3 push messages.
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
        o = self.options
        if self.cluster:
            # redis-py's cluster client: its own slot map, MOVED/ASK, and on a connection error
            # or CLUSTERDOWN a fresh slot map and a resend (``retry``), which is how a failover's
            # promoted replica is found. It has no blocking pool (a node's connections are
            # capped by max_connections) and never opens maintenance notifications on RESP2;
            # they are turned off here all the same.
            options.pop("health_check_interval")
            self._redis = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in o["nodes"]], username=o["username"],
                password=o["password"], health_check_interval=self.health_check_interval, **(o["tls"] or {}),
                retry_on_error=[rx.ConnectionError, rx.TimeoutError, rx.ClusterDownError, rx.SlotNotCoveredError],
                **options)
        elif "sentinels" in o:
            options["retry_on_error"] = [rx.ConnectionError, rx.TimeoutError]
            if self.blocking_pool:
                options["timeout"] = self.socket_timeout
            # TLS (``rediss+sentinel://``) to the sentinels and to the master alike, with the
            # same CA; the user and password are the Redis servers', and the sentinels' too
            # with ``sentinel_auth=yes`` (else they are asked without credentials). Each
            # sentinel is asked once per lookup (redis-py's default would retry each with
            # backoff up to ten seconds: a refused certificate or a set of sentinels down took
            # 40 s to answer); the lookup itself is redone with the command (``retry`` above).
            tls = o["tls"] or {}
            self._sentinel = Sentinel(o["sentinels"], sentinel_kwargs={
                "socket_timeout": self.socket_timeout, "socket_connect_timeout": self.connect_timeout,
                "retry": Retry(NoBackoff(), retries=0), **tls,
                **({"username": o["username"], "password": o["password"]} if o["sentinel_auth"] else {})})
            self._redis = self._sentinel.master_for(
                o["service"], connection_pool_class=_BlockingSentinelPool if self.blocking_pool else SentinelConnectionPool,
                db=o["db"], username=o["username"], password=o["password"], **tls, **options)
        else:
            options["retry_on_error"] = [rx.ConnectionError, rx.TimeoutError]
            if self.blocking_pool:
                options["timeout"] = self.socket_timeout
            pool_class = aioredis.BlockingConnectionPool if self.blocking_pool else aioredis.ConnectionPool
            self._redis = aioredis.Redis(connection_pool=pool_class.from_url(o["url"], **options))
        self._scripts = {name: self._redis.register_script(getattr(lua, name)) for name in lua.SCRIPTS}
        try:
            if self.cluster:
                try:
                    await self._redis.initialize()
                except rx.RedisClusterException as exc:
                    # No node named could be reached or none answered (refused, or its
                    # certificate was): unavailable, as a plain Redis's connection error is.
                    raise StoreUnavailable() from exc
            else:
                try:
                    await self._migrate()
                except MasterNotFoundError as exc:
                    raise StoreUnavailable() from await self._why_no_master(exc)
            await self._ensure_group()
            if self.wait_replicas:
                masters = self._redis.get_primaries() if self.cluster else [None]
                for node in masters:
                    info = await (self.r.info("replication", target_nodes=node) if node else self.r.info("replication"))
                    replicas = info.get("connected_slaves", 0)
                    if replicas < self.wait_replicas:
                        log.warning("store: fewer replicas connected than wait_replicas; writes fail until they are",
                                    extra={"connected_replicas": replicas, "wait_replicas": self.wait_replicas,
                                           "master": node.name if node else None})
        except BaseException:
            await self.close()
            raise

    async def _why_no_master(self, failure: MasterNotFoundError) -> BaseException:
        """Why the sentinels named no master: the first sentinel's own error (a refused
        certificate, a refused connection), which redis-py's MasterNotFoundError lists only
        as ``network:ConnectionError``; else ``failure`` (they answered, without the service)."""
        for sentinel in self._sentinel.sentinels if self._sentinel else []:
            try:
                await sentinel.ping()
            except (rx.ConnectionError, rx.TimeoutError) as exc:
                return exc
        return failure

    async def close(self) -> None:
        if self._sending:  # scripts already sent: their callers get their answers first
            await asyncio.gather(*self._sending, return_exceptions=True)
        if self._redis is not None:
            if self.cluster:
                await self._redis.aclose()
            else:
                await self._redis.aclose(close_connection_pool=True)
            self._redis = None
        if self._sentinel is not None:
            await self._sentinel.aclose()
            self._sentinel = None

    @property
    def r(self) -> aioredis.Redis | RedisCluster:
        if self._redis is None:
            raise RuntimeError("store is not open")
        return self._redis

    async def _run(self, name: str, keys: list[str], args: list) -> object:
        """Run one script: EVALSHA, sent with the other scripts of this event-loop turn.

        Concurrent requests each need a script at about the same time (a bet's record, a
        win's answer); the scripts asked for in one turn of the loop leave in one redis-py
        pipeline (not a transaction: each script is atomic on its own), so N requests cost
        one round trip and one connection checkout instead of N. A lone script goes through
        redis-py's ``Script`` as before, and so does every script on a cluster
        (``_send_to_cluster``: redis-py's cluster pipeline refuses EVALSHA).
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
        waited = [keys[0] for name, keys, *_ in batch if name not in _NOT_WAITED]
        wait = self.wait_replicas > 0 and bool(waited)
        if self.cluster:
            await self._send_to_cluster(batch, waited if wait else [])
            return
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

    async def _send_to_cluster(self, batch: list, waited: list[str]) -> None:
        """A batch on a cluster: redis-py's cluster pipeline refuses EVALSHA, so each script is
        its own call (redis-py's ``Script``: routed by its keys' slot, ``MOVED``/``ASK``
        followed, the script loaded on a node that lacks it), all at once, at most
        ``max_connections`` in flight (a node's pool does not wait for a free connection).
        Then, with ``wait_replicas``, the writes' replication is confirmed (``_confirm``)."""
        owners = {key: self.r.get_node_from_key(key).name for key in waited}

        async def one(name, keys, args):
            async with self._in_flight:
                return await self._scripts[name](keys=keys, args=args, client=self.r)

        results = await asyncio.gather(*(one(name, keys, args) for name, keys, args, _ in batch),
                                       return_exceptions=True)
        unreplicated = False
        if waited and any(not isinstance(r, BaseException) for (n, *_), r in zip(batch, results, strict=True)
                          if n not in _NOT_WAITED):
            try:
                unreplicated = not await self._confirm(owners)
            except Exception:  # noqa: BLE001 - unconfirmed: the waited writes answer 503
                unreplicated = True
        for (name, *_, done), result in zip(batch, results, strict=True):
            if unreplicated and name not in _NOT_WAITED and not isinstance(result, BaseException):
                result = StoreUnavailable()
            _settle(done, result)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result

    async def _confirm(self, owners: dict[str, str]) -> bool:
        """Whether the masters that ran this batch's writes have them on ``wait_replicas``
        replicas. ``WAIT`` counts the writes of its own connection, and a script's connection
        is redis-py's to choose: so on each master, one pipeline (one connection) writes a
        short-lived marker on a slot it serves and then sends ``WAIT``. A master's replication
        stream is one sequence: replicas that have the marker have every write the master
        made before it, the batch's included. False when any master falls short, or when a
        slot's master is not the one it was before the scripts (a failover or a resharding
        moved it: its write may have gone to a master no WAIT asks)."""
        pipe = self.r.pipeline(transaction=False)
        masters = {}
        for key, before in owners.items():
            node = self.r.get_node_from_key(key)
            if node.name != before:
                return self._replicated("a slot moved during the write")
            if node.name not in masters:
                masters[node.name] = node
                tag = key[key.index("{"):key.index("}", key.index("{")) + 1]
                pipe.set(f"{self.ns}:{tag}:wait", b"1", px=self.wait_timeout_ms + 60_000)
                pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms, target_nodes=node)
        replies = await pipe.execute()
        return self._all_replicated(replies[1::2], list(owners), list(masters.values()))

    def _add_waits(self, pipe, keys: list[str]) -> list:
        """Queue ``WAIT`` after the writes in ``pipe``: one on a plain Redis; on a cluster one
        to each master owning a slot of ``keys`` (the cluster pipeline sends it on that master's
        connection, after its writes). Returns those masters."""
        if not self.cluster:
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            return []
        masters = {}
        for key in keys:
            node = self.r.get_node_from_key(key)
            masters[node.name] = node
        for node in masters.values():
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms, target_nodes=node)
        return list(masters.values())

    def _all_replicated(self, acks: list, keys: list[str], masters: list) -> bool:
        """Every WAIT covers ``wait_replicas`` and, on a cluster, the slots of ``keys`` are still
        on the masters asked (a slot that moved meanwhile — a failover, a resharding — had its
        write redirected to a master no WAIT asked)."""
        if not all([self._replicated(ack) for ack in acks]):
            return False
        if self.cluster and {self.r.get_node_from_key(k).name for k in keys} - {m.name for m in masters}:
            return self._replicated("a slot moved during the write")
        return True

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

    async def _ensure_group(self, shards=range(SHARDS)) -> None:
        """The consumer group of every queue shard's stream (created with the stream)."""
        pipe = self.r.pipeline(transaction=False)
        for k in shards:
            pipe.xgroup_create(self._queue[k] + "stream", GROUP, id="0", mkstream=True)
        for result in await pipe.execute(raise_on_error=False):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result

    async def _migrate(self) -> None:
        """Move a standalone Redis's data from the key names before the hash-tagged layout (the
        module docstring); once, then ``{ns}:layout`` says it is done. Every step is safe to run
        again or from two processes at once (a key already moved is left alone)."""
        marker = f"{self.ns}:layout"
        if await self.r.get(marker) == LAYOUT:
            return
        ns, moved, now = self.ns, 0, repr(time.time())
        migrate_tx, migrate_entry = (self.r.register_script(getattr(lua, n)) for n in lua.MIGRATIONS)
        async for key in self.r.scan_iter(match=f"{ns}:tx:*", count=1000):
            partner, _, txid = key.decode()[len(ns) + 4:].partition(":")
            moved += await migrate_tx(keys=[key, self._tx_key(partner, txid), self._pending(partner)],
                                      args=[_member(partner, txid)])
        async for key in self.r.scan_iter(match=f"{ns}:kv:*", count=1000):
            moved += bool(await self.r.renamenx(key, self._kv_key(key.decode()[len(ns) + 4:])))
        async for key in self.r.scan_iter(match=f"{ns}:q:e:*", count=1000):
            entry_id = key.decode()[len(ns) + 5:]
            moved += await migrate_entry(keys=[key, *self._q_keys(entry_id)], args=[entry_id, now])
        await self.r.delete(*(f"{ns}:{name}" for name in ("pending", "q:stream", "q:delayed", "q:live", "q:dead",
                                                            "q:cursor")))
        await self.r.set(marker, LAYOUT)
        if moved:
            log.info("store: moved data to the hash-tagged key layout", extra={"keys": moved})

    def _memo(self, prefix: str, token: str | None = None) -> str:
        """The key of one call's memo (see redis_scripts.py), on the slot of ``prefix``: its
        answer, should it run twice."""
        return f"{prefix}memo:{token or new_id()}"

    @_guarded
    async def ping(self) -> None:
        await self.r.ping()

    # -- ledger ------------------------------------------------------------------------
    def _tx_key(self, partner: str, txid: str) -> str:
        return f"{self._ledger[_shard(partner)]}tx:{partner}:{txid}"

    def _pending(self, partner: str) -> str:
        return self._ledger[_shard(partner)] + "pending"

    @_guarded
    async def tx_begin(self, rec: TxRecord, ttl: float) -> TxRecord | None:
        now = time.time()
        existing = await self._run("TX_BEGIN", [self._tx_key(rec.partner, rec.txid), self._pending(rec.partner)], [
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
        pipe = self.r.pipeline(transaction=False)
        for prefix in self._ledger:
            pipe.zrangebyscore(prefix + "pending", "-inf", f"({before!r}", start=0, num=limit, withscores=True)
        shards = await pipe.execute()
        # The oldest ``limit`` of all shards (each shard's list is oldest first).
        oldest = heapq.nsmallest(limit, ((score, k, member) for k, rows in enumerate(shards) for member, score in rows))
        if not oldest:
            return []
        names = [orjson.loads(member) for _, _, member in oldest]
        pipe = self.r.pipeline(transaction=False)
        for partner, txid in names:
            pipe.hgetall(self._tx_key(partner, txid))
        found, stale = [], []
        for (_, k, member), (partner, txid), h in zip(oldest, names, await pipe.execute(), strict=True):
            if h and h.get(b"state") == PENDING.encode():
                found.append(self._record(partner, txid, h))
            else:
                stale.append((k, member))  # expired while pending: nothing left to settle
        if stale:
            pipe = self.r.pipeline(transaction=False)
            for k, member in stale:
                pipe.zrem(self._ledger[k] + "pending", member)  # sent twice: removes nothing more
            await pipe.execute()
        return found

    @_guarded
    async def tx_get(self, partner: str, txid: str) -> TxRecord | None:
        h = await self.r.hgetall(self._tx_key(partner, txid))
        return self._record(partner, txid, h) if h else None

    @_guarded
    async def tx_finish(self, partner: str, txid: str, state: str, status: int, body: bytes, ttl: float) -> None:
        await self._run("TX_FINISH", [self._tx_key(partner, txid), self._pending(partner)],
                        [state, status, body, _ms(ttl), _member(partner, txid)])

    @_guarded
    async def tx_forget(self, partner: str, txid: str) -> None:
        await self._run("TX_FORGET", [self._tx_key(partner, txid), self._memo(self._ledger[_shard(partner)]),
                                      self._pending(partner)], [lua.MEMO_MS, _member(partner, txid)])

    @_guarded
    async def tx_void(self, partner: str, bet_txid: str, by_txid: str) -> str | None:
        return _str(await self._run("TX_VOID", [self._tx_key(partner, bet_txid)], [by_txid, new_id()]))

    @_guarded
    async def tx_unvoid(self, partner: str, bet_txid: str, by_txid: str) -> None:
        await self._run("TX_UNVOID", [self._tx_key(partner, bet_txid)], [by_txid])

    # -- shared rate limits ------------------------------------------------------------
    @_guarded
    async def rate_take(self, key: str, rate: float, capacity: float) -> float:
        bucket = f"{self.ns}:{{rl:{key}}}"
        wait_ms = await self._run("RATE_TAKE", [bucket, bucket + ":seen"],
                                  [new_id(), repr(1e6 / rate), repr(float(capacity)), lua.RATE_SEEN_MS])
        return wait_ms / 1000

    # -- kv ----------------------------------------------------------------------------
    def _kv_key(self, name: str) -> str:
        """``{space}:{key}``'s key, hash-tagged by its own name: its memo (the key's name and a
        suffix) has the same tag, so KV_PUT_NEW's two keys share a slot whatever the key holds
        (the tag ends at the key's first ``}`` if it has one, the same for both)."""
        return f"{self.ns}:{{kv:{name}}}"

    @_guarded
    async def claim(self, once: OnceKey) -> bool:
        """The key holds a token of this call (as a ledger record holds its owner's), not
        ``1``: a resent claim recognises its own and is not taken for a replay."""
        return bool(await self._run("CLAIM", [self._kv_key(f"{once.ns}:{once.key}")], [new_id(), _ms(once.ttl)]))

    @_guarded
    async def kv_put(self, ns: str, key: str, value: bytes, ttl: float | None = None, *, only_new: bool = False) -> bool:
        key = self._kv_key(f"{ns}:{key}")
        if only_new:
            return bool(await self._run("KV_PUT_NEW", [key, self._memo(key + ":")],
                                        [value, _ms(ttl) if ttl else "", lua.MEMO_MS]))
        # A plain SET sent twice writes the same value twice.
        if not self.wait_replicas:
            return bool(await self.r.set(key, value, px=_ms(ttl) if ttl else None))
        pipe = self.r.pipeline(transaction=False)
        pipe.set(key, value, px=_ms(ttl) if ttl else None)
        masters = self._add_waits(pipe, [key])
        try:
            stored, *acknowledged = await pipe.execute()
        except rx.RedisClusterException:
            raise StoreUnavailable() from None  # the WAIT lost its master in a resend: not acknowledged
        if not self._all_replicated(acknowledged, [key], masters):
            raise StoreUnavailable()
        return bool(stored)

    @_guarded
    async def kv_get(self, ns: str, key: str) -> bytes | None:
        return await self.r.get(self._kv_key(f"{ns}:{key}"))

    # -- queue -------------------------------------------------------------------------
    def _q_keys(self, entry_id: str) -> list[str]:
        """KEYS of the queue scripts: the entry, and its shard's stream, delayed, live and dead sets."""
        q = self._queue[_shard(entry_id)]
        return [f"{q}e:{entry_id}", q + "stream", q + "delayed", q + "live", q + "dead"]

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
        now = repr(time.time())
        pipe = self.r.pipeline(transaction=False)  # one look at every shard
        for q in self._queue:
            pipe.zrangebyscore(q + "delayed", "-inf", now, start=0, num=100)
            pipe.xlen(q + "stream")
        looked = await pipe.execute()
        due, lengths = looked[::2], looked[1::2]
        await asyncio.gather(*(self._run("Q_PROMOTE", self._q_keys(i.decode())[:3], [i.decode(), now])
                                          for ids in due for i in ids))
        busy = [k for k in range(SHARDS) if lengths[k] or due[k]]
        start, self._next_shard = self._next_shard, (self._next_shard + 1) % SHARDS
        busy.sort(key=lambda k: (k - start) % SHARDS)
        token, taken = new_id(), []
        for k in busy:
            if len(taken) >= limit:
                break
            taken += await self._claim_shard(k, consumer, limit - len(taken), _ms(lease_seconds), token)
        return taken

    async def _claim_shard(self, k: int, consumer: str, limit: int, lease_ms: int, token: str) -> list[QueueEntry]:
        """Q_CLAIM on shard ``k`` (up to ``limit`` messages), then Q_LEASE each entry it names."""
        q = self._queue[k]
        keys, args = [q + "cursor", q + "stream", self._memo(q, token)], [GROUP, consumer, limit, lease_ms]
        try:
            taken = await self._run("Q_CLAIM", keys, args)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._ensure_group([k])  # Redis lost its data (no persistence?): start over
            taken = await self._run("Q_CLAIM", keys, args)
        messages = [(sid, entry_id.decode()) for sid, entry_id in zip(taken[::2], taken[1::2], strict=True)]
        leased = await asyncio.gather(*(self._run("Q_LEASE", [f"{q}e:{entry_id}", q + "stream"], [GROUP, sid, token])
                                        for sid, entry_id in messages))
        return [self._entry(entry_id, dict(zip(h[::2], h[1::2], strict=True)))
                for (_, entry_id), h in zip(messages, leased, strict=True) if h]

    async def _prune_consumers(self, me: str) -> None:
        """Forget consumers of processes long gone (nothing pending, idle for an hour)."""
        self._pruned_at = time.monotonic()
        for q in self._queue:
            try:
                consumers = await self.r.xinfo_consumers(q + "stream", GROUP)
            except ResponseError:  # no group yet: the claim creates it
                continue
            for info in consumers:
                name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
                if name != me and info["pending"] == 0 and info["idle"] > _PRUNE_IDLE_MS:
                    await self.r.xgroup_delconsumer(q + "stream", GROUP, name)

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
        pipe = self.r.pipeline(transaction=False)
        for q in self._queue:
            pipe.xlen(q + "stream").zcard(q + "delayed").zrange(q + "live", 0, 0, withscores=True).zcard(q + "dead")
        replies = await pipe.execute()
        oldest = [rows[0][1] for rows in replies[2::4] if rows]
        age = max(0.0, time.time() - min(oldest)) if oldest else 0.0
        return {"depth": sum(replies[0::4]) + sum(replies[1::4]), "oldest_age": age, "dead": sum(replies[3::4])}

    @_guarded
    async def dlq_list(self, limit: int = 100) -> list[QueueEntry]:
        pipe = self.r.pipeline(transaction=False)
        for q in self._queue:
            pipe.zrange(q + "dead", 0, max(0, limit - 1), withscores=True)
        ids = [i.decode() for _, i in heapq.nsmallest(
            limit, ((score, i) for rows in await pipe.execute() for i, score in rows))]
        pipe = self.r.pipeline(transaction=False)
        for entry_id in ids:
            pipe.hgetall(self._q_keys(entry_id)[0])
        hashes = await pipe.execute()
        return [self._entry(i, h) for i, h in zip(ids, hashes, strict=True) if h.get(b"dead") == b"1"]

    @_guarded
    async def dlq_get(self, entry_id: str) -> QueueEntry | None:
        h = await self.r.hgetall(self._q_keys(entry_id)[0])
        return self._entry(entry_id, h) if h.get(b"dead") == b"1" else None

    @_guarded
    async def dlq_replay(self, entry_id: str) -> bool:
        return bool(await self._run("DLQ_REPLAY", self._q_keys(entry_id), [GROUP, entry_id, repr(time.time()), new_id()]))

    @_guarded
    async def dlq_purge(self, entry_id: str | None = None) -> int:
        if entry_id is not None:
            return await self._purge([entry_id])
        total = 0
        while True:
            pipe = self.r.pipeline(transaction=False)
            for q in self._queue:
                pipe.zrange(q + "dead", 0, 499)
            ids = [i.decode() for rows in await pipe.execute() for i in rows]
            purged = await self._purge(ids) if ids else 0
            total += purged
            if not purged:  # none left, or only ones an operator is closing right now
                return total

    async def _purge(self, ids: list[str]) -> int:
        return sum(await asyncio.gather(*(self._run("DLQ_PURGE", self._q_keys(i)[::4], [i, new_id()]) for i in ids)))

    @_guarded
    async def dlq_settle(self, entry_id: str, resolution: Resolution, ttl: float) -> Resolution | None:
        """Three scripts (redis_scripts.py: the entry's shard, then the record's, then the
        entry's again): the entry takes the request (or answers the one it took first, or its
        resolution), the ledger applies it, the entry becomes the resolution's tombstone."""
        res, (key, *_, dead) = resolution, self._q_keys(entry_id)
        asked = await self._run("DLQ_SETTLE_LOCK", [key], [
            res.outcome, res.partner, res.txid, "" if res.status is None else res.status, res.body or b"", res.unvoid,
            repr(time.time()), new_id()])
        if asked is None:
            return None
        if asked[0] == b"settled":
            return self._resolution(asked[1:])
        outcome, partner, txid, status, body, unvoid, at = asked[1:]
        partner, txid, unvoid, ledger = partner.decode(), txid.decode(), unvoid.decode(), b""
        if partner:
            record = self._tx_key(partner, txid)
            done = await self._run("TX_SETTLE", [
                record, self._tx_key(partner, unvoid) if unvoid else record,
                f"{self._ledger[_shard(partner)]}settle:{entry_id}"], [outcome, txid, status, body, unvoid, _ms(ttl)])
            if done in (b"busy", b"open"):
                await self._run("DLQ_SETTLE_UNLOCK", [key], [])
                raise TransactionBusy() if done == b"busy" else TransactionOpen()
            status, body, unvoid, ledger = done
        out = await self._run("DLQ_SETTLE", [key, dead], [
            entry_id, outcome, partner, txid, status, body, unvoid, at, ledger, _ms(ttl)])
        return self._resolution(out)

    @_guarded
    async def dlq_resolution(self, entry_id: str) -> Resolution | None:
        out = await self.r.hmget(self._q_keys(entry_id)[0], "settled", "partner", "txid", "status", "body", "unvoid",
                                 "settled_at", "ledger")
        return None if out[0] is None else self._resolution(out)

    @staticmethod
    def _resolution(out: list) -> Resolution:
        outcome, partner, txid, status, body, unvoid, at, ledger = out
        return Resolution(outcome.decode(), partner.decode(), txid.decode(), int(status) if status else None,
                          body or None, unvoid.decode(), float(at), ledger.decode())
