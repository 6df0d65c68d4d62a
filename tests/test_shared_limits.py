"""Rate limits shared through the store (``rate_limits.shared``): N gateways allow the
configured rate together, not N times it; and what a shared limit does when the store is out.

The store's own bucket (``Store.rate_take``) is checked on both backends in test_store.py, and
run twice / through reply faults in test_redis_resend.py and test_redis_faults.py.
"""

from __future__ import annotations

import threading
import time

import pytest
import yaml

from gateway import ratelimit
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.ratelimit import ALLOW, LOCAL, REFUSE, Limiter, RateLimit, RateLimited
from gateway.store.base import StoreUnavailable
from tests.conftest import ACME, BETA, platform_config
from tests.support import IgspClient, RedisServer

BALANCE = {"action": "balance", "player_id": "p1", "currency": "EUR"}


# -- the limiter, against a stand-in store ----------------------------------------------------
class Bucket:
    """A store whose shared bucket answers from a list, or raises StoreUnavailable while down."""

    def __init__(self, answers=()):
        self.answers, self.asked, self.down = list(answers), [], False

    async def rate_take(self, key: str, rate: float, capacity: float) -> float:
        self.asked.append((key, rate, capacity))
        if self.down:
            raise StoreUnavailable()
        return self.answers.pop(0)


def limiter(store, on_store_error=LOCAL) -> Limiter:
    return Limiter({"acme": RateLimit(0.001, burst=2), "free": None}, store=store, on_store_error=on_store_error)


async def test_a_shared_limit_asks_the_store_for_each_limited_partner():
    store = Bucket([0.0, 2.5])
    limits = limiter(store)
    await limits.check("acme")
    with pytest.raises(RateLimited) as refused:
        await limits.check("acme")
    assert refused.value.retry_after == 3 and refused.value.partner == "acme"
    await limits.check("free")  # unlimited: not tracked, the store is not asked
    assert store.asked == [("acme", 0.001, 2.0)] * 2


@pytest.mark.parametrize("mode", [LOCAL, ALLOW, REFUSE])
async def test_a_shared_limit_while_the_store_is_out(mode, monkeypatch):
    store = Bucket()
    store.down = True
    limits = limiter(store, mode)
    answers = []
    for _ in range(4):
        try:
            await limits.check("acme")
            answers.append(200)
        except RateLimited:
            answers.append(429)
        except StoreUnavailable:
            answers.append(503)
    # local: this process's own bucket (a burst of 2); allow: no limit; refuse: 503.
    assert answers == {LOCAL: [200, 200, 429, 429], ALLOW: [200] * 4, REFUSE: [503] * 4}[mode]
    # The store was asked once: the next STORE_RETRY_SECONDS do without it...
    assert len(store.asked) == 1
    # ...then it is asked again, and decides again once it answers.
    store.down, store.answers = False, [0.0]
    now = time.monotonic()
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: now + ratelimit.STORE_RETRY_SECONDS + 1)
    await limits.check("acme")
    assert len(store.asked) == 2 and limits.store_down_until == 0.0


def test_a_process_limiter_never_asks_the_store():
    assert Limiter({"acme": RateLimit(1)}).shared is False
    with pytest.raises(ValueError):
        Limiter({}, store=Bucket(), on_store_error="maybe")


# -- config ------------------------------------------------------------------------------------
def test_rate_limits_config(tmp_path, hub88_keys):
    def load(**overrides):
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(platform_config(f"sqlite:///{tmp_path}/gateway.db", **overrides)))
        return load_config(path, env={"HUB88_WALLET_URL": "http://127.0.0.1:1", "HUB88_PRIVATE_KEY": hub88_keys[0]})

    default = load()
    assert (default.rate_limits_shared, default.rate_limits_on_store_error) == (False, LOCAL)
    shared = load(rate_limits={"shared": True, "on_store_error": "refuse"})
    assert (shared.rate_limits_shared, shared.rate_limits_on_store_error) == (True, REFUSE)
    with pytest.raises(ConfigError, match=r"rate_limits\.on_store_error"):
        load(rate_limits={"shared": True, "on_store_error": "open"})
    with pytest.raises(ConfigError, match=r"rate_limits"):
        load(rate_limits={"share": True})


