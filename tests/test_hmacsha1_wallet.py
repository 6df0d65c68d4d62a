"""mappings/hmacsha1-wallet.yaml end to end: signed iGSP hooks -> gateway process -> a wallet
that checks an HMAC-SHA1 over its sorted form fields, a timestamp window and single-use nonces.

Every code the mapping documents is reached through the simulator's real behaviour; each
assertion checks the iGSP answer AND the wallet's own balance and ledger. The simulator
verifies every signature with its own code (gateway/tools/simulators/hmacsha1_wallet.py),
so a request the gateway signed wrongly, or with a used nonce, is refused there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
import requests

from gateway.engine.mapping import load_mapping
from gateway.errors import UpstreamError
from gateway.outbound.legacy import LegacyClient
from gateway.tools.simulators import hmacsha1_wallet, spawn, start_in_thread
from tests.conftest import ACME
from tests.support import ROOT, GatewayProcess, IgspClient, decimal_json
from tests.wallet_support import Simulator, assert_error, balance, bet, queue_attempts, refund, wait_for, win

KEY = "merchant-key-5f2b9c0d1e"
MERCHANT = "merchant-77"
MAPPING = ROOT / "mappings" / "hmacsha1-wallet.yaml"
P = ACME["id"]  # the partner: the wallet sees its transaction ids as "acme-games:tx-1"


class Wallet(Simulator):
    def clock(self, offset: float) -> None:
        requests.post(f"{self.url}/_control/clock", json={"offset": offset}, timeout=5).raise_for_status()

    def internal_error(self, action: str) -> None:
        requests.post(f"{self.url}/_control/internal_error", json={"action": action}, timeout=5).raise_for_status()

    def direct(self, fields: dict, *, nonce: str, key: str = KEY) -> requests.Response:
        """A call signed by hand, as another caller of the same wallet would send it."""
        headers = {"X-Merchant-Id": MERCHANT, "X-Nonce": nonce, "X-Timestamp": str(int(time.time()))}
        headers["X-Sign"] = hmacsha1_wallet.signature(key, fields, headers)
        return requests.post(f"{self.url}/wallet", data=urlencode(fields), headers={
            **headers, "Content-Type": "application/x-www-form-urlencoded"}, timeout=5)


@pytest.fixture
def wallet():
    server = start_in_thread(hmacsha1_wallet.make_app(hmacsha1_wallet.State(), key=KEY, merchant_id=MERCHANT))
    yield Wallet(server)
    server.stop()


def start_gateway(tmp_path, url: str, key: str = KEY, merchant: str = MERCHANT) -> GatewayProcess:
    config = {
        "version": 1,
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_seconds": 0, "drain_seconds": 2},
        "store": {"url": f"sqlite:///{tmp_path}/hmacsha1.db"},
        "partners": [{"id": P, "face": "platform", "mapping": str(MAPPING),
                      "api_key": ACME["api_key"], "secrets": [ACME["secret"]]}],
    }
    env = {"HMACSHA1_WALLET_URL": url, "HMACSHA1_WALLET_KEY": key, "HMACSHA1_WALLET_MERCHANT_ID": merchant}
    return GatewayProcess(config, tmp_path, env=env).start()


@pytest.fixture
def gateway(tmp_path, wallet):
    gw = start_gateway(tmp_path, wallet.url)
    yield gw
    gw.stop()


@pytest.fixture
def acme(gateway):
    return IgspClient(gateway.url, ACME["api_key"], ACME["secret"])


def assert_nonces_never_reused(wallet) -> None:
    state = wallet.state()
    assert "1002" not in state["refusals"] and "1001" not in state["refusals"], state["refusals"]


def test_happy_path_in_minor_units_with_a_fresh_nonce_per_call(wallet, acme, gateway):
    wallet.player("p1", "100.00")
    r = acme.hook(balance())
    assert r.status_code == 200 and r.content == b'{"balance":100.00}'

    r = acme.hook(bet("tx-1", "12.34"))
    assert r.status_code == 200, r.text
    assert decimal_json(r) == {"balance": Decimal("87.66"), "transaction_id": "T-1"}
    sent = wallet.state()["last_request"]
    assert sent["fields"] == {"action": "bet", "player_id": "p1", "session_id": "s-1", "currency": "EUR",
                              "amount": "1234", "transaction_id": f"{P}:tx-1", "round_id": "r-1",
                              "game_uuid": "vs20olympgate", "type": "bet"}
    assert sent["headers"]["X-Merchant-Id"] == MERCHANT and len(sent["headers"]["X-Nonce"]) == 32

    r = acme.hook(win("w-1", "0.10"))
    assert r.status_code == 200 and decimal_json(r)["balance"] == Decimal("87.76")
    r = acme.hook(refund("rf-1", "tx-1", "12.34"))
    assert r.status_code == 200 and decimal_json(r)["balance"] == Decimal("100.10")
    assert wallet.state()["last_request"]["fields"]["bet_transaction_id"] == f"{P}:tx-1"

    assert wallet.balance("p1") == Decimal("100.10")
    assert [(e["kind"], e["amount"]) for e in wallet.ledger()] == [("bet", "-12.34"), ("win", "0.10"),
                                                                   ("refund", "12.34")]
    state = wallet.state()
    assert len(state["nonces"]) == sum(state["calls"].values()) == 4 and state["refusals"] == {}
    assert KEY not in gateway.log_text()


def test_jpy_has_no_minor_unit(wallet, acme):
    wallet.player("p1", "1000", currency="JPY")
    r = acme.hook(bet("tx-y", "5", currency="JPY"))
    assert r.status_code == 200, r.text
    assert wallet.state()["last_request"]["fields"]["amount"] == "5"
    assert decimal_json(r)["balance"] == Decimal("995") and wallet.balance("p1") == Decimal("995")


def test_insufficient_funds_is_final_and_replayed(wallet, acme):
    wallet.player("p1", "5.00")
    assert_error(acme.hook(bet("tx-big", "5.01")), 402, "insufficient_funds")
    assert_error(acme.hook(bet("tx-big", "5.01")), 402, "insufficient_funds")
    assert wallet.calls("bet") == 1  # the retry was answered from the gateway's ledger
    assert wallet.balance("p1") == Decimal("5.00") and wallet.ledger() == []


@pytest.mark.parametrize("case, status, code", [
    ("SESSION_EXPIRED", 400, "session_not_found"),
    ("PLAYER_NOT_FOUND", 404, "player_not_found"),
    ("PLAYER_BLOCKED", 409, "player_blocked"),
    ("CURRENCY_MISMATCH", 400, "currency_mismatch"),
])
def test_player_refusals(wallet, acme, case, status, code):
    wallet.player("p1", "100.00", token="another-session" if case == "SESSION_EXPIRED" else None,
                  disabled=case == "PLAYER_BLOCKED", currency="USD" if case == "CURRENCY_MISMATCH" else "EUR")
    player = "ghost" if case == "PLAYER_NOT_FOUND" else "p1"
    body = assert_error(acme.hook(bet("tx-p", "1.00", player=player)), status, code)
    assert case in body["message"]
    assert wallet.balance("p1") == Decimal("100.00") and wallet.ledger() == []


def test_duplicate_transaction_is_another_transactions_id(wallet, acme):
    wallet.player("p1", "100.00")
    # Another caller of the same wallet already used this id, with other terms.
    r = wallet.direct({"action": "bet", "player_id": "p1", "currency": "EUR", "amount": "700",
                       "transaction_id": f"{P}:tx-dup"}, nonce="other-caller-1")
    assert r.status_code == 200 and r.json()["balance"] == 9300
    assert_error(acme.hook(bet("tx-dup", "1.00")), 409, "transaction_conflict")
    assert wallet.balance("p1") == Decimal("93.00") and len(wallet.ledger("bet")) == 1


def test_bet_refunded_before_it_came_is_never_debited(wallet, acme):
    wallet.player("p1", "100.00")
    # The refund overtook its bet at the wallet, which kept a tombstone.
    r = wallet.direct({"action": "refund", "player_id": "p1", "transaction_id": f"{P}:rf-x",
                       "bet_transaction_id": f"{P}:tx-late"}, nonce="other-caller-2")
    assert r.json()["error_code"] == "TRANSACTION_NOT_FOUND"
    assert_error(acme.hook(bet("tx-late", "4.00")), 409, "transaction_already_refunded")
    assert wallet.balance("p1") == Decimal("100.00") and wallet.ledger() == []


def test_refund_of_a_bet_the_wallet_never_saw_is_acknowledged(wallet, acme):
    wallet.player("p1", "100.00")
    assert acme.hook(bet("tx-1", "10.00")).status_code == 200
    wallet.reset()  # the wallet loses its memory of the bet (restored from a backup)
    wallet.player("p1", "90.00")
    r = acme.hook(refund("rf-1", "tx-1"))
    assert r.status_code == 200, r.text
    assert decimal_json(r)["balance"] == Decimal("90.00")  # nothing undone; the provider stops retrying
    assert wallet.calls("refund") == 1 and wallet.ledger() == []


def test_internal_error_is_retriable_and_moves_nothing(wallet, acme):
    wallet.player("p1", "100.00")
    wallet.internal_error("bet")
    assert_error(acme.hook(bet("tx-ie", "1.00")), 503, "upstream_unavailable")
    # Certainly not applied: the provider's retry is a fresh attempt, with a fresh nonce.
    r = acme.hook(bet("tx-ie", "1.00"))
    assert r.status_code == 200, r.text
    assert wallet.calls("bet") == 2 and wallet.balance("p1") == Decimal("99.00") and len(wallet.ledger()) == 1
    assert_nonces_never_reused(wallet)


def test_stale_timestamp_is_refused_and_a_retry_after_the_clock_is_fixed_goes_through(wallet, acme):
    wallet.player("p1", "100.00")
    wallet.clock(120)  # the wallet's clock is two minutes ahead of ours
    r = acme.hook(bet("tx-ts", "2.00"))
    body = assert_error(r, 502, "upstream_error")
    assert "timestamp outside its window" in body["message"]
    assert wallet.state()["refusals"] == {"1001": 1} and wallet.ledger() == []
    wallet.clock(0)
    r = acme.hook(bet("tx-ts", "2.00"))  # the bet was forgotten (nothing applied): a fresh attempt
    assert r.status_code == 200, r.text
    assert wallet.balance("p1") == Decimal("98.00") and len(wallet.ledger("bet")) == 1


def test_a_replayed_request_is_refused_for_its_nonce(wallet, acme):
    """What the single-use nonce protects: the exact bytes and headers of a signed debit,
    sent again, are refused (1002) and move nothing."""
    wallet.player("p1", "100.00")
    assert acme.hook(bet("tx-r", "3.00")).status_code == 200
    sent = wallet.state()["last_request"]
    r = requests.post(f"{wallet.url}/wallet", data=urlencode(sent["fields"]), timeout=5, headers={
        **sent["headers"], "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 403 and r.json() == {"error": {"code": 1002, "text": "nonce already used"}}
    assert wallet.balance("p1") == Decimal("97.00") and len(wallet.ledger()) == 1


@pytest.mark.parametrize("key, merchant, text", [
    ("not-the-merchant-key", MERCHANT, "bad signature"),
    (KEY, "merchant-00", "unknown merchant id"),
])
def test_refused_credentials_are_retriable_and_never_logged(wallet, tmp_path, key, merchant, text):
    wallet.player("p1", "100.00")
    gw = start_gateway(tmp_path, wallet.url, key=key, merchant=merchant)
    try:
        client = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
        body = assert_error(client.hook(bet("tx-k", "1.00")), 502, "upstream_error")
        assert text in body["message"] and key not in str(body)
        assert_error(client.hook(bet("tx-k", "1.00")), 502, "upstream_error")  # retried afresh
        assert wallet.calls("bet") == 2
        log = gw.log_text()
    finally:
        gw.stop()
    assert key not in log
    assert wallet.balance("p1") == Decimal("100.00") and wallet.ledger() == []


def test_malformed_refusal_and_unknown_codes_as_the_mapping_reads_them():
    """1005 (a field the wallet cannot read) cannot be provoked through a valid hook, and an
    unknown code not at all: read as the running gateway would read them."""
    env = {"HMACSHA1_WALLET_URL": "http://127.0.0.1:9", "HMACSHA1_WALLET_KEY": KEY,
           "HMACSHA1_WALLET_MERCHANT_ID": MERCHANT}
    client = LegacyClient(load_mapping(MAPPING, env))
    with pytest.raises(UpstreamError) as info:
        client.read("bet", 403, "application/json", b'{"error": {"code": 1005, "text": "missing field(s): amount"}}')
    assert info.value.code == "upstream_error" and "malformed" in info.value.message
    assert info.value.applied is False  # certainly not applied: a bet is forgotten, a win queued
    with pytest.raises(UpstreamError) as info:
        client.read("bet", 200, "application/json", b'{"error_code": "WALLET_ON_FIRE", "balance": 1}')
    assert info.value.code == "upstream_error" and info.value.applied is None  # unknown: rolled back


def test_lost_answer_after_a_debit_is_rolled_back_once(wallet, acme, gateway):
    """The wallet debits, then the answer never comes: the bet is voided and the gateway's
    compensating refund (sent after 2 x timeout, with its own nonce) undoes it exactly once."""
    wallet.player("p1", "100.00")
    wallet.fault("apply_then_hang", endpoint="bet", seconds=5)
    assert_error(acme.hook(bet("tx-lost", "25.00")), 504, "upstream_timeout")
    assert wallet.balance("p1") == Decimal("75.00")  # the wallet did debit
    wait_for(lambda: queue_attempts(gateway, "delivered") >= 1, timeout=20)
    assert wallet.balance("p1") == Decimal("100.00")
    assert [e["kind"] for e in wallet.ledger()] == ["bet", "refund"]
    refunded = wallet.state()["last_request"]["fields"]
    assert refunded["action"] == "refund" and refunded["bet_transaction_id"] == f"{P}:tx-lost"
    # The provider's retry is told the bet was voided; nothing reaches the wallet again.
    assert_error(acme.hook(bet("tx-lost", "25.00")), 409, "transaction_voided")
    assert wallet.calls("bet") == 1 and wallet.balance("p1") == Decimal("100.00")
    assert_nonces_never_reused(wallet)


def test_lost_answer_after_a_win_is_redelivered_and_paid_once(wallet, acme, gateway):
    wallet.player("p1", "100.00")
    wallet.fault("apply_then_hang", endpoint="win", seconds=5)
    assert_error(acme.hook(win("w-lost", "7.25")), 504, "upstream_timeout")
    assert wallet.balance("p1") == Decimal("107.25")
    # Redelivered from the queue with a fresh nonce and time; the wallet answers the original.
    wait_for(lambda: queue_attempts(gateway, "delivered") >= 1, timeout=20)
    assert wallet.calls("win") == 2
    r = acme.hook(win("w-lost", "7.25"))
    assert r.status_code == 200, r.text
    assert decimal_json(r) == {"balance": Decimal("107.25"), "transaction_id": "T-1"}
    assert wallet.balance("p1") == Decimal("107.25") and len(wallet.ledger("win")) == 1
    assert_nonces_never_reused(wallet)


def test_an_unreadable_answer_to_a_bet_voids_it_and_the_rollback_finds_nothing_to_undo(wallet, acme, gateway):
    wallet.player("p1", "100.00")
    wallet.fault("garbage", endpoint="bet")  # answered before the wallet looked at the bet
    assert_error(acme.hook(bet("tx-g", "5.00")), 502, "upstream_bad_response")
    wait_for(lambda: queue_attempts(gateway, "delivered") >= 1, timeout=20)
    assert wallet.calls("refund") == 1 and queue_attempts(gateway, "retry") == 0
    assert_error(acme.hook(bet("tx-g", "5.00")), 409, "transaction_voided")
    # The refund left a tombstone: a late copy of the bet would be refused, never debited.
    assert wallet.balance("p1") == Decimal("100.00") and wallet.ledger() == []


def test_html_500_is_retriable(wallet, acme):
    wallet.player("p1", "100.00")
    wallet.fault("http_500_html", endpoint="balance")
    assert_error(acme.hook(balance()), 503, "upstream_unavailable")
    assert acme.hook(balance()).status_code == 200


def _try(*args) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HMACSHA1_")}
    return subprocess.run([sys.executable, "-m", "gateway", "try", str(MAPPING), *args], capture_output=True,
                          text=True, env={**clean, "PYTHONPATH": str(ROOT)}, timeout=60)


def test_try_never_prints_the_key_and_live_is_signed_as_the_wallet_checks(wallet):
    wallet.player("p1", "100.00", token="s-1")
    hook = json.dumps({**bet("tx-try", "12.34"), "amount": 12.34})
    env = ["--env", f"HMACSHA1_WALLET_URL={wallet.url}", "--env", f"HMACSHA1_WALLET_KEY={KEY}",
           "--env", f"HMACSHA1_WALLET_MERCHANT_ID={MERCHANT}"]
    shown = _try("bet", "--input", hook, *env)
    assert shown.returncode == 0, shown.stderr
    assert "X-Nonce: " in shown.stdout and "X-Sign: " in shown.stdout and "amount=1234" in shown.stdout
    live = _try("bet", "--input", hook, "--live", "--json", *env)
    assert live.returncode == 0, live.stderr
    report = json.loads(live.stdout)
    assert report["response"]["source"] == "live" and report["response"]["status"] == 200, report["response"]
    assert report["answer"]["body"] == {"balance": 87.66, "transaction_id": "T-1"}
    assert wallet.balance("p1") == Decimal("87.66")  # --live moves money
    for out in (shown, live):
        assert KEY not in out.stdout + out.stderr


def test_the_simulator_runs_as_a_process():
    proc, url = spawn("hmacsha1_wallet", "--key", KEY, "--merchant-id", MERCHANT, "--player", "p9:3.50:EUR")
    try:
        sim = Wallet(SimpleNamespace(url=url))  # driven over HTTP only, like a thread-served one
        r = sim.direct({"action": "balance", "player_id": "p9", "currency": "EUR"}, nonce="n-1")
        assert r.status_code == 200 and r.json() == {"balance": 350}
        again = sim.direct({"action": "balance", "player_id": "p9", "currency": "EUR"}, nonce="n-1")
        assert again.status_code == 403 and again.json()["error"]["code"] == 1002
        forged = sim.direct({"action": "balance", "player_id": "p9"}, nonce="n-2", key="guessed")
        assert forged.status_code == 403 and forged.json()["error"]["code"] == 1003
    finally:
        proc.terminate()
        proc.wait(timeout=10)
