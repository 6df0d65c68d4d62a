"""A Redis command whose reply is lost is sent again by redis-py: every script must then
change nothing and answer as its first run did (redis_scripts.py says why each does).

Against a private redis-server: each store call's script is run a second time with the very
arguments the store sent (what redis-py's resend does), and the answer and the whole
namespace must be unchanged. Then a loopback proxy lets a command reach Redis, drops its
reply and breaks the connection: the store's own resend must give the caller the right answer.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from gateway.faces.wallet import COMPENSATION
from gateway.store import OnceKey, QueueEntry, TxRecord, open_store
from gateway.store.base import (
    APPLIED,
    DONE,
    NOT_APPLIED,
    PENDING,
    PURGED,
    QUEUED,
    Resolution,
    StoreUnavailable,
    TransactionBusy,
    TransactionOpen,
)
from tests.support import RedisServer, free_port


@pytest.fixture(scope="module")
def server():
    s = RedisServer().start()
    yield s
    s.cleanup()


@pytest.fixture
async def store(server):
    s = open_store(server.url, namespace=f"t-{uuid.uuid4().hex[:12]}")
    await s.open()
    yield s
    await s.close()


def rec(txid="tx-1", action="bet", fp="fp-1"):
    return TxRecord("acme", txid, action, fp)


def entry(next_at=0.0, **kw):
    return QueueEntry(id=uuid.uuid4().hex, route="wallet", payload={"op": "win", "amount": "10.50"},
                      next_at=next_at, **kw)


async def snapshot(store) -> dict:
    """Every key of the store's namespace and its content (not its remaining TTL).

    A key with less than two seconds to live is left out: it may expire between two
    snapshots (a claim's memo lives only as long as the claim's lease, 0.2 s in some tests)."""
    r, out = store.r, {}
    async for key in r.scan_iter(f"{store.ns}:*"):
        if 0 <= await r.pttl(key) < 2000:
            continue
        kind = (await r.type(key)).decode()
        if kind == "none":  # expired since the scan saw it
            continue
        if kind == "hash":
            out[key] = await r.hgetall(key)
        elif kind == "string":
            out[key] = await r.get(key)
        elif kind == "zset":
            out[key] = await r.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            groups = await r.xinfo_groups(key)
            pending = [await r.xpending_range(key, g["name"], "-", "+", 100) for g in groups]
            out[key] = (await r.xrange(key), [(g["name"], g["pending"]) for g in groups],
                        [[(p["message_id"], p["consumer"]) for p in group] for group in pending])
        else:
            raise AssertionError(f"unexpected {kind} {key}")
    return out


async def twice(store, call):
    """Run ``call`` (one store operation), then send each script it sent again with the same
    arguments, as redis-py does after a lost reply: same answers, nothing changed."""
    sent, run = [], store._run

    async def spy(name, keys, args):
        answer = await run(name, keys, args)
        sent.append((name, keys, args, answer))
        return answer

    store._run = spy
    try:
        result = await call()
    finally:
        del store._run
    assert sent
    before = await snapshot(store)
    for name, keys, args, first in sent:  # dlq_purge() sends one script a batch
        assert await run(name, keys, args) == first, name
    assert await snapshot(store) == before, sent[0][0]
    return result


# -- each script run twice with the same arguments -------------------------------------------
async def test_tx_begin_twice_is_still_this_calls_own_record(store):
    assert await twice(store, lambda: store.tx_begin(rec(), 60)) is None
    tomb = rec("tx-2")
    tomb.state, tomb.status, tomb.body, tomb.voided_by, tomb.payload = DONE, 409, b"{}", "r-1", b'{"a":1}'
    assert await twice(store, lambda: store.tx_begin(tomb, 60)) is None
    # Anyone else still sees the records.
    assert (await twice(store, lambda: store.tx_begin(rec(fp="other"), 60))).fingerprint == "fp-1"
    again = await twice(store, lambda: store.tx_begin(rec("tx-2"), 60))
    assert (again.state, again.voided_by, again.payload) == (DONE, "r-1", b'{"a":1}')
    assert [r.txid for r in await store.tx_pending(time.time() + 1)] == ["tx-1"]


async def test_tx_finish_twice_and_never_back_from_done_to_queued(store):
    await store.tx_begin(rec("w-1", "win"), 60)
    await twice(store, lambda: store.tx_finish("acme", "w-1", QUEUED, 503, b"in progress", 60))
    # The queue delivers the win and finishes it; the "queued" write is then sent again.
    sent, run = [], store._run

    async def spy(name, keys, args):
        sent.append((name, keys, args))
        return await run(name, keys, args)

    store._run = spy
    await store.tx_finish("acme", "w-1", QUEUED, 503, b"in progress", 60)
    del store._run
    await twice(store, lambda: store.tx_finish("acme", "w-1", DONE, 200, b'{"balance":10.50}', 60))
    assert await run(*sent[0]) == 1
    got = await store.tx_get("acme", "w-1")
    assert (got.state, got.status, got.body) == (DONE, 200, b'{"balance":10.50}')


async def test_tx_void_twice_is_still_this_calls_void(store):
    """The reported bug: the resent compensation marker read as another replica settling."""
    await store.tx_begin(rec("bet-1"), 60)
    assert await twice(store, lambda: store.tx_void("acme", "bet-1", COMPENSATION)) is None
    # Another replica racing to settle the same orphan (its own call) is told it lost.
    assert await store.tx_void("acme", "bet-1", COMPENSATION) == COMPENSATION
    assert await twice(store, lambda: store.tx_void("acme", "bet-1", "rf-1")) == COMPENSATION
    assert await twice(store, lambda: store.tx_void("acme", "missing", "rf-1")) == "rf-1"


async def test_tx_unvoid_twice_changes_nothing_more(store):
    await store.tx_begin(rec("bet-1"), 60)
    await store.tx_void("acme", "bet-1", "rf-1")
    await twice(store, lambda: store.tx_unvoid("acme", "bet-1", "rf-1"))
    assert (await store.tx_get("acme", "bet-1")).voided_by is None
    assert await store.tx_void("acme", "bet-1", "rf-2") is None


async def test_tx_forget_resent_after_a_retry_began_keeps_the_retrys_record(store):
    await store.tx_begin(rec("bet-1"), 60)
    sent, run = [], store._run

    async def spy(name, keys, args):
        sent.append((name, keys, args))
        return await run(name, keys, args)

    store._run = spy
    await store.tx_forget("acme", "bet-1")
    del store._run
    assert await store.tx_begin(rec("bet-1", fp="retry"), 60) is None  # the client's retry starts afresh
    await run(*sent[0])  # ...and the forget's resend lands after it
    assert (await store.tx_get("acme", "bet-1")).fingerprint == "retry"
    await twice(store, lambda: store.tx_forget("acme", "bet-1"))
    assert await store.tx_get("acme", "bet-1") is None


async def test_once_key_claims_twice(store):
    assert await twice(store, lambda: store.claim(OnceKey("sig", "k1", 60))) is True
    assert await twice(store, lambda: store.claim(OnceKey("sig", "k1", 60))) is False
    assert await twice(store, lambda: store.kv_put("hookq", "acme:w-1", b"1", ttl=60, only_new=True)) is True
    assert await twice(store, lambda: store.kv_put("hookq", "acme:w-1", b"2", ttl=60, only_new=True)) is False
    assert await twice(store, lambda: store.kv_put("map", "k", b"v", only_new=True)) is True
    assert await store.kv_get("hookq", "acme:w-1") == b"1" and await store.kv_get("map", "k") == b"v"


async def test_rate_take_twice_is_one_request(store):
    """A granted request's token stays in the bucket's granted set: run again, it is granted
    again and takes nothing more. A refused one changed nothing, so running it again is a
    first run (its answer was never read)."""
    assert await twice(store, lambda: store.rate_take("acme", 0.01, 2)) == 0.0
    assert await store.rate_take("acme", 0.01, 2) == 0.0  # the second of two: counted once above
    refused = []

    async def spy(name, keys, args):
        refused.append((name, keys, args))
        return await run(name, keys, args)

    run = store._run
    store._run = spy
    try:
        assert await store.rate_take("acme", 0.01, 2) > 0
    finally:
        del store._run
    before = await snapshot(store)
    assert await run(*refused[0]) > 0
    assert await snapshot(store) == before


async def test_queue_scripts_twice(store):
    due, later = entry(max_attempts=3), entry(next_at=time.time() + 60)
    await twice(store, lambda: store.q_put(due))
    await twice(store, lambda: store.q_put(later))
    claimed = await twice(store, lambda: store.q_claim("a", 10, 30))
    assert [e.id for e in claimed] == [due.id]
    [e] = claimed
    await twice(store, lambda: store.q_retry(e, time.time(), "down"))
    [e] = await store.q_claim("a", 10, 30)
    assert e.attempts == 1
    await twice(store, lambda: store.q_dead(e, "gave up"))
    assert [d.id for d in await store.dlq_list()] == [due.id]
    assert await twice(store, lambda: store.dlq_replay(due.id)) is True
    [e] = await store.q_claim("a", 10, 30)
    assert e.attempts == 0
    await twice(store, lambda: store.q_ack(e))
    assert await store.q_stats() == {"depth": 1, "oldest_age": pytest.approx(0, abs=5), "dead": 0}
    await store.q_dead(later, "unknown outcome")
    assert await twice(store, lambda: store.dlq_purge(later.id)) == 1
    for _ in range(3):
        e = entry()
        await store.q_put(e)
        await store.q_dead(e, "x")
    assert await twice(store, lambda: store.dlq_purge()) == 3
    assert await store.q_stats() == {"depth": 0, "oldest_age": 0.0, "dead": 0}


async def test_q_put_of_a_dead_letter_twice(store):
    dead = entry(last_error="unknown outcome")
    await twice(store, lambda: store.q_put(dead, dead=True))
    assert [d.id for d in await store.dlq_list()] == [dead.id] and await store.q_claim("a", 10, 30) == []


async def refused(call):
    """The exception class ``call`` raised (a refusal is an answer too), or its result."""
    try:
        return await call
    except (TransactionOpen, TransactionBusy) as exc:
        return type(exc)


async def test_dlq_settle_twice_answers_the_first_resolution(store):
    await store.tx_begin(rec("bet-1"), 60)
    await store.tx_finish("acme", "bet-1", DONE, 200, b'{"balance":90.00}', 60)
    await store.tx_void("acme", "bet-1", "rf-1")
    await store.tx_begin(rec("rf-1", "refund"), 60)
    await store.tx_finish("acme", "rf-1", QUEUED, 503, b"in progress", 60)
    dead = entry()
    await store.q_put(dead)
    await store.q_dead(dead, "unknown outcome")
    # Refusals change nothing, resent or not.
    assert await twice(store, lambda: refused(store.dlq_settle(dead.id, Resolution(PURGED, "acme", "rf-1"), 60))) \
        is TransactionOpen
    not_applied = Resolution(NOT_APPLIED, "acme", "rf-1", 409, b'{"error":"transaction_not_applied"}', unvoid="bet-1")
    done = await twice(store, lambda: store.dlq_settle(dead.id, not_applied, 60))
    assert (done.outcome, done.status, done.ledger) == (NOT_APPLIED, 409, "finished")
    assert (await store.tx_get("acme", "bet-1")).voided_by is None
    # A new refund voids the bet; the first settle's resend must not release it again.
    assert await store.tx_void("acme", "bet-1", "rf-2") is None
    assert await twice(store, lambda: store.dlq_settle(dead.id, Resolution(APPLIED, "acme", "rf-1", 200, b"{}"),
                                                       60)) == done
    assert (await store.tx_get("acme", "bet-1")).voided_by == "rf-2"
    assert (await store.tx_get("acme", "rf-1")).status == 409
    # A put of the entry resent after it was closed does not queue it again.
    await store.q_put(dead)
    assert await store.q_claim("a", 10, 0.01) == [] and await store.dlq_list() == []
    await store.tx_begin(rec("w-2", "win"), 60)
    busy = entry()
    await store.q_put(busy)
    await store.q_dead(busy, "unknown outcome")
    assert await twice(store, lambda: refused(store.dlq_settle(busy.id, Resolution(APPLIED, "acme", "w-2", 200, b"{}"),
                                                               60))) is TransactionBusy
    assert (await store.tx_get("acme", "w-2")).state == PENDING and [d.id for d in await store.dlq_list()] == [busy.id]
    assert await twice(store, lambda: store.dlq_settle("nope", Resolution(PURGED), 60)) is None


async def test_q_put_resent_after_delivery_does_not_queue_it_again(store):
    e = entry()
    sent, run = [], store._run

    async def spy(name, keys, args):
        sent.append((name, keys, args))
        return await run(name, keys, args)

    store._run = spy
    await store.q_put(e)
    del store._run
    [got] = await store.q_claim("a", 10, 30)
    await store.q_ack(got)  # delivered before the put's resend arrives
    await run(*sent[0])
    assert await store.q_claim("b", 10, 0.01) == []
    assert (await store.q_stats())["depth"] == 0


async def test_redis_stale_worker_and_rerun_tokens_do_not_mix(store):
    """A worker whose lease was taken over stays powerless, resends or not."""
    await store.q_put(entry(max_attempts=3))
    [stale] = await store.q_claim("crashed", 10, 0.2)
    deadline = time.monotonic() + 5
    while not (taken := await store.q_claim("live", 10, 0.2)):
        assert time.monotonic() < deadline
    [live] = taken
    await twice(store, lambda: store.q_dead(stale, "late"))
    await twice(store, lambda: store.q_retry(live, time.time() + 60, "still down"))
    await twice(store, lambda: store.q_retry(stale, time.time(), "late"))
    assert await store.dlq_list() == [] and await store.q_claim("x", 10, 30) == []
    assert (await store.q_stats())["depth"] == 1


# -- a reply really lost on the wire -----------------------------------------------------------
class ReplyDropper:
    """A loopback TCP proxy to redis-server. Armed with a byte string, it passes the next
    command containing it on to Redis, waits for Redis's reply and, instead of passing that
    on, resets the client's connection: the command ran, its answer is lost."""

    def __init__(self, port: int):
        self.target, self.armed, self.dropped = port, None, 0

    async def start(self) -> ReplyDropper:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self.server.close()

    async def _serve(self, client_r, client_w):
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.target)
        lose_reply = asyncio.Event()

        async def up():
            while data := await client_r.read(65536):
                if self.armed is not None and self.armed in data:
                    self.armed = None
                    lose_reply.set()
                redis_w.write(data)
                await redis_w.drain()
            redis_w.close()

        async def down():
            while data := await redis_r.read(65536):
                if lose_reply.is_set():
                    self.dropped += 1
                    client_w.transport.abort()
                    redis_w.close()
                    return
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            redis_w.close()
            client_w.close()


