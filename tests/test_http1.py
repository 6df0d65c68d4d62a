"""The lean HTTP/1.1 client against real servers on loopback.

It replaced aiohttp's client for plain-HTTP legacy APIs, so it must put the same
request on the wire, read every framing a server may use, and fail with the exception
types ``gateway.upstream`` classifies (connect refused/timeout: nothing sent; read
timeout, reset, truncation: outcome unknown).
"""

from __future__ import annotations

import asyncio
import gzip
import socket

import aiohttp
import pytest
from aiohttp import web

from gateway.http1 import Http1Client


class Recorder:
    """An aiohttp server that records what it received and answers per path."""

    def __init__(self):
        self.seen: list[dict] = []
        self.peers: list = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, **runner_args) -> Recorder:
        self.runner = web.AppRunner(self.app, access_log=None, **runner_args)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append({"method": request.method, "path": request.path_qs, "headers": dict(request.headers),
                          "body": body})
        self.peers.append(request.transport.get_extra_info("peername"))
        path = request.path
        if path == "/slow":
            await asyncio.sleep(float(request.query.get("s", "1")))
        if path == "/chunked":
            resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for part in (b"first,", b"second,", b"third"):
                await resp.write(part)
            await resp.write_eof()
            return resp
        if path == "/gzip":
            return web.Response(body=gzip.compress(b'{"zipped":true}'),
                                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        if path == "/close":
            return web.Response(text="bye", headers={"Connection": "close"})
        if path == "/empty":
            return web.Response(status=204)
        if path == "/redirect":
            raise web.HTTPFound("/target?from=redirect")
        return web.json_response({"status": "ok", "method": request.method, "len": len(body)})


@pytest.fixture
async def server():
    srv = await Recorder().start()
    yield srv
    await srv.stop()


@pytest.fixture
async def client():
    c = Http1Client(limit=10, headers={"X-Static": "static-1"})
    yield c
    await c.close()


async def test_post_puts_the_same_request_on_the_wire_as_aiohttp(server, client):
    body = b'{"amount":1.50}'
    headers = {"Content-Type": "application/json", "X-Request-ID": "rid-1"}
    status, content_type, raw = await client.request("POST", server.url + "/wallet/bet", params={"a": "1 2", "b": "é"},
                                                     body=body, headers=headers)
    assert status == 200 and content_type.startswith("application/json")
    assert raw == b'{"status": "ok", "method": "POST", "len": 15}'
    ours = server.seen[-1]
    async with aiohttp.ClientSession(headers={"X-Static": "static-1"}, skip_auto_headers=("User-Agent",)) as session:
        async with session.post(server.url + "/wallet/bet", params={"a": "1 2", "b": "é"}, data=body,
                                headers=headers) as resp:
            await resp.read()
    theirs = server.seen[-1]
    assert ours["path"] == theirs["path"] == "/wallet/bet?a=1+2&b=%C3%A9"
    assert ours["body"] == theirs["body"] == body
    assert {k.lower(): v for k, v in ours["headers"].items()} == {k.lower(): v for k, v in theirs["headers"].items()}


async def test_connections_are_kept_alive_and_reused(server, client):
    for _ in range(5):
        status, _, _ = await client.request("GET", server.url + "/x")
        assert status == 200
    assert len(set(server.peers)) == 1


async def test_chunked_and_gzip_and_bodyless_answers(server, client):
    assert (await client.request("GET", server.url + "/chunked"))[2] == b"first,second,third"
    assert (await client.request("GET", server.url + "/gzip"))[2] == b'{"zipped":true}'
    assert await client.request("DELETE", server.url + "/empty") == (204, "", b"")
    assert (await client.request("GET", server.url + "/x"))[0] == 200  # still in sync after all three


async def test_connection_close_answer_then_a_fresh_connection(server, client):
    assert (await client.request("GET", server.url + "/close"))[2] == b"bye"
    assert (await client.request("GET", server.url + "/x"))[0] == 200
    assert len(set(server.peers)) == 2


async def test_idle_connection_closed_by_the_server_is_not_an_error(client):
    srv = await Recorder().start(keepalive_timeout=0.1)
    try:
        assert (await client.request("GET", srv.url + "/x"))[0] == 200
        await asyncio.sleep(0.4)  # the server drops the idle connection meanwhile
        assert (await client.request("POST", srv.url + "/x", body=b"{}"))[0] == 200
        assert len(set(srv.peers)) == 2
    finally:
        await srv.stop()


async def test_redirect_after_post_becomes_a_get(server, client):
    status, _, raw = await client.request("POST", server.url + "/redirect", body=b"{}",
                                          headers={"Content-Type": "application/json"})
    assert status == 200 and b'"method": "GET"' in raw
    assert server.seen[-1]["path"] == "/target?from=redirect" and server.seen[-1]["body"] == b""


async def test_read_timeout_is_a_socket_timeout_and_the_connection_is_dropped(server, client):
    with pytest.raises(aiohttp.SocketTimeoutError) as caught:
        await client.request("POST", server.url + "/slow?s=1", body=b"{}", total=0.2)
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, aiohttp.ServerTimeoutError)
    assert not isinstance(caught.value, aiohttp.ConnectionTimeoutError)
    await asyncio.sleep(1.0)
    assert (await client.request("GET", server.url + "/x"))[0] == 200  # a new connection, not the stale one


