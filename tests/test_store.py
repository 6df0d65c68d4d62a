"""One contract, two stores: SQLite (a temp file) and Redis — a private redis-server, a
private Sentinel set (a master, a replica and three sentinels; ``redis+sentinel://``) and a
private Redis Cluster (three masters, three replicas; ``redis+cluster://``).

Every test runs against all four; the Redis-only tests at the end cover what only a shared
server has: restarts from the append-only file, namespaces, and takeover by a live worker.
Failover under Sentinel is tested in test_redis_sentinel.py, under Cluster in
test_redis_cluster.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import pytest

from gateway.store import OnceKey, QueueEntry, TxRecord, open_store
from gateway.store.base import (
    ABSENT,
    APPLIED,
    DONE,
    FINISHED,
    KEPT,
    NOT_APPLIED,
    PENDING,
    PURGED,
    QUEUED,
    Resolution,
    TransactionBusy,
    TransactionOpen,
)
from tests.cluster_support import RedisClusterSet
from tests.sentinel_support import SentinelSet
from tests.support import RedisServer


@pytest.fixture(scope="module")
def shared_redis():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def shared_sentinels():
    sentinels = SentinelSet().start()
    yield sentinels
    sentinels.cleanup()


@pytest.fixture(scope="module")
def shared_cluster():
    cluster = RedisClusterSet().start()
    yield cluster
    cluster.cleanup()


@pytest.fixture(params=["sqlite", "redis", "sentinel", "cluster"])
def store_spec(request, tmp_path):
    """(url, namespace) of a fresh, empty store."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db", "igsp"
    server = request.getfixturevalue({"redis": "shared_redis", "sentinel": "shared_sentinels",
                                      "cluster": "shared_cluster"}[request.param])
    return server.url, f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def store(store_spec):
    s = open_store(store_spec[0], namespace=store_spec[1])
    await s.open()
    yield s
    await s.close()


async def reopen(store_spec):
    s = open_store(store_spec[0], namespace=store_spec[1])
    await s.open()
    return s


def rec(txid="tx-1", action="bet", fp="fp-1", partner="acme", **fields):
    return TxRecord(partner, txid, action, fp, **fields)


def entry(payload=None, next_at=0.0, **kw):
    return QueueEntry(id=uuid.uuid4().hex, route="wallet", payload=payload or {"op": "win", "amount": "10.50"},
                      next_at=next_at, **kw)


# -- ledger -----------------------------------------------------------------------------
async def test_begin_then_duplicate_returns_the_first_record(store):
    assert await store.tx_begin(rec(fp="fp-a"), 60) is None
    again = await store.tx_begin(rec(fp="fp-b"), 60)
    assert again is not None
    assert (again.partner, again.txid, again.action, again.fingerprint, again.state) == ("acme", "tx-1", "bet",
                                                                                       "fp-a", PENDING)
    assert again.status is None and again.body is None and again.voided_by is None and again.created_at > 0
    # Partners have separate ledgers.
    assert await store.tx_begin(rec(partner="beta"), 60) is None


async def test_finish_stores_the_exact_answer(store):
    await store.tx_begin(rec(), 60)
    body = b'{"balance":87.66,"transaction_id":"x"}\x00\xff'
    await store.tx_finish("acme", "tx-1", DONE, 200, body, 60)
    got = await store.tx_get("acme", "tx-1")
    assert (got.state, got.status, got.body) == (DONE, 200, body)
    assert await store.tx_get("acme", "nope") is None


async def test_queued_then_delivered_and_never_back_to_queued(store):
    await store.tx_begin(rec(), 60)
    await store.tx_finish("acme", "tx-1", QUEUED, 503, b'{"error":"transaction_in_progress"}', 60)
    assert (await store.tx_begin(rec(), 60)).state == QUEUED
    await store.tx_finish("acme", "tx-1", DONE, 200, b'{"balance":1.00}', 60)  # the queue delivered it
    # A late "queued" write (delayed, or resent after a lost reply) keeps the final answer.
    await store.tx_finish("acme", "tx-1", QUEUED, 503, b'{"error":"transaction_in_progress"}', 60)
    got = await store.tx_get("acme", "tx-1")
    assert (got.state, got.status, got.body) == (DONE, 200, b'{"balance":1.00}')


async def test_forget_lets_a_retry_start_afresh(store):
    await store.tx_begin(rec(), 60)
    await store.tx_forget("acme", "tx-1")
    assert await store.tx_get("acme", "tx-1") is None
    assert await store.tx_begin(rec(), 60) is None


