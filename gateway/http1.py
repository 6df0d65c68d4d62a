"""A lean pooled HTTP/1.1 client for plain ``http://`` legacy APIs.

aiohttp's client spends ~100 µs of CPU on every call (request and response objects,
tracing hooks, timers, cookie handling); a legacy wallet call needs a few header lines
written and a status, a content type and a body read back, on a kept-alive connection.
This module does just that, in ~25 µs. ``https://`` upstreams keep using aiohttp.

What it keeps from the aiohttp client the gateway used before, so that failures are
classified exactly as before (``gateway.upstream`` catches aiohttp's exception types,
which this module raises):

    connect refused / unreachable            -> aiohttp.ClientConnectorError
    no connection within the connect timeout -> aiohttp.ConnectionTimeoutError (nothing was sent)
    no complete answer within the total one  -> aiohttp.SocketTimeoutError (a TimeoutError)
    connection closed or reset mid-answer    -> aiohttp.ServerDisconnectedError / ClientOSError
    malformed or oversized answer            -> aiohttp.ClientPayloadError / ClientResponseError

and the same wire habits: ``Accept: */*``, ``Accept-Encoding: gzip, deflate`` (answers
decompressed), keep-alive with a 30 s idle limit, at most ``limit`` connections per
client, redirects followed as aiohttp follows them (up to 10), and a header value with a
CR or LF refused with ValueError before anything is sent.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Mapping
from types import SimpleNamespace

import aiohttp
from yarl import URL

MAX_HEADER_BYTES = 65536
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_REDIRECTS = 10
_DEFAULT = {"accept": ("Accept", "*/*"), "accept-encoding": ("Accept-Encoding", "gzip, deflate")}
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})


class _Connection(asyncio.Protocol):
    """One keep-alive connection; reads one response at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.head_request = False
        self.idle_since = 0.0

    # -- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is not None and not self.waiter.done():
            self._parse(eof=False)
        elif len(self.buffer) > MAX_HEADER_BYTES:
            self.close()  # an unsolicited flood on an idle connection

    def eof_received(self) -> bool:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self._parse(eof=True)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self._parse(eof=True, error=exc)

    # -- use ---------------------------------------------------------------------------
    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def send(self, raw: bytes, head: bool) -> asyncio.Future:
        self.waiter = self.loop.create_future()
        self.head_request = head
        self.transport.write(raw)
        return self.waiter

    # -- response parsing --------------------------------------------------------------
    def _parse(self, eof: bool, error: Exception | None = None) -> None:
        try:
            result = self._response(eof)
        except aiohttp.ClientError as exc:
            self.close()
            self.waiter.set_exception(exc)
            return
        if result is not None:
            self.waiter.set_result(result)
        elif eof:
            if error is not None:
                failure = aiohttp.ClientOSError(getattr(error, "errno", None) or 0, f"connection lost: {error}")
            else:
                failure = aiohttp.ServerDisconnectedError()
            self.waiter.set_exception(failure)

    def _response(self, eof: bool) -> tuple[int, dict, bytes, bool] | None:
        """``(status, headers, body, reusable)`` once a whole response is buffered, else None."""
        buf = self.buffer
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise aiohttp.ClientResponseError(None, (), message="response headers too large")
                return None
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise aiohttp.ClientResponseError(None, (), message=f"bad status line {lines[0][:80]!r}")
            status = int(parts[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise aiohttp.ClientResponseError(None, (), message="bad header line")
                key = name.strip().lower()
                headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
            if 100 <= status < 200 and status != 101:
                del buf[:end + 4]  # an interim answer (100 Continue): the real one follows
                continue
            break
        start = end + 4
        connection = headers.get("connection", "").lower()
        keep = parts[0] == "HTTP/1.1" and "close" not in connection
        if self.head_request or status in (204, 304) or 100 <= status < 200:
            body, used = b"", start
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            parsed = _dechunk(buf, start)
            if parsed is None:
                return None if not eof else _truncated()
            body, used = parsed
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise aiohttp.ClientResponseError(None, (), message="bad Content-Length") from None
            if length < 0 or length > MAX_BODY_BYTES:
                raise aiohttp.ClientPayloadError("response body too large")
            if len(buf) - start < length:
                return None if not eof else _truncated()
            body, used = bytes(buf[start:start + length]), start + length
        else:
            # No framing: the body runs to the end of the connection.
            if len(buf) - start > MAX_BODY_BYTES:
                raise aiohttp.ClientPayloadError("response body too large")
            if not eof:
                return None
            body, used, keep = bytes(buf[start:]), len(buf), False
        del buf[:used]
        encoding = headers.get("content-encoding", "").lower().strip()
        if encoding in ("gzip", "x-gzip", "deflate") and body:
            body = _decompress(body, encoding)
        return status, headers, body, keep and not self.closed


def _truncated():
    raise aiohttp.ClientPayloadError("response ended before its body was complete")


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    out = bytearray()
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size_text = bytes(buf[pos:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise aiohttp.ClientPayloadError("bad chunk size") from None
        pos = line_end + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", pos - 2)
            if trailer_end < 0:
                return None
            return bytes(out), trailer_end + 4
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos:pos + size]
        if len(out) > MAX_BODY_BYTES:
            raise aiohttp.ClientPayloadError("response body too large")
        pos += size + 2


def _decompress(body: bytes, encoding: str) -> bytes:
    try:
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate, as some servers send
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    except zlib.error as exc:
        raise aiohttp.ClientPayloadError(f"cannot decompress the answer ({encoding}): {exc}") from None


def _expire(waiter: asyncio.Future, url: str) -> None:
    if not waiter.done():
        waiter.set_exception(aiohttp.SocketTimeoutError(f"Timeout on reading data from socket ({url})"))


class Http1Client:
    """Pooled keep-alive connections to plain-HTTP hosts, at most ``limit`` open at once."""

    def __init__(self, limit: int = 100, keepalive_timeout: float = 30.0, headers: Mapping[str, str] | None = None):
        self.limit = limit
        self.keepalive_timeout = keepalive_timeout
        self.static = {**_DEFAULT, **{k.lower(): (k, str(v)) for k, v in (headers or {}).items()}}
        self._slots = asyncio.Semaphore(limit) if limit else None
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._targets: dict[str, tuple[str, int, str, str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    async def close(self) -> None:
        self.closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    def _target(self, url: str, params: Mapping[str, str] | None) -> tuple[str, int, str, str]:
        """``(host, port, Host header, request target)``, as yarl (and so aiohttp) encodes them."""
        found = self._targets.get(url) if not params else None
        if found is None:
            parsed = URL(url)
            if parsed.scheme != "http" or not parsed.host:
                raise aiohttp.InvalidURL(url)
            if params:
                parsed = parsed.extend_query(params)
            host = parsed.host_subcomponent  # IPv6 in brackets
            host_header = host if parsed.is_default_port() else f"{host}:{parsed.port}"
            found = (parsed.host, parsed.port, host_header, parsed.raw_path_qs)
            if not params:
                if len(self._targets) > 1024:
                    self._targets.clear()
                self._targets[url] = found
        return found

    def _encode(self, method: str, host_header: str, target: str, headers: Mapping[str, str], body: bytes) -> bytes:
        merged = dict(self.static)
        for name, value in headers.items():
            merged[name.lower()] = (name, str(value))
        merged.pop("host", None)
        merged.pop("content-length", None)
        if body and "content-type" not in merged:
            merged["content-type"] = ("Content-Type", "application/octet-stream")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}"]
        for name, value in merged.values():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                raise ValueError("Newline or carriage return character detected in HTTP header")
            lines.append(f"{name}: {value}")
        if body or method not in _BODYLESS_METHODS:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "strict") + body

    async def request(self, method: str, url: str, *, params: Mapping[str, str] | None = None, body: bytes = b"",
                      headers: Mapping[str, str] | None = None, total: float = 30.0,
                      connect: float | None = None) -> tuple[int, str, bytes]:
        """Send one request: ``(status, Content-Type, body)``; raises aiohttp's exception types."""
        loop = self._loop
        if loop is None:
            # Bound to the first loop that uses it: get_running_loop() is a getpid() system
            # call on Python 3.11, on every request otherwise.
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + total
        method = method.upper()
        headers = headers or {}
        for _ in range(MAX_REDIRECTS + 1):
            status, response_headers, raw = await self._once(loop, deadline, connect, method, url, params, body,
                                                             headers)
            location = response_headers.get("location")
            if status not in (301, 302, 303, 307, 308) or not location:
                return status, response_headers.get("content-type", ""), raw
            # As aiohttp: 303 (and 301/302 after a POST) turn into a GET without a body.
            if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
                method, body = "GET", b""
                headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
            url, params = str(URL(url).join(URL(location))), None
            if not url.startswith("http://"):
                raise aiohttp.ClientConnectionError(f"redirect to {url} is not followed (plain HTTP only)")
        raise aiohttp.TooManyRedirects(None, (), message=f"more than {MAX_REDIRECTS} redirects")

    async def _once(self, loop, deadline, connect, method, url, params, body, headers):
        host, port, host_header, target = self._target(url, params)
        raw = self._encode(method, host_header, target, headers, body)
        slots = self._slots
        if slots is not None:
            if slots.locked():  # all connections busy: wait for one, within the deadline
                try:
                    await asyncio.wait_for(slots.acquire(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {url}") from None
            else:
                await slots.acquire()  # free: returns at once
        conn = None
        try:
            conn = await self._connection(loop, deadline, connect, host, port, url)
            waiter = conn.send(raw, method == "HEAD")
            # A timer on our own future (cheaper than asyncio.timeout, which looks the loop
            # up twice and cancels the whole task).
            timer = loop.call_at(deadline, _expire, waiter, url)
            try:
                status, response_headers, data, keep = await waiter
            finally:
                timer.cancel()
            if keep and not self.closed:
                conn.waiter, conn.idle_since = None, loop.time()
                self._idle.setdefault((host, port), []).append(conn)
                conn = None
            return status, response_headers, data
        finally:
            if conn is not None:
                conn.close()
            if slots is not None:
                slots.release()

    async def _connection(self, loop, deadline, connect, host, port, url) -> _Connection:
        idle = self._idle.get((host, port))
        now = loop.time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_timeout and not conn.buffer:
                return conn
            conn.close()
        limit = max(0.0, deadline - now)
        if connect is not None:
            limit = min(limit, connect)
        try:
            async with asyncio.timeout(limit):
                _, conn = await loop.create_connection(lambda: _Connection(loop), host, port)
        except TimeoutError:
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {url}") from None
        except OSError as exc:
            raise aiohttp.ClientConnectorError(SimpleNamespace(host=host, port=port, ssl=False), exc) from exc
        return conn

