"""Overload without collapse: concurrency limits per partner and per legacy API (``concurrency``)
shed the excess at once with ``503`` + ``Retry-After``, before any ledger or legacy work.

The gateway processes are real; the wallet holds the admitted bets (a ``delay`` fault on the
bet endpoint, under a mapping whose timeout outlasts it), so what is in progress is known
without timing: the test waits until the wallet has the admitted bets, then sends more.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.ratelimit import HELD, Concurrency, Limiter, Overloaded, RateLimit, RateLimited, release_slots
from tests.conftest import ACME, BETA, platform_config
from tests.support import ROOT, IgspClient
from tests.test_platform_face import bet

HOLD = 5.0  # seconds the wallet holds an admitted bet (the mapping's timeout is longer)


# -- the counter -------------------------------------------------------------------------------
def test_slots_per_partner_and_per_upstream():
    limits = Concurrency({"acme": 2, "beta": None}, {"acme": "wallet", "beta": "wallet"}, {"wallet": 3},
                         retry_after=2)
    held = []
    token = HELD.set(held)
    try:
        limits.enter("acme")
        limits.enter("acme")
        with pytest.raises(Overloaded) as partner_full:
            limits.enter("acme")
        assert (partner_full.value.status, partner_full.value.retry_after) == (503, 2)
        assert "partner" in partner_full.value.message
        limits.enter("beta")  # beta has no limit of its own, the wallet has room for one more
        with pytest.raises(Overloaded) as upstream_full:
            limits.enter("beta")
        assert "upstream" in upstream_full.value.message
        release_slots(held)
        assert set(limits.counts.values()) == {0}
        limits.enter("beta")
        # A reload's limiter counts the requests still running under the old one.
        again = Concurrency({"acme": 1}, {"acme": "wallet", "beta": "wallet"}, {"wallet": 1}, counts=limits.counts)
        with pytest.raises(Overloaded):
            again.enter("acme")
    finally:
        release_slots(held)
        HELD.reset(token)
    # Outside a request (no HELD): nothing is counted.
    for _ in range(5):
        limits.enter("acme")


async def test_a_shed_request_takes_no_rate_token():
    held = []
    token = HELD.set(held)
    try:
        limiter = Limiter({"acme": RateLimit(0.001, burst=1)},
                          concurrency=Concurrency({"acme": 1}, {"acme": "wallet"}, {}))
        await limiter.check("acme")
        with pytest.raises(Overloaded):
            await limiter.check("acme")
        release_slots(held)
        with pytest.raises(RateLimited):  # the one token went to the first request, not the shed one
            await limiter.check("acme")
    finally:
        release_slots(held)
        HELD.reset(token)


def test_concurrency_config(tmp_path, hub88_keys):
    def load(**overrides):
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(platform_config(f"sqlite:///{tmp_path}/gw.db", **overrides)))
        return load_config(path, env={"HUB88_WALLET_URL": "http://127.0.0.1:1", "HUB88_PRIVATE_KEY": hub88_keys[0]})

    config = load()
    assert [p.max_concurrent for p in config.partners] == [None, None]
    assert config.upstream_concurrency == {"hub88-wallet": None} and config.concurrency_retry_after == 1
    config = load(concurrency={"per_partner": 8, "per_upstream": 20, "retry_after_seconds": 3})
    assert [p.max_concurrent for p in config.partners] == [8, 8]
    assert config.upstream_concurrency == {"hub88-wallet": 20} and config.concurrency_retry_after == 3
    config = load(concurrency={"per_upstream": 20, "upstreams": {"hub88-wallet": 5}})
    assert config.upstream_concurrency == {"hub88-wallet": 5}
    with pytest.raises(ConfigError, match=r"concurrency\.upstreams\.nowhere"):
        load(concurrency={"upstreams": {"nowhere": 5}})
    with pytest.raises(ConfigError, match=r"concurrency\.per_partner"):
        load(concurrency={"per_partner": 0})


# -- real gateways -----------------------------------------------------------------------------
def held_config(tmp_path: Path, **overrides) -> dict:
    """The shipped Hub88 mapping with a timeout longer than the wallet's hold."""
    mapping = (ROOT / "mappings" / "hub88-wallet.yaml").read_text()
    assert "  timeout: 1.5 " in mapping
    path = tmp_path / "hub88-held.yaml"
    path.write_text(mapping.replace("  timeout: 1.5 ", f"  timeout: {HOLD + 3} "))
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db", **overrides)
    for partner in config["partners"]:
        partner["mapping"] = str(path)
    return config


