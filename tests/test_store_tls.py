"""TLS to Redis on every kind of Redis, against real TLS-only servers.

A throwaway CA signs a certificate for 127.0.0.1 (tests/tls_support.py); a standalone
redis-server, a Sentinel set (a master, a replica, three sentinels) and a Cluster (three
masters, three replicas, ``tls-cluster yes``) speak TLS only (``--port 0``: no plaintext port).
The store URL of each comes from a config's ``store`` section as an operator writes it — a
plain URL, an ACL user, a password file, ``tls.enabled`` and ``tls.ca_file`` — and a part of
the store contract suite (tests/test_store.py: the ledger, once keys, the queue, dead letters)
runs over it. A wrong CA, a plaintext URL to a TLS server, a TLS URL to a plaintext server,
a host name the certificate does not name and a wrong password are each refused promptly
(StoreUnavailable: a 503), never answered in plaintext.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import quote

import pytest
import redis
import yaml

from gateway.config import load_store_settings
from gateway.store import open_store
from gateway.store.base import StoreUnavailable
from tests.cluster_support import RedisClusterSet
from tests.sentinel_support import SentinelSet
from tests.support import RedisServer
from tests.test_store import (  # noqa: F401 — collected here, run over TLS
    test_begin_then_duplicate_returns_the_first_record,
    test_concurrent_begins_across_connections_create_exactly_one,
    test_concurrent_claims_of_one_once_key_admit_exactly_one,
    test_dead_letters_list_replay_purge,
    test_finish_stores_the_exact_answer,
    test_put_claim_ack,
    test_settle_applied_finishes_the_queued_record_and_closes_the_dead_letter,
    test_void_once_and_unvoid_only_by_the_voider,
)
from tests.tls_support import TlsRedisServer, make_pki

PASSWORD = "tls-pass:w@rd/0123456789"
KINDS = ("standalone", "sentinel", "cluster")


def add_user(client: redis.Redis) -> None:
    """The ACL user the store logs in as; the default user stays on for the support modules
    (and the sentinels, which are given no credentials)."""
    assert client.execute_command("ACL", "SETUSER", "igsp", "on", f">{PASSWORD}", "~*", "&*", "+@all") in (b"OK", "OK")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_redis(pki):
    server = TlsRedisServer(pki).start()
    try:
        add_user(redis.Redis(host="127.0.0.1", port=server.port, **pki.redis_kwargs()))
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def tls_sentinels(pki):
    sentinels = SentinelSet(pki=pki).start()
    try:
        for port in (sentinels.master_port, sentinels.replica_port):  # ACLs are not replicated
            add_user(redis.Redis(host="127.0.0.1", port=port, **pki.redis_kwargs()))
        yield sentinels
    finally:
        sentinels.cleanup()


@pytest.fixture(scope="module")
def tls_cluster(pki):
    cluster = RedisClusterSet(pki=pki).start()
    try:
        for port in cluster.ports:
            add_user(redis.Redis(host="127.0.0.1", port=port, **pki.redis_kwargs()))
        yield cluster
    finally:
        cluster.cleanup()


def plain_url_of(servers) -> str:
    """A TLS set's URL as an operator writes it in store.url, without TLS or credentials."""
    return servers.url.replace("rediss+", "redis+").split("?")[0]


def plain_url(request, kind: str) -> str:
    if kind == "standalone":
        return f"redis://127.0.0.1:{request.getfixturevalue('tls_redis').port}/0"
    return plain_url_of(request.getfixturevalue({"sentinel": "tls_sentinels", "cluster": "tls_cluster"}[kind]))


def configured_url(tmp_path, url: str, ca) -> str:
    """The store URL ``load_store_settings`` folds from a store section with TLS and an ACL user."""
    (tmp_path / "redis-password").write_text(PASSWORD + "\n")
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump({"store": {
        "url": url, "username": "igsp", "password_file": "redis-password",
        "tls": {"enabled": True, "ca_file": str(ca)}}}))
    return load_store_settings(tmp_path / "gateway.yaml").url


@pytest.fixture(params=KINDS)
def store_spec(request, tmp_path, pki):
    """(url, namespace) of a fresh store over TLS: what the contract tests take."""
    url = configured_url(tmp_path, plain_url(request, request.param), pki.ca)
    assert url.startswith({"standalone": "rediss://", "sentinel": "rediss+sentinel://",
                           "cluster": "rediss+cluster://"}[request.param]), url
    return url, f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def store(store_spec):
    s = open_store(store_spec[0], namespace=store_spec[1])
    await s.open()
    yield s
    await s.close()


