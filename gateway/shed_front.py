"""Shedding before aiohttp: a lean llhttp front for overload (``concurrency.early_shedding``).

Why: a request shed by the concurrency limits (gateway/ratelimit.py) is answered ``503`` with
no ledger or legacy work, but through aiohttp it still costs aiohttp's whole request handling
— a request object, the middleware, the signature check, a response object and its
serialisation. Measured on 2 shared cores (``python -m bench --only overload``, CPU user +
system): ~136 µs per shed request through the gateway (~55 µs for aiohttp with a bare
handler) against ~900 µs for a bet. At three times its capacity two of every three requests
are shed, and a core that spends ``s`` per shed request and ``c`` per bet keeps at most
``(1 - 3s/c) / (1 - s/c)`` of its peak: ~0.6 through the gateway, under 0.9 even at
aiohttp's own floor. This front answers a shed request for ~20 µs under wrk and ~45 µs
under one-by-one arrivals (a third to a half of it the kernel's), so the core keeps serving
the admitted ones.

It is not a second HTTP server. It stands in front of aiohttp's own protocol object on the
public port, gives aiohttp every byte it does not answer itself, exactly as received, and
parses with llhttp through ``httptools`` (the parser aiohttp's is built on; nothing here
reads bytes by hand). Per connection:

* every byte received is fed to the parser, so the front knows where requests end;
* a chunk of bytes holding exactly one whole request, on a connection where aiohttp has
  answered everything it was given, from a key of a partner (without ``allowed_ips``) that
  is at a concurrency limit, to that partner's face's route, is answered here: ``503
  service_unavailable`` with ``Retry-After`` and ``X-Request-ID``, the body the gateway's
  own shed answer has, counted in the same metrics and thinned access log;
* everything else goes to aiohttp untouched: a request that arrives in pieces, two in one
  chunk (pipelining: answers must keep their order), anything aiohttp's limits could refuse
  (field count, field size, body size, a missing ``Host``, a repeated field aiohttp allows
  once), ``Transfer-Encoding``, ``Content-Encoding``, ``Upgrade``, ``Expect``, HTTP/1.0,
  ``HEAD``, a method or resource the route does not take, an unknown key, a partner under
  its limits, a request while the process drains or while the client is not reading its
  answers, anything after an answer of aiohttp's that closes the connection. A parse error
  hands the connection to aiohttp for good (aiohttp answers it ``400``).

"aiohttp has answered everything it was given" is counted, not guessed: the front counts
the whole requests it forwarded, and gateway_middleware (gateway/app.py) writes each answer
and reports it written (``write_answer``). Anything aiohttp
answers without the middleware (a malformed request, already closing the connection) is
never reported, and the connection stays aiohttp's: every doubt sends bytes to aiohttp.

What the front does not do: verify the signature. A shed answer changes nothing, and only a
verified request takes a slot (gateway/ratelimit.py). The front itself counts every whole
request of a known key it hands to aiohttp until aiohttp's handler is done with it
(``request_done``, where the slots are released — not when the answer is written, so a
client that does not read its answers holds nothing): a forged request counts for the
moment it takes to be refused. Someone holding a partner's API key without its secret
learns that the partner is overloaded, and can push its count up by the requests it has in
flight. Shed requests answered here are not traced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from email.utils import formatdate

import httptools
from aiohttp import web

from gateway.config import Partner
from gateway.context import CONFIG, LIFECYCLE, RUNTIME, SHED_LINES
from gateway.faces.provider import RESOURCE_METHODS
from gateway.faces.wallet import error_body
from gateway.ids import new_id
from gateway.ops import metrics
from gateway.ratelimit import Overloaded

log = logging.getLogger("igsp.access")

#: The front of each open connection, by its transport: gateway_middleware reports through it
#: when a forwarded request's handler is done (``request_done``) and its answer written
#: (``write_answer``).
FRONTS: dict[asyncio.BaseTransport, ShedFront] = {}

#: Printable ASCII, the bytes of a request id echoed as it came: ``id.translate(None, _PRINTABLE)``
#: is empty for such an id (one C call, not a loop over its bytes).
_PRINTABLE = bytes(range(0x20, 0x7F))
#: The provider face's resources and the method each takes, as llhttp reports them.
PROVIDER_METHODS = {resource.encode(): method.encode() for resource, method in RESOURCE_METHODS.items()}
#: Header fields aiohttp refuses to see twice (400): a request with two is aiohttp's.
SINGLETONS = frozenset((b"content-length", b"content-location", b"content-range", b"content-type", b"etag",
                        b"host", b"max-forwards", b"server", b"transfer-encoding", b"user-agent"))
#: Fields that make a request aiohttp's whatever their value.
_NOT_SIMPLE = frozenset((b"transfer-encoding", b"upgrade", b"expect", b"content-encoding"))
#: Every field the front looks at (a request's other fields are only counted and measured).
_WATCHED = SINGLETONS | _NOT_SIMPLE | {b"authorization", b"x-request-id"}
#: How a shed request is counted (gateway/ops/metrics.py), as gateway_middleware counts one.
_SHED_OUTCOME = metrics.outcome(503, "service_unavailable")


def request_done(request: web.BaseRequest) -> None:
    """Called by gateway_middleware once a request's handler is done (where it releases the
    concurrency slots): the front stops counting the request against its partner's limits.
    Released here, not once the answer is written: a client that does not read its answers
    must not keep its requests counted (a forged request would then hold a slot)."""
    front = FRONTS.get(request.transport)
    if front is not None and front.owed:
        front.shedder.forwarded_done(front.owed.popleft())


async def write_answer(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Called by gateway_middleware with every answer: if a front stands before the request's
    connection, the answer is written here and the front told, so that it knows the
    connection is free for an answer of its own. (aiohttp would write it a moment later,
    after the middleware returns; it then finds it written. Told only later — when aiohttp's
    task for the request is done — the front would see the client's next request arrive
    first and leave it to aiohttp.)"""
    front = FRONTS.get(request.transport)
    if front is None:
        return
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:  # the client is gone; aiohttp finds out for itself
        return
    if not response.keep_alive:  # (known once prepared) aiohttp closes the connection: nothing may follow
        front.aiohttp_only = True
    front.aiohttp_answered()