async def test_void_once_and_unvoid_only_by_the_voider(store):
    await store.tx_begin(rec("bet-1"), 60)
    assert await store.tx_void("acme", "bet-1", "rf-1") is None
    assert await store.tx_void("acme", "bet-1", "rf-2") == "rf-1"
    await store.tx_unvoid("acme", "bet-1", "rf-2")  # not the voider: no effect
    assert (await store.tx_get("acme", "bet-1")).voided_by == "rf-1"
    await store.tx_unvoid("acme", "bet-1", "rf-1")
    assert (await store.tx_get("acme", "bet-1")).voided_by is None
    assert await store.tx_void("acme", "bet-1", "rf-2") is None


async def test_concurrent_begins_across_connections_create_exactly_one(store_spec):
    """Twelve threads, each with its own store connection, race for one transaction id."""
    n, results, barrier = 12, [], threading.Barrier(12)

    def racer(i):
        async def go():
            s = await reopen(store_spec)
            try:
                barrier.wait(5)
                results.append(await s.tx_begin(rec("tx-race", fp=f"fp-{i}"), 60))
            finally:
                await s.close()
        asyncio.run(go())

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(results) == n
    winners = [r for r in results if r is None]
    assert len(winners) == 1
    assert len({r.fingerprint for r in results if r is not None}) == 1  # all saw the winner's record


async def test_concurrent_begins_on_one_store_create_exactly_one(store):
    results = await asyncio.gather(*(store.tx_begin(rec("tx-c", fp=str(i)), 60) for i in range(50)))
    assert sum(r is None for r in results) == 1


async def test_retention_expires_records_but_never_before(store):
    await store.tx_begin(rec("short"), 0.4)
    await store.tx_begin(rec("long"), 60)
    await store.tx_begin(rec("extended"), 0.4)
    await store.tx_finish("acme", "extended", DONE, 200, b"{}", 60)  # finishing extends retention
    await store.tx_begin(rec("kept"), 60)
    await store.tx_finish("acme", "kept", DONE, 200, b"{}", 0.1)  # never shortens it
    assert await store.tx_get("acme", "short") is not None
    await asyncio.sleep(0.7)
    assert await store.tx_get("acme", "short") is None
    assert await store.tx_begin(rec("short", fp="new"), 60) is None  # a fresh transaction now
    for txid in ("long", "extended", "kept"):
        assert await store.tx_get("acme", txid) is not None, txid


async def test_begin_keeps_the_request_payload(store):
    payload = b'{"action":"bet","amount":10.50,"player_id":"p-\xc3\xa9"}'
    assert await store.tx_begin(rec("tx-a", payload=payload), 60) is None
    assert (await store.tx_get("acme", "tx-a")).payload == payload
    existing = await store.tx_begin(rec("tx-a", fp="other"), 60)
    assert existing.payload == payload and existing.fingerprint == "fp-1"
    assert await store.tx_begin(rec("tx-b"), 60) is None
    assert (await store.tx_get("acme", "tx-b")).payload is None  # optional


async def test_a_done_record_begun_is_a_tombstone(store):
    tomb = rec("bet-late", state=DONE, status=409, body=b'{"error":"transaction_already_refunded"}',
               voided_by="refund-1")
    assert await store.tx_begin(tomb, 60) is None
    later = await store.tx_begin(rec("bet-late"), 60)  # the bet arrives after its refund
    assert (later.state, later.status, later.body, later.voided_by) == (
        DONE, 409, b'{"error":"transaction_already_refunded"}', "refund-1")
    assert await store.tx_pending(time.time() + 60) == []  # a tombstone is never pending


async def test_pending_lists_records_left_pending_oldest_first(store):
    for txid in ("p-1", "p-2", "p-3", "p-4"):
        assert await store.tx_begin(rec(txid, payload=txid.encode()), 60) is None
    await store.tx_finish("acme", "p-2", DONE, 200, b"{}", 60)
    await store.tx_finish("acme", "p-3", QUEUED, 503, b"{}", 60)
    await store.tx_forget("acme", "p-4")
    cutoff = time.time() + 1
    assert await store.tx_begin(TxRecord("other", "p-1", "bet", "fp"), 60) is None  # other partner, same id
    found = await store.tx_pending(cutoff)
    assert [(r.partner, r.txid, r.payload) for r in found] == [("acme", "p-1", b"p-1"), ("other", "p-1", None)]
    assert await store.tx_pending(found[0].created_at) == []  # strictly before
    assert len(await store.tx_pending(cutoff, limit=1)) == 1


