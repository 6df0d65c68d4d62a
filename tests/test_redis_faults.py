"""Every Redis script of the store, through a fault-injecting TCP proxy to a real redis-server.

The proxy sits between the store's connection pool and a private redis-server and, for the
one command it is armed for (matched by its script's SHA), does one of:

* ``lost``: the command reaches Redis and runs; its reply is dropped and the connection reset;
* ``reset``: the connection is reset before the command reaches Redis (it never ran);
* ``late``: the reply is held past the store's socket timeout, then written to the connection
  the client has given up on;
* ``unsolicited``: the reply is followed by a second, bogus reply on the same pooled connection,
  which the next command must never read as its own.

In every case the caller gets the answer a fault-free run gives, and the store is left as a
fault-free run leaves it (redis-py resends on a new connection, every script is safe to run
twice — redis_scripts.py — and a pooled connection with unread data is never handed out).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from gateway.faces.wallet import COMPENSATION
from gateway.store import OnceKey, QueueEntry, TxRecord, open_store
from gateway.store import redis_scripts as lua
from gateway.store.base import APPLIED, DONE, PENDING, QUEUED, Resolution, TransactionBusy
from tests.support import RedisServer

MODES = ("lost", "reset", "late", "unsolicited")
SOCKET_TIMEOUT = 0.5  # the store's, in these tests: a "late" reply comes after it


class FaultProxy:
    def __init__(self, port: int):
        self.target, self.armed, self.mode, self.fired = port, None, None, 0
        self._tasks: set[asyncio.Task] = set()

    def arm(self, mode: str, marker: bytes) -> None:
        self.mode, self.armed, self.fired = mode, marker, 0

    async def start(self) -> FaultProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self.server.close()
        for task in list(self._tasks):
            task.cancel()

    async def _serve(self, client_r, client_w):
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.target)
        faulted = asyncio.Event()  # the armed command went up this connection
        mode = None

        async def up():
            nonlocal mode
            while data := await client_r.read(65536):
                if self.armed is not None and self.armed in data:
                    mode, self.armed, self.fired = self.mode, None, self.fired + 1
                    if mode == "reset":
                        client_w.transport.abort()
                        return
                    faulted.set()
                redis_w.write(data)
                await redis_w.drain()

        async def down():
            while data := await redis_r.read(65536):
                if faulted.is_set():
                    faulted.clear()
                    if mode == "lost":
                        client_w.transport.abort()
                        return
                    if mode == "late":
                        await asyncio.sleep(SOCKET_TIMEOUT * 2)  # the client has timed out by now
                    if mode == "unsolicited":
                        data += b"+OK\r\n:1\r\n"  # two replies nobody asked for
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
                self._tasks.discard(task)
            redis_w.close()
            client_w.close()


@pytest.fixture(scope="module")
def server():
    s = RedisServer().start()
    yield s
    s.cleanup()


@pytest.fixture
async def faulty(server):
    proxy = await FaultProxy(server.port).start()
    store = open_store(f"redis://127.0.0.1:{proxy.port}/0", namespace=f"f-{uuid.uuid4().hex[:12]}")
    store.socket_timeout = SOCKET_TIMEOUT
    await store.open()
    for name in lua.SCRIPTS:  # loaded up front: the armed command is the script's own run
        await store.r.script_load(getattr(lua, name))
    yield store, proxy
    await store.close()
    await proxy.close()


def rec(txid: str) -> TxRecord:
    return TxRecord("acme", txid, "bet", "fp", payload=b'{"a":1}')


def entry(**kw) -> QueueEntry:
    return QueueEntry(id=uuid.uuid4().hex, route="wallet", payload={"op": "win", "amount": "10.50"}, **kw)


async def _begun(store):
    await store.tx_begin(rec("b"), 60)


async def _begun_and_voided(store):
    await store.tx_begin(rec("b"), 60)
    await store.tx_void("acme", "b", "rf-1")


async def _two_more_takes(store):
    return [await store.rate_take("acme", 0.01, 2) for _ in range(2)]


# script -> (setup, the armed call, what it answers, a read-back, what must hold of it).
SCENARIOS = {
    "TX_BEGIN": (None, lambda s: s.tx_begin(rec("b"), 60), None,
                 lambda s: s.tx_get("acme", "b"), lambda r: r.state == PENDING and r.payload == b'{"a":1}'),
    "TX_FINISH": (_begun, lambda s: s.tx_finish("acme", "b", DONE, 200, b'{"balance":1}', 60), None,
                  lambda s: s.tx_get("acme", "b"), lambda r: (r.state, r.status, r.body) == (DONE, 200, b'{"balance":1}')),
    "TX_VOID": (_begun, lambda s: s.tx_void("acme", "b", COMPENSATION), None,
                lambda s: s.tx_void("acme", "b", COMPENSATION), lambda again: again == COMPENSATION),
    "TX_UNVOID": (_begun_and_voided, lambda s: s.tx_unvoid("acme", "b", "rf-1"), None,
                  lambda s: s.tx_get("acme", "b"), lambda r: r.voided_by is None),
    "TX_FORGET": (_begun, lambda s: s.tx_forget("acme", "b"), None,
                  lambda s: s.tx_get("acme", "b"), lambda r: r is None),
    "CLAIM": (None, lambda s: s.claim(OnceKey("sig", "k", 60)), True,
              lambda s: s.claim(OnceKey("sig", "k", 60)), lambda again: again is False),
    "KV_PUT_NEW": (None, lambda s: s.kv_put("hookq", "k", b"1", ttl=60, only_new=True), True,
                   lambda s: s.kv_get("hookq", "k"), lambda v: v == b"1"),
    # A bucket of two: the armed request counted once leaves exactly one more.
    "RATE_TAKE": (None, lambda s: s.rate_take("acme", 0.01, 2), 0.0,
                  _two_more_takes, lambda answers: answers[0] == 0.0 and answers[1] > 0),
}


async def queue_scenario(store, proxy, mode: str, script: str) -> None:
    """The queue scripts, each armed in turn on its own entry."""
    e = entry()
    if script == "Q_PUT":
        proxy.arm(mode, store._scripts["Q_PUT"].sha.encode())
        await store.q_put(e)
        assert [got.id for got in await store.q_claim("a", 10, 30)] == [e.id]
        return
    if script == "Q_PROMOTE":  # a delayed entry falling due, moved into its stream
        later = entry(next_at=time.time() + 0.3)
        await store.q_put(later)
        proxy.arm(mode, store._scripts["Q_PROMOTE"].sha.encode())
        deadline = time.monotonic() + 30
        while not (got := await store.q_claim("a", 10, 30)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert [g.id for g in got] == [later.id]
        assert await store.q_claim("b", 10, 30) == []  # in the stream once
        return
    await store.q_put(e)
    if script in ("Q_CLAIM", "Q_LEASE"):
        proxy.arm(mode, store._scripts[script].sha.encode())
        assert [got.id for got in await store.q_claim("a", 10, 30)] == [e.id]
        assert await store.q_claim("b", 10, 30) == []  # still leased to "a", given once
        return
    [claimed] = await store.q_claim("a", 10, 30)
    if script == "Q_ACK":
        proxy.arm(mode, store._scripts["Q_ACK"].sha.encode())
        await store.q_ack(claimed)
        assert (await store.q_stats())["depth"] == 0
        await store.q_put(e)  # a delivered entry is not queued again
        assert await store.q_claim("b", 10, 30) == []
    elif script == "Q_RETRY":
        proxy.arm(mode, store._scripts["Q_RETRY"].sha.encode())
        await store.q_retry(claimed, time.time(), "down")
        [again] = await store.q_claim("b", 10, 30)
        assert again.id == e.id and again.attempts == 1  # counted once
    elif script == "Q_DEAD":
        proxy.arm(mode, store._scripts["Q_DEAD"].sha.encode())
        await store.q_dead(claimed, "gave up")
        assert [d.id for d in await store.dlq_list()] == [e.id] and await store.q_claim("b", 10, 30) == []
    elif script == "DLQ_REPLAY":
        await store.q_dead(claimed, "gave up")
        proxy.arm(mode, store._scripts["DLQ_REPLAY"].sha.encode())
        assert await store.dlq_replay(e.id) is True
        [again] = await store.q_claim("b", 10, 30)
        assert again.id == e.id and again.attempts == 0 and await store.dlq_list() == []
    elif script == "DLQ_SETTLE_UNLOCK":  # a refused closing leaves an ordinary dead letter
        await store.tx_begin(TxRecord("acme", "w-1", "win", "fp"), 60)
        await store.q_dead(claimed, "unknown outcome")
        proxy.arm(mode, store._scripts["DLQ_SETTLE_UNLOCK"].sha.encode())
        with pytest.raises(TransactionBusy):
            await store.dlq_settle(e.id, Resolution(APPLIED, "acme", "w-1", 200, b'{"balance":1}'), 60)
        assert await store.dlq_replay(e.id) is True
    elif script in ("DLQ_SETTLE_LOCK", "TX_SETTLE", "DLQ_SETTLE"):
        await store.tx_begin(TxRecord("acme", "w-1", "win", "fp"), 60)
        await store.tx_finish("acme", "w-1", QUEUED, 503, b"in progress", 60)
        await store.q_dead(claimed, "unknown outcome")
        proxy.arm(mode, store._scripts[script].sha.encode())
        done = await store.dlq_settle(e.id, Resolution(APPLIED, "acme", "w-1", 200, b'{"balance":1}'), 60)
        assert (done.outcome, done.status, done.ledger) == (APPLIED, 200, "finished")
        got = await store.tx_get("acme", "w-1")
        assert (got.state, got.status, got.body) == (DONE, 200, b'{"balance":1}') and await store.dlq_list() == []
    elif script == "DLQ_PURGE":
        await store.q_dead(claimed, "gave up")
        proxy.arm(mode, store._scripts["DLQ_PURGE"].sha.encode())
        assert await store.dlq_purge(e.id) == 1
        assert await store.dlq_list() == [] and (await store.q_stats())["dead"] == 0
    else:
        raise AssertionError(script)


QUEUE_SCRIPTS = ("Q_PUT", "Q_PROMOTE", "Q_CLAIM", "Q_LEASE", "Q_ACK", "Q_RETRY", "Q_DEAD", "DLQ_REPLAY",
                 "DLQ_SETTLE_LOCK", "TX_SETTLE", "DLQ_SETTLE", "DLQ_SETTLE_UNLOCK", "DLQ_PURGE")


def test_every_script_has_a_fault_scenario():
    assert set(SCENARIOS) | set(QUEUE_SCRIPTS) == set(lua.SCRIPTS)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("script", sorted(SCENARIOS))
async def test_ledger_and_kv_scripts_under_a_fault(faulty, mode, script):
    store, proxy = faulty
    setup, call, expected, read_back, holds = SCENARIOS[script]
    if setup is not None:
        await setup(store)
    proxy.arm(mode, store._scripts[script].sha.encode())
    assert await call(store) == expected
    assert proxy.fired == 1, "the fault was not injected"
    # The next command on the pool (the "unsolicited" connection's, if it were reused) reads
    # its own answer.
    assert holds(await read_back(store))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("script", QUEUE_SCRIPTS)
async def test_queue_scripts_under_a_fault(faulty, mode, script):
    store, proxy = faulty
    await queue_scenario(store, proxy, mode, script)
    assert proxy.fired == 1, "the fault was not injected"