class Shedder:
    """What the front asks: is this request to be shed, and the bookkeeping of one that was.

    Reads the current config generation on every call, so a reload's partners, keys and
    limits apply at once; the concurrency counts are the ones gateway/ratelimit.py keeps."""

    def __init__(self, app: web.Application):
        config = app[CONFIG]
        self.runtime = app[RUNTIME]
        self.lifecycle = app[LIFECYCLE]
        self.lines = app[SHED_LINES]
        self.hooks_path = config.hooks_path.encode()
        self.mount = (config.provider_mount + "/").encode()
        # aiohttp's limits (gateway/app.py): anything near them is aiohttp's to refuse.
        self.max_fields = config.max_header_fields
        self.max_field_bytes = config.max_header_bytes
        self.max_body = config.max_body_bytes
        self.counts: dict = {}  # slot key -> requests forwarded to aiohttp whose handler is not done yet
        self._keys_of = None  # the generation _keys was built for
        self._keys: dict[bytes, Partner] = {}
        self._bodies: dict[tuple[int, str], bytes] = {}
        self._date = (0, b"")

    def partner(self, authorization: bytes) -> Partner | None:
        gen = self.runtime.current
        if gen is not self._keys_of:
            self._keys = {p.api_key.encode(): p for p in gen.config.partners if p.allowed_ips is None}
            self._keys_of = gen
        if not authorization.startswith(b"Bearer "):
            return None
        return self._keys.get(authorization[7:].strip())

    def verdict(self, method: bytes, url: bytes, authorization: bytes) -> tuple[Partner, str | None, tuple] | None:
        """For a request to a partner's face, by a key of that partner: (partner, what, keys).

        ``what`` ("partner" or "upstream") when the partner is at a limit: shed it here. Else
        None, and ``keys`` are the slots the request is counted in while aiohttp has it (see
        ``forwarding``). None for anything else: not the front's business."""
        if self.lifecycle.draining:
            return None
        partner = self.partner(authorization)
        if partner is None:
            return None
        path = url.partition(b"?")[0]
        if partner.face == "platform":
            if method != b"POST" or path != self.hooks_path:
                return None
        elif not path.startswith(self.mount) or PROVIDER_METHODS.get(path[len(self.mount):]) != method:
            return None  # aiohttp answers 404 or 405 before it looks at the caller
        concurrency = self.runtime.current.limiter.concurrency
        if concurrency is None:
            return None
        # The slots aiohttp's handlers hold (taken once a request is verified), and the
        # requests forwarded and not answered yet: a turn of the event loop may read dozens
        # of requests before any of their handlers runs, and all of them must count.
        held, counts = concurrency.counts, self.counts
        slots = concurrency.slots.get(partner.id, ())
        for key, limit, what in slots:
            value = limit.value  # an adaptive limit's moves with its legacy API's latency
            if held.get(key, 0) >= value or counts.get(key, 0) >= value:
                return partner, what, ()
        return partner, None, tuple(key for key, _, _ in slots)

    def forwarding(self, keys: tuple) -> None:
        for key in keys:
            self.counts[key] = self.counts.get(key, 0) + 1

    def forwarded_done(self, keys: tuple) -> None:
        for key in keys:
            self.counts[key] -= 1

    def answer(self, partner: Partner, what: str, request_id: bytes, keep_alive: bool) -> bytes:
        """The whole 503 answer, as the gateway's own shed answer reads (gateway/app.py)."""
        retry_after = self.runtime.current.limiter.concurrency.retry_after
        body = self._bodies.get((retry_after, what))
        if body is None:
            body = self._bodies[(retry_after, what)] = error_body(Overloaded(retry_after, partner.id, what))[1]
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return b"".join((
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n",
            b"Content-Length: %d\r\nRetry-After: %d\r\nX-Request-ID: %s\r\nDate: %s\r\n" % (
                len(body), retry_after, request_id, self._date[1]),
            b"" if keep_alive else b"Connection: close\r\n",
            b"\r\n", body))

    def record(self, partner: Partner, request_id: bytes, method: bytes, url: bytes, started: float) -> None:
        """The shed request in the metrics and (thinned) access log, as gateway_middleware would."""
        elapsed = time.perf_counter() - started
        path = url.partition(b"?")[0]
        # As gateway_middleware labels a shed request: a hook's action is not read before the
        # limit (operation unknown), a provider-face resource is (its name).
        operation = "unknown" if partner.face == "platform" else path[len(self.mount):].decode()
        metrics.child(metrics.REQUESTS, partner.id, partner.face, operation, _SHED_OUTCOME).inc()
        metrics.child(metrics.REQUEST_SECONDS, partner.id, partner.face, operation).observe(elapsed)
        not_logged = self.lines.admit(partner.id)
        if not_logged is None or not self.runtime.current.config.access_log:
            return
        line = {"request_id": request_id.decode(), "partner": partner.id, "face": partner.face,
                "operation": operation, "status": 503, "latency_ms": round(elapsed * 1000, 3),
                "transaction_id": None, "method": method.decode("latin-1"),
                "path": path.decode("latin-1"), "error": "service_unavailable",
                "shed_by": "front"}
        if not_logged:
            line["shed_not_logged"] = not_logged
        log.info("request", extra=line)


