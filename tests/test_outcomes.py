"""Outcomes in legacy answers: a status classified ``outcome: unknown``, and "already done"
success codes that count only when the answer proves the earlier attempt was this
transaction (``success_codes: [{code, proves}]``).

The wallet here answers every outcome with HTTP 200 and a status, as many do: after a
debit it may say ``UNKNOWN_ERROR`` (it does not know whether it applied), and it answers a
transaction id it has already seen with ``ALREADY_PROCESSED`` and the transaction it has
under that id. That is the transaction's own only if its id, player and amount are this
one's: another partner's, another game server's or a corrupted id may collide.
"""

from __future__ import annotations

import asyncio
import json
import threading
from decimal import Decimal

import pytest
from aiohttp import web

from gateway.engine.mapping import load_mapping
from gateway.errors import ConfigError, IgspError, UpstreamError
from gateway.outbound.legacy import LegacyClient
from gateway.tools.simulators import start_in_thread
from tests.conftest import ACME, platform_config
from tests.ops_support import wait_for
from tests.support import IgspClient, decimal_json
from tests.wallet_support import assert_error, bet, queue_attempts, win

MAPPING = """\
version: 1
name: outcome-wallet
face: platform
upstream:
  base_url: ${OUTCOME_WALLET_URL}
  timeout: 0.5
  idempotent: true            # a repeated transaction id is answered, never applied twice
amounts: {unit: minor}
result:
  success: "status == 'OK'"
  code: status
  errors:
    NO_MONEY: insufficient_funds
    UNKNOWN_ERROR: {error: upstream_error, outcome: unknown}
  default_error: upstream_error
echo:
  request_uuid: "{{ request_id }}"
  user: "{{ player_id }}"
operations:
  balance:
    path: /balance
    body: {user: "{{ player_id }}", request_uuid: "{{ request_id }}"}
    response: {balance: balance}
  bet:
    path: /bet
    body: &transfer
      user: "{{ player_id }}"
      request_uuid: "{{ request_id }}"
      tx: "{{ partner }}:{{ transaction_id }}"
      amount: "{{ legacy_amount }}"
    response: {balance: balance}
  win:
    path: /win
    body: *transfer
    response: {balance: balance}
    result:
      success_codes:
        - code: ALREADY_PROCESSED
          proves:
            transaction.id: "{{ partner }}:{{ transaction_id }}"
            transaction.user: "{{ player_id }}"
            transaction.amount: "{{ legacy_amount }}"
  refund:
    path: /rollback
    body:
      user: "{{ player_id }}"
      request_uuid: "{{ request_id }}"
      tx: "{{ partner }}:{{ transaction_id }}"
      reference: "{{ partner }}:{{ bet_transaction_id }}"
    response: {balance: balance}
queue: {max_attempts: 2, backoff_initial: 0.2, backoff_max: 0.4}
"""


class OutcomeWallet:
    """Balances in cents, transactions by id; ``habit(path, kind)`` for the next call to ``path``:
    ``unknown`` applies the call then answers ``UNKNOWN_ERROR``, ``slow`` applies it then answers
    after the gateway's timeout."""

    def __init__(self):
        self.lock = threading.Lock()
        self.players: dict[str, int] = {}
        self.transactions: dict[str, dict] = {}
        self.calls: dict[str, int] = {}
        self.habits: dict[str, str] = {}
        app = web.Application()
        for path in ("/balance", "/bet", "/win", "/rollback"):
            app.router.add_post(path, self.handle)
        self.server = start_in_thread(app)
        self.url = self.server.url

    def player(self, player_id: str, amount: str) -> None:
        with self.lock:
            self.players[player_id] = int(Decimal(amount) * 100)

    def balance(self, player_id: str) -> Decimal:
        with self.lock:
            return Decimal(self.players[player_id]) / 100

    def habit(self, path: str, kind: str) -> None:
        with self.lock:
            self.habits[path] = kind

    def answer(self, path: str, body: dict) -> tuple[dict, str | None]:
        user = body.get("user")
        reply = {"status": "OK", "user": user, "request_uuid": body.get("request_uuid")}
        with self.lock:
            self.calls[path] = self.calls.get(path, 0) + 1
            habit = self.habits.pop(path, None)
            if path in ("/bet", "/win"):
                prior = self.transactions.get(body["tx"])
                if prior is not None:
                    # Already seen: say so, with the transaction this wallet has under the id.
                    return {**reply, "status": "ALREADY_PROCESSED", "balance": self.players[user],
                            "transaction": {"id": body["tx"], **prior}}, None
                amount = body["amount"] if path == "/win" else -body["amount"]
                if self.players[user] + amount < 0:
                    return {**reply, "status": "NO_MONEY"}, None
                self.players[user] += amount
                self.transactions[body["tx"]] = {"user": user, "amount": abs(amount), "kind": path[1:]}
            elif path == "/rollback":
                target = self.transactions.get(body["reference"])
                if target is not None and target["user"] == user and not target.get("rolled_back"):
                    self.players[user] += target["amount"] if target["kind"] == "bet" else -target["amount"]
                    target["rolled_back"] = True
            reply["balance"] = self.players[user]
        if habit == "unknown":
            return {**reply, "status": "UNKNOWN_ERROR"}, None
        return reply, habit

    async def handle(self, request: web.Request) -> web.Response:
        reply, habit = self.answer(request.path, await request.json())
        if habit == "slow":
            await asyncio.sleep(1.5)  # the wallet's habit: applied, answered after the caller gave up
        return web.json_response(reply)