def chain(exc: BaseException) -> str:
    """Every message in an exception's chain of causes."""
    out = []
    while exc is not None:
        out.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(out)


async def refused(url: str, namespace: str = "igsp") -> str:
    """Opening (and using) the store at ``url`` fails with StoreUnavailable, within seconds;
    returns the chain of causes."""
    store = open_store(url, namespace=namespace)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as failed:
        await asyncio.wait_for(store.open(), 20)
        try:
            await store.ping()
        finally:
            await store.close()
    assert time.monotonic() - started < 15, "a refusal must be prompt, not a hang"
    return chain(failed.value)


async def test_the_connections_are_tls_connections(store, store_spec):
    """Not a plaintext connection that happens to work: every pool makes TLS connections."""
    from redis.asyncio.connection import SSLConnection

    r = store.r
    if hasattr(r, "get_nodes"):
        pools = [node.connection_class for node in r.get_nodes()]
        assert pools and all(issubclass(cls, SSLConnection) for cls in pools)
    else:
        assert issubclass(r.connection_pool.connection_class, SSLConnection)
    if store_spec[0].startswith("rediss+sentinel"):
        sentinels = store._sentinel.sentinels
        assert all(issubclass(s.connection_pool.connection_class, SSLConnection) for s in sentinels)
    await store.ping()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_wrong_ca_is_refused(request, tmp_path, pki, kind):
    url = configured_url(tmp_path, plain_url(request, kind), pki.wrong_ca)
    assert quote(str(pki.wrong_ca), safe="") in url
    causes = await refused(url)
    assert "certificate verify failed" in causes, causes


@pytest.mark.parametrize("kind", KINDS)
async def test_a_plaintext_url_to_tls_servers_is_refused(request, kind):
    """The servers have no plaintext port: a URL without TLS gets nothing."""
    await refused(plain_url(request, kind))


