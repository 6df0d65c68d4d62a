"""The Redis store on a Redis Cluster (``redis+cluster://``) and ``wait_replicas`` there.

A real cluster on loopback (tests/cluster_support.py: three masters, each with a replica). A
master is ``kill -9``ed, the cluster promotes its replica, and the store — redis-py's own
cluster client, learning the new slot map — carries on with everything written with ``WAIT 1``
before the kill; two gateway processes under a mixed load with duplicates and legacy failures
meet the same failover and their answers reconcile with the wallet's books. The store
contract itself runs against the cluster in test_store.py.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import pytest

from gateway.store import OnceKey, QueueEntry, TxRecord, open_store
from gateway.store.base import DONE, StoreUnavailable
from gateway.store.redis import SHARDS, RedisStore, parse_url
from tests.cluster_support import RedisClusterSet
from tests.test_redis_sentinel import until_served


@pytest.fixture(scope="module")
def cluster():
    c = RedisClusterSet().start()
    yield c
    c.cleanup()


def test_cluster_urls():
    o = parse_url("redis+cluster://app:s%3Acret@10.0.0.1:7000,10.0.0.2,[::1]:7002/?wait_replicas=1&wait_timeout_ms=50")
    assert o["nodes"] == [("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)]
    assert (o["username"], o["password"], o["tls"], o["wait_replicas"], o["wait_timeout_ms"]) == (
        "app", "s:cret", None, 1, 50)
    assert parse_url("rediss+cluster://n1:7000")["tls"] == {"ssl": True}
    assert parse_url("rediss+cluster://n1:7000/?ssl_ca_certs=%2Fetc%2Fca.pem&wait_replicas=1")["tls"] == {
        "ssl": True, "ssl_ca_certs": "/etc/ca.pem"}
    for bad in ("redis+cluster://n1:7000/0", "redis+cluster://n1:port/", "redis+cluster://n1/?db=1",
                "redis+cluster://,/", "redis+cluster://n1/?ssl_ca_certs=%2Fca.pem", "rediss+cluster://n1/?ssl_ca_certs=",
                "rediss+cluster://n1/?ssl_cert_reqs=none"):
        with pytest.raises(ValueError):
            open_store(bad)
    with pytest.raises(ValueError, match="braces"):
        RedisStore("redis+cluster://n1/", namespace="a{b}")


def test_every_script_touches_only_the_keys_it_declares():
    """A cluster runs a script on the node of its KEYS' slot: a key the script builds itself
    (a prefix and an id from ARGV or from a reply) may live on another node. Every key a
    script's ``redis.call`` names is one of its KEYS (directly, or through a local or a
    function parameter bound to one), and no script builds a string with ``..``."""
    import re

    from gateway.store import redis_scripts as lua

    for name in (*lua.SCRIPTS, *lua.MIGRATIONS):
        body = getattr(lua, name)
        assert ".." not in body, name
        bound = {m[0] for m in re.findall(r"local (\w+)(?:, \w+)* = (KEYS\[\d\])", body)}
        if "local function bury(key)" in body:
            assert set(re.findall(r"bury\(([^)]*)\)", body)) <= {"key", "KEYS[1]"}, name
            bound.add("key")
        for command, first in re.findall(r"redis\.call\('(\w+)'(?:, ([^,)]+))?", body):
            if command == "TIME":
                continue
            if command == "XREADGROUP":  # the key follows STREAMS
                first = re.search(r"'STREAMS', (\w+)", body)[1]
            assert re.fullmatch(r"KEYS\[\d\]", first) or first in bound, (name, command, first)


def test_the_config_takes_a_cluster_url(tmp_path, hub88_keys):
    import yaml

    from gateway.config import load_config
    from tests.conftest import platform_config

    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(platform_config("redis+cluster://10.0.0.1:7000,10.0.0.2:7001/?wait_replicas=1")))
    config = load_config(path, env={"HUB88_WALLET_URL": "http://127.0.0.1:1", "HUB88_PRIVATE_KEY": hub88_keys[0]})
    assert config.store_url.startswith("redis+cluster://")


def test_every_shard_has_its_own_slot_and_the_shards_span_every_master(cluster):
    """The queue's and the ledger's shards land on different slots, on all three masters: no
    single node holds all the queue's work."""
    import redis

    store = RedisStore(cluster.url, namespace="igsp")
    for prefixes in (store._queue, store._ledger):
        keys = [p + "stream" for p in prefixes]
        client = redis.Redis(port=cluster.ports[0])
        slots = {client.cluster("keyslot", k) for k in keys}
        assert len(slots) == SHARDS
        assert {cluster.port_of_slot_owner(k) for k in keys} == set(cluster.master_ports())


