"""A lean, pipelined Redis client for the ledger's hot path.

redis-py's asyncio client checks a connection out of a pool, writes, reads and checks it
back in for every command: tens of microseconds of Python each time. Here every
concurrent request shares one connection: commands issued in one turn of the event loop
go out in one write, replies come back in order (hiredis parses them) and each resolves
its caller's future. Redis runs commands one at a time anyway, so nothing is lost by
sharing, and a bet's two ledger scripts cost two small writes instead of two pool trips.

Only what the ledger needs: ``call(*args)`` and ``script(source, keys, args)`` (EVALSHA,
loading the script on NOSCRIPT). A broken connection fails the commands in flight and the
next call reconnects; every command sent through here is safe to send twice (see
``redis_scripts.py``), so a call that lost its connection is retried once on a new one.
Failures surface as ``StoreUnavailable``; Redis's own error replies as ``ResponseError``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ResponseError

from gateway.store.base import StoreUnavailable


def supports(url: str) -> bool:
    """URLs this client understands: ``redis://`` host, port, credentials, db. TLS
    (``rediss://``) and URL options stay with redis-py, which knows all of them."""
    parts = urlsplit(url)
    return parts.scheme == "redis" and not parts.query and bool(parts.hostname)


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop  # kept: get_running_loop() is a getpid() system call on Python 3.11
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future] = deque()
        self.out: list[bytes] = []
        self.lost: Exception | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiters = self.waiters
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.transport.abort()
                self.connection_lost(exc)
                return
            if reply is False:
                return
            waiter = waiters.popleft()
            if waiter.done():
                continue  # its caller timed out or was cancelled: the reply is dropped
            if isinstance(reply, hiredis.ReplyError):
                waiter.set_exception(ResponseError(str(reply)))
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("connection closed by the Redis server")
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError(str(self.lost)))

    def send(self, packed: bytes) -> asyncio.Future:
        if self.lost is not None:
            raise ConnectionError(str(self.lost))
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        if not self.out:
            self.loop.call_soon(self.flush)
        self.out.append(packed)
        return waiter

    def flush(self) -> None:
        out, self.out = self.out, []
        if self.lost is None and out:
            self.transport.write(b"".join(out))


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no answer from Redis in time"))


class RespClient:
    def __init__(self, url: str, *, timeout: float = 5.0, connect_timeout: float = 2.0):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.db = int(parts.path.lstrip("/") or 0)
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task | None = None
        self._shas: dict[str, str] = {}

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.lost is None:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop), self.host, self.port)
                hello = []
                if self.password is not None:
                    hello.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
                if self.db:
                    hello.append(("SELECT", self.db))
                for command in hello:
                    await conn.send(hiredis.pack_command(command))
        except (OSError, TimeoutError, ConnectionError, ResponseError) as exc:
            if "conn" in locals() and conn.transport is not None:
                conn.transport.abort()
            raise StoreUnavailable() from exc
        self._conn = conn
        return conn

    async def call(self, *args):
        """One command; its reply as hiredis gives it (bytes, int, None, lists)."""
        packed = hiredis.pack_command(args)
        for attempt in (1, 2):
            conn = await self._connection()
            waiter = conn.send(packed)
            timer = conn.loop.call_later(self.timeout, _expire, waiter)
            try:
                return await waiter
            except ConnectionError as exc:
                if attempt == 2:
                    raise StoreUnavailable() from exc
            except TimeoutError as exc:
                raise StoreUnavailable() from exc
            except ResponseError as exc:
                if str(exc).startswith(("NOAUTH", "WRONGPASS", "LOADING", "MASTERDOWN", "READONLY")):
                    raise StoreUnavailable() from exc  # not this command's fault: the server is not usable
                raise
            finally:
                timer.cancel()
        raise AssertionError("unreachable")

    async def script(self, source: str, keys: list[str], args: list):
        """Run a Lua script by its SHA1, loading it once when the server does not know it."""
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.call("EVAL", source, len(keys), *keys, *args)