class ShedFront(asyncio.Protocol):
    """One connection: llhttp in front of aiohttp's protocol object (``inner``)."""

    def __init__(self, inner: asyncio.Protocol, shedder: Shedder, idle_timeout: float):
        self.inner = inner
        self.shedder = shedder
        self.idle_timeout = idle_timeout
        self.parser = httptools.HttpRequestParser(self)
        self.max_field_bytes = shedder.max_field_bytes
        self.transport: asyncio.Transport | None = None
        self.aiohttp_only = False  # a parse error: every byte is aiohttp's from now on
        self.writing_paused = False
        self.forwarded = 0  # whole requests given to aiohttp
        self.answered = 0  # of those, answered (gateway_middleware's report)
        self.owed: deque[tuple] = deque()  # per forwarded request not answered: the slots it counts in
        self.last_answer = 0.0  # loop time of the last answer, the front's or aiohttp's
        self.idle_handle: asyncio.TimerHandle | None = None
        self.in_message = False
        self.head_done = False
        self._new_chunk()

    # -- what llhttp reports while a chunk is parsed ------------------------------------------
    def _new_chunk(self) -> None:
        self.begun = self.completed = 0

    def on_message_begin(self) -> None:
        self.in_message = True
        self.head_done = False
        self.begun += 1
        self.url = b""
        self.fields = 0
        self.simple = True  # nothing here that aiohttp might answer differently
        self.authorization = b""
        self.request_id = b""
        self.singletons: list[bytes] = []  # the singleton fields seen (a few at most)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += 1
        if len(name) + len(value) + 2 > self.max_field_bytes:
            self.simple = False
        name = name.lower()
        if name not in _WATCHED:
            return
        if name in SINGLETONS:
            if name in self.singletons:
                self.simple = False
            self.singletons.append(name)
        if name == b"authorization":
            self.simple = self.simple and not self.authorization
            self.authorization = value
        elif name == b"x-request-id":
            self.simple = self.simple and not self.request_id
            self.request_id = value.strip(b" \t")  # as aiohttp reads it: without surrounding blanks
        elif name in _NOT_SIMPLE:
            self.simple = False
        elif name == b"content-length":
            self.simple = self.simple and value.isdigit() and int(value) <= self.shedder.max_body

    def on_headers_complete(self) -> None:
        self.head_done = True
        if b"host" not in self.singletons:
            self.simple = False  # aiohttp refuses an HTTP/1.1 request without Host

    def on_message_complete(self) -> None:
        self.in_message = False
        self.completed += 1
        self.keep_alive = self.parser.should_keep_alive()

    # -- the connection -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        FRONTS[transport] = self
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        FRONTS.pop(self.transport, None)
        while self.owed:  # requests aiohttp will never answer now
            self.shedder.forwarded_done(self.owed.popleft())
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        self.inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.inner.resume_writing()

    def aiohttp_answered(self) -> None:
        self.answered += 1
        self.last_answer = asyncio.get_running_loop().time()

    def data_received(self, data: bytes) -> None:
        if self.aiohttp_only:
            self.inner.data_received(data)
            return
        started = time.perf_counter()
        between_requests = not self.in_message
        self._new_chunk()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:  # also an upgrade: aiohttp decides what to answer
            self.aiohttp_only = True
            self.inner.data_received(data)
            return
        if (between_requests and self.begun == 1 and self.completed == 1 and self.simple
                and self.forwarded == self.answered and not self.writing_paused
                and self.fields <= self.shedder.max_fields and len(self.url) <= self.shedder.max_field_bytes
                and self.parser.get_http_version() == "1.1"
                and not self.request_id.translate(None, _PRINTABLE)):
            method = self.parser.get_method()
            verdict = self.shedder.verdict(method, self.url, self.authorization)
            if verdict is not None:
                partner, what, keys = verdict
                if what is not None:
                    self._shed(partner, what, method, started)
                    return
                self.shedder.forwarding(keys)
                self.owed.append(keys)
                self.forwarded += 1
                self.inner.data_received(data)
                return
        for _ in range(self.completed):
            self.owed.append(())
        self.forwarded += self.completed
        self.inner.data_received(data)

    def _shed(self, partner: Partner, what: str, method: bytes, started: float) -> None:
        request_id = self.request_id if 0 < len(self.request_id) <= 128 else new_id().encode()
        self.transport.write(self.shedder.answer(partner, what, request_id, self.keep_alive))
        self.shedder.record(partner, request_id, method, self.url, started)
        if not self.keep_alive:
            self.transport.close()
            return
        # aiohttp saw nothing of this request: its keep-alive timer (armed after its last
        # answer) would close a connection the client is using. The front keeps the
        # connection's idle timer from here on, with aiohttp's timeout (server.read_timeout).
        self.inner.keep_alive(True)
        loop = asyncio.get_running_loop()
        self.last_answer = loop.time()
        if self.idle_handle is None:
            self.idle_handle = loop.call_at(self.last_answer + self.idle_timeout, self._idle)

    def _idle(self) -> None:
        """Close a connection with nothing answered for the idle timeout, aiohttp's rule: one
        waiting for a whole request (idle, or a head dripping in), not one aiohttp is busy with."""
        loop = asyncio.get_running_loop()
        due = self.last_answer + self.idle_timeout
        if self.in_message and self.head_done:  # a body on its way: aiohttp's handler and its timeout have it
            due = loop.time() + self.idle_timeout
        elif self.forwarded == self.answered and loop.time() >= due:
            self.idle_handle = None
            self.transport.close()
            return
        self.idle_handle = loop.call_at(max(due, loop.time() + 1.0), self._idle)


async def serve_public(runner: web.AppRunner, sock, backlog: int) -> asyncio.AbstractServer:
    """The public listener with the front before aiohttp's protocol (instead of a SockSite);
    the caller closes it before ``runner.cleanup()``."""
    app = runner.app
    shedder = Shedder(app)
    idle_timeout = app[CONFIG].read_timeout
    server = runner.server
    return await asyncio.get_running_loop().create_server(
        lambda: ShedFront(server(), shedder, idle_timeout), sock=sock, backlog=backlog)