async def test_concurrent_claims_of_one_once_key_admit_exactly_one(store):
    sig = OnceKey("sig", "acme:race", 60)
    results = await asyncio.gather(*(store.claim(sig) for _ in range(20)))
    assert results.count(True) == 1 and results.count(False) == 19


# -- key/value --------------------------------------------------------------------------
async def test_kv_only_new_and_ttl(store):
    assert await store.kv_put("sig", "k1", b"1", ttl=0.4, only_new=True) is True
    assert await store.kv_put("sig", "k1", b"2", ttl=0.4, only_new=True) is False
    assert await store.kv_get("sig", "k1") == b"1"
    assert await store.kv_get("other", "k1") is None  # spaces are separate
    await store.kv_put("map", "k2", b"a")
    await store.kv_put("map", "k2", b"b")  # plain put overwrites
    assert await store.kv_get("map", "k2") == b"b"
    await asyncio.sleep(0.6)
    assert await store.kv_get("sig", "k1") is None
    assert await store.kv_put("sig", "k1", b"3", ttl=5, only_new=True) is True
    assert await store.kv_get("map", "k2") == b"b"  # no TTL: kept


# -- shared rate limits -----------------------------------------------------------------
async def test_rate_take_grants_the_burst_then_says_how_long_to_wait(store):
    answers = [await store.rate_take("acme", 0.5, 3) for _ in range(5)]
    assert answers[:3] == [0.0, 0.0, 0.0]
    # Empty: the next request may go in about 1 / rate = 2 s (nothing was taken by asking).
    assert all(1.5 < wait <= 2.0 for wait in answers[3:]), answers
    assert await store.rate_take("beta", 0.5, 3) == 0.0  # one bucket per key
    assert 1.5 < await store.rate_take("acme", 0.5, 3) <= 2.0


async def test_rate_take_of_a_large_burst_at_once_grants_exactly_the_burst(store):
    answers = await asyncio.gather(*(store.rate_take("acme", 0.01, 25) for _ in range(40)))
    assert answers.count(0.0) == 25 and all(w > 90 for w in answers if w)


async def test_a_rate_bucket_refills_at_its_rate(store):
    assert await store.rate_take("acme", 20, 1) == 0.0
    wait = await store.rate_take("acme", 20, 1)
    assert 0 < wait <= 0.05
    await asyncio.sleep(wait + 0.02)  # what the store said to wait, and a little more
    assert await store.rate_take("acme", 20, 1) == 0.0