async def test_the_cluster_client_reads_no_unsolicited_replies(cluster):
    """redis-py 8 turns maintenance notifications on by itself for RESP3 clients; the store
    turns them off on the cluster client as on the others (no push handler on any node's
    connections), so a reply nobody asked for is never taken for the next command's."""
    store = open_store(cluster.url, namespace="t-maint")
    await store.open()
    try:
        assert store.r.maint_notifications_config.enabled is False
        assert store.r._oss_cluster_maint_notifications_handler is None
        assert all("oss_cluster_maint_notifications_handler" not in node.connection_kwargs
                   for node in store.r.get_nodes())
        await store.ping()
    finally:
        await store.close()


async def test_wait_replicas_on_a_cluster_acknowledges_each_masters_writes(cluster):
    store = open_store(cluster.url + "?wait_replicas=1&wait_timeout_ms=5000", namespace=f"t-{uuid.uuid4().hex[:8]}")
    await store.open()
    try:
        # Writes on every master at once (one batch), each acknowledged by that master's replica.
        begun = await asyncio.gather(*(store.tx_begin(TxRecord(f"p{i}", "tx", "bet", "fp"), 60) for i in range(12)))
        assert begun == [None] * 12
        await store.kv_put("session", "k", b"v", ttl=60)
        assert await store.kv_get("session", "k") == b"v"
        # Asking more replicas than any master has: every write refused (it still stands).
        strict = open_store(cluster.url + "?wait_replicas=2&wait_timeout_ms=50", namespace=store.ns)
        await strict.open()
        try:
            with pytest.raises(StoreUnavailable):
                await strict.tx_begin(TxRecord("p0", "other", "bet", "fp"), 60)
            with pytest.raises(StoreUnavailable):
                await strict.kv_put("session", "k2", b"v", ttl=60)
            assert await strict.rate_take("p0", 1, 5) == 0.0  # not waited for
        finally:
            await strict.close()
        assert await store.tx_get("p0", "other") is not None
        # A slot whose master changed between the writes and their WAIT: not acknowledged.
        key = store._tx_key("p0", "tx")
        assert await store._confirm({key: store.r.get_node_from_key(key).name}) is True
        assert await store._confirm({key: "127.0.0.1:1"}) is False
    finally:
        await store.close()


async def test_a_failover_keeps_every_write_a_replica_acknowledged(cluster):
    ns = f"t-{uuid.uuid4().hex[:8]}"
    store = open_store(cluster.url + "?wait_replicas=1&wait_timeout_ms=5000", namespace=ns)
    await store.open()
    try:
        assert await store.tx_begin(TxRecord("acme", "bet-1", "bet", "fp", payload=b"{}"), 3600) is None
        await store.tx_finish("acme", "bet-1", DONE, 200, b'{"balance":99.00}', 3600)
        assert await store.claim(OnceKey("sig", "s-1", 3600)) is True
        await store.kv_put("session", "p1", b"token", ttl=3600)
        entries = [QueueEntry(id=uuid.uuid4().hex, route="wallet", payload={"n": i}) for i in range(24)]
        for e in entries:
            await store.q_put(e)
        dead = QueueEntry(id=uuid.uuid4().hex, route="wallet", payload={"op": "refund"})
        await store.q_put(dead, dead=True)
        # The master of the ledger record's slot dies; its replica takes over.
        old = cluster.port_of_slot_owner(store._tx_key("acme", "bet-1"))
        replica = cluster.replica_of(old)
        cluster.kill(old)
        cluster.wait_for_failover(replica)
        got = await until_served(lambda: store.tx_get("acme", "bet-1"))
        assert (got.state, got.status, got.body) == (DONE, 200, b'{"balance":99.00}')
        assert await until_served(lambda: store.kv_get("session", "p1")) == b"token"
        assert [e.id for e in await until_served(store.dlq_list)] == [dead.id]
        # The promoted master has no replica: its writes are refused (503) while the others'
        # go through; the old master back as its replica, they are acknowledged again.
        cluster.bring_back(old)
        plain = open_store(cluster.url, namespace=ns)
        await plain.open()
        try:
            assert await until_served(lambda: plain.tx_begin(TxRecord("acme", "bet-1", "bet", "fp"), 3600)) is not None
            assert await plain.claim(OnceKey("sig", "s-1", 3600)) is False
            claimed = []
            deadline = time.monotonic() + 30
            while len(claimed) < len(entries) and time.monotonic() < deadline:
                claimed += await until_served(lambda: plain.q_claim("gw-2", 50, 30))
            assert sorted(e.id for e in claimed) == sorted(e.id for e in entries)  # each exactly once
        finally:
            await plain.close()
        assert await until_served(lambda: store.tx_begin(TxRecord("acme", "bet-3", "bet", "fp"), 3600)) is None
    finally:
        await store.close()


