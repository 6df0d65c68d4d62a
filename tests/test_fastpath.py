"""The lean hook front (gateway/fastpath.py): what it serves, what it hands to aiohttp.

In-process, on a real loopback socket, with a stand-in handler: these pin the
connection mechanics (framing, pipelining, keep-alive, hand-over, back-pressure, drain).
tests/test_fastpath_e2e.py compares a whole gateway with the front on and off.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct

import pytest
from aiohttp import web

from gateway.fastpath import FastFront

PATH = "/platforms/game-provider/hooks"


async def middleware(request, handler):
    response = await handler(request)
    response.headers["X-Request-ID"] = request.headers.get("X-Request-ID", "fresh")
    return response


async def handler(request):
    body = await request.read()
    if body == b"slow":
        await asyncio.sleep(0.3)
    if body == b"boom":
        raise RuntimeError("secret-detail")
    answer = {"served_by": "front", "body": body.decode(), "auth": request.headers.get("authorization"),
              "path": request.path, "method": request.method}
    return web.Response(status=201 if body == b"created" else 200, body=json.dumps(answer).encode(),
                        content_type="application/json")


async def via_aiohttp(request: web.BaseRequest) -> web.Response:
    body = await request.read()
    answer = {"served_by": "aiohttp", "body": body.decode(), "path": request.path_qs, "method": request.method}
    return web.Response(body=json.dumps(answer).encode(), content_type="application/json")


@pytest.fixture
async def served():
    """(front, host, port): the front on a free loopback port, aiohttp's low-level server behind it."""
    aio = web.Server(via_aiohttp)
    front = FastFront(None, aio, PATH, handler, middleware, max_body_bytes=1024, max_header_bytes=2048,
                      keepalive_seconds=0.5)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(front, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield front, "127.0.0.1", port
    server.close()
    await aio.shutdown(1)
    for conn in list(front.connections):
        conn.close()


def hook(body: bytes = b"{}", *, extra: str = "", path: str = PATH, version: str = "HTTP/1.1") -> bytes:
    head = f"POST {path} {version}\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict, bytes]:
    status_line = await asyncio.wait_for(reader.readline(), 5)
    assert status_line.startswith(b"HTTP/1."), status_line
    headers = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


async def exchange(port: int, raw: bytes, answers: int = 1):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    out = [await read_response(reader) for _ in range(answers)]
    writer.close()
    return out


async def test_a_plain_hook_is_served_by_the_front_with_aiohttps_headers(served):
    front, _, port = served
    [(status, headers, body)] = await exchange(port, hook(b'{"a":1}', extra="X-Request-ID: r-1\r\n"))
    assert status == 200
    assert json.loads(body) == {"served_by": "front", "body": '{"a":1}', "auth": "Bearer k", "path": PATH,
                                "method": "POST"}
    assert headers["content-type"] == "application/json" and headers["x-request-id"] == "r-1"
    assert headers["content-length"] == str(len(body)) and headers["date"].endswith("GMT")
    assert headers["server"].startswith("Python/") and "connection" not in headers
    assert front.served == 1 and front.delegated == 0


@pytest.mark.parametrize("raw", [
    hook(path=PATH + "?x=1"),  # a query string
    hook(path="/healthz"),  # another route
    hook(version="HTTP/1.0"),
    b"GET " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    hook(extra="Expect: 100-continue\r\n"),
    hook(extra="Content-Encoding: identity\r\n"),
    hook(extra="Authorization: Bearer other\r\n"),  # a second Authorization field
    hook(extra="Connection: Upgrade\r\n"),
    hook(extra="X-Odd : spaced name\r\n"),
    hook(extra="X-Folded: a\r\n continued\r\n"),
    b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"POST " + PATH.encode() + b" HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}",  # bare LF line ends
    hook(b"x" * 1025),  # over max_body_bytes
    hook(extra="X-Big: " + "b" * 2100 + "\r\n"),  # over max_header_bytes
], ids=["query", "other-path", "http10", "get", "expect", "content-encoding", "duplicate", "upgrade", "odd-name",
        "folded", "chunked", "bare-lf", "big-body", "big-head"])
async def test_any_other_shape_is_handed_to_aiohttp_with_nothing_lost(served, raw):
    front, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    status, headers, body = await read_response(reader)
    writer.close()
    assert front.delegated == 1 and front.served == 0
    if status == 200:
        assert json.loads(body)["served_by"] == "aiohttp"
    else:
        assert status in (400, 413, 417, 431), (status, body)  # aiohttp's own refusal


async def test_pipelined_hooks_are_answered_in_order_then_a_later_shape_goes_to_aiohttp(served):
    front, _, port = served
    raw = hook(b"slow") + hook(b"two") + hook(b"created") + hook(path="/other") + hook(b"after-handover")
    answers = await exchange(port, raw, answers=5)
    assert [a[0] for a in answers] == [200, 200, 201, 200, 200]
    seen = [(json.loads(a[2])["served_by"], json.loads(a[2])["body"]) for a in answers]
    assert seen == [("front", "slow"), ("front", "two"), ("front", "created"), ("aiohttp", "{}"),
                    ("aiohttp", "after-handover")]
    assert front.served == 3 and front.delegated == 1


async def test_a_request_split_into_single_bytes_is_put_back_together(served):
    front, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for byte in hook(b'{"split":true}'):
        writer.write(bytes([byte]))
        await writer.drain()
    status, _, body = await read_response(reader)
    writer.close()
    assert status == 200 and json.loads(body)["body"] == '{"split":true}' and front.served == 1


async def test_connection_close_is_honoured(served):
    _, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hook(extra="Connection: close\r\n"))
    _, headers, _ = await read_response(reader)
    assert headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the server
    writer.close()


