"""mappings/soap-wallet.yaml end to end: signed iGSP hooks -> gateway process -> SOAP 1.1 wallet.

Every documented code of the wallet (legacy-apis.md, C) is reached through the
simulator's real behaviour, and each assertion checks the iGSP answer AND the wallet's
own balance and ledger.
"""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import pytest
import requests

from gateway.tools.simulators import soap_wallet, start_in_thread
from tests.conftest import ACME
from tests.support import ROOT, GatewayProcess, IgspClient, decimal_json
from tests.wallet_support import Simulator, assert_error, balance, bet, queue_attempts, refund, wait_for, win

PASSWORD = "wallet-pass-0123"
NICK = 'Tom & "Jerry" <3'


@pytest.fixture
def soap():
    server = start_in_thread(soap_wallet.make_app(soap_wallet.State(), password=PASSWORD))
    yield Simulator(server)
    server.stop()


def start_gateway(tmp_path, wallet_url: str, password: str = PASSWORD, mapping=None) -> GatewayProcess:
    config = {
        "version": 1,
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_seconds": 0, "drain_seconds": 2},
        "store": {"url": f"sqlite:///{tmp_path}/soap.db"},
        "partners": [{"id": ACME["id"], "face": "platform", "mapping": str(mapping or ROOT / "mappings" / "soap-wallet.yaml"),
                      "api_key": ACME["api_key"], "secrets": [ACME["secret"]]}],
    }
    env = {"SOAP_WALLET_URL": wallet_url, "SOAP_WALLET_PASSWORD": password}
    return GatewayProcess(config, tmp_path, env=env).start()


@pytest.fixture
def gateway(tmp_path, soap):
    gw = start_gateway(tmp_path, soap.url)
    yield gw
    gw.stop()


@pytest.fixture
def acme(gateway):
    return IgspClient(gateway.url, ACME["api_key"], ACME["secret"])


def test_happy_path_moves_money_exactly(soap, acme):
    soap.player("p1", "100.00")
    r = acme.hook(balance())
    assert r.status_code == 200 and r.content == b'{"balance":100.00}'

    r = acme.hook(bet("tx-1", "12.34"))
    assert r.status_code == 200, r.text
    body = decimal_json(r)
    assert str(body["balance"]) == "87.66" and body["transaction_id"] == "ext-1"
    sent = soap.state()["last_request"]
    assert sent["operation"] == "Withdraw"
    assert sent["fields"] == {"sessionToken": "s-1", "playerId": "p1", "currency": "EUR", "amount": "12.34",
                              "transactionId": "tx-1", "roundId": "r-1", "gameCode": "vs20olympgate",
                              "password": PASSWORD}

    r = acme.hook(win("w-1", "0.10"))
    assert r.status_code == 200 and str(decimal_json(r)["balance"]) == "87.76"
    assert soap.state()["last_request"]["operation"] == "Deposit"

    r = acme.hook(refund("rf-1", "tx-1", "12.34"))
    assert r.status_code == 200 and str(decimal_json(r)["balance"]) == "100.10"
    sent = soap.state()["last_request"]
    assert sent["operation"] == "Rollback" and sent["fields"]["transactionId"] == "tx-1"
    assert soap.balance("p1") == Decimal("100.10")
    assert [(e["kind"], e["amount"]) for e in soap.ledger()] == [
        ("withdraw", "-12.34"), ("deposit", "0.10"), ("rollback", "12.34")]


def test_player_controlled_strings_are_escaped(soap, acme):
    soap.player(NICK, "50.00", token=NICK)  # the wallet only accepts this exact token
    odd = {"player": NICK, "session_id": NICK, "round_id": f"round {NICK}", "game_id": "g&<1>",
           "transaction_id": f"tx {NICK}"}
    txid = odd.pop("transaction_id")
    r = acme.hook(bet(txid, "1.50", **odd))
    assert r.status_code == 200, r.text
    assert str(decimal_json(r)["balance"]) == "48.50"
    fields = soap.state()["last_request"]["fields"]
    assert fields["sessionToken"] == NICK and fields["playerId"] == NICK
    assert fields["roundId"] == f"round {NICK}" and fields["gameCode"] == "g&<1>"
    assert fields["transactionId"] == f"tx {NICK}"
    r = acme.hook(refund("rf-odd", txid, "1.50", **odd))
    assert r.status_code == 200 and soap.balance(NICK) == Decimal("50.00")


