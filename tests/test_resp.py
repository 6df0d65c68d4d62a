"""The lean pipelined Redis client of the ledger's hot path, against a real redis-server."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.exceptions import ResponseError

from gateway.store.base import StoreUnavailable
from gateway.store.resp import RespClient, supports
from tests.support import RedisServer


@pytest.fixture(scope="module")
def server():
    s = RedisServer(appendonly=False).start()
    yield s
    s.cleanup()


@pytest.fixture
async def client(server):
    c = RespClient(server.url.rsplit("/", 1)[0] + "/5", timeout=2.0)
    yield c
    await c.call("FLUSHDB")
    await c.close()


def test_supported_urls():
    assert supports("redis://127.0.0.1:6390/2") and supports("redis://user:pw@cache:6380")
    assert not supports("rediss://user:pw@cache:6380")  # TLS: the full client
    assert not supports("redis://127.0.0.1:6390/0?ssl_cert_reqs=none")  # options: the full client
    assert not supports("unix:///tmp/redis.sock")


async def test_concurrent_commands_share_one_connection_and_keep_their_order(client):
    results = await asyncio.gather(*(client.call("INCR", "n") for _ in range(300)))
    assert sorted(results) == list(range(1, 301))
    assert results == list(range(1, 301))  # issued in order, answered in order
    clients = (await client.call("CLIENT", "LIST")).decode().strip().splitlines()
    assert len([c for c in clients if "db=5" in c]) == 1
    assert await client.call("GET", "n") == b"300"
    assert await client.call("GET", "missing") is None
    assert await client.call("HGETALL", "missing") == []


async def test_error_replies_raise_and_leave_the_connection_usable(client):
    await client.call("SET", "text", "abc")
    with pytest.raises(ResponseError, match="not an integer"):
        await client.call("INCR", "text")
    assert await client.call("INCR", "other") == 1


async def test_scripts_run_by_sha_and_are_loaded_when_the_server_forgot_them(client):
    source = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
    assert await client.script(source, ["s"], [2]) == 2
    await client.call("SCRIPT", "FLUSH")
    assert await client.script(source, ["s"], [3]) == 5
    assert await client.script(source, ["s"], [1]) == 6


async def test_db_and_password_from_the_url(server):
    admin = RespClient(server.url)
    await admin.call("CONFIG", "SET", "requirepass", "s3cret-pw")
    try:
        locked = RespClient(server.url)
        with pytest.raises(StoreUnavailable):
            await locked.call("PING")
        wrong = RespClient(f"redis://:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(StoreUnavailable):
            await wrong.call("PING")
        good = RespClient(f"redis://:s3cret-pw@127.0.0.1:{server.port}/3")
        await good.call("SET", "where", "db3")
        assert await good.call("GET", "where") == b"db3"
        assert await admin.call("GET", "where") is None  # db 0 (authenticated before the password was set)
        await good.call("DEL", "where")
        await good.close()
    finally:
        await admin.call("CONFIG", "SET", "requirepass", "")
        await admin.close()


async def test_a_restarted_server_is_reconnected_and_an_outage_is_store_unavailable():
    server = RedisServer(appendonly=False).start()
    client = RespClient(server.url, timeout=2.0, connect_timeout=0.5)
    try:
        assert await client.call("SET", "k", "v") == b"OK"
        server.stop()
        with pytest.raises(StoreUnavailable):
            await client.call("GET", "k")
        server.start()
        assert await client.call("SET", "k", "again") == b"OK"  # a new connection, without being asked
        assert await client.call("GET", "k") == b"again"
    finally:
        await client.close()
        server.cleanup()


async def test_a_server_that_never_answers_times_out_as_store_unavailable():
    async def silent(reader, writer):
        await reader.read(1 << 16)
        await asyncio.sleep(10)

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = RespClient(f"redis://127.0.0.1:{port}/0", timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await client.call("GET", "k")
        assert time.monotonic() - started < 2
    finally:
        await client.close()
        listener.close()


async def test_a_command_whose_connection_dies_in_flight_is_sent_once_more_on_a_new_one(server):
    """The first connection carries the command to Redis and is cut before the answer
    comes back: the client resends it on a fresh connection (every command it is used
    for is safe twice), and the caller gets the answer."""
    connections = 0

    async def relay(reader, writer):
        nonlocal connections
        connections += 1
        first = connections == 1
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", server.port)

        async def pump(src, dst, cut_after_reply: bool):
            while data := await src.read(65536):
                if cut_after_reply:
                    writer.transport.abort()  # the answer is lost on the way back
                    return
                dst.write(data)
                await dst.drain()

        await asyncio.gather(pump(reader, upstream_writer, False), pump(upstream_reader, writer, first),
                             return_exceptions=True)
        upstream_writer.close()

    listener = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = RespClient(f"redis://127.0.0.1:{port}/0", timeout=2.0)
    direct = RespClient(server.url)
    try:
        assert await client.call("INCR", "resent") == 2  # applied twice: the first answer was lost
        assert connections == 2
        assert await direct.call("GET", "resent") == b"2"
        await direct.call("DEL", "resent")
    finally:
        await client.close()
        await direct.close()
        listener.close()
