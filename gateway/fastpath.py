"""A lean HTTP/1.1 front for the wallet-hook route, handing anything else to aiohttp.

aiohttp's request machinery (parser objects, request and response classes, router,
middleware chain, stream writer) was a fifth of the CPU of an unsigned bet (measured:
369 -> 290 µs per bet with this front). Every connection starts here. While its requests have the one plain
shape wallet hooks have — ``POST <hooks_path> HTTP/1.1`` with a ``Content-Length`` body
no larger than ``server.max_body_bytes`` and simple, unique header fields — they run
through the same middleware and handler as on aiohttp, with a light request object.
The first request of any other shape (another path, a query string, chunked, ``Expect``,
``Upgrade``, HTTP/1.0, a header aiohttp might read differently, a limit crossed) hands
the connection, with every byte not yet consumed, to aiohttp for the rest of its life.
So nothing is answered differently here: what is served is a strict subset of what
aiohttp would accept, and it meets the same code.

Keep-alive as aiohttp does it (idle connections close after ``keepalive_seconds``);
pipelined requests answered in order; a client that stops reading its answers stops
being read; on shutdown idle connections close and in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import __version__ as _aiohttp_version
from aiohttp import web
from multidict import CIMultiDict

from gateway import metrics

log = logging.getLogger("igsp.server")

#: Header lines, each ``token ":" visible ASCII, spaces and tabs`` and CRLF: one linear
#: pass in C checks them all. Anything else (obs-fold, bare LF, other bytes) is aiohttp's.
_FIELD_LINES = re.compile(rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\x20-\x7e\t]*\r\n)*")
#: Fields whose presence means a shape aiohttp treats specially: hand those over.
_DELEGATE = frozenset({"transfer-encoding", "expect", "upgrade", "content-encoding", "te", "http2-settings"})
_SERVER = f"Python/{sys.version_info[0]}.{sys.version_info[1]} aiohttp/{_aiohttp_version}"  # as aiohttp says
_REASONS = {s.value: s.phrase for s in HTTPStatus}


def plain_request(buf: bytearray, end: int, request_line: bytes,
                  max_body_bytes: int) -> tuple[CIMultiDict, bool, int] | None:
    """``(header fields, asks to close, body length)`` of the request whose head is
    ``buf[:end]``, or ``None`` when it is not a plain hook request (then aiohttp decides
    what it is). Whatever this accepts, aiohttp's parser reads the same way
    (tests/test_fastpath.py checks it against that parser on generated requests)."""
    first = buf.find(b"\r\n", 0, end)
    if first < 0 or buf[:first] != request_line:
        return None
    block = buf[first + 2:end + 2]  # every line with its CRLF
    if not _FIELD_LINES.fullmatch(block):
        return None
    pairs = []
    for line in block.decode("ascii").split("\r\n")[:-1]:
        name, _, value = line.partition(":")
        pairs.append((name, value.strip(" \t")))
    names = {name.lower() for name, _ in pairs}
    if len(names) != len(pairs) or not names.isdisjoint(_DELEGATE):
        return None  # a repeated field, or one that changes how the body is read
    if "host" not in names:
        return None  # HTTP/1.1 requires one; aiohttp answers 400 without
    fields = CIMultiDict(pairs)
    length = fields.get("Content-Length")
    if length is None or not length.isdigit() or len(length) > 12 or int(length) > max_body_bytes:
        return None
    connection = fields.get("Connection")
    if connection is None:
        return fields, False, int(length)
    connection = connection.lower()
    if connection not in ("close", "keep-alive"):
        return None
    return fields, connection == "close", int(length)


class _Route:
    name = "platform"


class _MatchInfo:
    route = _Route()


class HookRequest(dict):
    """What the middleware and ``handle_hook`` read of a request; per-request state is the dict."""

    __slots__ = ("app", "headers", "_body")
    method = "POST"
    path = ""  # the front's hooks path, on its subclass
    match_info = _MatchInfo()

    def __init__(self, app: web.Application, headers: CIMultiDict, body: bytes):
        super().__init__()
        self.app, self.headers, self._body = app, headers, body

    async def read(self) -> bytes:
        return self._body


class _Date:
    """The ``Date`` header, formatted once a second."""

    def __init__(self):
        self.second, self.value = 0, b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second, self.value = second, formatdate(second, usegmt=True).encode()
        return self.value


class FastFront:
    """The protocol factory for the listening socket (``loop.create_server(front, …)``)."""

    def __init__(self, app: web.Application, aiohttp_server: web.Server, hooks_path: str, handler, middleware, *,
                 max_body_bytes: int, max_header_bytes: int, keepalive_seconds: float = 75.0):
        self.loop = asyncio.get_running_loop()
        self.app, self.aiohttp_server = app, aiohttp_server
        self.handler, self.middleware = handler, middleware
        self.request_line = b"POST " + hooks_path.encode() + b" HTTP/1.1"
        self.max_body_bytes, self.max_header_bytes = max_body_bytes, max_header_bytes
        self.keepalive_seconds = keepalive_seconds
        self.connections: set[_Connection] = set()
        self.inflight: set[asyncio.Task] = set()  # requests being answered, their clients gone or not
        self.closing = False
        self.date = _Date()
        self.served = 0  # requests answered here (tests and the drain log read it)
        self.delegated = 0  # connections handed to aiohttp

        class Request(HookRequest):
            __slots__ = ()
            path = hooks_path

        self.request_class = Request

    def __call__(self) -> _Connection:
        return _Connection(self)

    def close_idle(self) -> None:
        """Stop serving: idle connections close now, busy ones once their answer is written."""
        self.closing = True
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()

    async def wait_closed(self, deadline: float) -> None:
        """Until every request started here is answered (or ``deadline``) — also those whose
        client has gone: a bet in flight is finished and recorded before the store closes."""
        remaining = deadline - self.loop.time()
        if self.inflight and remaining > 0:
            await asyncio.wait(set(self.inflight), timeout=remaining)


class _Connection(asyncio.Protocol):
    __slots__ = ("front", "loop", "transport", "buf", "task", "paused_writing", "paused_reading", "idle_timer",
                 "last_active", "closed", "eof")

    def __init__(self, front: FastFront):
        self.front = front
        self.loop = front.loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.task: asyncio.Task | None = None
        self.paused_writing = self.paused_reading = self.closed = self.eof = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self.last_active = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.front.connections.add(self)
        if self.front.closing:
            self.close()
            return
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.front.connections.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        # An answer being worked on is finished all the same: a bet asked for is a bet recorded.

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.task is None and not self.paused_writing:
            self._next()
        elif len(self.buf) > self.front.max_body_bytes + self.front.max_header_bytes and not self.paused_reading:
            self.paused_reading = True  # pipelined far ahead: wait until we catch up
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        return self.task is not None  # keep the socket open to answer what is in flight

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        if self.task is None and not self.closed:
            self._next()

    # -- requests -------------------------------------------------------------------------
    def _next(self) -> None:
        """Start the next complete request in the buffer, or hand the connection over."""
        buf, front = self.buf, self.front
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > front.max_header_bytes or b"\n\n" in buf or b"\n\r\n" in buf:
                self._delegate()
            elif self.paused_reading:
                self.paused_reading = False
                self.transport.resume_reading()
            return
        if end > front.max_header_bytes:
            self._delegate()
            return
        plain = plain_request(buf, end, front.request_line, front.max_body_bytes)
        if plain is None:
            self._delegate()
            return
        fields, close, length = plain
        start = end + 4
        if len(buf) < start + length:
            if self.paused_reading:
                self.paused_reading = False
                self.transport.resume_reading()
            return  # the body is still on its way
        body = bytes(buf[start:start + length])
        del buf[:start + length]
        request = front.request_class(front.app, fields, body)
        self.task = task = self.loop.create_task(self._serve(request, close))
        front.inflight.add(task)
        task.add_done_callback(front.inflight.discard)

    async def _serve(self, request: HookRequest, close: bool) -> None:
        front = self.front
        try:
            response = await front.middleware(request, front.handler)
            out = self._encode(response, close or front.closing)
        except Exception:  # noqa: BLE001 - never a traceback to a client
            log.exception("unhandled error in the hook front")
            out, close = self._internal_error(), True
        front.served += 1
        self.task = None
        if self.closed:
            return
        self.transport.write(out)
        if close or front.closing:
            self.close()
            return
        self._touch()
        if not self.paused_writing:
            self._next()  # the next pipelined request, or reading resumed
        if self.eof and self.task is None and not self.closed:
            self.close()  # the client has said all it will: nothing more to answer

    def _encode(self, response: web.Response, close: bool) -> bytes:
        status = response.status
        body = response.body
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n".encode()]
        for name, value in response.headers.items():
            head.append(f"{name}: {value}\r\n".encode())
        head.append(b"Content-Length: %d\r\nDate: %s\r\nServer: %s\r\n" % (len(body), self.front.date.now(),
                                                                           _SERVER.encode()))
        if close:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        head.append(body)
        return b"".join(head)

    def _internal_error(self) -> bytes:
        body = b'{"error":"internal_error","message":"internal error"}'
        return (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (len(body), body))

    # -- connection -----------------------------------------------------------------------
    def _delegate(self) -> None:
        """From the first unusual request on, aiohttp serves this connection."""
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        front = self.front
        front.connections.discard(self)
        front.delegated += 1
        hook = self.buf.startswith(front.request_line + b"\r\n")
        metrics.child(metrics.FAST_PATH_HANDOVERS, "hook" if hook else "other").inc()
        if self.paused_reading:
            self.paused_reading = False
            self.transport.resume_reading()
        handler = front.aiohttp_server()
        transport, pending = self.transport, bytes(self.buf)
        self.buf = bytearray()
        self.closed = True
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if pending:
            handler.data_received(pending)
        if self.eof:
            handler.eof_received()

    def _touch(self) -> None:
        self.last_active = self.loop.time()
        if self.idle_timer is None:
            self.idle_timer = self.loop.call_at(self.last_active + self.front.keepalive_seconds, self._idle)

    def _idle(self) -> None:
        self.idle_timer = None
        if self.closed:
            return
        due = self.last_active + self.front.keepalive_seconds
        if self.task is None and self.loop.time() >= due:
            self.close()
        else:
            self.idle_timer = self.loop.call_at(max(due, self.loop.time() + 1.0), self._idle)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