@pytest.fixture
async def lossy(server):
    proxy = await ReplyDropper(server.port).start()
    s = open_store(f"redis://127.0.0.1:{proxy.port}/0", namespace=f"t-{uuid.uuid4().hex[:12]}")
    await s.open()
    yield s, proxy
    await s.close()
    await proxy.close()


async def test_lost_void_reply_is_resent_and_still_wins_the_settlement(lossy):
    """An orphaned bet: this replica's compensation void ran, its reply was lost, redis-py
    resent it. The answer must still be "you voided it" (the bet gets settled), not the
    marker read back as another replica's."""
    store, proxy = lossy
    await store.tx_begin(rec("bet-orphan"), 60)
    proxy.armed = b"~compensation"
    assert await store.tx_void("acme", "bet-orphan", COMPENSATION) is None
    assert proxy.dropped == 1
    assert await store.tx_void("acme", "bet-orphan", COMPENSATION) == COMPENSATION  # any other settler loses


async def test_lost_replies_of_a_bet_and_a_queued_win_are_resent_to_the_right_outcome(lossy):
    store, proxy = lossy
    proxy.armed = b"bet-1"
    assert await store.tx_begin(rec("bet-1"), 60) is None  # its own record, not "already there"
    proxy.armed = b"done"
    await store.tx_finish("acme", "bet-1", DONE, 200, b'{"balance":99.00}', 60)
    assert (await store.tx_get("acme", "bet-1")).state == DONE
    proxy.armed = b"hookq"
    assert await store.kv_put("hookq", "acme:w-1", b"1", ttl=60, only_new=True) is True  # so the win is queued
    e = entry()
    proxy.armed = e.id.encode()
    await store.q_put(e)
    [got] = await store.q_claim("a", 10, 30)
    assert got.id == e.id and await store.q_claim("b", 10, 30) == []  # leased to "a"
    assert proxy.dropped == 4