async def test_processes_on_one_store_take_from_one_rate_bucket(store_spec):
    """Six threads, each with its own store connection (as six gateway processes), share the
    bucket: together they are granted the burst, not six times it."""
    n, results, barrier = 6, [], threading.Barrier(6)

    def taker():
        async def go():
            s = await reopen(store_spec)
            try:
                barrier.wait(5)
                results.extend([await s.rate_take("acme", 0.01, 10) for _ in range(5)])
            finally:
                await s.close()
        asyncio.run(go())

    threads = [threading.Thread(target=taker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(results) == 30 and results.count(0.0) == 10


# -- queue ------------------------------------------------------------------------------
async def test_put_claim_ack(store):
    e = entry({"partner": "acme", "op": "win", "hook": {"amount": "10.50", "nested": [1, "x"]}}, max_attempts=5)
    await store.q_put(e)
    stats = await store.q_stats()
    assert stats["depth"] == 1 and stats["dead"] == 0 and stats["oldest_age"] >= 0
    got = await store.q_claim("a", 10, 30)
    assert [g.id for g in got] == [e.id]
    assert got[0].payload == e.payload and got[0].route == "wallet"
    assert (got[0].attempts, got[0].max_attempts) == (0, 5)
    assert await store.q_claim("b", 10, 30) == []  # leased to "a"
    await store.q_ack(got[0])
    assert (await store.q_stats())["depth"] == 0
    assert await store.q_claim("b", 10, 0.01) == []
    assert (await store.q_stats())["oldest_age"] == 0


async def test_claim_respects_limit_and_due_time(store):
    now = time.time()
    for _ in range(5):
        await store.q_put(entry())
    later = entry(next_at=now + 0.5)
    await store.q_put(later)
    assert (await store.q_stats())["depth"] == 6
    first = await store.q_claim("a", 3, 30)
    second = await store.q_claim("a", 10, 30)
    assert len(first) == 3 and len(second) == 2
    assert later.id not in {e.id for e in first + second}
    await asyncio.sleep(0.6)
    assert [e.id for e in await store.q_claim("a", 10, 30)] == [later.id]


async def test_retry_counts_the_attempt_and_waits_for_next_at(store):
    await store.q_put(entry())
    [e] = await store.q_claim("a", 10, 30)
    await store.q_retry(e, time.time() + 0.5, "UpstreamError: legacy API not reachable")
    assert e.attempts == 1
    assert await store.q_claim("a", 10, 30) == []
    assert (await store.q_stats())["depth"] == 1
    await asyncio.sleep(0.6)
    [again] = await store.q_claim("b", 10, 30)
    assert again.id == e.id and again.attempts == 1
    assert again.last_error == "UpstreamError: legacy API not reachable"
    await store.q_retry(again, time.time(), "x" * 2000)
    [third] = await store.q_claim("b", 10, 30)
    assert third.attempts == 2 and len(third.last_error) <= 500


async def test_expired_lease_is_claimed_by_another_consumer(store):
    await store.q_put(entry())
    [held] = await store.q_claim("crashed", 10, 0.3)
    assert await store.q_claim("live", 10, 0.3) == []
    await asyncio.sleep(0.5)
    [taken] = await store.q_claim("live", 10, 0.3)  # every replica runs with the same lease
    assert taken.id == held.id and taken.payload == held.payload
    await store.q_ack(taken)
    # The crashed consumer coming back late cannot bring the delivered entry back.
    await store.q_retry(held, time.time(), "late")
    assert await store.q_claim("crashed", 10, 30) == []
    assert await store.q_stats() == {"depth": 0, "oldest_age": 0.0, "dead": 0}


async def test_dead_letters_list_replay_purge(store):
    entries = [entry({"n": i}, max_attempts=2) for i in range(3)]
    for e in entries:
        await store.q_put(e)
    claimed = await store.q_claim("a", 10, 30)
    assert len(claimed) == 3
    for e in claimed:
        e.attempts = 2
        await store.q_dead(e, "out of attempts")
    assert await store.q_claim("a", 10, 0.01) == []
    stats = await store.q_stats()
    assert (stats["depth"], stats["dead"]) == (0, 3)
    dead = await store.dlq_list()
    assert {d.id for d in dead} == {e.id for e in entries}
    assert all(d.attempts == 2 and d.last_error == "out of attempts" for d in dead)
    assert len(await store.dlq_list(limit=2)) == 2
    one = await store.dlq_get(entries[0].id)
    assert one.payload == {"n": 0}
    assert await store.dlq_get("nope") is None

    assert await store.dlq_replay(entries[0].id) is True
    assert await store.dlq_replay(entries[0].id) is False  # no longer dead
    assert await store.dlq_replay("nope") is False
    assert await store.dlq_get(entries[0].id) is None
    [back] = await store.q_claim("b", 10, 30)
    assert back.id == entries[0].id and back.attempts == 0 and back.payload == {"n": 0}

    assert await store.dlq_purge(entries[1].id) == 1
    assert await store.dlq_purge(entries[1].id) == 0
    assert await store.dlq_purge("nope") == 0
    assert await store.dlq_purge(back.id) == 0  # live entries are not dead letters
    assert await store.dlq_purge() == 1
    assert await store.dlq_list() == []
    assert (await store.q_stats())["dead"] == 0 and (await store.q_stats())["depth"] == 1


def entry_like(e: QueueEntry, **changes) -> QueueEntry:
    return QueueEntry(**{"id": e.id, "route": e.route, "payload": e.payload, "max_attempts": e.max_attempts,
                         **changes})


async def test_put_straight_into_the_dead_letters(store):
    """The wallet's pattern for an unknown outcome on a non-idempotent wallet: one write, so
    no crash can leave the entry deliverable."""
    for next_at in (time.time() + 60, 0.0):
        e = entry(next_at=next_at, last_error="unknown outcome")
        await store.q_put(e, dead=True)
        assert (await store.dlq_get(e.id)).last_error == "unknown outcome"
    assert await store.q_claim("a", 10, 30) == []
    assert (await store.q_stats())["depth"] == 0 and (await store.q_stats())["dead"] == 2
    # Still a dead letter like any other: replayed, it is delivered.
    [first, _] = await store.dlq_list()
    assert await store.dlq_replay(first.id) is True
    assert [e.id for e in await store.q_claim("a", 10, 30)] == [first.id]


async def test_an_entry_id_is_queued_once(store):
    """A settlement redone after a crash puts the same entry again: it is kept once."""
    e = entry()
    await store.q_put(e)
    await store.q_put(entry_like(e, payload={"op": "other"}))
    await store.q_put(entry_like(e), dead=True)
    [got] = await store.q_claim("a", 10, 30)
    assert got.id == e.id and got.payload == e.payload
    assert await store.q_stats() == {"depth": 1, "oldest_age": pytest.approx(0, abs=5), "dead": 0}


async def dead_letter(store, payload=None) -> QueueEntry:
    e = entry(payload or {"op": "win"})
    await store.q_put(e)
    await store.q_dead(e, "unknown outcome on a non-idempotent wallet")
    return e


async def queued_tx(store, txid, action="win", **fields):
    await store.tx_begin(rec(txid, action, **fields), 60)
    await store.tx_finish("acme", txid, QUEUED, 503, b'{"error":"transaction_in_progress"}', 60)


async def test_settle_applied_finishes_the_queued_record_and_closes_the_dead_letter(store):
    await queued_tx(store, "w-1")
    e = await dead_letter(store)
    asked = Resolution(APPLIED, "acme", "w-1", 200, b'{"balance":105.00,"transaction_id":"t"}')
    done = await store.dlq_settle(e.id, asked, 60)
    assert (done.outcome, done.partner, done.txid, done.status, done.body, done.ledger, done.unvoid) == (
        APPLIED, "acme", "w-1", 200, b'{"balance":105.00,"transaction_id":"t"}', FINISHED, "")
    assert done.at == pytest.approx(time.time(), abs=5)
    got = await store.tx_get("acme", "w-1")
    assert (got.state, got.status, got.body) == (DONE, 200, b'{"balance":105.00,"transaction_id":"t"}')
    assert await store.dlq_get(e.id) is None and await store.dlq_list() == []
    assert await store.q_stats() == {"depth": 0, "oldest_age": 0.0, "dead": 0}
    # Settled for good: asked again (any outcome, any answer) it answers as first recorded.
    assert await store.dlq_resolution(e.id) == done
    assert await store.dlq_settle(e.id, Resolution(NOT_APPLIED, "acme", "w-1", 409, b"{}"), 60) == done
    assert await store.dlq_settle(e.id, Resolution(PURGED, "acme", "w-1"), 60) == done
    assert (await store.tx_get("acme", "w-1")).status == 200
    assert await store.dlq_replay(e.id) is False and await store.dlq_purge(e.id) == 0
    assert await store.q_claim("a", 10, 30) == []
    # A late "queued" write of the transaction keeps the final answer.
    await store.tx_finish("acme", "w-1", QUEUED, 503, b"in progress", 60)
    assert (await store.tx_get("acme", "w-1")).state == DONE


async def test_settle_not_applied_refund_releases_its_bet(store):
    await store.tx_begin(rec("bet-1", "bet"), 60)
    await store.tx_finish("acme", "bet-1", DONE, 200, b'{"balance":90.00}', 60)
    assert await store.tx_void("acme", "bet-1", "rf-1") is None
    await queued_tx(store, "rf-1", "refund")
    e = await dead_letter(store, {"op": "refund"})
    body = b'{"error":"transaction_not_applied"}'
    done = await store.dlq_settle(e.id, Resolution(NOT_APPLIED, "acme", "rf-1", 409, body, unvoid="bet-1"), 60)
    assert (done.outcome, done.status, done.body, done.unvoid, done.ledger) == (NOT_APPLIED, 409, body, "bet-1",
                                                                                FINISHED)
    got = await store.tx_get("acme", "rf-1")
    assert (got.state, got.status, got.body) == (DONE, 409, body)
    assert (await store.tx_get("acme", "bet-1")).voided_by is None
    assert await store.tx_void("acme", "bet-1", "rf-2") is None  # a new refund may refund it


async def test_settle_releases_only_the_refunds_own_void_marker(store):
    await store.tx_begin(rec("bet-1", "bet"), 60)
    assert await store.tx_void("acme", "bet-1", "rf-other") is None
    await queued_tx(store, "rf-1", "refund")
    e = await dead_letter(store, {"op": "refund_after_bet"})
    await store.dlq_settle(e.id, Resolution(NOT_APPLIED, "acme", "rf-1", 409, b"{}", unvoid="bet-1"), 60)
    assert (await store.tx_get("acme", "bet-1")).voided_by == "rf-other"


async def test_settle_keeps_a_done_record_and_records_its_answer(store):
    await store.tx_begin(rec("bet-1", "bet", voided_by="~compensation"), 60)
    await store.tx_finish("acme", "bet-1", DONE, 409, b'{"error":"transaction_voided"}', 60)
    e = await dead_letter(store, {"op": "rollback"})
    done = await store.dlq_settle(e.id, Resolution(APPLIED, "acme", "bet-1"), 60)
    assert (done.status, done.body, done.ledger) == (409, b'{"error":"transaction_voided"}', KEPT)
    got = await store.tx_get("acme", "bet-1")
    assert (got.status, got.voided_by) == (409, "~compensation")
    # A record that expired, or none named at all.
    for res, ledger in ((Resolution(NOT_APPLIED, "acme", "gone", 409, b"{}"), ABSENT), (Resolution(APPLIED), "")):
        e = await dead_letter(store)
        assert (await store.dlq_settle(e.id, res, 60)).ledger == ledger
        assert await store.tx_get("acme", "gone") is None


async def test_purge_never_leaves_a_transaction_queued(store):
    await queued_tx(store, "w-1")
    open_one = await dead_letter(store)
    with pytest.raises(TransactionOpen):
        await store.dlq_settle(open_one.id, Resolution(PURGED, "acme", "w-1"), 60)
    assert (await store.dlq_get(open_one.id)).id == open_one.id
    assert (await store.tx_get("acme", "w-1")).state == QUEUED
    assert await store.dlq_resolution(open_one.id) is None
    # Once its transaction is final (or it names none) a dead letter purges.
    await store.tx_begin(rec("bet-1", "bet"), 60)
    await store.tx_finish("acme", "bet-1", DONE, 409, b"voided", 60)
    closed, plain = await dead_letter(store, {"op": "rollback"}), await dead_letter(store, {"op": "hook"})
    done = await store.dlq_settle(closed.id, Resolution(PURGED, "acme", "bet-1"), 60)
    assert (done.outcome, done.ledger, done.status) == (PURGED, KEPT, 409)
    assert (await store.dlq_settle(plain.id, Resolution(PURGED), 60)).ledger == ""
    assert [d.id for d in await store.dlq_list()] == [open_one.id]
    assert await store.dlq_settle("nope", Resolution(PURGED), 60) is None
    assert await store.dlq_resolution("nope") is None


async def test_settle_refuses_a_pending_record_and_a_live_entry(store):
    await store.tx_begin(rec("w-1", "win"), 60)  # its legacy call may be running
    e = await dead_letter(store)
    with pytest.raises(TransactionBusy):
        await store.dlq_settle(e.id, Resolution(NOT_APPLIED, "acme", "w-1", 409, b"{}"), 60)
    assert (await store.tx_get("acme", "w-1")).state == PENDING and await store.dlq_get(e.id) is not None
    live = entry()
    await store.q_put(live)  # queued, not dead: not an operator's to close
    assert await store.dlq_settle(live.id, Resolution(APPLIED), 60) is None
    assert (await store.q_stats())["depth"] == 1


async def test_concurrent_settles_of_one_dead_letter_record_one_resolution(store_spec, store):
    await queued_tx(store, "w-1")
    e = await dead_letter(store)
    others = [await reopen(store_spec) for _ in range(3)]
    try:
        asked = [Resolution(APPLIED, "acme", "w-1", 200, b'{"n":%d}' % i) for i in range(3)]
        asked.append(Resolution(NOT_APPLIED, "acme", "w-1", 409, b"{}"))
        results = await asyncio.gather(*(s.dlq_settle(e.id, r, 60) for s, r in zip([store, *others], asked,
                                                                                    strict=True)))
    finally:
        for s in others:
            await s.close()
    assert len(set(results)) == 1
    got = await store.tx_get("acme", "w-1")
    assert (got.status, got.body) == (results[0].status, results[0].body)


async def test_queue_survives_reopening(store_spec, store):
    e = entry({"op": "rollback"})
    await store.q_put(e)
    await store.q_put(entry(next_at=time.time() + 60))
    await store.tx_begin(rec(), 60)
    again = await reopen(store_spec)
    try:
        assert (await again.q_stats())["depth"] == 2
        assert [x.payload for x in await again.q_claim("a", 10, 30)] == [{"op": "rollback"}]
        assert (await again.tx_get("acme", "tx-1")).state == PENDING
    finally:
        await again.close()


# -- Redis only -------------------------------------------------------------------------
@pytest.fixture
async def redis_store(shared_redis):
    s = open_store(shared_redis.url, namespace=f"t-{uuid.uuid4().hex[:12]}")
    await s.open()
    yield s
    await s.close()


async def test_redis_namespaces_do_not_collide(shared_redis, redis_store):
    other = open_store(shared_redis.url, namespace=redis_store.ns + "-other")
    await other.open()
    try:
        before = set(await redis_store.r.keys("*"))
        await redis_store.tx_begin(rec(), 60)
        await redis_store.q_put(entry())
        await redis_store.kv_put("sig", "k", b"1")
        written = set(await redis_store.r.keys("*")) - before
        assert len(written) >= 3 and all(k.startswith(redis_store.ns.encode() + b":") for k in written)
        assert await other.tx_get("acme", "tx-1") is None
        assert await other.kv_get("sig", "k") is None
        assert await other.q_claim("a", 10, 30) == []
        assert (await other.q_stats())["depth"] == 0
    finally:
        await other.close()


async def test_redis_stale_worker_cannot_move_a_taken_over_entry(redis_store):
    await redis_store.q_put(entry(max_attempts=3))
    [stale] = await redis_store.q_claim("crashed", 10, 0.2)
    await asyncio.sleep(0.3)
    [live] = await redis_store.q_claim("live", 10, 0.2)
    # The first worker wakes up while the entry is held by the second: its report is ignored...
    await redis_store.q_dead(stale, "late")
    await redis_store.q_retry(stale, time.time(), "late")
    assert await redis_store.dlq_list() == []
    assert await redis_store.q_claim("x", 10, 30) == []
    # ...and so it is once the second has rescheduled it.
    await redis_store.q_retry(live, time.time() + 60, "still down")
    await redis_store.q_retry(stale, time.time(), "late")
    await redis_store.q_dead(stale, "late")
    assert await redis_store.dlq_list() == []
    assert await redis_store.q_claim("x", 10, 30) == []
    assert (await redis_store.q_stats())["depth"] == 1


async def test_redis_recovers_when_the_server_lost_its_data(redis_store):
    await redis_store.r.flushdb()
    e = entry()
    await redis_store.q_put(e)
    assert [x.id for x in await redis_store.q_claim("a", 10, 30)] == [e.id]


async def test_redis_restart_keeps_queue_ledger_and_dead_letters():
    server = RedisServer().start()
    try:
        s = open_store(server.url)
        await s.open()
        due, later, dead = entry({"k": "due"}), entry({"k": "later"}, next_at=time.time() + 0.5), entry({"k": "dead"})
        for e in (due, later, dead):
            await s.q_put(e)
        claimed = await s.q_claim("gw-1", 10, 0.5)
        await s.q_dead(next(x for x in claimed if x.id == dead.id), "gave up")
        await s.tx_begin(rec("bet-1"), 3600)
        await s.tx_finish("acme", "bet-1", DONE, 200, b'{"balance":1.00}', 3600)
        await s.kv_put("sig", "k", b"1", ttl=3600)

        server.restart()
        # The same client (its pooled connections broke) carries on after the restart.
        assert (await s.tx_get("acme", "bet-1")).body == b'{"balance":1.00}'
        assert await s.kv_get("sig", "k") == b"1"
        assert 0 < await s.r.pttl(s._tx_key("acme", "bet-1")) <= 3600_000
        assert [d.id for d in await s.dlq_list()] == [dead.id]
        await asyncio.sleep(0.6)  # "later" falls due, "due"'s lease (held by gw-1) expires
        claimed = await s.q_claim("gw-2", 10, 0.5)
        assert {x.payload["k"] for x in claimed} == {"due", "later"}
        await s.close()
    finally:
        server.cleanup()


async def test_redis_data_of_the_layout_before_hash_tags_is_moved_at_open(shared_redis):
    """A Redis written by the version before the hash-tagged layout (its key names, written
    here as it wrote them): the first open moves ledger, pending index, kv keys with their TTL,
    queue entries and dead letters, and the store carries on with them."""
    import redis.asyncio as aioredis

    ns, now = f"t-{uuid.uuid4().hex[:12]}", time.time()
    old = aioredis.Redis.from_url(shared_redis.url)
    try:
        await old.hset(f"{ns}:tx:acme:bet-1", mapping={"owner": "o", "action": "bet", "fingerprint": "fp",
                                                       "state": "done", "created_at": repr(now), "status": 200,
                                                       "body": b'{"balance":1.00}'})
        await old.pexpire(f"{ns}:tx:acme:bet-1", 3600_000)
        await old.hset(f"{ns}:tx:beta:w-1", mapping={"owner": "o", "action": "win", "fingerprint": "fp",
                                                     "state": "pending", "created_at": repr(now - 60)})
        await old.zadd(f"{ns}:pending", {b'["beta","w-1"]': now - 60})
        await old.set(f"{ns}:kv:session:p1", b"token", px=3600_000)
        entries = {"due": now - 1, "later": now + 3600, "dead": now - 1}
        for name, next_at in entries.items():
            await old.hset(f"{ns}:q:e:{name}", mapping={
                "route": "wallet", "payload": json.dumps({"k": name}), "attempts": 0, "max_attempts": 5,
                "next_at": repr(next_at), "created_at": repr(now - 5), "last_error": "", "sid": "",
                "lease": "", "dead": "1" if name == "dead" else "0"})
        await old.xgroup_create(f"{ns}:q:stream", "workers", id="0", mkstream=True)
        sid = await old.xadd(f"{ns}:q:stream", {"id": "due"})
        await old.hset(f"{ns}:q:e:due", "sid", sid)
        await old.xreadgroup("workers", "old-gateway", {f"{ns}:q:stream": ">"})  # held by a stopped process
        await old.zadd(f"{ns}:q:delayed", {"later": now + 3600})
        await old.zadd(f"{ns}:q:dead", {"dead": now - 5})

        store = open_store(shared_redis.url, namespace=ns)
        await store.open()
        try:
            assert (await store.tx_get("acme", "bet-1")).body == b'{"balance":1.00}'
            assert (await store.tx_begin(rec("bet-1"), 60)).state == DONE  # still a duplicate
            assert 0 < await store.r.pttl(store._tx_key("acme", "bet-1")) <= 3600_000
            assert [(r.partner, r.txid) for r in await store.tx_pending(now)] == [("beta", "w-1")]
            assert await store.kv_get("session", "p1") == b"token"
            assert 0 < await store.r.pttl(store._kv_key("session:p1")) <= 3600_000
            assert [x.payload for x in await store.q_claim("new-gateway", 10, 30)] == [{"k": "due"}]
            assert [d.id for d in await store.dlq_list()] == ["dead"]
            assert await store.q_stats() == {"depth": 2, "oldest_age": pytest.approx(5, abs=5), "dead": 1}
            assert [k async for k in store.r.scan_iter(match=f"{ns}:q:*")] == []
            assert [k async for k in store.r.scan_iter(match=f"{ns}:tx:*")] == []
        finally:
            await store.close()
        again = open_store(shared_redis.url, namespace=ns)  # moved once: a second open finds it done
        await again.open()
        try:
            assert await again.r.get(f"{ns}:layout") == b"2"
            assert (await again.tx_get("acme", "bet-1")).status == 200
        finally:
            await again.close()
    finally:
        await old.aclose()


async def test_redis_a_closing_interrupted_after_its_first_step_is_finished_by_the_next(redis_store):
    """dlq_settle is three scripts on two slots (redis_scripts.py). A process dying after the
    first leaves the entry holding the request: it is then neither replayed nor purged, and the
    next dlq_settle — whatever it asks — finishes the closing as first asked."""
    store = redis_store
    await queued_tx(store, "w-1")
    e = await dead_letter(store)
    first = Resolution(APPLIED, "acme", "w-1", 200, b'{"balance":1.00}')
    asked = await store._run("DLQ_SETTLE_LOCK", [store._q_keys(e.id)[0]], [
        first.outcome, first.partner, first.txid, first.status, first.body, "", repr(time.time()), "token-of-the-dead"])
    assert asked[0] == b"asked"
    assert await store.dlq_replay(e.id) is False and await store.dlq_purge(e.id) == 0 and await store.dlq_purge() == 0
    assert [d.id for d in await store.dlq_list()] == [e.id]  # still an open dead letter for the operator
    done = await store.dlq_settle(e.id, Resolution(NOT_APPLIED, "acme", "w-1", 409, b"{}"), 60)
    assert (done.outcome, done.status, done.body, done.ledger) == (APPLIED, 200, b'{"balance":1.00}', FINISHED)
    assert (await store.tx_get("acme", "w-1")).status == 200 and await store.dlq_list() == []