async def test_a_slot_moved_under_the_store_asks_then_moves_and_keeps_everything(cluster):
    """The slot of a partner's ledger is moved to another master while the store uses it:
    half moved, the keys already on the new master are found through ``ASK`` (redis-py), a
    script whose keys are split between the two refuses (``TRYAGAIN``: 503, retriable); once
    moved, ``MOVED`` sends every call to the new master, duplicates are still refused and
    nothing is lost."""
    import redis

    store = open_store(cluster.url, namespace=f"t-{uuid.uuid4().hex[:8]}")
    await store.open()
    try:
        txids = [f"tx-{i}" for i in range(40)]
        for txid in txids:
            assert await store.tx_begin(TxRecord("acme", txid, "bet", "fp"), 600) is None
        for txid in txids[::2]:
            await store.tx_finish("acme", txid, DONE, 200, b'{"balance":1.00}', 600)
        key = store._tx_key("acme", txids[0])
        slot = redis.Redis(port=cluster.ports[0]).cluster("keyslot", key)
        source = cluster.port_of_slot_owner(key)
        target = next(port for port in cluster.master_ports() if port != source)
        cluster.begin_slot_move(slot, source, target, keys=20)
        # ASK for the moved ones, one call at a time: redis-py 8.1's cluster client sends ASKING
        # and the command on two pooled connections, so concurrent calls meet redirections
        # that do not settle (503) or its own connection race (SECURITY.md).
        got = [await until_served(lambda t=t: store.tx_get("acme", t)) for t in txids]
        assert [g.state if g else None for g in got] == [DONE if i % 2 == 0 else "pending" for i in range(40)]
        with pytest.raises(StoreUnavailable):  # the record and the pending index on two masters
            for txid in txids:
                await store.tx_begin(TxRecord("acme", txid, "bet", "fp"), 600)
        cluster.end_slot_move(slot, source, target)
        assert cluster.port_of_slot_owner(key) == target
        again = await asyncio.gather(*(until_served(lambda t=t: store.tx_begin(TxRecord("acme", t, "bet", "other"), 600))
                                       for t in txids))
        assert all(r is not None and r.fingerprint == "fp" for r in again)  # every one a duplicate still
        assert [(r.txid) for r in await store.tx_pending(time.time() + 1)] == txids[1::2]
        assert await store.tx_begin(TxRecord("acme", "tx-new", "bet", "fp"), 600) is None
    finally:
        await store.close()


def test_two_gateways_under_load_through_a_master_kill_lose_and_double_nothing(cluster):
    """bench/soak.py's load (5 % duplicates re-sent to either gateway, 1 % legacy failures, a
    wallet that is not idempotent) through two gateway processes on the cluster with
    ``wait_replicas=1``; a third of the way in, the master serving the most of the ledger is
    ``kill -9``ed, its replica promoted, the old master brought back as a replica. Then the
    queue drains and every answer reconciles with the wallet's own books."""
    from bench.soak import run

    cluster.wait_healthy()
    failover: dict = {}

    def kill_a_master(soak) -> dict:
        deadline = time.monotonic() + 60
        while len(soak.sent) < 150 and time.monotonic() < deadline:  # traffic under way
            time.sleep(0.05)
        store = RedisStore(cluster.url, namespace="igsp")
        owners = [cluster.port_of_slot_owner(p + "pending") for p in store._ledger]
        old = max(set(owners), key=owners.count)
        replica = cluster.replica_of(old)
        failover.update(sent_before_kill=len(soak.sent), killed=old, promoted=replica)
        started = time.monotonic()
        cluster.kill(old)
        cluster.wait_for_failover(replica)
        failover["failover_s"] = round(time.monotonic() - started, 2)
        cluster.bring_back(old)
        failover["healthy_again_s"] = round(time.monotonic() - started, 2)
        return failover

    args = argparse.Namespace(duration=24, rate=60, concurrency=16, gateways=2, store="auto",
                              store_url=cluster.url + "?wait_replicas=1&wait_timeout_ms=2000", players=20,
                              duplicates=0.05, faults=0.01, drain_seconds=120, seed=11, json=True)
    report = asyncio.run(run(args, during_load=kill_a_master))
    print(report)
    assert report["during_load"]["killed"] and report["during_load"]["sent_before_kill"] >= 150, report
    assert report["lost"] == [] and report["doubled"] == [], report
    assert report["balance_mismatches"] == {}, report
    assert report["inconsistent_replays"] == [] and report["internal_errors"] == 0, report
    assert report["drained"] and report["drained_after_final_pass"], report
    assert report["gateway_tracebacks"] == 0, report
    assert report["money_transactions"] > 500, report
    assert any(":503:" in key for key in report["answers"]), report["answers"]  # the failover was met
