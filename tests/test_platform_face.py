"""Platform face end to end: signed iGSP hooks -> gateway process -> Hub88-style wallet.

The wallet simulator is NOT idempotent, so every "debits once" assertion below is a
guarantee of the gateway's ledger, checked against the wallet's own balance.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from decimal import Decimal

import pytest

from gateway import signing
from tests.conftest import ACME, BETA, platform_config
from tests.support import IgspClient, decimal_json


@pytest.fixture
def platform_gateway(gateway_factory, store_url):
    """Every test below runs against both stores: embedded SQLite and a shared Redis."""
    return gateway_factory(platform_config(store_url))


def bet(txid="tx-1", amount=10, player="p1", **extra):
    """A bet hook; a numeric string amount is sent as an exact JSON number."""
    if isinstance(amount, str) and amount.replace(".", "", 1).isdigit():
        amount = Decimal(amount)
    return {"action": "bet", "player_id": player, "amount": amount, "currency": "EUR", "game_id": "vs20olympgate",
            "transaction_id": txid, "session_id": "s-1", "type": "bet", "round_id": "r-1", **extra}


def win(txid="w-1", amount=25, player="p1"):
    return {**bet(txid, amount, player), "action": "win", "type": "win"}


def refund(txid="rf-1", bet_txid="tx-1", amount=10, player="p1"):
    return {**bet(txid, amount, player), "action": "refund", "bet_transaction_id": bet_txid}


def assert_error(response, status: int, code: str):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["status"] == status and body["message"]
    assert response.headers["Content-Type"].startswith("application/json")


def test_balance_bet_win_refund_move_money_exactly(hub88, acme):
    hub88.player("p1", "100.00")
    r = acme.hook({"action": "balance", "player_id": "p1", "currency": "EUR"})
    assert r.status_code == 200 and decimal_json(r) == {"balance": 100}
    assert r.content == b'{"balance":100.00}'  # exact decimal text, never a float

    r = acme.hook(bet("tx-1", "12.34"))
    assert r.status_code == 200, r.text
    body = decimal_json(r)
    assert str(body["balance"]) == "87.66" and body["transaction_id"]
    assert hub88.balance("p1") == Decimal("87.66")

    r = acme.hook(win("w-1", "0.10"))
    assert str(decimal_json(r)["balance"]) == "87.76"
    r = acme.hook(refund("rf-1", "tx-1", "12.34"))
    assert r.status_code == 200 and str(decimal_json(r)["balance"]) == "100.10"
    assert hub88.balance("p1") == Decimal("100.10")
    assert r.headers["X-Request-ID"]


def test_insufficient_funds_is_fatal_and_stored(hub88, acme):
    hub88.player("p1", "5.00")
    r = acme.hook(bet("tx-big", "5.01"))
    assert_error(r, 402, "insufficient_funds")
    # A retry of the same transaction replays the same answer without a second legacy call.
    calls = hub88.state()["calls"].get("bet", 0)
    assert_error(acme.hook(bet("tx-big", "5.01")), 402, "insufficient_funds")
    assert hub88.state()["calls"].get("bet", 0) == calls
    assert hub88.balance("p1") == Decimal("5.00")


def test_unknown_player(hub88, acme):
    assert_error(acme.hook(bet("tx-x", 1, player="ghost")), 404, "player_not_found")


def test_duplicate_bet_sequential_replays_first_outcome(hub88, acme):
    hub88.player("p1", "100.00")
    first = acme.hook(bet("tx-dup", 10))
    again = acme.hook(bet("tx-dup", 10))
    assert first.status_code == again.status_code == 200
    assert first.content == again.content
    assert hub88.balance("p1") == Decimal("90.00")
    assert len(hub88.ledger("bet")) == 1


def test_twenty_concurrent_copies_debit_once(hub88, acme, platform_gateway):
    hub88.player("p1", "100.00")
    clients = [IgspClient(platform_gateway.url, ACME["api_key"], ACME["secret"]) for _ in range(20)]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda c: c.hook(bet("tx-conc", "7.50")), clients))
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
    assert len({a.content for a in answers}) == 1
    assert hub88.balance("p1") == Decimal("92.50")
    assert len(hub88.ledger("bet")) == 1


def test_duplicate_with_different_payload_is_a_conflict(hub88, acme):
    hub88.player("p1", "100.00")
    assert acme.hook(bet("tx-c", 10)).status_code == 200
    assert_error(acme.hook(bet("tx-c", 11)), 409, "transaction_conflict")
    assert hub88.balance("p1") == Decimal("90.00")


def test_refund_twice_and_refund_of_unknown_bet(hub88, acme):
    hub88.player("p1", "100.00")
    acme.hook(bet("tx-1", 10))
    ok = acme.hook(refund("rf-1", "tx-1"))
    assert ok.status_code == 200
    assert acme.hook(refund("rf-1", "tx-1")).content == ok.content  # same refund retried
    assert_error(acme.hook(refund("rf-2", "tx-1")), 409, "transaction_already_refunded")
    assert_error(acme.hook(refund("rf-3", "no-such-bet")), 404, "transaction_not_found")
    assert hub88.balance("p1") == Decimal("100.00")
    assert len(hub88.ledger("rollback")) == 1


def test_signature_rules(hub88, acme, platform_gateway):
    hub88.player("p1", "100.00")
    body = json.dumps(bet("tx-sig", 1)).encode()
    ts = signing.format_timestamp()
    good = signing.signed_headers(ACME["api_key"], ACME["secret"], body, ts)
    url = platform_gateway.url + "/platforms/game-provider/hooks"
    # Any single flipped byte of the body is rejected.
    for index in (0, len(body) // 2, len(body) - 1):
        flipped = bytearray(body)
        flipped[index] ^= 0x01
        assert_error(acme.http.post(url, data=bytes(flipped), headers=good, timeout=5), 403, "invalid_signature")
    # A flipped signature character, a stale timestamp, a future timestamp.
    bad = dict(good, **{"X-Signature": ("0" if good["X-Signature"][0] != "0" else "1") + good["X-Signature"][1:]})
    assert_error(acme.http.post(url, data=body, headers=bad, timeout=5), 403, "invalid_signature")
    stale = signing.format_timestamp().replace(signing.format_timestamp()[:4], str(int(ts[:4]) - 1))
    assert_error(acme.post("/platforms/game-provider/hooks", body, timestamp=stale), 403, "invalid_signature")
    # Unknown api key, missing credential.
    stranger = IgspClient(platform_gateway.url, "nobody-key", ACME["secret"])
    assert_error(stranger.hook(bet("tx-sig", 1)), 401, "unauthorized")
    assert_error(acme.http.post(url, data=body, timeout=5), 401, "unauthorized")
    # The exact PROTOCOL.md form (second-precision Z timestamp) is accepted; the same bytes
    # sent again (an HTTP client's retry) get the same answer, and move nothing again.
    first = acme.http.post(url, data=body, headers=good, timeout=5)
    assert first.status_code == 200
    again = acme.http.post(url, data=body, headers=good, timeout=5)
    assert (again.status_code, again.content) == (200, first.content)
    assert hub88.balance("p1") == Decimal("99.00") and hub88.state()["calls"]["bet"] == 1
    _wait_for(lambda: all(reason in platform_gateway.log_text() for reason in ("stale_timestamp", "bad_signature")))


def test_key_rotation_accepts_both_secrets(hub88, platform_gateway):
    hub88.player("p1", "100.00")
    for secret in (ACME["secret"], ACME["old_secret"]):
        client = IgspClient(platform_gateway.url, ACME["api_key"], secret)
        assert client.hook({"action": "balance", "player_id": "p1", "currency": "EUR"}).status_code == 200
    wrong = IgspClient(platform_gateway.url, ACME["api_key"], BETA["secret"])
    assert_error(wrong.hook({"action": "balance", "player_id": "p1", "currency": "EUR"}), 403, "invalid_signature")


def test_partners_are_isolated(hub88, acme, platform_gateway):
    hub88.player("p1", "100.00")
    beta = IgspClient(platform_gateway.url, BETA["api_key"], BETA["secret"])
    assert acme.hook(bet("shared-id", 10)).status_code == 200
    # The same transaction id from another partner is another transaction.
    assert beta.hook(bet("shared-id", 10)).status_code == 200
    assert hub88.balance("p1") == Decimal("80.00")
    # beta cannot refund acme's bet: in beta's ledger the bet does not exist. (It leaves a
    # tombstone there, in beta's ledger only: acme's bet of that id stays refundable.)
    assert_error(beta.hook(refund("rf-b", "acme-only")), 404, "transaction_not_found")
    assert acme.hook(bet("acme-only", 5)).status_code == 200
    assert acme.hook(refund("rf-a", "acme-only", 5)).status_code == 200
    assert hub88.balance("p1") == Decimal("80.00")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_request"),
        (b'{"action": "jackpot", "player_id": "p1"}', 400, "unknown_action"),
        (json.dumps({k: v for k, v in bet().items() if k != "transaction_id"}).encode(), 400, "invalid_request"),
        (json.dumps(bet(amount="ten")).encode(), 400, "invalid_request"),
        (json.dumps(bet(amount=-1)).encode(), 400, "invalid_request"),
        (json.dumps({**bet(), "amount": "1.00"}).encode(), 400, "invalid_request"),  # a string is not a number
        (json.dumps(bet(amount=1.005)).encode(), 400, "invalid_amount"),  # finer than a cent
        (json.dumps(bet(amount=1e300)).encode(), 400, "invalid_amount"),
        (json.dumps({**bet(), "currency": "eur"}).encode(), 400, "invalid_request"),
        (b'{"action": "bet", "amount": NaN}', 400, "invalid_json"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(hub88, acme, body, status, code):
    hub88.player("p1", "100.00")
    r = acme.post("/platforms/game-provider/hooks", body)
    assert_error(r, status, code)
    assert "Traceback" not in r.text
    assert hub88.balance("p1") == Decimal("100.00")
    assert hub88.state()["calls"].get("bet", 0) == 0


def test_huge_body_is_413(hub88, acme):
    r = acme.hook({**bet(), "padding": "x" * 20000})
    assert_error(r, 413, "payload_too_large")


def test_unknown_route_is_an_error_response(acme):
    r = acme.post("/nope", b"{}")
    assert_error(r, 404, "not_found")


def test_legacy_500_html_on_balance(hub88, acme):
    hub88.player("p1", "100.00")
    hub88.fault("http_500_html", endpoint="balance")
    r = acme.hook({"action": "balance", "player_id": "p1", "currency": "EUR"})
    assert_error(r, 503, "upstream_unavailable")
    assert "<html" not in r.text.lower()


def test_legacy_garbage_on_bet_is_retriable_and_rolled_back(hub88, acme):
    hub88.player("p1", "100.00")
    hub88.fault("garbage", endpoint="bet")
    assert_error(acme.hook(bet("tx-g", 10)), 502, "upstream_bad_response")
    # Garbage arrived instead of an answer: the bet is voided for retries...
    assert_error(acme.hook(bet("tx-g", 10)), 409, "transaction_voided")
    # ...and a compensating rollback is delivered from the queue (garbage fault applied nothing).
    _wait_for(lambda: len(hub88.ledger("rollback")) == 0 and hub88.state()["calls"].get("rollback", 0) >= 1)
    assert hub88.balance("p1") == Decimal("100.00")


def test_legacy_timeout_after_debit_gets_compensated(hub88, acme):
    hub88.player("p1", "100.00")
    hub88.fault("apply_then_hang", endpoint="bet", seconds=5)
    started = time.monotonic()
    r = acme.hook(bet("tx-t", 10))
    assert_error(r, 504, "upstream_timeout")
    assert time.monotonic() - started < 2.5  # answered within the provider's timeout
    assert hub88.balance("p1") == Decimal("90.00")  # the wallet did debit
    _wait_for(lambda: hub88.balance("p1") == Decimal("100.00"), timeout=10)
    assert len(hub88.ledger("rollback")) == 1
    assert_error(acme.hook(bet("tx-t", 10)), 409, "transaction_voided")
    # The provider's refund of that bet succeeds without moving money a second time.
    r = acme.hook(refund("rf-t", "tx-t"))
    assert r.status_code == 200 and str(decimal_json(r)["balance"]) == "100.00"
    assert hub88.balance("p1") == Decimal("100.00") and len(hub88.ledger("rollback")) == 1


def test_legacy_connection_refused_bet_can_be_retried(hub88, gateway_factory, tmp_path):
    from tests.conftest import platform_config
    from tests.support import free_port

    gw = gateway_factory(platform_config(f"sqlite:///{tmp_path}/g.db"),
                         env={"HUB88_WALLET_URL": f"http://127.0.0.1:{free_port()}"})
    client = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    assert_error(client.hook(bet("tx-r", 1)), 503, "upstream_unavailable")
    # Nothing was sent, so nothing is remembered: a retry is a fresh attempt (and fails the same way).
    assert_error(client.hook(bet("tx-r", 1)), 503, "upstream_unavailable")


def test_legacy_timeout_on_balance(hub88, acme):
    hub88.player("p1", "100.00")
    hub88.fault("delay", endpoint="balance", seconds=3)
    assert_error(acme.hook({"action": "balance", "player_id": "p1", "currency": "EUR"}), 504, "upstream_timeout")


def test_win_during_outage_is_queued_and_delivered_once(hub88, acme):
    hub88.player("p1", "100.00")
    hub88.fault("down", endpoint="win", count=2)
    assert_error(acme.hook(win("w-q", "5.00")), 503, "upstream_unavailable")
    _wait_for(lambda: hub88.balance("p1") == Decimal("105.00"), timeout=15)
    r = acme.hook(win("w-q", "5.00"))  # the provider's retry gets the delivered outcome
    assert r.status_code == 200 and str(decimal_json(r)["balance"]) == "105.00"
    assert len(hub88.ledger("win")) == 1


def _wait_for(predicate, timeout: float = 10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")