@pytest.fixture
def wallet():
    server = OutcomeWallet()
    yield server
    server.server.stop()


@pytest.fixture
def gateway(gateway_factory, wallet, tmp_path):
    mapping = tmp_path / "outcome-wallet.yaml"
    mapping.write_text(MAPPING)
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db")
    for partner in config["partners"]:
        partner["mapping"] = str(mapping)
    proc = gateway_factory(config, env={"OUTCOME_WALLET_URL": wallet.url})
    proc.client = IgspClient(proc.url, ACME["api_key"], ACME["secret"])
    return proc


# -- end to end ---------------------------------------------------------------------------------------------

def test_a_status_classified_unknown_sends_the_bet_down_the_rollback_path(gateway, wallet):
    client = gateway.client
    wallet.player("p1", "100.00")
    wallet.habit("/bet", "unknown")  # the wallet debits, then says it does not know
    body = assert_error(client.hook(bet("tx-unknown", "10.00")), 502, "upstream_error")
    assert "UNKNOWN_ERROR" in body["message"]
    assert wallet.balance("p1") == Decimal("90.00")
    # Not "nothing applied" (a retry would start afresh and debit again): the bet is voided
    # and a compensating rollback undoes the debit.
    assert_error(client.hook(bet("tx-unknown", "10.00")), 409, "transaction_voided")
    wait_for(lambda: wallet.balance("p1") == Decimal("100.00"), what="the rollback of the debit")
    assert wallet.calls["/bet"] == 1


def test_an_already_done_answer_that_proves_it_is_this_win_settles_its_redelivery(gateway, wallet):
    client = gateway.client
    wallet.player("p1", "100.00")
    wallet.habit("/win", "slow")  # paid, but the answer comes after the gateway's timeout
    assert_error(client.hook(win("w-lost", "5.00")), 504, "upstream_timeout")
    assert wallet.balance("p1") == Decimal("105.00")
    # The queue redelivers; the wallet says "already processed" with this very transaction.
    answer = wait_for(lambda: (r := client.hook(win("w-lost", "5.00"))).status_code == 200 and r,
                      interval=0.2, what="the redelivered win settled")
    assert decimal_json(answer)["balance"] == Decimal("105.00")
    assert wallet.calls["/win"] == 2 and wallet.balance("p1") == Decimal("105.00")


def test_an_already_done_answer_that_is_not_this_transaction_is_never_success(gateway, wallet):
    client = gateway.client
    wallet.player("p1", "100.00")
    wallet.player("p2", "100.00")
    # The wallet holds another transaction under the id this win will send (another game
    # server's, a reused id): its "already processed" is not this win's.
    with wallet.lock:
        wallet.transactions[f"{ACME['id']}:w-collides"] = {"user": "p2", "amount": 50000, "kind": "win"}
    dead = queue_attempts(gateway, "dead")
    body = assert_error(client.hook(win("w-collides", "5.00")), 502, "upstream_bad_response")
    assert "does not prove it was this transaction (transaction.user differs)" in body["message"]
    # Outcome unknown: redelivered, refused the same way, then dead-lettered for an operator;
    # meanwhile retries are told it is in progress, never 200.
    wait_for(lambda: queue_attempts(gateway, "dead") > dead, interval=0.2, what="the dead letter")
    assert_error(client.hook(win("w-collides", "5.00")), 503, "transaction_in_progress")
    assert wallet.balance("p1") == Decimal("100.00") and wallet.balance("p2") == Decimal("100.00")
    assert wallet.calls["/win"] == 3  # the call, then max_attempts deliveries


# -- reading answers in process -------------------------------------------------------------------------

CONTEXT = {"request_id": "rq-1", "player_id": "p1", "partner": "acme", "transaction_id": "w-1",
           "legacy_amount": 500}
DONE = {"status": "ALREADY_PROCESSED", "user": "p1", "request_uuid": "rq-1", "balance": 10500,
        "transaction": {"id": "acme:w-1", "user": "p1", "amount": 500}}


@pytest.fixture
def client(tmp_path):
    path = tmp_path / "outcome-wallet.yaml"
    path.write_text(MAPPING)
    return LegacyClient(load_mapping(path, {"OUTCOME_WALLET_URL": "http://wallet.test"}))