async def test_a_tls_url_to_a_plaintext_server_never_falls_back_to_plaintext(pki):
    server = RedisServer().start()
    try:
        causes = await refused(f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={quote(str(pki.ca), safe='')}")
        # the handshake gets no TLS answer: the connection attempts time out (2 s each)
        assert "connecting" in causes, causes
        # the same server in plaintext answers, so it is the TLS that failed
        store = open_store(server.url)
        await store.open()
        await store.ping()
        await store.close()
    finally:
        server.cleanup()


async def test_the_host_name_is_checked(tls_redis, pki):
    """The certificate names 127.0.0.1 only: the same server reached as localhost is refused."""
    url = tls_redis.url().replace("127.0.0.1", "localhost")
    causes = await refused(url)
    assert "certificate verify failed" in causes and "mismatch" in causes, causes


async def test_a_wrong_password_over_tls_is_refused(tls_redis, tmp_path, pki):
    url = configured_url(tmp_path, f"redis://127.0.0.1:{tls_redis.port}/0", pki.ca)
    causes = await refused(url.replace(quote(PASSWORD, safe=""), "not-the-password"))
    assert "WRONGPASS" in causes or "invalid username-password" in causes, causes


def test_a_gateway_on_tls_sentinels_takes_money_and_refuses_a_wrong_ca(hub88, hub88_keys, gateway_factory,
                                                                       tls_sentinels, pki, tmp_path):
    """End to end: ``igsp-gateway serve`` with a store section as an operator writes it (the
    sentinels' plain URL, an ACL user, the password from the environment, store.tls with a CA
    file) answers a bet and its retry from one debit; with the wrong CA it does not start,
    and its log says why without the password."""
    from decimal import Decimal

    from tests.conftest import ACME, platform_config
    from tests.support import GatewayProcess, IgspClient
    from tests.test_platform_face import bet

    hub88.player("p1", "100.00")
    url = plain_url_of(tls_sentinels)

    def config(ca) -> dict:
        return platform_config(url, store={"namespace": f"t-{uuid.uuid4().hex[:8]}", "username": "igsp",
                                           "password": "${REDIS_PASSWORD}",
                                           "tls": {"enabled": True, "ca_file": str(ca)}})

    gw = gateway_factory(config(pki.ca), env={"REDIS_PASSWORD": PASSWORD})
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    first = acme.hook(bet("tx-tls-1", 5))
    assert first.status_code == 200, first.text
    again = acme.hook(bet("tx-tls-1", 5))
    assert again.status_code == 200 and again.content == first.content
    assert len(hub88.ledger("bet")) == 1 and hub88.balance("p1") == Decimal("95.00")

    wrong = GatewayProcess(config(pki.wrong_ca), tmp_path, env={"REDIS_PASSWORD": PASSWORD,
                                                                "HUB88_WALLET_URL": hub88.url,
                                                                "HUB88_PRIVATE_KEY": hub88_keys[0]})
    with pytest.raises(RuntimeError, match="gateway did not start"):
        wrong.start(timeout=30)
    assert wrong.proc.wait(10) == 1
    log = wrong.log_text()
    assert "certificate verify failed" in log, log
    assert PASSWORD not in log and quote(PASSWORD, safe="") not in log


# After every other test of the module's TLS Sentinel set: it kills the set's master.
async def test_a_failover_over_tls_keeps_every_acknowledged_write(tls_sentinels, tmp_path, pki):
    """The sentinels (over TLS) promote the replica (replicating over TLS); the same store
    object finds the new master through them and reaches it over TLS, with every write the
    replica acknowledged (``wait_replicas=1``) still there."""
    from gateway.store import OnceKey, TxRecord
    from gateway.store.base import DONE
    from tests.test_redis_sentinel import until_served

    url = configured_url(tmp_path, plain_url_of(tls_sentinels) + "?wait_replicas=1&wait_timeout_ms=2000", pki.ca)
    store = open_store(url, namespace=f"t-{uuid.uuid4().hex[:8]}")
    await store.open()
    try:
        assert await store.tx_begin(TxRecord("acme", "bet-1", "bet", "fp", payload=b"{}"), 3600) is None
        await store.tx_finish("acme", "bet-1", DONE, 200, b'{"balance":99.00}', 3600)
        assert await store.claim(OnceKey("sig", "s-1", 3600)) is True
        assert await store.kv_put("session", "p1", b"token", ttl=3600)
        old = tls_sentinels.kill_master()
        assert tls_sentinels.wait_for_new_master(old) == tls_sentinels.replica_port
        got = await until_served(lambda: store.tx_get("acme", "bet-1"))
        assert (got.state, got.status, got.body) == (DONE, 200, b'{"balance":99.00}')
        assert await store.kv_get("session", "p1") == b"token"
        # (a write would be refused now: the promoted replica has no replica to acknowledge it)
        assert tuple(store.r.connection_pool.master_address) == ("127.0.0.1", tls_sentinels.replica_port)
    finally:
        await store.close()


def test_sentinels_that_require_the_password_over_tls(tmp_path, pki):
    """Sentinels with ``requirepass`` (as the servers): ``store.sentinel_auth`` logs in to them
    with the Redis password, over TLS; without it the sentinels refuse, promptly and saying so."""
    from gateway.store import TxRecord

    password = "sentinel-and-redis-pass-0123456789"
    sentinels = SentinelSet(pki=pki, password=password).start()
    try:
        (tmp_path / "redis-password").write_text(password + "\n")

        def url(**store) -> str:
            (tmp_path / "gateway.yaml").write_text(yaml.safe_dump({"store": {
                "url": plain_url_of(sentinels), "password_file": "redis-password",
                "tls": {"enabled": True, "ca_file": str(pki.ca)}, **store}}))
            return load_store_settings(tmp_path / "gateway.yaml").url

        async def write(url: str) -> None:
            store = open_store(url, namespace=f"t-{uuid.uuid4().hex[:8]}")
            await store.open()
            try:
                assert await store.tx_begin(TxRecord("acme", "tx-1", "bet", "fp"), 60) is None
                assert (await store.tx_get("acme", "tx-1")).txid == "tx-1"
            finally:
                await store.close()

        with_auth = url(sentinel_auth=True)
        assert with_auth.startswith("rediss+sentinel://:") and "sentinel_auth=yes" in with_auth
        asyncio.run(write(with_auth))
        causes = asyncio.run(refused(url()))
        assert "MasterNotFoundError" in causes and "uthentication" in causes, causes
    finally:
        sentinels.cleanup()
