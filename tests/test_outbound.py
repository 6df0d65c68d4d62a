"""gateway/outbound/http.py on its own: the one map from transport failures to iGSP errors, and
the client habits that keep a money call from being replayed.

Failures are injected with aioresponses; answers come from real loopback servers (the
installed aioresponses cannot build an aiohttp 3.14 response, only raise).
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aioresponses import aioresponses

from gateway.errors import UpstreamError
from gateway.outbound.http import DEFAULT_MAX_RESPONSE_BYTES, Outbound

URL = "http://wallet.test/bet"


@pytest.fixture
async def outbound():
    client = Outbound("legacy API", max_connections=4, connect_timeout=0.3)
    yield client
    await client.close()


@pytest.mark.parametrize(("exc", "code", "kind", "applied"), [
    (aiohttp.ConnectionTimeoutError(), "upstream_unavailable", "connect", False),
    (aiohttp.ClientConnectorError(None, OSError(111, "refused")), "upstream_unavailable", "connect", False),
    (TimeoutError(), "upstream_timeout", "timeout", None),
    (aiohttp.SocketTimeoutError(), "upstream_timeout", "timeout", None),
    (aiohttp.ServerDisconnectedError(), "upstream_unavailable", "reset", None),
    (aiohttp.ClientOSError(104, "reset"), "upstream_unavailable", "reset", None),
    (aiohttp.ClientPayloadError("bad chunk"), "upstream_bad_response", "bad_body", None),
    (aiohttp.ClientResponseError(None, (), status=400, message="Bad status line"), "upstream_bad_response",
     "bad_body", None),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v))
async def test_each_transport_failure_says_whether_money_may_have_moved(outbound, exc, code, kind, applied):
    with aioresponses() as mocked:
        mocked.post(URL, exception=exc)
        with pytest.raises(UpstreamError) as caught:
            await outbound.request("POST", URL, data=b"{}", timeout=1.0)
    error = caught.value
    assert (error.code, error.kind, error.applied, error.retriable) == (code, kind, applied, True)
    assert "wallet.test" not in error.message  # messages reach the iGSP caller: no URLs


async def answering(*answers: bytes):
    """A loopback server writing the next of ``answers`` to each request; returns (server, url, hits)."""
    hits = []

    async def handle(reader, writer):
        while head := await reader.readuntil(b"\r\n\r\n"):
            hits.append(head.split(b" ")[1].decode())
            writer.write(answers[min(len(hits), len(answers)) - 1])
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", hits


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_not_followed(outbound, status):
    server, url, hits = await answering(b"HTTP/1.1 %d Moved\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n"
                                        % status)
    try:
        with pytest.raises(UpstreamError) as caught:
            await outbound.request("POST", url + "/bet", data=b"{}", timeout=1.0)
    finally:
        server.close()
    assert hits == ["/bet"]
    assert (caught.value.code, caught.value.kind, caught.value.applied) == ("upstream_bad_response", "redirect", None)


async def test_an_answer_over_the_cap_is_refused_and_one_at_the_cap_is_read():
    server, url, _ = await answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2048\r\n\r\n" + b"x" * 2048,
                                     b"HTTP/1.1 200 OK\r\nContent-Length: 2049\r\n\r\n" + b"x" * 2049)
    client = Outbound("legacy API", max_response_bytes=2048)
    try:
        assert (await client.request("POST", url, timeout=1.0)).body == b"x" * 2048
        with pytest.raises(UpstreamError) as caught:
            await client.request("POST", url, timeout=1.0)
    finally:
        await client.close()
        server.close()
    assert (caught.value.code, caught.value.kind, caught.value.applied) == ("upstream_bad_response", "too_large", None)
    assert Outbound("x").max_response_bytes == DEFAULT_MAX_RESPONSE_BYTES == 1 << 20


async def test_timeouts_are_built_once_per_value(outbound):
    assert outbound.timeout(1.5) is outbound.timeout(1.5)
    assert outbound.timeout(1.5).total == 1.5 and outbound.timeout(1.5).connect == 0.3
    assert outbound.timeout(0.2).connect == 0.2  # never longer than the whole call


# -- real sockets on loopback ---------------------------------------------------------------------
async def test_a_get_failing_on_a_reused_connection_is_not_resent():
    """aiohttp resends an idempotent-method request once when a kept-alive connection turns
    out dead; a legacy wallet may move money on a GET, so the gateway never lets it."""
    seen = []

    async def handle(reader, writer):
        while await reader.readuntil(b"\r\n\r\n"):
            seen.append(1)
            if len(seen) == 1:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
            else:
                writer.close()  # the second request: read, then hang up without answering
                return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/debit"
    client = Outbound("legacy API", max_connections=1)
    try:
        assert (await client.request("GET", url, timeout=2.0)).status == 200
        with pytest.raises(UpstreamError) as caught:
            await client.request("GET", url, timeout=2.0)
        assert caught.value.applied is None
        assert len(seen) == 2  # not 3
    finally:
        await client.close()
        server.close()


async def test_no_free_pooled_connection_within_the_connect_timeout_is_not_sent():
    release = asyncio.Event()
    seen = []

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        seen.append(1)
        await release.wait()  # keeps the only pooled connection busy
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/bet"
    client = Outbound("legacy API", max_connections=1, connect_timeout=0.2)
    try:
        first = asyncio.ensure_future(client.request("POST", url, data=b"{}", timeout=3.0))
        async with asyncio.timeout(2):
            while not seen:
                await asyncio.sleep(0.01)  # polling until the first request holds the connection
        with pytest.raises(UpstreamError) as caught:
            await client.request("POST", url, data=b"{}", timeout=3.0)
        assert (caught.value.code, caught.value.applied) == ("upstream_unavailable", False)
        assert len(seen) == 1
        release.set()
        with pytest.raises(UpstreamError):
            await first
    finally:
        await client.close()
        server.close()


async def test_cookies_a_wallet_sets_are_not_sent_back():
    cookies = []

    async def handle(reader, writer):
        while head := await reader.readuntil(b"\r\n\r\n"):
            cookies.append(b"cookie:" in head.lower())
            writer.write(b"HTTP/1.1 200 OK\r\nSet-Cookie: player=p1\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/balance"
    client = Outbound("legacy API")
    try:
        for _ in range(2):
            assert (await client.request("POST", url, data=b"{}", timeout=2.0)).body == b"{}"
        assert cookies == [False, False]
    finally:
        await client.close()
        server.close()