# -- real gateways -----------------------------------------------------------------------------
RATE, BURST, SECONDS = 10.0, 5, 3.0


def drive(gateways, seconds: float, clients_each: int = 2) -> tuple[dict, float]:
    """Signed balance hooks of one partner, as fast as they go, from ``clients_each`` threads
    per gateway for ``seconds``; returns the count of each status and the elapsed time (which
    holds every decision the gateways made)."""
    counts: dict[int, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(url):
        acme = IgspClient(url, ACME["api_key"], ACME["secret"])
        mine: dict[int, int] = {}
        while time.monotonic() < deadline:
            status = acme.hook(BALANCE).status_code
            mine[status] = mine.get(status, 0) + 1
        with lock:
            for status, n in mine.items():
                counts[status] = counts.get(status, 0) + n

    threads = [threading.Thread(target=client, args=(gw.url,)) for gw in gateways for _ in range(clients_each)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return counts, time.monotonic() - started


def limited(store_url: str, shared: bool, **store) -> dict:
    return platform_config(store_url, store=store, security={"rate_limit": {"requests_per_second": RATE,
                                                                            "burst": BURST}},
                           rate_limits={"shared": shared})


@pytest.fixture(params=["sqlite", "redis"])
def shared_store(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/shared.db"
    else:
        server = RedisServer().start()
        yield server.url
        server.cleanup()


def test_two_gateways_sharing_a_store_allow_the_configured_rate_together(hub88, gateway_factory, shared_store):
    hub88.player("p1", "100.00")
    gateways = [gateway_factory(limited(shared_store, True)) for _ in range(2)]
    counts, elapsed = drive(gateways, SECONDS)
    assert set(counts) == {200, 429}, counts
    # One bucket: at most the burst and the rate over the run (GCRA's bound; +1 for rounding),
    # and the offered load (far above the rate) gets at least half of that.
    most = BURST + RATE * elapsed + 1
    assert RATE * elapsed / 2 <= counts[200] <= most, (counts, elapsed)
    assert counts[429] > counts[200]
    # Each gateway counted its own refusals, for the same partner.
    for gw in gateways:
        assert 'igsp_rate_limited_total{partner="acme-games"}' in gw_metrics(gw)


def test_per_process_limits_are_unchanged_each_gateway_allows_the_rate(hub88, gateway_factory, tmp_path):
    hub88.player("p1", "100.00")
    gateways = [gateway_factory(limited(f"sqlite:///{tmp_path}/own.db", False)) for _ in range(2)]
    counts, elapsed = drive(gateways, SECONDS)
    assert set(counts) == {200, 429}, counts
    one_bucket = BURST + RATE * elapsed + 1
    assert one_bucket < counts[200] <= 2 * one_bucket, (counts, elapsed)


def gw_metrics(gw) -> str:
    import requests

    return requests.get(gw.internal_url + "/metrics", timeout=5).text


@pytest.mark.parametrize("mode", [LOCAL, ALLOW, REFUSE])
def test_a_shared_limit_when_redis_goes_away(hub88, gateway_factory, mode):
    """Redis stops under a running gateway: balance hooks (which need no store) are still
    answered, limited as ``on_store_error`` says, and so is another partner's traffic."""
    hub88.player("p1", "100.00")
    server = RedisServer().start()
    try:
        config = platform_config(server.url, security={"rate_limit": {"requests_per_second": 0.01, "burst": 3}},
                                 rate_limits={"shared": True, "on_store_error": mode})
        config["partners"][1]["rate_limit"] = None
        gw = gateway_factory(config)
        acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
        beta = IgspClient(gw.url, BETA["api_key"], BETA["secret"])
        assert [acme.hook(BALANCE).status_code for _ in range(4)] == [200, 200, 200, 429]  # the shared bucket
        server.stop()
        answers = [acme.hook(BALANCE).status_code for _ in range(5)]
        # local: this process's own bucket, full (it was not used while Redis answered).
        assert answers == {LOCAL: [200, 200, 200, 429, 429], ALLOW: [200] * 5, REFUSE: [503] * 5}[mode]
        assert beta.hook(BALANCE).status_code == 200  # not limited: never asks the store
        assert any(line.get("msg", "").startswith("shared rate limits: the store is unavailable")
                   for line in gw.log_lines())
    finally:
        server.cleanup()
