"""The Redis store behind Sentinel (``redis+sentinel://``) and ``wait_replicas``.

A real Sentinel set on loopback (tests/sentinel_support.py: a master, a replica, three
sentinels). The master is ``kill -9``ed, the sentinels promote the replica, and the store —
redis-py's Sentinel client asking the sentinels for the master again — carries on with
everything written with ``WAIT 1`` before the kill. The store contract itself runs against
Sentinel in test_store.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal

import pytest
import yaml

from gateway.store import OnceKey, QueueEntry, TxRecord, open_store
from gateway.store.base import DONE, StoreUnavailable
from gateway.store.redis import parse_url
from tests.conftest import ACME, platform_config
from tests.sentinel_support import SentinelSet
from tests.support import IgspClient, RedisServer
from tests.test_platform_face import bet


@pytest.fixture
def sentinels():
    s = SentinelSet().start()
    yield s
    s.cleanup()


async def until_served(call, timeout: float = 30.0):
    """``call()`` again while the store answers StoreUnavailable (a failover under way)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


# -- URLs --------------------------------------------------------------------------------------
def test_sentinel_urls():
    o = parse_url("redis+sentinel://app:s%3Acret@10.0.0.1:26379,10.0.0.2:26380,sentinel-3/mymaster?db=3")
    assert o["sentinels"] == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-3", 26379)]
    assert (o["service"], o["db"], o["username"], o["password"]) == ("mymaster", 3, "app", "s:cret")
    assert (o["wait_replicas"], o["wait_timeout_ms"]) == (0, 1000)
    o = parse_url("redis+sentinel://[::1]:5000/svc?wait_replicas=1&wait_timeout_ms=250")
    assert (o["sentinels"], o["wait_replicas"], o["wait_timeout_ms"], o["tls"]) == ([("::1", 5000)], 1, 250, None)
    # TLS to the sentinels and the servers, one CA for both (test_store_tls.py runs it).
    o = parse_url("rediss+sentinel://s1/svc?db=1&ssl_ca_certs=%2Fetc%2Fca.pem")
    assert (o["service"], o["db"], o["tls"]) == ("svc", 1, {"ssl": True, "ssl_ca_certs": "/etc/ca.pem"})
    # The store's own options leave a plain URL before redis-py sees it; redis-py's stay.
    assert parse_url("rediss://h:6380/2?wait_replicas=2&ssl_cert_reqs=none")["url"] == "rediss://h:6380/2?ssl_cert_reqs=none"
    for bad in ("redis+sentinel://s1:26379/", "redis+sentinel://s1:port/svc", "redis+sentinel://s1/svc?socket=1",
                "redis+sentinel://s1/a/b", "redis://h/0?wait_replicas=-1", "redis://h/0?wait_timeout_ms=0",
                "redis+sentinel://s1/svc?ssl_ca_certs=%2Fca.pem", "rediss+sentinel://s1/svc?ssl_cert_reqs=none"):
        with pytest.raises(ValueError):
            open_store(bad)


def test_the_config_takes_a_sentinel_url(tmp_path, hub88_keys):
    from gateway.config import load_config

    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(platform_config("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/igsp?db=1")))
    config = load_config(path, env={"HUB88_WALLET_URL": "http://127.0.0.1:1", "HUB88_PRIVATE_KEY": hub88_keys[0]})
    assert config.store_url.startswith("redis+sentinel://")