def hold_bets(hub88, clients, amount="1.00"):
    """Send one bet per client, each held by the wallet; returns (threads, answers, txids)
    once the wallet has all of them in hand."""
    before = hub88.calls("bet")
    answers, txids = {}, []
    for i in range(len(clients)):
        hub88.fault("delay", endpoint="bet", seconds=HOLD)
        txids.append(f"held-{time.monotonic_ns()}-{i}")

    def send(client, txid):
        answers[txid] = client.hook(bet(txid, amount), timeout=30)

    threads = [threading.Thread(target=send, args=pair) for pair in zip(clients, txids, strict=True)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + HOLD - 1
    while hub88.calls("bet") < before + len(clients):
        assert time.monotonic() < deadline, "the admitted bets did not reach the wallet"
        time.sleep(0.01)
    return threads, answers, txids


def test_a_partner_over_its_concurrency_is_shed_before_the_ledger(hub88, gateway_factory, tmp_path):
    hub88.player("p1", "100.00")
    gw = gateway_factory(held_config(tmp_path, concurrency={"per_partner": 2, "retry_after_seconds": 2}))
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    beta = IgspClient(gw.url, BETA["api_key"], BETA["secret"])
    threads, answers, _ = hold_bets(hub88, [IgspClient(gw.url, ACME["api_key"], ACME["secret"]) for _ in range(2)])
    shed = [acme.hook(bet(f"shed-{i}", "1.00")) for i in range(4)]
    for response in shed:
        assert response.status_code == 503 and response.json()["error"] == "service_unavailable"
        assert response.headers["Retry-After"] == "2"
    assert hub88.calls("bet") == 2  # the shed bets never reached the wallet...
    assert beta.hook({"action": "balance", "player_id": "p1", "currency": "EUR"}).status_code == 200  # another partner
    for t in threads:
        t.join(30)
    assert [r.status_code for r in answers.values()] == [200, 200]
    # ...nor the ledger: sent again, each is a first attempt, debited once.
    assert all(acme.hook(bet(f"shed-{i}", "1.00")).status_code == 200 for i in range(4))
    assert len(hub88.ledger("bet")) == 6 and hub88.balance("p1") == Decimal("94.00")
    assert any(line.get("status") == 503 and line.get("partner") == ACME["id"] for line in gw.log_lines())


def test_an_upstream_over_its_concurrency_is_shed_for_every_partner(hub88, gateway_factory, tmp_path):
    hub88.player("p1", "100.00")
    gw = gateway_factory(held_config(tmp_path, concurrency={"per_partner": 5, "upstreams": {"hub88-wallet": 3}}))
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    beta = IgspClient(gw.url, BETA["api_key"], BETA["secret"])
    threads, answers, _ = hold_bets(hub88, [IgspClient(gw.url, ACME["api_key"], ACME["secret"]),
                                            IgspClient(gw.url, ACME["api_key"], ACME["secret"]),
                                            IgspClient(gw.url, BETA["api_key"], BETA["secret"])])
    for client in (acme, beta):  # each partner is under its own limit; the wallet is full
        refused = client.hook(bet(f"over-{client.api_key}", "1.00"))
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert hub88.calls("bet") == 3
    for t in threads:
        t.join(30)
    assert sorted(r.status_code for r in answers.values()) == [200, 200, 200]
    assert acme.hook(bet("after", "1.00")).status_code == 200  # slots released with the answers
    assert len(hub88.ledger("bet")) == 4
