"""Every outbound HTTP call of the gateway: legacy APIs (``gateway.outbound.legacy``) and
platform hooks (``gateway.outbound.hooks``), through aiohttp's client and its llhttp parser.

Bytes from a legacy wallet or a platform are foreign input. They are parsed by a
maintained parser only, and every way a call can fail is translated once, here, into an
``UpstreamError`` that says whether money may have moved (``applied``):

    never sent: connect refused, connect timeout,
      no pooled connection free within the connect timeout   -> upstream_unavailable, applied=False
    TLS certificate not trusted (never sent)                 -> upstream_unavailable, applied=False, kind "tls"
    no complete answer within the total timeout              -> upstream_timeout,     applied=None
    connection closed or reset before the answer began       -> upstream_unavailable, applied=None, kind "reset"
    a malformed answer (status line, headers, chunking,
      Content-Length, compression) as llhttp/aiohttp judge it,
      or a body cut short by a close or reset                -> upstream_bad_response, applied=None, kind "bad_body"
    an answer larger than ``max_response_bytes`` decompressed -> upstream_bad_response, applied=None, kind "too_large"
    a 1xx or 3xx final status (redirects are never followed:
      a signed money call must not be replayed elsewhere)     -> upstream_bad_response, applied=None, kind "redirect"

Once the request may have been written, the outcome is unknown (``applied=None``): the
callers compensate or redeliver; they never guess.

Safe defaults, on purpose:

* ``allow_redirects=False``; cookies are never stored or sent back (a wallet's
  ``Set-Cookie`` must not ride along on another player's call).
* aiohttp's own retry of a request that failed on a reused keep-alive connection (it
  resends GET/PUT/DELETE once) is switched off: many legacy wallets move money on a GET,
  and a resend of a bet the wallet already applied debits twice.
* The answer is read incrementally and its decompressed size counted; the call is
  aborted (and the connection closed) as soon as it passes ``max_response_bytes``.
* An answer its caller finds to belong to another request (a stale answer left on a
  keep-alive connection, gateway/engine/echo.py) gets its connection closed (``discard``).

How a compression bomb stays small (read in aiohttp 3.14's ``http_parser.DeflateBuffer``,
``compression_utils.ZLibDecompressor`` and ``streams.StreamReader``): the parser feeds
each compressed piece to ``decompress_sync(chunk, max_length=max(read_bufsize,
low_water))`` — at most 64 KiB of output per step, the rest kept as zlib's
``unconsumed_tail``; when the response's StreamReader holds more than its high-water mark
(2 × 64 KiB) the protocol pauses the transport and the parser stops decompressing until
the reader takes data. So a body is inflated only as fast as it is read, in 64 KiB steps
on the event loop (short ones: the loop is never blocked for long), and the gateway holds
at most about ``max_response_bytes`` plus ~200 KiB of one answer before it gives up —
whatever the ratio of the bomb. Concatenated gzip members are capped by aiohttp at 1024.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from gateway.errors import UpstreamError

#: Default cap on one decompressed answer (``upstream.max_response_bytes``).
DEFAULT_MAX_RESPONSE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete HTTP answer: its final status, Content-Type and decompressed body.

    ``carrier`` is the connection it was read from (for ``Outbound.discard``).
    """

    status: int
    content_type: str
    body: bytes
    carrier: Any = field(default=None, repr=False, compare=False)


class _Response(aiohttp.ClientResponse):
    """A response that remembers the protocol of the connection it was read from.

    aiohttp hands a keep-alive connection back to the pool as soon as the body has been
    received (often before the caller sees the response), so ``response.close()`` after
    reading an answer cannot close it any more. ``carrier`` still can
    (``Outbound.discard``).
    """

    carrier: Any = None

    async def start(self, connection):
        self.carrier = connection.protocol
        return await super().start(connection)