# -- failover ----------------------------------------------------------------------------------
async def test_a_failover_keeps_every_write_a_replica_acknowledged(sentinels):
    store = open_store(sentinels.url + "?wait_replicas=1&wait_timeout_ms=2000", namespace=f"t-{uuid.uuid4().hex[:8]}")
    await store.open()
    try:
        # Ledger, once-keys, kv, queue and dead letters, each write acknowledged by the replica.
        assert await store.tx_begin(TxRecord("acme", "bet-1", "bet", "fp", payload=b"{}"), 3600) is None
        await store.tx_finish("acme", "bet-1", DONE, 200, b'{"balance":99.00}', 3600)
        assert await store.claim(OnceKey("sig", "s-1", 3600)) is True
        await store.kv_put("session", "p1", b"token", ttl=3600)
        due = QueueEntry(id=uuid.uuid4().hex, route="wallet", payload={"op": "win"})
        dead = QueueEntry(id=uuid.uuid4().hex, route="wallet", payload={"op": "refund"})
        await store.q_put(due)
        await store.q_put(dead, dead=True)
        old = sentinels.kill_master()
        new = sentinels.wait_for_new_master(old)
        assert new == sentinels.replica_port
        # The same store object, on the promoted replica: the first calls may still meet the
        # failover (503, retriable); then everything written before the kill is there.
        got = await until_served(lambda: store.tx_get("acme", "bet-1"))
        assert (got.state, got.status, got.body) == (DONE, 200, b'{"balance":99.00}')
        assert await store.kv_get("session", "p1") == b"token"
        assert [e.id for e in await store.dlq_list()] == [dead.id]
        # The promoted replica has no replica of its own: with wait_replicas=1 its scripts
        # are refused (503), whatever they would have written...
        with pytest.raises(StoreUnavailable):
            await store.tx_begin(TxRecord("acme", "bet-2", "bet", "fp"), 3600)
        # ...while a store that does not wait finds the rest as it was, and writes.
        plain = open_store(sentinels.url, namespace=store.ns)
        await plain.open()
        try:
            assert await plain.tx_begin(TxRecord("acme", "bet-1", "bet", "fp"), 3600) is not None  # a duplicate
            assert await plain.claim(OnceKey("sig", "s-1", 3600)) is False
            assert [e.id for e in await plain.q_claim("gw-2", 10, 30)] == [due.id]
            assert await plain.tx_begin(TxRecord("acme", "bet-3", "bet", "fp"), 3600) is None
        finally:
            await plain.close()
    finally:
        await store.close()


async def test_wait_replicas_refuses_a_write_no_replica_acknowledged():
    """A standalone Redis has no replica: with wait_replicas=1 every write is a 503 (it may
    stand on the master, like a write whose reply was lost); the rate limit does not wait."""
    server = RedisServer().start()
    try:
        store = open_store(server.url + "?wait_replicas=1&wait_timeout_ms=20", namespace="w")
        await store.open()
        try:
            for write in (lambda: store.tx_begin(TxRecord("acme", "b", "bet", "fp"), 60),
                          lambda: store.kv_put("session", "k", b"v", ttl=60),
                          lambda: store.claim(OnceKey("sig", "k", 60))):
                with pytest.raises(StoreUnavailable):
                    await write()
            # Batched with a rate limit: only the writes that wait fail.
            bucket, record = await asyncio.gather(store.rate_take("acme", 1, 5),
                                                  store.tx_begin(TxRecord("acme", "c", "bet", "fp"), 60),
                                                  return_exceptions=True)
            assert bucket == 0.0 and isinstance(record, StoreUnavailable)
            assert await store.tx_get("acme", "b") is not None  # applied on the master all the same
        finally:
            await store.close()
    finally:
        server.cleanup()


def test_a_gateway_on_sentinel_answers_after_the_master_is_killed(hub88, gateway_factory, sentinels):
    """End to end, with ``wait_replicas=1``: a bet through a gateway on ``redis+sentinel://``;
    the master is killed and the replica promoted. With no replica left the gateway takes no
    money (503, nothing sent to the wallet); once the old master is back — as a replica of the
    new one — the bet's retry gets the first answer from the ledger (it was not sent to the
    wallet again) and a new bet goes through."""
    hub88.player("p1", "100.00")
    gw = gateway_factory(platform_config(sentinels.url + "?wait_replicas=1"))
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    first = acme.hook(bet("tx-s-1", 5))
    assert first.status_code == 200, first.text
    old = sentinels.kill_master()
    sentinels.wait_for_new_master(old)
    refused = acme.hook(bet("tx-s-2", 5))
    assert refused.status_code == 503, refused.text
    sentinels.bring_back(old)
    deadline = time.monotonic() + 30
    while (again := acme.hook(bet("tx-s-1", 5))).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.1)  # the gateway's store meets the failover: retriable, as a provider retries
    assert again.status_code == 200 and again.content == first.content
    assert acme.hook(bet("tx-s-3", 5)).status_code == 200
    assert len(hub88.ledger("bet")) == 2 and hub88.balance("p1") == Decimal("90.00")
