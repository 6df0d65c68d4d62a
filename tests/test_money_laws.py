"""The money laws real providers and wallets rely on, against a real gateway and wallet.

Retries get the first answer however they are sent; a refund that overtakes its bet
leaves a tombstone; a refund must match its bet; a transaction left pending by a killed
gateway is settled by the sweeper without anyone retrying. Each runs on both stores.
"""

from __future__ import annotations

import concurrent.futures
import random
import sqlite3
from decimal import Decimal

import pytest
import redis
import requests
import yaml

from adapters.codecs import dumps
from gateway import signing
from gateway.tools.simulators.hub88_wallet import generate_keypair
from tests.conftest import ACME, platform_config
from tests.ops_support import wait_for
from tests.support import ROOT, IgspClient, decimal_json, unique_timestamp
from tests.test_platform_face import assert_error
from tests.wallet_support import bet, refund, win

HOOKS = "/platforms/game-provider/hooks"


def client(gw) -> IgspClient:
    return IgspClient(gw.url, ACME["api_key"], ACME["secret"])


def signed(payload: dict) -> tuple[bytes, dict]:
    body = dumps(payload)
    return body, signing.signed_headers(ACME["api_key"], ACME["secret"], body, unique_timestamp())


# -- 1. retries get the first answer ------------------------------------------------------------
def test_byte_identical_retries_sequential_and_concurrent_get_the_first_answer(hub88, gateway_factory, store_url):
    hub88.player("p1", "100.00")
    gw = gateway_factory(platform_config(store_url))
    body, headers = signed(bet("b-same", "10.00"))
    first = requests.post(gw.url + HOOKS, data=body, headers=headers, timeout=10)
    assert first.status_code == 200, first.text
    assert requests.post(gw.url + HOOKS, data=body, headers=headers, timeout=10).content == first.content

    # Twenty identical copies of a new bet at once, the wallet slow to answer the one that gets through.
    hub88.fault("delay", endpoint="bet", seconds=0.5)
    body, headers = signed(bet("b-burst", "5.00"))
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: requests.post(gw.url + HOOKS, data=body, headers=headers, timeout=20),
                                range(20)))
    assert {a.status_code for a in answers} == {200}, {a.text for a in answers}
    assert len({a.content for a in answers}) == 1
    assert hub88.balance("p1") == Decimal("85.00") and hub88.calls("bet") == 2


# -- 2. refund before bet ---------------------------------------------------------------------
def test_a_refund_that_overtakes_its_bet_leaves_a_tombstone(hub88, gateway_factory, store_url):
    hub88.player("p1", "100.00")
    gw = gateway_factory(platform_config(store_url))
    c = client(gw)
    first = c.hook(refund("rf-early", "b-late"))
    assert_error(first, 404, "transaction_not_found")
    late = c.hook(bet("b-late", "10.00"))
    assert_error(late, 409, "transaction_already_refunded")
    assert hub88.calls("bet") == 0 and hub88.balance("p1") == Decimal("100.00")
    # Both keep their answers: the refund's retry, and the bet's.
    assert c.hook(refund("rf-early", "b-late")).content == first.content
    assert c.hook(bet("b-late", "10.00")).content == late.content
    # The same bet id with other terms is a conflict, also refused.
    assert_error(c.hook(bet("b-late", "99.00")), 409, "transaction_conflict")
    assert hub88.calls("bet") == 0


def test_bets_racing_their_refunds_never_end_as_a_debit_without_its_refund(hub88, gateway_factory, store_url):
    """Each pair ends as "bet then refund" (200, 200) or "tombstone then refused bet" (404, 409)."""
    hub88.player("p1", "1000.00")
    gw = gateway_factory(platform_config(store_url))
    c = client(gw)
    rng = random.Random(15)
    jobs = []
    for i in range(30):
        pair = [("bet", bet(f"rb-{i}", "3.00")), ("refund", refund(f"rr-{i}", f"rb-{i}", "3.00"))]
        rng.shuffle(pair)
        jobs.extend((i, kind, payload) for kind, payload in pair)
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda job: (job[0], job[1], c.hook(job[2], timeout=20)), jobs))
    outcome: dict[int, dict[str, int]] = {}
    for i, kind, response in results:
        outcome.setdefault(i, {})[kind] = response.status_code
    seen = {(o["bet"], o["refund"]) for o in outcome.values()}
    assert seen <= {(200, 200), (409, 404)}, outcome
    debited = sum(1 for o in outcome.values() if o["bet"] == 200)
    assert hub88.calls("bet") == debited and len(hub88.ledger("rollback")) == debited
    assert hub88.balance("p1") == Decimal("1000.00")


def test_a_refund_while_its_bet_is_at_the_wallet_waits_for_it(hub88, gateway_factory, store_url):
    hub88.player("p1", "100.00")
    gw = gateway_factory(platform_config(store_url))
    c = client(gw)
    hub88.fault("delay", endpoint="bet", seconds=1.0)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(c.hook, bet("b-slow", "10.00"))
        wait_for(lambda: hub88.calls("bet") == 1, what="the bet at the wallet")
        early = c.hook(refund("rf-slow", "b-slow"))
        assert slow.result().status_code == 200
    assert early.status_code == 200, early.text
    assert decimal_json(early)["balance"] == Decimal("100.00")
    assert hub88.balance("p1") == Decimal("100.00") and len(hub88.ledger("rollback")) == 1