def test_code_1_insufficient_funds_is_fatal_and_replayed(soap, acme):
    soap.player("p1", "5.00")
    assert_error(acme.hook(bet("tx-big", "5.01")), 402, "insufficient_funds")
    before = soap.calls("withdraw")
    assert_error(acme.hook(bet("tx-big", "5.01")), 402, "insufficient_funds")
    assert soap.calls("withdraw") == before  # answered from the gateway's ledger
    assert soap.balance("p1") == Decimal("5.00")


@pytest.mark.parametrize("case", ["unknown player", "wrong token", "disabled player"])
def test_code_2_invalid_session(soap, acme, case):
    soap.player("p1", "100.00", token="s-1" if case != "wrong token" else "another-session",
                disabled=case == "disabled player")
    player = "ghost" if case == "unknown player" else "p1"
    assert_error(acme.hook(bet("tx-s", "1.00", player=player)), 400, "session_not_found")
    assert_error(acme.hook(balance(player, session_id="s-1")), 400, "session_not_found")
    assert soap.balance("p1") == Decimal("100.00") and soap.ledger() == []


def dlq(gw: GatewayProcess, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """``igsp-gateway dlq …`` against the gateway's store (``env``: its mappings' variables)."""
    return subprocess.run([sys.executable, "-m", "gateway", "dlq", *args, "--config", str(gw.config_path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def test_code_3_on_a_redelivered_win_is_not_taken_as_paid(soap, tmp_path):
    """A win whose answer is lost is redelivered; the wallet answers 3 ("duplicate", with a
    balance) but nothing of the transaction it found: unproven, so never recorded as paid.
    It stays queued, then dead-lettered for an operator; the wallet paid it exactly once."""
    # The shipped mapping with a short queue, so the dead letter comes within the test.
    text = (ROOT / "mappings" / "soap-wallet.yaml").read_text()
    assert "  max_attempts: 8\n  backoff_initial: 0.5\n" in text
    mapping = tmp_path / "soap-wallet.yaml"
    mapping.write_text(text.replace("  max_attempts: 8\n  backoff_initial: 0.5\n",
                                    "  max_attempts: 3\n  backoff_initial: 0.05\n"))
    soap.player("p1", "100.00")
    gw = start_gateway(tmp_path, soap.url, mapping=mapping)
    try:
        acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
        soap.fault("apply_then_hang", endpoint="deposit", seconds=5)
        assert_error(acme.hook(win("w-lost", "7.25")), 504, "upstream_timeout")
        assert soap.balance("p1") == Decimal("107.25")  # the wallet did apply it
        # The wallet dedupes (idempotent: true), so the gateway redelivers: code 3 each time.
        wait_for(lambda: queue_attempts(gw, "dead") >= 1, timeout=20)
        # The first call and the queue's three attempts, none of them taken as paid.
        assert soap.calls("deposit") == 1 + 3 and queue_attempts(gw, "delivered") == 0
        assert "already done, but not that it was this one" in gw.log_text()
        # The provider's retry is not told it was paid: an operator settles it (igsp-gateway dlq).
        assert_error(acme.hook(win("w-lost", "7.25")), 503, "transaction_in_progress")
        listed = dlq(gw, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        [entry] = json.loads(listed.stdout)
        assert entry["payload"]["hook"]["transaction_id"] == "w-lost"
        assert "already done, but not that it was this one" in entry["last_error"]
        # Checked in the wallet's ledger: it was paid. The balance is read from the wallet now.
        resolved = dlq(gw, "resolve", entry["id"], "--applied", env=gw.env)
        assert resolved.returncode == 0, resolved.stderr
        r = acme.hook(win("w-lost", "7.25"))
        assert r.status_code == 200 and decimal_json(r)["balance"] == Decimal("107.25"), r.text
        assert soap.calls("deposit") == 1 + 3  # nothing more was sent
    finally:
        gw.stop()
    assert soap.balance("p1") == Decimal("107.25") and len(soap.ledger("deposit")) == 1


def test_code_3_on_a_bet_voids_it_and_rolls_it_back(soap, acme, gateway):
    """The wallet already holds a Withdraw under this transactionId: its 3 does not say whose,
    so the bet's outcome is unknown; it is voided and rolled back, never debited twice."""
    soap.player("p1", "100.00")
    fields = "".join(f"<{k}>{v}</{k}>" for k, v in {
        "sessionToken": "s-1", "playerId": "p1", "currency": "EUR", "amount": "4.00", "transactionId": "tx-dup",
        "password": PASSWORD}.items())
    envelope = (f'<soap:Envelope xmlns:soap="{soap_wallet.SOAP_NS}"><soap:Body><Withdraw xmlns="urn:legacy-wallet">'
                f"{fields}</Withdraw></soap:Body></soap:Envelope>")
    seeded = requests.post(f"{soap.url}/wallet", data=envelope.encode(), timeout=5,
                           headers={"SOAPAction": "Withdraw", "Content-Type": "text/xml"})
    assert seeded.status_code == 200 and "<code>0</code>" in seeded.text
    assert_error(acme.hook(bet("tx-dup", "4.00")), 502, "upstream_error")
    wait_for(lambda: queue_attempts(gateway, "delivered") >= 1, timeout=15)
    assert soap.calls("rollback") == 1
    assert_error(acme.hook(bet("tx-dup", "4.00")), 409, "transaction_voided")
    assert soap.balance("p1") == Decimal("100.00")
    assert [e["kind"] for e in soap.ledger()] == ["withdraw", "rollback"]


def test_code_4_rollback_of_a_bet_the_wallet_never_saw_is_acknowledged(soap, acme):
    soap.player("p1", "100.00")
    assert acme.hook(bet("tx-1", "10.00")).status_code == 200
    # The wallet loses its memory of the bet (e.g. restored from a backup).
    soap.reset()
    soap.player("p1", "90.00")
    r = acme.hook(refund("rf-1", "tx-1"))
    assert r.status_code == 200, r.text
    assert str(decimal_json(r)["balance"]) == "90.00"  # nothing was undone, and the provider stops retrying
    assert soap.state()["last_request"]["operation"] == "Rollback"
    assert soap.ledger() == []


def test_code_99_internal_error_is_retriable_and_moves_nothing(soap, acme):
    soap.player("p1", "100.00", currency="USD")  # this wallet answers 99 for a currency mismatch
    assert_error(acme.hook(bet("tx-99", "1.00")), 502, "upstream_error")
    # Certainly not applied (the wallet said so): the provider's retry is a fresh attempt.
    before = soap.calls("withdraw")
    assert_error(acme.hook(bet("tx-99", "1.00")), 502, "upstream_error")
    assert soap.calls("withdraw") == before + 1
    assert soap.balance("p1") == Decimal("100.00") and soap.ledger() == []


def test_soap_client_fault_is_retriable_and_moves_nothing(soap, tmp_path):
    soap.player("p1", "100.00")
    gw = start_gateway(tmp_path, soap.url, password="not-the-password")
    try:
        client = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
        r = client.hook(bet("tx-f", "1.00"))
        assert_error(r, 502, "upstream_error")
        assert "Authentication failed" in r.json()["message"] and "not-the-password" not in r.text
        assert_error(client.hook(bet("tx-f", "1.00")), 502, "upstream_error")  # retried afresh
        assert soap.calls("withdraw") == 2
        assert_error(client.hook(balance()), 502, "upstream_error")
        assert "not-the-password" not in gw.log_text()
    finally:
        gw.stop()
    assert soap.balance("p1") == Decimal("100.00")


def test_soap_server_fault_on_a_bet_is_retriable_and_compensated(soap, acme, gateway):
    soap.player("p1", "100.00")
    player = soap.server.state.players["p1"]
    player["balance"] = None  # the wallet crashes inside Withdraw: a soap:Server fault, HTTP 500
    r = acme.hook(bet("tx-crash", "3.00"))
    player["balance"] = Decimal("100.00")
    assert_error(r, 503, "upstream_unavailable")
    # The outcome was unknown: the bet is voided and a Rollback is sent; the wallet never
    # saw the bet (code 4), which acknowledges the rollback instead of dead-lettering it.
    wait_for(lambda: queue_attempts(gateway, "delivered") >= 1, timeout=15)
    assert soap.calls("rollback") == 1 and queue_attempts(gateway, "retry") == 0
    assert_error(acme.hook(bet("tx-crash", "3.00")), 409, "transaction_voided")
    assert soap.balance("p1") == Decimal("100.00") and soap.ledger() == []


def test_html_500_is_retriable(soap, acme):
    soap.player("p1", "100.00")
    soap.fault("http_500_html", endpoint="getbalance")
    assert_error(acme.hook(balance()), 503, "upstream_unavailable")
    assert acme.hook(balance()).status_code == 200
