"""mappings/hub88-wallet.yaml end to end against the Hub88-style wallet simulator.

Every status the simulator can answer is reached through its real checks (a disabled
player, a pinned token, another currency, a contract mode…) and must become the right
iGSP error; the RSA signature is really verified by the wallet; amounts travel as
exact integers of 1/100 000.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
import yaml

from gateway.tools.simulators import hub88_wallet, start_in_thread
from tests.conftest import ACME, BETA
from tests.support import ROOT, GatewayProcess, IgspClient, decimal_json
from tests.wallet_support import Simulator, assert_error, balance, bet, queue_attempts, refund, wait_for, win

SHIPPED = ROOT / "mappings" / "hub88-wallet.yaml"


class Setup:
    """Wallet simulators and gateways started by one test, stopped at its end."""

    def __init__(self, tmp_path, keys):
        self.tmp_path, self.keys, self.servers, self.gateways = tmp_path, keys, [], []

    def wallet(self, **modes) -> Simulator:
        server = start_in_thread(hub88_wallet.make_app(hub88_wallet.State(), public_key_pem=self.keys[1], **modes))
        self.servers.append(server)
        return Simulator(server)

    def gateway(self, wallet: Simulator, mapping=SHIPPED, private_key: str | None = None, **config) -> GatewayProcess:
        partners = [{"id": p["id"], "face": "platform", "mapping": str(mapping), "api_key": p["api_key"],
                     "secrets": [p["secret"]]} for p in (ACME, BETA)]
        document = {"version": 1, "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_seconds": 0, "drain_seconds": 2},
                    "store": {"url": f"sqlite:///{self.tmp_path}/hub88-{len(self.gateways)}.db"},
                    "partners": partners, **config}
        env = {"HUB88_WALLET_URL": wallet.url, "HUB88_PRIVATE_KEY": private_key or self.keys[0]}
        gw = GatewayProcess(document, self.tmp_path, env=env).start()
        self.gateways.append(gw)
        return gw

    def close(self) -> None:
        for gw in self.gateways:
            gw.stop()
        for server in self.servers:
            server.stop()


@pytest.fixture
def setup(tmp_path, hub88_keys):
    s = Setup(tmp_path, hub88_keys)
    yield s
    s.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory, hub88_keys):
    """One default wallet + gateway for the tests that only need fresh players."""
    s = Setup(tmp_path_factory.mktemp("hub88"), hub88_keys)
    wallet = s.wallet()
    gw = s.gateway(wallet)
    yield wallet, IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    s.close()


def variant(tmp_path, name: str, change) -> str:
    """A copy of the shipped mapping with one thing changed (anchors expanded)."""
    data = yaml.safe_load(SHIPPED.read_text())
    change(data)
    path = tmp_path / f"hub88-{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


# -- statuses reached through the wallet's own checks ---------------------------------------------

WALLET_REFUSALS = {
    # legacy status: (player set-up, bet amount, iGSP status, iGSP code, text the answer must carry)
    "RS_ERROR_NOT_ENOUGH_MONEY": ({"balance": "5.00"}, "5.01", 402, "insufficient_funds", "RS_ERROR_NOT_ENOUGH_MONEY"),
    "RS_ERROR_UNKNOWN": (None, "1.00", 404, "player_not_found", "does not know this player"),
    "RS_ERROR_INVALID_TOKEN": ({"token": "the-real-session"}, "1.00", 400, "session_not_found",
                               "RS_ERROR_INVALID_TOKEN"),
    "RS_ERROR_USER_DISABLED": ({"disabled": True}, "1.00", 409, "player_blocked", "RS_ERROR_USER_DISABLED"),
    "RS_ERROR_WRONG_CURRENCY": ({"currency": "USD"}, "1.00", 400, "currency_mismatch", "RS_ERROR_WRONG_CURRENCY"),
}


@pytest.mark.parametrize("legacy", WALLET_REFUSALS)
def test_wallet_status_becomes_igsp_error(shared, legacy):
    wallet, client = shared
    player, amount, status, code, evidence = WALLET_REFUSALS[legacy]
    pid = f"p-{legacy}"
    if player is not None:
        setup = dict(player)
        wallet.player(pid, setup.pop("balance", "100.00"), setup.pop("currency", "EUR"), **setup)
    before = wallet.calls("bet")
    body = assert_error(client.hook(bet(f"tx-{pid}", amount, player=pid)), status, code)
    assert evidence in body["message"]  # the wallet really answered this status
    assert wallet.calls("bet") == before + 1
    # A business refusal is final: the provider's retry replays it without another call.
    assert_error(client.hook(bet(f"tx-{pid}", amount, player=pid)), status, code)
    assert wallet.calls("bet") == before + 1
    assert all(e["player"] != pid for e in wallet.ledger())
    if code != "insufficient_funds":
        assert_error(client.hook(balance(pid)), status, code)


def test_wrong_private_key_is_refused_by_the_wallet(setup):
    wallet = setup.wallet()
    wallet.player("p1", "100.00")
    other_private, _ = hub88_wallet.generate_keypair()
    bad = IgspClient(setup.gateway(wallet, private_key=other_private).url, ACME["api_key"], ACME["secret"])
    body = assert_error(bad.hook(bet("tx-1", "1.00")), 502, "upstream_error")
    assert "RS_ERROR_INVALID_SIGNATURE" in body["message"]
    assert_error(bad.hook(bet("tx-1", "1.00")), 502, "upstream_error")  # refused, so retried afresh
    assert wallet.calls("bet") == 2 and wallet.balance("p1") == Decimal("100.00")
    # The same wallet accepts the correctly keyed gateway: the signature is what differed.
    good = IgspClient(setup.gateway(wallet).url, ACME["api_key"], ACME["secret"])
    assert good.hook(bet("tx-1", "1.00")).status_code == 200
    assert wallet.balance("p1") == Decimal("99.00")


@pytest.mark.parametrize(
    ("legacy", "change"),
    [
        ("RS_ERROR_WRONG_SYNTAX", lambda m: m["operations"]["bet"]["body"].pop("round")),
        ("RS_ERROR_WRONG_TYPES",
         lambda m: m["operations"]["bet"]["body"].update(amount="{{ legacy_amount | string }}")),
    ],
)
def test_malformed_request_statuses_are_upstream_errors(setup, tmp_path, legacy, change):
    wallet = setup.wallet()
    wallet.player("p1", "100.00")
    gw = setup.gateway(wallet, variant(tmp_path, legacy.lower(), change))
    client = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    body = assert_error(client.hook(bet("tx-1", "1.00")), 502, "upstream_error")
    assert legacy in body["message"]
    assert wallet.balance("p1") == Decimal("100.00") and wallet.ledger() == []


# -- contract modes -------------------------------------------------------------------------------

def test_duplicate_transaction_contract(setup, tmp_path):
    """RS_ERROR_DUPLICATE_TRANSACTION: "already done", but it proves nothing of whose: a
    redelivered win is never taken as paid (an operator checks it); a reused bet id is a conflict."""
    wallet = setup.wallet(idempotency="duplicate_error")
    wallet.player("p1", "100.00")
    # This contract makes the wallet safe to redeliver to (it never pays an id twice).
    mapping = variant(tmp_path, "dedupe", lambda m: (m["upstream"].update(idempotent=True),
                                                     m["queue"].update(max_attempts=2, backoff_initial=0.2)))
    gw = setup.gateway(wallet, mapping)
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])

    wallet.fault("apply_then_hang", endpoint="win", seconds=5)
    assert_error(acme.hook(win("w-lost", "2.50")), 504, "upstream_timeout")
    # Redelivered: the wallet answers RS_ERROR_DUPLICATE_TRANSACTION, which could as well be
    # another transaction under this id. Unknown outcome, then a dead letter for an operator.
    wait_for(lambda: queue_attempts(gw, "dead") >= 1, timeout=15)
    assert wallet.calls("win") == 3 and queue_attempts(gw, "delivered") == 0
    assert_error(acme.hook(win("w-lost", "2.50")), 503, "transaction_in_progress")
    assert wallet.balance("p1") == Decimal("102.50") and len(wallet.ledger("win")) == 1

    # Another partner reusing a bet id is another transaction: the mapping namespaces legacy
    # ids by partner, so neither can touch (or be refused because of) the other's.
    beta = IgspClient(gw.url, BETA["api_key"], BETA["secret"])
    assert acme.hook(bet("shared-id", "1.00")).status_code == 200
    assert beta.hook(bet("shared-id", "1.00")).status_code == 200
    assert wallet.balance("p1") == Decimal("100.50") and len(wallet.ledger("bet")) == 2


def test_rollback_of_a_transaction_the_wallet_never_saw(setup):
    """RS_ERROR_TRANSACTION_DOES_NOT_EXIST on a rollback is acknowledged, not retried for ever."""
    wallet = setup.wallet(rollback_unknown="error")
    wallet.player("p1", "100.00")
    gw = setup.gateway(wallet)
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    wallet.fault("garbage", endpoint="bet")  # an unreadable answer: outcome unknown, nothing applied
    assert_error(acme.hook(bet("tx-g", "3.00")), 502, "upstream_bad_response")
    wait_for(lambda: queue_attempts(gw, "delivered") >= 1, timeout=15)
    assert wallet.calls("rollback") == 1 and queue_attempts(gw, "retry") == 0
    # The provider's own refund of that bet moves nothing either.
    r = acme.hook(refund("rf-g", "tx-g", "3.00"))
    assert r.status_code == 200 and decimal_json(r)["balance"] == Decimal("100.00")
    assert wallet.balance("p1") == Decimal("100.00") and wallet.ledger() == []


# -- amounts in 1/100 000 -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("currency", "start", "amount", "after"),
    [
        ("EUR", "100.00", "12.34", "87.66"),
        ("EUR", "100.00", "0.01", "99.99"),
        ("EUR", "123456789012.34", "98765432109.87", "24691356902.47"),
        ("JPY", "1000", "5", "995"),
        ("BHD", "10.000", "1.234", "8.766"),
    ],
)
def test_amounts_are_exact_scaled_integers(shared, currency, start, amount, after):
    wallet, client = shared
    pid = f"amt-{currency}-{amount}"
    wallet.player(pid, start, currency)
    r = client.hook({**bet(f"tx-{pid}", amount, player=pid), "currency": currency})
    assert r.status_code == 200, r.text
    assert r.content.startswith(b'{"balance":' + after.encode() + b",")  # exact decimal text
    debit = wallet.ledger("bet")[-1]
    assert debit["player"] == pid and Decimal(debit["amount"]) == -Decimal(amount)
    assert wallet.balance(pid) == Decimal(after)


def test_amount_finer_than_the_wallet_scale_is_refused(setup):
    wallet = setup.wallet()
    wallet.player("p1", "1.00000000", "BTC")
    gw = setup.gateway(wallet, currencies={"BTC": 8})
    client = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    ok = client.hook({**bet("tx-ok", "0.00001"), "currency": "BTC"})
    assert ok.status_code == 200 and ok.content.startswith(b'{"balance":0.99999000,')
    body = assert_error(client.hook({**bet("tx-fine", "0.00000001"), "currency": "BTC"}), 400, "invalid_amount")
    assert "1/100000" in body["message"]
    assert wallet.calls("bet") == 1 and wallet.balance("p1") == Decimal("0.99999")
