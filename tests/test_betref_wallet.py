"""mappings/betref-wallet.yaml end to end: signed iGSP hooks -> gateway process -> a wallet whose
credit must name an open bet, and that answers everything HTTP 200 with a status.

The mapping is YAML alone: the bet keeps the wallet's bet id in the gateway's ledger, a win
reads it (``ledger.round_bet``) or opens a zero bet first (``steps`` with ``when``), a refund
cancels the bet it names (``ledger.bet``). Each test checks the iGSP answer AND the wallet's
own bets and money movements; every documented status of the wallet is reached through the
simulator's real behaviour.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
import requests

from gateway.tools.simulators import betref_wallet, start_in_thread
from tests.conftest import ACME
from tests.ops_support import wait_for
from tests.support import ROOT, GatewayProcess, IgspClient, decimal_json
from tests.wallet_support import Simulator, assert_error, balance, bet, queue_attempts, refund, win

TOKEN = "betref-token-0123"
TX = ACME["id"] + ":"


class BetRef(Simulator):
    def bets(self) -> dict:
        return self.state()["bets"]

    def demand(self, endpoint: str, status: str, apply: bool = False) -> None:
        requests.post(f"{self.url}/_control/status", json={"endpoint": endpoint, "status": status, "apply": apply},
                      timeout=5).raise_for_status()


@pytest.fixture
def wallet():
    server = start_in_thread(betref_wallet.make_app(betref_wallet.State(), token=TOKEN))
    yield BetRef(server)
    server.stop()


def start_gateway(tmp_path, url: str, token: str = TOKEN, db: str = "betref", store: str | None = None) -> GatewayProcess:
    config = {
        "version": 1,
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_seconds": 0, "drain_seconds": 2},
        "store": {"url": store or f"sqlite:///{tmp_path}/{db}.db"},
        "partners": [{"id": ACME["id"], "face": "platform", "mapping": str(ROOT / "mappings" / "betref-wallet.yaml"),
                      "api_key": ACME["api_key"], "secrets": [ACME["secret"]]}],
    }
    return GatewayProcess(config, tmp_path, env={"BETREF_WALLET_URL": url, "BETREF_API_TOKEN": token}).start()


@pytest.fixture
def gateway(tmp_path, wallet):
    gw = start_gateway(tmp_path, wallet.url)
    yield gw
    gw.stop()


@pytest.fixture
def acme(gateway):
    return IgspClient(gateway.url, ACME["api_key"], ACME["secret"])


def movements(wallet) -> list:
    return [(e["kind"], e["txid"], e["amount"]) for e in wallet.ledger()]


def test_a_win_credits_its_rounds_bet_by_the_id_the_bet_kept(wallet, acme):
    wallet.player("p1", "100.00")
    assert acme.hook(balance()).content == b'{"balance":100.00}'
    r = acme.hook(bet("tx-1", "12.34", round_id="r-1"))
    assert r.status_code == 200, r.text
    assert decimal_json(r) == {"balance": Decimal("87.66"), "transaction_id": "B00001"}
    r = acme.hook(win("w-1", "20.00", round_id="r-1"))
    assert r.status_code == 200, r.text
    assert decimal_json(r) == {"balance": Decimal("107.66"), "transaction_id": TX + "w-1"}
    # One debit only: the credit named the round's bet (B00001), no zero bet was opened.
    assert wallet.calls("debit") == 1
    assert wallet.bets()["B00001"]["state"] == "settled" and wallet.bets()["B00001"]["settled_by"] == TX + "w-1"
    assert movements(wallet) == [("debit", TX + "tx-1", "-12.34"), ("credit", TX + "w-1", "20.00")]


def test_a_win_without_an_open_bet_opens_a_zero_bet_and_credits_it(wallet, acme):
    wallet.player("p1", "100.00")
    r = acme.hook(win("w-free", "3.00", round_id="r-free"))  # no bet in this round
    assert r.status_code == 200, r.text
    assert decimal_json(r)["balance"] == Decimal("103.00")
    zero = wallet.bets()["B00001"]
    assert (zero["tx"], zero["stake"], zero["state"], zero["settled_by"]) == (TX + "w-free:open", 0, "settled",
                                                                               TX + "w-free")
    # A second win of a round whose bet the first win settled opens its own zero bet.
    assert acme.hook(bet("tx-2", "1.00", round_id="r-2")).status_code == 200
    assert acme.hook(win("w-2a", "2.00", round_id="r-2")).status_code == 200
    r = acme.hook(win("w-2b", "0.50", round_id="r-2"))
    assert r.status_code == 200, r.text
    assert decimal_json(r)["balance"] == Decimal("104.50")
    assert wallet.bets()["B00002"]["settled_by"] == TX + "w-2a"
    assert wallet.bets()["B00003"]["tx"] == TX + "w-2b:open" and wallet.bets()["B00003"]["settled_by"] == TX + "w-2b"
    assert wallet.balance("p1") == Decimal("104.50")


def test_a_refund_cancels_the_bet_it_names_by_the_kept_id(wallet, acme):
    wallet.player("p1", "100.00")
    assert acme.hook(bet("tx-1", "10.00")).status_code == 200
    r = acme.hook(refund("rf-1", "tx-1", "10.00"))
    assert r.status_code == 200, r.text
    assert decimal_json(r) == {"balance": Decimal("100.00"), "transaction_id": TX + "rf-1"}
    assert wallet.bets()["B00001"]["cancelled_by"] == TX + "rf-1"
    assert movements(wallet) == [("debit", TX + "tx-1", "-10.00"), ("cancel", TX + "rf-1", "10.00")]


def test_no_funds_is_final_and_replayed(wallet, acme):
    wallet.player("p1", "5.00")
    body = assert_error(acme.hook(bet("tx-big", "5.01")), 402, "insufficient_funds")
    assert "Insufficient funds" in body["message"]
    assert_error(acme.hook(bet("tx-big", "5.01")), 402, "insufficient_funds")
    assert wallet.calls("debit") == 1 and wallet.ledger() == []


@pytest.mark.parametrize(("player", "status", "code"), [
    ({"session": "another"}, 400, "session_not_found"),
    ({"disabled": True}, 409, "player_blocked"),
    ({"currency": "USD"}, 400, "currency_mismatch"),
    (None, 404, "player_not_found"),
])
def test_refusals_are_final(wallet, acme, player, status, code):
    if player is not None:
        wallet.player("p1", "100.00", **player)
    assert_error(acme.hook(bet("tx-r", "1.00")), status, code)
    assert wallet.ledger() == []


def test_bet_not_found_and_bet_settled_refuse_a_refund(wallet, acme):
    wallet.player("p1", "100.00")
    assert acme.hook(bet("tx-1", "10.00", round_id="r-1")).status_code == 200
    assert acme.hook(win("w-1", "1.00", round_id="r-1")).status_code == 200
    body = assert_error(acme.hook(refund("rf-1", "tx-1", "10.00")), 409, "transaction_conflict")
    assert body["message"] == "the bet is settled by a win: it cannot be refunded"
    assert acme.hook(bet("tx-2", "10.00", round_id="r-2")).status_code == 200
    wallet.reset()  # the wallet loses its bets (restored from a backup)
    wallet.player("p1", "81.00")
    assert_error(acme.hook(refund("rf-2", "tx-2", "10.00")), 404, "transaction_not_found")
    assert wallet.ledger() == []


def test_a_duplicate_debit_counts_only_when_it_proves_it_is_this_bet(wallet, acme):
    wallet.player("p1", "100.00")
    # The wallet applies the debit but answers INTERNAL_ERROR ("nothing done"): the gateway
    # forgets the bet, and the provider's retry sends it again.
    wallet.demand("debit", "INTERNAL_ERROR", apply=True)
    assert_error(acme.hook(bet("tx-d", "4.00")), 503, "upstream_unavailable")
    r = acme.hook(bet("tx-d", "4.00"))
    assert r.status_code == 200, r.text  # DUPLICATE with this tx and this stake: this bet, debited once
    assert decimal_json(r) == {"balance": Decimal("96.00"), "transaction_id": "B00001"}
    assert movements(wallet) == [("debit", TX + "tx-d", "-4.00")]


def test_unknown_error_on_a_bet_rolls_it_back_by_its_tx(wallet, acme, gateway):
    wallet.player("p1", "100.00")
    wallet.demand("debit", "UNKNOWN_ERROR", apply=True)
    body = assert_error(acme.hook(bet("tx-u", "6.00")), 502, "upstream_error")
    assert body["message"] == "the wallet does not know whether it applied this"
    wait_for(lambda: queue_attempts(gateway, "delivered") >= 1, timeout=20)
    assert_error(acme.hook(bet("tx-u", "6.00")), 409, "transaction_voided")
    assert wallet.bets()["B00001"]["cancelled_by"] == TX + "tx-u:rollback"
    assert wallet.balance("p1") == Decimal("100.00")


def test_a_rollback_of_a_bet_the_wallet_never_saw_is_acknowledged(wallet, acme, gateway):
    wallet.player("p1", "100.00")
    wallet.fault("reset", endpoint="debit")  # the connection drops before the wallet reads the bet
    assert_error(acme.hook(bet("tx-n", "6.00")), 503, "upstream_unavailable")
    wait_for(lambda: queue_attempts(gateway, "delivered") >= 1, timeout=20)  # BET_NOT_FOUND: nothing to undo
    assert queue_attempts(gateway, "retry") == 0 and wallet.calls("cancel") == 1
    assert wallet.ledger() == [] and wallet.balance("p1") == Decimal("100.00")


def test_internal_error_on_a_credit_is_redelivered_and_paid_once(wallet, acme, gateway):
    wallet.player("p1", "100.00")
    assert acme.hook(bet("tx-1", "10.00", round_id="r-1")).status_code == 200
    wallet.demand("credit", "INTERNAL_ERROR")
    assert_error(acme.hook(win("w-1", "5.00", round_id="r-1")), 503, "upstream_unavailable")
    r = wait_for(lambda: (x := acme.hook(win("w-1", "5.00", round_id="r-1"))).status_code == 200 and x,
                 timeout=20, what="the queued win delivered")
    assert decimal_json(r)["balance"] == Decimal("95.00")
    assert wallet.calls("credit") == 2 and wallet.calls("debit") == 1
    assert movements(wallet)[-1] == ("credit", TX + "w-1", "5.00")


def test_a_committed_credit_whose_answer_was_lost_is_redelivered_and_paid_once(wallet, tmp_path, store_url):
    """The two-call flow that once paid a win twice: open a zero bet, credit it; the credit is
    applied but its answer is lost. The queued redelivery reruns both steps: the open finds its
    zero bet (DUPLICATE, proven by its tx), the credit finds the bet settled by this very win
    (ALREADY_SETTLED, proven by tx, amount and bet): paid once. On both stores."""
    gateway = start_gateway(tmp_path, wallet.url, store=store_url)
    try:
        _lost_credit_paid_once(wallet, IgspClient(gateway.url, ACME["api_key"], ACME["secret"]))
    finally:
        gateway.stop()


def _lost_credit_paid_once(wallet, acme):
    wallet.player("p1", "100.00")
    wallet.fault("apply_then_hang", endpoint="credit", seconds=5)
    assert_error(acme.hook(win("w-late", "7.25", round_id="r-late")), 504, "upstream_timeout")
    assert wallet.balance("p1") == Decimal("107.25")  # the wallet did pay it
    r = wait_for(lambda: (x := acme.hook(win("w-late", "7.25", round_id="r-late"))).status_code == 200 and x,
                 timeout=25, what="the redelivered win settled")
    assert decimal_json(r) == {"balance": Decimal("107.25"), "transaction_id": TX + "w-late"}
    assert wallet.calls("debit") == 2 and wallet.calls("credit") == 2
    assert [m for m in movements(wallet) if m[0] == "credit"] == [("credit", TX + "w-late", "7.25")]
    assert len(wallet.bets()) == 1 and wallet.balance("p1") == Decimal("107.25")


def test_already_settled_by_another_credit_is_never_taken_as_paid(wallet, acme, gateway):
    wallet.player("p1", "100.00")
    assert acme.hook(bet("tx-1", "10.00", round_id="r-1")).status_code == 200
    # The casino's back office settles the bet itself, with its own credit.
    requests.post(f"{wallet.url}/wallet/credit", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5,
                  json={"player": "p1", "session": "s-1", "ref": "bo-1", "bet_id": "B00001", "tx": "backoffice-1",
                        "amount": 100}).raise_for_status()
    body = assert_error(acme.hook(win("w-1", "5.00", round_id="r-1")), 502, "upstream_bad_response")
    assert "ALREADY_SETTLED says already done, but does not prove it" in body["message"]
    assert "bet.tx differs" in body["message"]
    assert wallet.balance("p1") == Decimal("91.00")  # the win was not paid, nor taken as paid
    assert_error(acme.hook(win("w-1", "5.00", round_id="r-1")), 503, "transaction_in_progress")


def test_a_win_whose_bet_was_cancelled_meanwhile_is_not_paid(wallet, acme, gateway):
    wallet.player("p1", "100.00")
    assert acme.hook(bet("tx-1", "10.00", round_id="r-1")).status_code == 200
    wallet.demand("credit", "INTERNAL_ERROR")
    assert_error(acme.hook(win("w-1", "5.00", round_id="r-1")), 503, "upstream_unavailable")
    # The bet is refunded before the win's redelivery: the rerun names the same bet (its
    # ledger read is kept), which the wallet refuses: BET_CANCELLED, retried, never paid.
    assert acme.hook(refund("rf-1", "tx-1", "10.00")).status_code == 200
    wait_for(lambda: queue_attempts(gateway, "retry") >= 1, timeout=20, what="the win's redelivery refused")
    assert [m[0] for m in movements(wallet)] == ["debit", "cancel"] and wallet.balance("p1") == Decimal("100.00")
    assert_error(acme.hook(win("w-1", "5.00", round_id="r-1")), 503, "transaction_in_progress")


def test_html_500_and_auth_failed_are_retriable(wallet, acme, tmp_path):
    wallet.player("p1", "100.00")
    wallet.fault("http_500_html", endpoint="balance")
    assert_error(acme.hook(balance()), 503, "upstream_unavailable")
    assert acme.hook(balance()).status_code == 200
    gw = start_gateway(tmp_path, wallet.url, token="wrong-token", db="other")
    try:
        client = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
        body = assert_error(client.hook(bet("tx-a", "1.00")), 502, "upstream_error")
        assert "AUTH_FAILED" in body["message"] and "wrong-token" not in body["message"]
    finally:
        gw.stop()
    assert wallet.ledger() == []


def test_a_redelivered_win_takes_its_first_runs_path_though_its_rounds_bet_arrived_since(wallet, acme, gateway):
    """A win with no bet in its round opens a zero bet and credits it; the credit's answer is
    lost. Before the redelivery, the round's bet arrives. The rerun must not credit that bet
    (the first run's credit went to the zero bet): its ledger read is the first run's, so it
    reruns the same two steps, finds its credit proven, and the win is paid once."""
    wallet.player("p1", "100.00")
    wallet.fault("apply_then_hang", endpoint="credit", seconds=5)
    assert_error(acme.hook(win("w-x", "4.00", round_id="r-x")), 504, "upstream_timeout")
    assert acme.hook(bet("tx-x", "1.00", round_id="r-x")).status_code == 200
    r = wait_for(lambda: (x := acme.hook(win("w-x", "4.00", round_id="r-x"))).status_code == 200 and x,
                 timeout=25, what="the redelivered win settled")
    assert decimal_json(r)["balance"] == Decimal("103.00")
    assert [m for m in movements(wallet) if m[0] == "credit"] == [("credit", TX + "w-x", "4.00")]
    bets = wallet.bets()
    assert bets["B00001"]["tx"] == TX + "w-x:open" and bets["B00001"]["state"] == "settled"
    assert bets["B00002"]["tx"] == TX + "tx-x" and bets["B00002"]["state"] == "open"  # not credited by w-x
    assert wallet.balance("p1") == Decimal("103.00")


def test_the_simulator_keeps_its_vendors_habits(wallet):
    """What the mapping must absorb is real in the simulator: the credit is not idempotent by
    tx (the same tx on another open bet pays again), and "already done" answers carry the
    original bet, whoever's it is."""
    wallet.player("p1", "100.00")

    def call(path: str, **body) -> dict:
        r = requests.post(f"{wallet.url}/wallet/{path}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5,
                          json={"player": "p1", "session": "s", "ref": "r", **body})
        assert r.status_code == 200  # every outcome is HTTP 200
        return r.json()

    assert call("debit", tx="a", amount=100, currency="EUR")["bet"] == {"id": "B00001", "tx": "a", "amount": 100}
    assert call("debit", tx="a", amount=999, currency="EUR")["status"] == "DUPLICATE"
    assert call("debit", tx="b", amount=0, currency="EUR")["bet"]["id"] == "B00002"
    assert call("credit", bet_id="B00001", tx="win-1", amount=500)["status"] == "OK"
    assert call("credit", bet_id="B00002", tx="win-1", amount=500)["status"] == "OK"  # the same tx, paid again
    again = call("credit", bet_id="B00001", tx="win-2", amount=1)
    assert again["status"] == "ALREADY_SETTLED" and again["bet"] == {"id": "B00001", "tx": "win-1", "amount": 500}
    refused = call("cancel", tx="c", bet_id="B00001")
    assert refused["status"] == "ERROR" and refused["error"]["code"] == "BET_SETTLED"
    assert wallet.balance("p1") == Decimal("109.00")
    assert requests.post(f"{wallet.url}/wallet/balance", json={"player": "p1", "ref": "r"},
                         timeout=5).json()["error"]["code"] == "AUTH_FAILED"


def test_a_rounds_bet_is_the_first_one_the_wallet_accepted(wallet, acme):
    wallet.player("p1", "5.00")
    assert_error(acme.hook(bet("tx-big", "50.00", round_id="r-1")), 402, "insufficient_funds")
    assert acme.hook(bet("tx-ok", "5.00", round_id="r-1")).status_code == 200
    r = acme.hook(win("w-1", "8.00", round_id="r-1"))
    assert r.status_code == 200, r.text
    assert wallet.calls("debit") == 2  # no zero bet: the win credited the accepted bet
    assert wallet.bets()["B00001"]["settled_by"] == TX + "w-1" and wallet.balance("p1") == Decimal("8.00")


def test_a_round_id_shared_by_players_credits_each_players_own_bet(wallet, tmp_path, store_url):
    """A live table's round id is every seated player's: p1 and p2 bet in round "table-7".
    p2's win must credit p2's bet, never read p1's (the round's first bet) as its own: the
    wallet would refuse that credit (BET_NOT_FOUND, a final 404: p2's win lost) or, were it
    less strict, settle p1's bet with p2's win. On both stores."""
    gateway = start_gateway(tmp_path, wallet.url, store=store_url)
    try:
        acme = IgspClient(gateway.url, ACME["api_key"], ACME["secret"])
        wallet.player("p1", "100.00")
        wallet.player("p2", "100.00")
        assert acme.hook(bet("tx-a", "10.00", player="p1", round_id="table-7")).status_code == 200
        assert acme.hook(bet("tx-b", "10.00", player="p2", round_id="table-7")).status_code == 200
        r = acme.hook(win("w-b", "5.00", player="p2", round_id="table-7"))
        assert r.status_code == 200, r.text
        assert decimal_json(r)["balance"] == Decimal("95.00")
        r = acme.hook(win("w-a", "3.00", player="p1", round_id="table-7"))
        assert r.status_code == 200, r.text
        assert decimal_json(r)["balance"] == Decimal("93.00")
        bets = wallet.bets()
        assert (bets["B00001"]["player"], bets["B00001"]["settled_by"]) == ("p1", TX + "w-a")
        assert (bets["B00002"]["player"], bets["B00002"]["settled_by"]) == ("p2", TX + "w-b")
        assert len(bets) == 2 and wallet.calls("debit") == 2  # no zero bet: each win had its own bet
        assert (wallet.balance("p1"), wallet.balance("p2")) == (Decimal("93.00"), Decimal("95.00"))
    finally:
        gateway.stop()


def test_the_simulator_runs_as_a_process_like_the_others():
    from gateway.tools.simulators import spawn

    proc, url = spawn("betref_wallet", "--player", "p9:12.50:EUR", "--token", "cli-token")
    try:
        r = requests.post(f"{url}/wallet/balance", headers={"Authorization": "Bearer cli-token"},
                          json={"player": "p9", "ref": "r"}, timeout=5)
        assert r.json() == {"status": "OK", "ref": "r", "player": "p9", "balance": 1250, "currency": "EUR"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