async def test_connect_refused_is_a_connector_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
        client = Http1Client()
        with pytest.raises(aiohttp.ClientConnectorError):
            await client.request("POST", f"http://127.0.0.1:{port}/x", body=b"{}")
        await client.close()


async def test_no_free_connection_in_time_is_a_connect_timeout(server):
    client = Http1Client(limit=1)
    busy = asyncio.ensure_future(client.request("GET", server.url + "/slow?s=0.5"))
    await asyncio.sleep(0.05)
    with pytest.raises(aiohttp.ConnectionTimeoutError):
        await client.request("POST", server.url + "/x", body=b"{}", total=0.1)
    assert (await busy)[0] == 200
    assert [s["method"] for s in server.seen] == ["GET"]  # the refused one never left
    await client.close()


async def test_header_injection_is_refused_before_sending(server, client):
    with pytest.raises(ValueError):
        await client.request("POST", server.url + "/x", body=b"{}", headers={"X-Player": "p1\r\nX-Evil: 1"})
    assert server.seen == []


class RawServer:
    """A server that answers each connection with fixed bytes, then maybe closes."""

    def __init__(self, answer: bytes, close: bool):
        self.answer, self.close = answer, close

    async def start(self) -> str:
        outer = self

        class Proto(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                if b"\r\n\r\n" in data:
                    self.transport.write(outer.answer)
                    if outer.close:
                        self.transport.close()

        self.server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.parametrize(("answer", "close", "expected"), [
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end", True, (200, "text/plain", b"to the end")),
    (b"HTTP/1.0 500 Oops\r\nContent-Length: 4\r\n\r\nhtml", False, (500, "", b"html")),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False, (200, "", b"ok")),
])
async def test_raw_framings(answer, close, expected):
    raw = RawServer(answer, close)
    url = await raw.start()
    client = Http1Client()
    try:
        assert await client.request("POST", url + "/x", body=b"{}") == expected
    finally:
        await client.close()
        await raw.stop()


@pytest.mark.parametrize(("answer", "error"), [
    (b"", aiohttp.ServerDisconnectedError),                                          # closed, no answer
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", aiohttp.ClientPayloadError),  # truncated body
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", aiohttp.ClientPayloadError),
    (b"garbage\r\n\r\n", aiohttp.ClientResponseError),                               # not HTTP at all
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nbad", aiohttp.ClientPayloadError),
])
async def test_broken_answers_raise_what_upstream_classifies(answer, error):
    raw = RawServer(answer, True)
    url = await raw.start()
    client = Http1Client()
    try:
        with pytest.raises(error) as caught:
            await client.request("POST", url + "/x", body=b"{}")
        assert isinstance(caught.value, aiohttp.ClientError)
        assert not isinstance(caught.value, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
    finally:
        await client.close()
        await raw.stop()