# -- 3. a refund must match its bet -----------------------------------------------------------
def test_a_refund_naming_another_player_or_amount_voids_nothing(hub88, gateway_factory, store_url):
    hub88.player("p1", "100.00")
    hub88.player("q", "50.00")
    gw = gateway_factory(platform_config(store_url))
    c = client(gw)
    assert c.hook(bet("b-p", "10.00")).status_code == 200
    other_player = c.hook(refund("rf-q", "b-p", "10.00", player="q"))
    assert_error(other_player, 409, "transaction_conflict")
    assert "player_id" in other_player.json()["message"] and "50" not in other_player.json()["message"]
    assert_error(c.hook(refund("rf-more", "b-p", "20.00")), 409, "transaction_conflict")
    assert_error(c.hook(refund("rf-less", "b-p", "4.00")), 409, "transaction_conflict")
    assert_error(c.hook(refund("rf-usd", "b-p", "10.00", currency="USD")), 409, "transaction_conflict")
    assert hub88.calls("rollback") == 0 and hub88.balance("p1") == Decimal("90.00")
    assert hub88.balance("q") == Decimal("50.00")
    # The player's own refund still goes through, once.
    assert c.hook(refund("rf-p", "b-p", "10.00")).status_code == 200
    assert hub88.balance("p1") == Decimal("100.00") and hub88.calls("rollback") == 1


def test_a_partner_declaring_partial_refunds_may_refund_less_never_more(hub88, gateway_factory, tmp_path):
    """On a wallet whose refund is a credit of the refunded amount (not a whole-bet rollback)."""
    mapping = yaml.safe_load((ROOT / "mappings" / "hub88-wallet.yaml").read_text())
    credit = dict(mapping["operations"]["win"])
    credit["body"] = {**credit["body"], "transaction_uuid": "{{ partner }}:{{ transaction_id }}",
                      "reference_transaction_uuid": "{{ partner }}:{{ bet_transaction_id }}"}
    mapping["operations"]["refund"] = credit
    path = tmp_path / "credit-refunds.yaml"
    path.write_text(yaml.safe_dump(mapping))
    hub88.player("p1", "100.00")
    config = platform_config(f"sqlite:///{tmp_path}/g.db")
    config["partners"][0].update(partial_refunds=True, mapping=str(path))
    c = client(gateway_factory(config))
    assert c.hook(bet("b-part", "10.00")).status_code == 200
    assert_error(c.hook(refund("rf-over", "b-part", "10.01")), 409, "transaction_conflict")
    assert c.hook(refund("rf-part", "b-part", "4.00")).status_code == 200
    assert hub88.balance("p1") == Decimal("94.00")
    assert_error(c.hook(refund("rf-again", "b-part", "4.00")), 409, "transaction_already_refunded")


def test_partial_refunds_are_refused_for_a_wallet_whose_refund_is_a_rollback(tmp_path):
    from gateway.config import load_config
    from gateway.errors import ConfigError

    config = platform_config("sqlite:///g.db")
    config["partners"][0]["partial_refunds"] = True
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"gateway.yaml:\d+: partners\[0\].partial_refunds: .*sends no amount"):
        load_config(path, {"HUB88_WALLET_URL": "http://127.0.0.1:1", "HUB88_PRIVATE_KEY": generate_keypair()[0]})


# -- 6. nothing waits on a retry ----------------------------------------------------------------
def pending_count(store_url: str, txid: str) -> int:
    if store_url.startswith("redis"):
        r = redis.Redis.from_url(store_url)
        try:
            from gateway.store.redis import SHARDS

            return sum(1 for k in range(SHARDS) for member in r.zrange(f"igsp:{{L{k}}}:pending", 0, -1)
                       if txid.encode() in member)
        finally:
            r.close()
    with sqlite3.connect(store_url[len("sqlite:///"):]) as db:
        return db.execute("SELECT COUNT(*) FROM ledger WHERE txid = ? AND state = 'pending'", (txid,)).fetchone()[0]


def orphans_settled(gw) -> float:
    text = requests.get(gw.internal_url + "/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("igsp_ledger_orphans_settled_total{"))


@pytest.mark.parametrize("action", ["bet", "win"])
def test_a_transaction_left_pending_by_kill_9_is_settled_with_no_retry(hub88, gateway_factory, store_url, action):
    hub88.player("p1", "100.00")
    config = platform_config(store_url, queue={"lease_seconds": 4, "poll_seconds": 0.1})
    first = gateway_factory(config)
    hub88.fault("apply_then_hang", endpoint=action, seconds=8)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    hook = bet("k-1", "10.00") if action == "bet" else win("k-1", "10.00")
    lost = pool.submit(client(first).hook, hook, timeout=15)
    wait_for(lambda: hub88.calls(action) == 1, what="the call at the wallet")
    first.kill()
    pool.shutdown()
    with pytest.raises(requests.ConnectionError):
        lost.result()
    moved = Decimal("90.00") if action == "bet" else Decimal("110.00")
    assert hub88.balance("p1") == moved and pending_count(store_url, "k-1") == 1
    second = gateway_factory(config)
    # Nobody retries: the sweeper settles it. A bet is rolled back; the win stays paid
    # (its redelivery on this non-idempotent wallet waits in the dead letters for an operator).
    wait_for(lambda: pending_count(store_url, "k-1") == 0, timeout=30, what="the sweeper settling k-1")
    if action == "bet":
        wait_for(lambda: hub88.balance("p1") == Decimal("100.00"), timeout=30, what="the rollback")
        assert len(hub88.ledger("rollback")) == 1
        assert_error(client(second).hook(hook), 409, "transaction_voided")
    else:
        assert hub88.balance("p1") == Decimal("110.00") and len(hub88.ledger("win")) == 1
        assert_error(client(second).hook(hook), 503, "transaction_in_progress")
    assert orphans_settled(second) == 1
    wait_for(lambda: "igsp_ledger_oldest_pending_seconds 0.0" in requests.get(second.internal_url + "/metrics", timeout=5).text,
             what="the gauge back at 0 after the next sweep")
