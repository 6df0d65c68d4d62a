"""The fault-injecting proxy chaos puts between the gateway and the legacy API.

Every request is forwarded to the legacy API as it came (aiohttp server in, aiohttp
client out, bodies passed as bytes, never decompressed), so the legacy side really
applies it; only then is the fault injected on the way back. That is the point: each
fault leaves the gateway not knowing what the legacy side did, which is where a mapping
can lose money or pay twice.

A fault is armed for one legacy request — the next, or the one after ``after`` more (a
later step of a multi-step operation) — and is counted when it was really injected
(``injected``): a fault that never happened must never pass as survived.
Byte-level faults (a reset mid-body, a trickle, a second copy of the answer) write
through aiohttp's own response writer, so no HTTP is formatted or parsed here.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
from aiohttp import web
from aiohttp.http import StreamWriter
from multidict import CIMultiDict

from gateway.tools.simulators._common import abort_with_reset

#: fault -> what it does to the answer of a request the legacy API has applied
FAULTS = {
    "lost_answer": "the legacy API applied the call; its answer is lost (connection reset, no byte)",
    "late_answer": "the answer comes after the gateway's timeout for the call",
    "error_after_apply": "the legacy API applied the call, then an HTTP 500 error page is answered",
    "duplicate_answer": "the answer is written twice on the keep-alive connection: the next call there reads the copy",
    "reset_mid_body": "the connection is reset after half of the answer's body",
    "trickle": "the answer trickles in a few bytes at a time, over twice the timeout",
}

#: never forwarded: they describe one connection, not the message
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Host", "Content-Length"))

HTML_500 = (b"<html><head><title>500 Internal Server Error</title></head>"
            b"<body><h1>Internal Server Error</h1></body></html>")


class FaultProxy:
    """Forward to ``target`` (scheme://host:port); inject the armed fault on the next answer."""

    def __init__(self, target: str, timeout: float, *, tls_verify: bool = True) -> None:
        self.target = target.rstrip("/")
        self.timeout = timeout  # the gateway's timeout for a legacy call, in seconds
        self.tls_verify = tls_verify
        self.url = ""
        self.armed: str | None = None
        self._skip = 0  # requests still to let through before the armed fault
        self.injected: Counter = Counter()
        self.forwarded = 0
        self.upstream_failures = 0
        #: connection -> an answer to write again before the next answer on it (duplicate_answer)
        self._stale: dict = {}
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    def arm(self, fault: str | None, after: int = 0) -> None:
        """Inject ``fault`` into the legacy request after the next ``after`` ones (None: nothing)."""
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        self.armed, self._skip = fault, after

    def disarm(self) -> None:
        """Nothing more is injected: no armed fault, no copy waiting on a connection."""
        self.armed = None
        self._stale.clear()

    async def start(self) -> str:
        self._http = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=60),
                                           connector=aiohttp.TCPConnector(ssl=None if self.tls_verify else False))
        app = web.Application(client_max_size=16 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault = None
        if self.armed is not None and self._skip > 0:
            self._skip -= 1
        elif self.armed is not None:
            fault, self.armed = self.armed, None
        body = await request.read()
        stale = self._stale.pop(request.protocol, None)
        if stale is not None:  # the whole request is in: the legacy API gets it, the client the copy
            try:
                await self._write_copy(request, *stale)
            except ConnectionError:
                pass  # the client is gone; the request is forwarded all the same, as a server would

        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            async with self._http.request(request.method, self.target + request.path_qs, data=body,
                                          headers=headers, allow_redirects=False) as upstream:
                answer = await upstream.read()
                status, reason = upstream.status, upstream.reason
                out = CIMultiDict((k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP)
        except (aiohttp.ClientError, TimeoutError):
            # The legacy API did not answer: nothing to inject into. Answered like a
            # gateway in front of it would, and the armed fault stays not injected.
            self.upstream_failures += 1
            return web.Response(status=502, text="legacy API unreachable through the chaos proxy")
        self.forwarded += 1
        if fault is None:
            return web.Response(status=status, reason=reason, body=answer, headers=out)
        return await getattr(self, "_" + fault)(request, status, reason, out, answer)

    def _count(self, fault: str) -> None:
        self.injected[fault] += 1

    async def _lost_answer(self, request, status, reason, headers, body) -> web.StreamResponse:
        self._count("lost_answer")
        abort_with_reset(request)
        raise asyncio.CancelledError  # nothing may be written to the dead connection

    async def _late_answer(self, request, status, reason, headers, body) -> web.StreamResponse:
        self._count("late_answer")
        await asyncio.sleep(self.timeout + 1.0)  # the fault itself: the answer is late
        return web.Response(status=status, reason=reason, body=body, headers=headers)

    async def _error_after_apply(self, request, status, reason, headers, body) -> web.StreamResponse:
        self._count("error_after_apply")
        return web.Response(status=500, body=HTML_500, content_type="text/html")

    async def _duplicate_answer(self, request, status, reason, headers, body) -> web.StreamResponse:
        response = web.StreamResponse(status=status, reason=reason, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()
        # The copy goes out once the next request on this connection is in, ahead of its
        # own answer (which is then one late): written any sooner, it could reach the
        # client before it put the connection back in its pool, and a client that sees
        # unread bytes there closes the connection instead of reading them. That request
        # still reaches the legacy API: the client reads another request's answer for one
        # the wallet applied.
        self._stale[request.protocol] = (status, reason, CIMultiDict(response.headers), body)
        return response

    async def _write_copy(self, request, status, reason, headers, body) -> None:
        """A full answer written by aiohttp's own writer, with the headers it sent before."""
        writer = StreamWriter(request.protocol, asyncio.get_running_loop())
        await writer.write_headers(f"HTTP/1.1 {status} {reason or ''}".rstrip(), headers)
        await writer.write(body)
        await writer.write_eof()
        self._count("duplicate_answer")

    async def _reset_mid_body(self, request, status, reason, headers, body) -> web.StreamResponse:
        response = web.StreamResponse(status=status, reason=reason, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        self._count("reset_mid_body")
        abort_with_reset(request)
        raise asyncio.CancelledError

    async def _trickle(self, request, status, reason, headers, body) -> web.StreamResponse:
        response = web.StreamResponse(status=status, reason=reason, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        size = max(1, -(-len(body) // 20))
        pieces = max(1, -(-len(body) // size))  # about 20, fewer for a body under 20 bytes
        self._count("trickle")
        try:
            for start in range(0, len(body), size):
                await response.write(body[start:start + size])
                await asyncio.sleep(2 * self.timeout / pieces)  # the fault itself: the pace of the bytes
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the gateway gave up on it, as it should
        return response