class Outbound:
    """One pooled aiohttp session to one kind of peer (a mapping's legacy API, or the
    platforms' hook endpoints).

    ``peer`` names the other side in error messages ("legacy API", "the platform"); those
    messages reach the iGSP caller, so they never carry URLs or bodies.
    """

    def __init__(self, peer: str, *, max_connections: int = 100, connect_timeout: float | None = None,
                 tls_verify: bool = True, headers: dict | None = None,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, keepalive_timeout: float = 30.0,
                 reuse_connections: bool = True):
        self.peer = peer
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.tls_verify = tls_verify
        self.headers = dict(headers or {})
        self.max_response_bytes = max_response_bytes
        self.keepalive_timeout = keepalive_timeout
        self.reuse_connections = reuse_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled session, built on first use (it needs the running loop), then reused."""
        if self._session is None or self._session.closed:
            # force_close: one connection per call (``Connection: close``), for a peer whose
            # answers cannot be told apart (see gateway.engine.mapping._reuse_connections).
            connector = aiohttp.TCPConnector(limit=self.max_connections,
                                             keepalive_timeout=self.keepalive_timeout if self.reuse_connections
                                             else None,
                                             force_close=not self.reuse_connections,
                                             ssl=None if self.tls_verify else False)
            session = aiohttp.ClientSession(connector=connector, headers=self.headers,
                                            skip_auto_headers=("User-Agent",), auto_decompress=True,
                                            cookie_jar=aiohttp.DummyCookieJar(), response_class=_Response)
            # Never resend a request because a reused connection failed (see the module doc).
            # Private in aiohttp; tests/test_outbound.py fails if it stops existing.
            session._retry_connection = False
            self._session = session
        return self._session

    def timeout(self, total: float) -> aiohttp.ClientTimeout:
        """The ClientTimeout for a total, built once per distinct value.

        ``connect`` also bounds the wait for a free pooled connection, so a call that
        never got a connection fails as "not sent" (applied=False), not as a timeout.
        """
        limits = self._timeouts.get(total)
        if limits is None:
            connect = min(self.connect_timeout, total) if self.connect_timeout else None
            limits = self._timeouts[total] = aiohttp.ClientTimeout(total=total, connect=connect,
                                                                   sock_connect=connect)
        return limits

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, url: str, *, timeout: float, params: dict | None = None,
                      data: bytes | None = None, headers: dict | None = None) -> Answer:
        """Send one request and read its whole answer; raise UpstreamError for anything else."""
        try:
            async with self.session.request(method, url, params=params or None, data=data or None,
                                            headers=headers, timeout=self.timeout(timeout),
                                            allow_redirects=False) as resp:
                status = resp.status
                if status < 200 or 300 <= status < 400:
                    resp.close()  # the rest of such an answer is not read: the connection goes
                    raise UpstreamError("upstream_bad_response",
                                        f"{self.peer} answered HTTP {status}; redirects are not followed",
                                        kind="redirect", applied=None)
                return Answer(status, resp.headers.get("Content-Type", ""), await self._body(resp),
                              getattr(resp, "carrier", None))
        except UpstreamError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self.error(exc) from exc

    @staticmethod
    def discard(answer: Answer) -> None:
        """Close the connection ``answer`` was read from, so that nothing else is read from it.

        For an answer that belongs to another request (gateway/engine/echo.py): the
        connection's framing is off, and what follows on it — this request's own answer,
        still on its way — would be read as the next request's. By the time the answer is
        judged the connection is usually idle in the pool again; closed, it is dropped when
        the pool next looks at it. Should another call already have taken it (possible only
        if the answer came in several reads), that call fails as an unknown outcome, which
        its caller makes right — never as someone else's answer.
        """
        protocol = answer.carrier
        if protocol is not None and protocol.is_connected():
            protocol.close()

    async def _body(self, resp: aiohttp.ClientResponse) -> bytes:
        """The decompressed body, read as it arrives and abandoned past the cap."""
        cap, size, parts = self.max_response_bytes, 0, []
        content = resp.content
        while chunk := await content.readany():
            size += len(chunk)
            if size > cap:
                resp.close()
                raise UpstreamError("upstream_bad_response",
                                    f"{self.peer} answered more than {cap} bytes", kind="too_large", applied=None)
            parts.append(chunk)
        return b"".join(parts)

    def error(self, exc: BaseException) -> UpstreamError:
        """The one map from a transport failure to an iGSP error (see the module doc)."""
        peer = self.peer
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return UpstreamError("upstream_unavailable", f"{peer} not reachable (connect timeout)",
                                 kind="connect", applied=False)
        if isinstance(exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientConnectorSSLError)):
            return UpstreamError("upstream_unavailable", f"{peer} TLS handshake failed (certificate not trusted)",
                                 kind="tls", applied=False)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return UpstreamError("upstream_unavailable", f"{peer} not reachable", kind="connect", applied=False)
        if isinstance(exc, (TimeoutError, asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            return UpstreamError("upstream_timeout", f"{peer} did not answer in time", kind="timeout", applied=None)
        if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ClientResponseError)):
            # A body cut short also lands here: aiohttp reports a close mid-body and one it made
            # itself after a parse error alike. Either way the call was delivered.
            return UpstreamError("upstream_bad_response", f"{peer} answered malformed HTTP", kind="bad_body",
                                 applied=None)
        return UpstreamError("upstream_unavailable", f"{peer} connection failed", kind="reset", applied=None)