async def test_a_half_closed_client_still_gets_its_answer(served):
    _, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hook(b"slow"))
    writer.write_eof()
    status, _, body = await read_response(reader)
    assert status == 200 and json.loads(body)["body"] == "slow"
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()


async def test_a_handler_crash_is_a_plain_500_without_details(served):
    _, _, port = served
    [(status, headers, body)] = await exchange(port, hook(b"boom"))
    assert status == 500 and json.loads(body)["error"] == "internal_error"
    assert b"secret-detail" not in body and headers["connection"] == "close"


async def test_idle_keep_alive_connections_are_closed(served):
    front, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hook())
    await read_response(reader)
    assert await asyncio.wait_for(reader.read(), 3) == b""  # keepalive_seconds=0.5
    assert not front.connections
    writer.close()


async def test_a_client_that_stops_reading_stops_being_read(served):
    """Pipelined requests of a client that reads no answers pile up in the socket, not in us."""
    front, _, port = served
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    batch = hook() * 100
    for _ in range(2000):  # up to 200,000 requests, never reading an answer
        writer.write(batch)
        try:
            await asyncio.wait_for(writer.drain(), 0.5)
        except TimeoutError:
            break  # the gateway stopped reading: back-pressure reached the client
    else:
        pytest.fail("the server kept reading although nobody took its answers")
    [conn] = front.connections
    served = -1
    for _ in range(100):  # what it had read already is still answered: wait until that stops
        if front.served == served:
            break
        served = front.served
        await asyncio.sleep(0.2)
    assert front.served == served  # nothing more is worked on until the client reads...
    assert conn.paused_writing and conn.paused_reading  # ...because its answers are not taken
    assert len(conn.buf) < 1024 * 1024
    writer.transport.abort()


async def test_draining_closes_idle_connections_and_finishes_in_flight_ones(served):
    front, _, port = served
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    idle_writer.write(hook())
    await read_response(idle_reader)
    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
    busy_writer.write(hook(b"slow"))
    await asyncio.sleep(0.05)
    front.close_idle()
    assert await asyncio.wait_for(idle_reader.read(), 2) == b""
    await front.wait_closed(asyncio.get_running_loop().time() + 5)
    status, headers, body = await read_response(busy_reader)
    assert status == 200 and json.loads(body)["body"] == "slow" and headers["connection"] == "close"
    idle_writer.close()
    busy_writer.close()