async def test_unreachable_or_stopped_redis_is_store_unavailable():
    nothing = open_store(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreUnavailable):
        await nothing.open()
    server = RedisServer().start()
    try:
        s = open_store(server.url)
        await s.open()
        await s.q_put(entry())
        server.stop()
        for call in (lambda: s.tx_begin(rec(), 60), lambda: s.tx_get("acme", "tx-1"), lambda: s.kv_get("a", "b"),
                     lambda: s.q_put(entry()), lambda: s.q_claim("a", 10, 30), lambda: s.q_stats(),
                     lambda: s.dlq_list(), s.ping):
            with pytest.raises(StoreUnavailable):
                await call()
        await s.close()
    finally:
        server.cleanup()



# -- the scripts of one event-loop turn share one pipeline --------------------------------------
async def test_concurrent_scripts_leave_in_one_pipeline_with_their_own_answers(store, monkeypatch):
    pipelines = []
    make = store.r.pipeline

    def counted(*args, **kwargs):
        pipelines.append(kwargs)
        return make(*args, **kwargs)

    monkeypatch.setattr(store.r, "pipeline", counted)
    await store.tx_begin(rec("seen"), 60)
    # Twenty new records, one duplicate and one id begun twice, asked for together.
    results = await asyncio.gather(
        *(store.tx_begin(rec(f"b-{i}"), 60) for i in range(20)),
        store.tx_begin(rec("seen", fp="other"), 60),
        store.tx_begin(rec("twin"), 60),
        store.tx_begin(rec("twin", fp="fp-2"), 60),
        return_exceptions=True)
    assert pipelines == [{"transaction": False}]
    assert results[:20] == [None] * 20
    assert results[20].txid == "seen" and results[20].fingerprint == "fp-1"
    # The same id twice in one batch: exactly one of the two creates it.
    assert results[21] is None and results[22].fingerprint == "fp-1"
    for i in range(20):
        assert (await store.tx_get("acme", f"b-{i}")).state == PENDING