def read(client, answer: dict, expected="render"):
    expected = client.expect("win", CONTEXT) if expected == "render" else expected
    return client.read("win", 200, "application/json", json.dumps(answer).encode(), expected)[0]


@pytest.mark.parametrize(("case", "change", "why"), [
    ("another amount", lambda a: a["transaction"].update(amount=50000), "transaction.amount differs"),
    ("another player", lambda a: a["transaction"].update(user="p2"), "transaction.user differs"),
    ("another id", lambda a: a["transaction"].update(id="beta:w-1"), "transaction.id differs"),
    ("no transaction", lambda a: a.pop("transaction"), "transaction.id is missing"),
])
def test_already_done_needs_every_proof(client, case, change, why):
    assert read(client, DONE) == {"balance": 10500}
    answer = json.loads(json.dumps(DONE))
    change(answer)
    with pytest.raises(UpstreamError) as caught:
        read(client, answer)
    error = caught.value
    assert (error.code, error.status, error.applied, error.kind) == ("upstream_bad_response", 502, None, "unproven")
    assert error.message == (f"legacy answer ALREADY_PROCESSED says already done, but does not prove it was this "
                             f"transaction ({why}); outcome unknown")


def test_already_done_without_anything_expected_proves_nothing(client):
    with pytest.raises(UpstreamError, match=r"\(nothing to check\)"):
        read(client, DONE, expected=None)


def test_a_status_classified_unknown_is_an_unknown_outcome(client):
    answer = {"status": "UNKNOWN_ERROR", "user": "p1", "request_uuid": "rq-1"}
    with pytest.raises(UpstreamError) as caught:
        read(client, answer)
    assert (caught.value.code, caught.value.status, caught.value.applied, caught.value.kind) == \
        ("upstream_error", 502, None, "unknown")
    # The same status answered for another request is that request's: uncorrelated first.
    with pytest.raises(UpstreamError) as stale:
        read(client, {**answer, "request_uuid": "rq-other"})
    assert stale.value.kind == "uncorrelated"
    # A mapped refusal still says nothing was applied.
    with pytest.raises(IgspError) as refused:
        read(client, {**answer, "status": "NO_MONEY"})
    assert refused.value.code == "insufficient_funds" and not isinstance(refused.value, UpstreamError)


def test_unknown_outcomes_and_proofs_are_checked_at_load(tmp_path):
    text = MAPPING.replace("UNKNOWN_ERROR: {error: upstream_error, outcome: unknown}",
                           "UNKNOWN_ERROR: {error: upstream_error, outcome: unknown}\n"
                           "    LOCKED: {error: player_blocked, outcome: unknown}            # <- 4xx")
    text = text.replace('transaction.user: "{{ player_id }}"', 'transaction.user: "{{ player }}"    # <- var')
    text = text.replace('transaction.amount: "{{ legacy_amount }}"',
                        '"transaction.\'amount\'": "{{ legacy_amount }}"    # <- jmes')
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_mapping(path, {"OUTCOME_WALLET_URL": "http://wallet.test"})
    lines = text.splitlines()

    def at(marker: str) -> int:
        return next(i for i, line in enumerate(lines, 1) if line.rstrip().endswith(f"# <- {marker}"))

    found = [str(p).replace(str(path), "m.yaml").partition(" Hint: ")[0] for p in caught.value.problems]
    assert sorted(found) == sorted([
        f"m.yaml:{at('4xx')}: result.errors.LOCKED.outcome: an unknown outcome is retriable, but 'player_blocked' "
        "is a 409",
        f"m.yaml:{at('jmes')}: operations.win.result.success_codes[0].proves.transaction.'amount': JMESPath parse "
        "error at column 12 near 'amount': \"transaction.'amount'\"",
        f"m.yaml:{at('var')}: operations.win.result.success_codes[0].proves.transaction.user: 'player' is undefined",
    ])


def test_try_shows_whether_an_already_done_answer_is_proven(tmp_path):
    import subprocess
    import sys

    from tests.support import ROOT

    path = tmp_path / "outcome-wallet.yaml"
    path.write_text(MAPPING)
    hook = {**win("w-1", "5.00"), "amount": 5.00}
    for answer, verdict in ((DONE, "ALREADY_PROCESSED (already done) is proven to be this transaction"),
                            ({**DONE, "transaction": {**DONE["transaction"], "amount": 50000}},
                             "ALREADY_PROCESSED (already done) is NOT proven to be this transaction: the outcome "
                             "is unknown")):
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "try", str(path), "win", "--input", json.dumps(hook), "--partner", "acme",
             "--request-id", "rq-1", "--response", json.dumps(answer), "--env", "OUTCOME_WALLET_URL=http://w.test"],
            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, result.stderr
        assert f"           {verdict}" in result.stdout, result.stdout
    assert "proves:    transaction.amount = 50000, but this transaction's is 500" in result.stdout
    assert "==> iGSP error: HTTP 502 (retriable, money moved: unknown)" in result.stdout