async def test_draining_waits_for_a_request_whose_client_has_gone(served):
    front, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hook(b"slow"))
    await writer.drain()
    await asyncio.sleep(0.05)
    # The client gives up (a reset, not a half-close); the request is still being answered.
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    for _ in range(100):
        if not front.connections:
            break
        await asyncio.sleep(0.01)
    assert not front.connections and len(front.inflight) == 1 and front.served == 0
    front.close_idle()
    started = asyncio.get_running_loop().time()
    await front.wait_closed(started + 5)
    assert not front.inflight and front.served == 1
    assert asyncio.get_running_loop().time() - started >= 0.1  # it did wait for the slow answer


# -- the front reads a request exactly as aiohttp's parser does -------------------------------
from hypothesis import HealthCheck, assume, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gateway.fastpath import plain_request  # noqa: E402

_NAMES = st.one_of(
    st.sampled_from(["Authorization", "X-Timestamp", "X-Signature", "Content-Type", "X-Request-ID", "Host",
                     "connection", "Connection", "Content-Length", "content-length", "Transfer-Encoding", "Expect",
                     "X-Odd Name", "X:Colon", "", "Ümlaut", "X-A", "x-a", "TE", "Upgrade"]),
    st.text(alphabet="abcXYZ-_!#~09", min_size=1, max_size=8),
)
_VALUES = st.one_of(
    st.sampled_from(["close", "keep-alive", "Close", "KEEP-ALIVE", "upgrade", "keep-alive, close", "chunked", "2",
                     "+2", "02", " 2", "2 ", "2,2", "-1", "99999999999999", "Bearer k", ""]),
    st.text(alphabet=" \t\x00\x01\x7fé\r\nabcAZ09\"'=;,", max_size=12),
)


def _raw_request(draw_fields, body: bytes, with_length: bool, eol: str) -> bytes:
    head = [f"POST {PATH} HTTP/1.1"] + [f"{name}:{value}" for name, value in draw_fields]
    if with_length:
        head.append(f"Content-Length: {len(body)}")
    return (eol.join(head) + eol + eol).encode("utf-8", "surrogateescape") + body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=bool(os.environ.get("CI")))
@given(extra=st.lists(st.tuples(_NAMES, _VALUES), max_size=5), host=_VALUES, body=st.binary(max_size=40),
       with_length=st.sampled_from([True, True, True, False]), eol=st.sampled_from(["\r\n"] * 5 + ["\n"]),
       order=st.randoms(use_true_random=False))
def test_whatever_the_front_accepts_aiohttps_parser_reads_the_same_way(extra, host, body, with_length, eol, order):
    from aiohttp.base_protocol import BaseProtocol
    from aiohttp.http_parser import HttpRequestParser

    fields = [("Host", host), *extra]
    order.shuffle(fields)
    raw = _raw_request(fields, body, with_length, eol)
    end = raw.find(b"\r\n\r\n")
    accepted = plain_request(bytearray(raw), end, f"POST {PATH} HTTP/1.1".encode(), 1024) if end >= 0 else None
    # What the front refuses is handed to aiohttp, which answers as it would without the front.
    assume(accepted is not None and len(raw) - end - 4 >= accepted[2])  # the body all here
    note(repr(raw))
    fields_seen, close, length = accepted

    async def parse():
        loop = asyncio.get_running_loop()
        parser = HttpRequestParser(BaseProtocol(loop), loop, 2 ** 16, max_line_size=8190, max_field_size=8190)
        messages, _, _ = parser.feed_data(raw)
        message, payload = messages[0]
        return message, await payload.read()

    message, parsed_body = asyncio.run(parse())  # aiohttp must accept it: no exception
    assert message.method == "POST" and message.path == PATH and message.version == (1, 1)
    assert [(k.lower(), v) for k, v in message.headers.items()] == [(k.lower(), v) for k, v in fields_seen.items()]
    assert message.should_close == close
    assert parsed_body == raw[end + 4:end + 4 + length]