async def test_a_failing_script_in_a_batch_fails_only_its_own_caller(store):
    await store.r.set(store._tx_key("acme", "not-a-hash"), b"x")  # TX_BEGIN on it: WRONGTYPE
    good, bad = await asyncio.gather(store.tx_begin(rec("fine"), 60), store.tx_begin(rec("not-a-hash"), 60),
                                     return_exceptions=True)
    assert good is None and "WRONGTYPE" in str(bad)
    assert (await store.tx_get("acme", "fine")).state == PENDING


async def test_a_batch_after_the_script_cache_was_flushed_still_runs_each_script_once(store):
    await store.tx_begin(rec("warm"), 60)  # loads the script
    await store.r.script_flush()
    results = await asyncio.gather(*(store.tx_begin(rec(f"f-{i}"), 60) for i in range(10)))
    assert results == [None] * 10
    await store.r.script_flush()
    finished = await asyncio.gather(*(store.tx_finish("acme", f"f-{i}", DONE, 200, b"{}", 60) for i in range(10)))
    assert finished == [None] * 10
    assert {(await store.tx_get("acme", f"f-{i}")).state for i in range(10)} == {DONE}


async def test_a_lost_reply_of_a_whole_batch_is_resent_to_the_right_outcomes(lossy):
    """redis-py sends a pipeline again after its connection broke: every script in it is
    safe to run twice, so each caller still gets its first-run answer."""
    store, proxy = lossy
    await store.tx_begin(rec("bet-v"), 60)
    proxy.armed = b"lb-marked"
    results = await asyncio.gather(
        *(store.tx_begin(rec(f"lb-{i}"), 60) for i in range(5)),
        store.tx_begin(rec("lb-marked"), 60),
        store.tx_void("acme", "bet-v", COMPENSATION))
    assert proxy.dropped == 1
    assert results == [None] * 7  # new records (not "already there"), the void won
    assert await store.tx_void("acme", "bet-v", COMPENSATION) == COMPENSATION
