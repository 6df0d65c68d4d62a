"""Declarative multi-step operations (``steps:``): several legacy calls for one iGSP
operation, each with its own request, response and result rules, later steps reading the
earlier ones' fields as ``steps.NAME.FIELD``; ``validate`` flags a step that is not safe to
rerun (a redelivery reruns every step from the first); ``try`` shows each step.

The wallet here is the shape the YAML format could not say before: a win must credit an
open bet, so it is two calls — open a zero bet for the round, then credit it — and every
outcome is HTTP 200 with a status. Both calls are deduplicated by the id the gateway sends,
and a repeated id is answered with what the wallet already has under it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
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
from tests.support import ROOT, IgspClient, decimal_json
from tests.wallet_support import assert_error, win

MAPPING = """\
version: 1
name: open-bet-wallet
face: platform
upstream:
  base_url: ${OPEN_BET_WALLET_URL}
  timeout: 0.5
  idempotent: true              # both calls are deduplicated by the ids sent
amounts: {unit: minor}
result:
  success: "status == 'OK'"
  code: status
  errors:
    NO_MONEY: insufficient_funds
    NO_SUCH_BET: transaction_not_found
    BUSY: upstream_unavailable    # refused before doing anything: retry
echo:
  request_uuid: "{{ request_id }}"
operations:
  balance:
    path: /balance
    body: {user: "{{ player_id }}", request_uuid: "{{ request_id }}"}
    response: {balance: balance}
  bet:
    path: /bets/place
    body:
      user: "{{ player_id }}"
      request_uuid: "{{ request_id }}"
      tx: "{{ partner }}:{{ transaction_id }}"
      amount: "{{ legacy_amount }}"
    response: {balance: balance}
  win:
    steps:
      - name: open                 # a zero bet for the credit to name
        path: /bets/open
        body:
          user: "{{ player_id }}"
          request_uuid: "{{ request_id }}"
          tx: "{{ partner }}:{{ transaction_id }}:open"
          round: "{{ round_id | default(transaction_id) }}"
        response: {bet_id: bet_id}
        result:
          success_codes:
            - code: ALREADY_OPEN
              proves: {tx: "{{ partner }}:{{ transaction_id }}:open"}
      - name: credit
        path: /bets/credit
        body:
          user: "{{ player_id }}"
          request_uuid: "{{ request_id }}"
          bet_id: "{{ steps.open.bet_id }}"
          tx: "{{ partner }}:{{ transaction_id }}"
          amount: "{{ legacy_amount }}"
        response: {balance: balance}
        result:
          success_codes:
            - code: ALREADY_SETTLED
              proves:
                tx: "{{ partner }}:{{ transaction_id }}"
                bet_id: "{{ steps.open.bet_id }}"
                amount: "{{ legacy_amount }}"
  refund:
    path: /bets/cancel
    body:
      user: "{{ player_id }}"
      request_uuid: "{{ request_id }}"
      tx: "{{ partner }}:{{ transaction_id }}"
      reference: "{{ partner }}:{{ bet_transaction_id }}"
    response: {balance: balance}
queue: {max_attempts: 3, backoff_initial: 0.2, backoff_max: 0.4}
"""


class OpenBetWallet:
    """Balances in cents. ``/bets/open`` opens a zero bet per ``tx`` (a repeat: ``ALREADY_OPEN``
    with that bet); ``/bets/credit`` credits an open bet once per ``tx`` (a repeat:
    ``ALREADY_SETTLED`` with the credit it has). ``habit(path, kind)`` for the next call:
    ``slow`` (applied, answered after the caller's timeout), ``busy`` (refused, nothing done) or
    ``ghost`` (opens nothing, answers a bet id)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.players: dict[str, int] = {}
        self.bets: dict[str, dict] = {}  # tx -> {bet_id, user}
        self.credits: dict[str, dict] = {}  # tx -> {bet_id, amount}
        self.calls: dict[str, int] = {}
        self.habits: dict[str, str] = {}
        app = web.Application()
        for path in ("/balance", "/bets/place", "/bets/open", "/bets/credit", "/bets/cancel"):
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
        reply = {"status": "OK", "request_uuid": body.get("request_uuid")}
        with self.lock:
            self.calls[path] = self.calls.get(path, 0) + 1
            habit = self.habits.pop(path, None)
            if habit == "busy":
                return {**reply, "status": "BUSY"}, None
            if habit == "ghost":  # a bet id it will not know later (its own bug)
                return {**reply, "bet_id": "b-ghost", "balance": self.players[user]}, None
            if path == "/bets/open":
                bet = self.bets.get(body["tx"])
                if bet is not None:
                    return {**reply, "status": "ALREADY_OPEN", "tx": body["tx"], "bet_id": bet["bet_id"]}, None
                bet = self.bets[body["tx"]] = {"bet_id": f"b-{len(self.bets) + 1}", "user": user}
                reply["bet_id"] = bet["bet_id"]
            elif path == "/bets/credit":
                done = self.credits.get(body["tx"])
                if done is not None:
                    return {**reply, "status": "ALREADY_SETTLED", "tx": body["tx"], **done,
                            "balance": self.players[user]}, None
                if not any(b["bet_id"] == body["bet_id"] and b["user"] == user for b in self.bets.values()):
                    return {**reply, "status": "NO_SUCH_BET"}, None
                self.players[user] += body["amount"]
                self.credits[body["tx"]] = {"bet_id": body["bet_id"], "amount": body["amount"]}
            reply["balance"] = self.players.get(user)
        return reply, habit

    async def handle(self, request: web.Request) -> web.Response:
        reply, habit = self.answer(request.path, await request.json())
        if habit == "slow":
            await asyncio.sleep(1.5)  # the wallet's habit: applied, answered after the caller gave up
        return web.json_response(reply)


@pytest.fixture
def wallet():
    server = OpenBetWallet()
    yield server
    server.server.stop()


def write(tmp_path, text: str = MAPPING):
    path = tmp_path / "open-bet-wallet.yaml"
    path.write_text(text)
    return path


CONTEXT = {"request_id": "rq-1", "player_id": "p1", "partner": "acme", "transaction_id": "w-1", "round_id": "r-1",
           "legacy_amount": 500}


# -- running the steps ------------------------------------------------------------------------------------

async def test_steps_run_in_order_each_reading_the_earlier_ones(tmp_path, wallet):
    wallet.player("p1", "100.00")
    client = LegacyClient(load_mapping(write(tmp_path), {"OPEN_BET_WALLET_URL": wallet.url}))
    try:
        reply = await client.call("win", CONTEXT)
        assert reply.fields == {"balance": 10500}
        assert wallet.credits == {"acme:w-1": {"bet_id": "b-1", "amount": 500}}
        # Run again (a redelivery): the same ids, so the wallet answers what it has; each
        # "already done" proves it is this win's, and nothing is paid twice.
        assert (await client.call("win", CONTEXT)).fields == {"balance": 10500}
        assert wallet.balance("p1") == Decimal("105.00") and wallet.calls["/bets/credit"] == 2
    finally:
        await client.close()


async def test_a_failing_step_is_named_and_keeps_what_the_money_says(tmp_path, wallet):
    wallet.player("p1", "100.00")
    client = LegacyClient(load_mapping(write(tmp_path), {"OPEN_BET_WALLET_URL": wallet.url}))
    try:
        # Step 2 refused before doing anything, but step 1 went through (it may move money):
        # the operation as a whole is no longer "certainly not applied".
        wallet.habit("/bets/credit", "busy")
        with pytest.raises(UpstreamError) as caught:
            await client.call("win", CONTEXT)
        assert (caught.value.code, caught.value.applied) == ("upstream_unavailable", None)
        assert caught.value.message.startswith("step 2/2 credit: legacy error BUSY")
        # Step 1 refused: nothing went through, certainly not applied.
        wallet.habit("/bets/open", "busy")
        with pytest.raises(UpstreamError) as first:
            await client.call("win", {**CONTEXT, "transaction_id": "w-2"})
        assert first.value.applied is False and first.value.message.startswith("step 1/2 open: ")
        # A step that moves no money keeps the next one's "not applied".
        text = MAPPING.replace("      - name: open                 # a zero bet for the credit to name\n",
                               "      - name: open\n        moves_money: false\n")
        lenient = LegacyClient(load_mapping(write(tmp_path, text), {"OPEN_BET_WALLET_URL": wallet.url}))
        wallet.habit("/bets/credit", "busy")
        with pytest.raises(UpstreamError) as kept:
            await lenient.call("win", {**CONTEXT, "transaction_id": "w-3"})
        assert kept.value.applied is False
        await lenient.close()
        # A step's business refusal is the operation's: final (not an UpstreamError), named.
        wallet.habit("/bets/open", "ghost")
        with pytest.raises(IgspError) as refused:
            await client.call("win", {**CONTEXT, "transaction_id": "w-4"})
        assert not isinstance(refused.value, UpstreamError)
        assert (refused.value.code, refused.value.status) == ("transaction_not_found", 404)
        assert refused.value.message == "step 2/2 credit: legacy error NO_SUCH_BET"
    finally:
        await client.close()


def test_a_redelivery_reruns_every_step_and_settles_a_lost_credit_once(gateway_factory, wallet, tmp_path):
    """The failure the issue saw: a credit committed but answered late, redelivered from the
    queue. The rerun opens nothing new (same id: ALREADY_OPEN, proven) and takes the wallet's
    ALREADY_SETTLED only because it names this win's id, bet and amount: paid once."""
    wallet.player("p1", "100.00")
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db")
    for partner in config["partners"]:
        partner["mapping"] = str(write(tmp_path))
    gateway = gateway_factory(config, env={"OPEN_BET_WALLET_URL": wallet.url})
    client = IgspClient(gateway.url, ACME["api_key"], ACME["secret"])
    wallet.habit("/bets/credit", "slow")
    assert_error(client.hook(win("w-late", "5.00")), 504, "upstream_timeout")
    assert wallet.balance("p1") == Decimal("105.00")
    answer = wait_for(lambda: (r := client.hook(win("w-late", "5.00"))).status_code == 200 and r,
                      interval=0.2, what="the redelivered win settled")
    assert decimal_json(answer)["balance"] == Decimal("105.00")
    assert wallet.balance("p1") == Decimal("105.00") and len(wallet.bets) == 1 and len(wallet.credits) == 1
    assert wallet.calls["/bets/open"] == 2 and wallet.calls["/bets/credit"] == 2


# -- validate: steps that are not safe to rerun ----------------------------------------------------------

UNSAFE = MAPPING.replace(
    '''          tx: "{{ partner }}:{{ transaction_id }}:open"
          round: "{{ round_id | default(transaction_id) }}"''',
    '''          round: "{{ round_id | default('none') }}"''').replace(
    '''          bet_id: "{{ steps.open.bet_id }}"
          tx: "{{ partner }}:{{ transaction_id }}"''',
    '''          bet_id: "{{ steps.open.bet_idd }}"              # <- field
          ref: "{{ steps.credit.tx }}"                    # <- later
          tx: "{{ partner }}:{{ transaction_id }}"''').replace(
    '''        response: {balance: balance}
        result:
          success_codes:
            - code: ALREADY_SETTLED''',
    '''        response: {balance: balance}
        result:
          success_codes:
            - DUPLICATE                                   # <- plain
            - code: ALREADY_SETTLED''').replace("queue: {", '''\
  rollback:
    steps:
      - name: token
        moves_money: false                                # nothing to dedupe: fine
        path: /token
        body: {user: "{{ player_id }}"}
        response: {token: token}
      - name: cancel                                      # <- no-id
        path: /bets/cancel
        body: {token: "{{ steps.token.token }}", amount: "{{ legacy_amount }}"}
        response: {balance: balance}
    path: /not-here                                       # <- path
queue: {''')


def line_of(text: str, marker: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.rstrip().endswith(f"# <- {marker}"))


def test_validate_flags_steps_not_safe_to_rerun_and_unknown_step_fields(tmp_path):
    path = write(tmp_path, UNSAFE)
    result = subprocess.run([sys.executable, "-m", "gateway", "validate", str(path)], capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                             "OPEN_BET_WALLET_URL": "http://127.0.0.1:9"})
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    step_line = next(i for i, line in enumerate(UNSAFE.splitlines(), 1) if line.strip().startswith("- name: open"))
    credit_result = next(i for i, line in enumerate(UNSAFE.splitlines(), 1)
                         if i > line_of(UNSAFE, "field") and line.strip() == "success_codes:")
    expected = [
        (step_line, "operations.win.steps[0]", "step 'open' of win is not safe to rerun: it sends nothing the wallet "
                                               "can dedupe it by (transaction_id)"),
        (line_of(UNSAFE, "field"), "operations.win.steps[1].body.bet_id", "'steps.open.bet_idd' is undefined"),
        (line_of(UNSAFE, "later"), "operations.win.steps[1].body.ref", "'steps.credit' is undefined"),
        (credit_result, "operations.win.steps[1].result.success_codes",
         "step 'credit' of win takes DUPLICATE as success without proof"),
        (line_of(UNSAFE, "no-id"), "operations.rollback.steps[1]",
         "step 'cancel' of rollback is not safe to rerun: it sends nothing the wallet can dedupe it by "
         "(transaction_id or bet_transaction_id)"),
        (line_of(UNSAFE, "path"), "operations.rollback.path", "an operation with steps says 'path' in each step"),
    ]
    for line, field, message in expected:
        prefix = f"{path}:{line}: {field}: {message}"
        assert any(found.startswith(prefix) for found in lines), f"no line starting {prefix!r}\n{result.stderr}"
    assert lines[-1] == f"{len(expected)} problem(s) found", result.stderr
    hints = {found.partition(": ")[2].partition(": ")[0]: found.partition(" Hint: ")[2] for found in lines}
    assert "did you mean 'steps.open.bet_id'?" in hints["operations.win.steps[1].body.bet_id"]
    assert "the steps before this one: open (bet_id)" in hints["operations.win.steps[1].body.ref"]
    assert "reruns every step from the first" in hints["operations.win.steps[0]"]


def test_a_volatile_id_is_not_safe_to_rerun(tmp_path):
    text = MAPPING.replace('tx: "{{ partner }}:{{ transaction_id }}:open"',
                           'tx: "{{ partner }}:{{ transaction_id }}:{{ now_ms }}"')
    with pytest.raises(ConfigError) as caught:
        load_mapping(write(tmp_path, text), {"OPEN_BET_WALLET_URL": "http://wallet.test"})
    assert [p.message for p in caught.value.problems] == [
        "step 'open' of win is not safe to rerun: its transaction id changes on every run (it reads now/now_ms)"]


@pytest.mark.parametrize(("old", "new", "problem"), [
    ('transaction_id: "{{ partner }}:{{ transaction_id }}"', 'transaction_id: "{{ transaction_id }}-{{ now_ms }}"',
     "its transaction id changes on every run (it reads now/now_ms)"),
    ('transaction_id: "{{ partner }}:{{ transaction_id }}"\n      round_id: "{{ round_id | default(transaction_id) }}"',
     'transaction_id: "{{ request_id }}"\n      round_id: "{{ round_id | default(request_id) }}"',
     "it sends nothing the wallet can dedupe it by (transaction_id)"),
])
def test_a_one_call_win_the_wallet_could_not_dedupe_is_refused_when_lost_answers_are_sent_again(tmp_path, old, new,
                                                                                                problem):
    """upstream.idempotent: true sends a win whose answer was lost again (the queue's
    redelivery): with an id that changes on every run, or none, the wallet takes the resend
    for a new win and pays it twice. validate says so, as it does for a step."""
    text = (ROOT / "mappings" / "hmacsha1-wallet.yaml").read_text()
    at = text.index("\n  win:\n")
    assert old in text[at:]
    text = text[:at] + text[at:].replace(old, new, 1)
    path = tmp_path / "w.yaml"
    path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "gateway", "validate", str(path)], capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                             "HMACSHA1_WALLET_URL": "http://127.0.0.1:9",
                                             "HMACSHA1_WALLET_KEY": "merchant-key-0123456789",
                                             "HMACSHA1_WALLET_MERCHANT_ID": "m-1"})
    assert result.returncode == 1, result.stdout + result.stderr
    line = text.count("\n", 0, at) + 2
    assert result.stderr.startswith(f"{path}:{line}: operations.win: operation 'win' is not safe to send again: "
                                    f"{problem}"), result.stderr
    assert "upstream.idempotent: false" in result.stderr and result.stderr.splitlines()[-1] == "1 problem(s) found"
    # The shipped file, and the same file saying its wallet does not dedupe, are valid.
    path.write_text(text.replace("  idempotent: true", "  idempotent: false"))
    assert subprocess.run([sys.executable, "-m", "gateway", "validate", str(path)], capture_output=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HMACSHA1_WALLET_URL": "http://x",
                               "HMACSHA1_WALLET_KEY": "merchant-key-0123456789",
                               "HMACSHA1_WALLET_MERCHANT_ID": "m-1"}).returncode == 0


def test_an_id_built_from_the_request_id_is_not_safe_to_rerun(tmp_path):
    """A rerun after a crash has another request_id (the sweeper settles an orphan as
    "sweeper", a provider's retry that takes it over with its own): a zero bet whose id
    reads it is opened anew on that rerun and credited again — paid twice (a crash between
    the win's store writes showed it, tests/test_crash_points_ledger_reads.py with such an
    id). Nor may a step's when depend on it."""
    text = MAPPING.replace('tx: "{{ partner }}:{{ transaction_id }}:open"',
                           'tx: "{{ partner }}:{{ transaction_id }}:{{ request_id }}"')
    with pytest.raises(ConfigError) as caught:
        load_mapping(write(tmp_path, text), {"OPEN_BET_WALLET_URL": "http://wallet.test"})
    assert [p.message for p in caught.value.problems] == [
        "step 'open' of win is not safe to rerun: its transaction id changes between runs (it reads request_id, "
        "which a rerun after a crash, by the sweeper or a provider's retry, does not share)"]
    # Sent beside the id, as a request reference, it is fine (echo checks read it so).
    assert "request_uuid: \"{{ request_id }}\"" in MAPPING
    load_mapping(write(tmp_path, MAPPING), {"OPEN_BET_WALLET_URL": "http://wallet.test"})


def test_an_operation_needs_path_or_steps(tmp_path):
    text = MAPPING.replace("    path: /bets/cancel\n", "")
    with pytest.raises(ConfigError) as caught:
        load_mapping(write(tmp_path, text), {"OPEN_BET_WALLET_URL": "http://wallet.test"})
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("operations.refund", "give 'path' (one legacy call) or 'steps' (several, in order)")]


# -- try: each step ------------------------------------------------------------------------------------------

def run_try(tmp_path, *responses: dict) -> subprocess.CompletedProcess:
    hook = {**win("w-1", "5.00"), "amount": 5.00}
    args = [sys.executable, "-m", "gateway", "try", str(write(tmp_path)), "win", "--input", json.dumps(hook),
            "--partner", "acme", "--request-id", "rq-1", "--env", "OPEN_BET_WALLET_URL=http://w.test"]
    for response in responses:
        args += ["--response", json.dumps(response)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def test_try_shows_each_step(tmp_path):
    opened = {"status": "OK", "request_uuid": "rq-1", "bet_id": "b-7", "balance": 10000}
    credited = {"status": "OK", "request_uuid": "rq-1", "balance": 10500}
    out = run_try(tmp_path, opened, credited).stdout
    assert "=== step 1/2: open\n" in out and "=== step 2/2: credit\n" in out
    assert '"tx":"acme:w-1:open"' in out
    assert '"bet_id":"b-7","tx":"acme:w-1","amount":500' in out  # step 2 reads step 1's answer
    assert "--- step open succeeded" in out and "--- step credit succeeded" in out
    assert "A redelivery (queue, or a retry after a timeout) runs every step again from step 1." in out
    assert '==> iGSP answer: HTTP 200\n{"balance":105.00,"transaction_id":' in out

    # One answer: step 2's request is shown, and what is missing to go on.
    out = run_try(tmp_path, opened).stdout
    assert "(give a --response for step 2 to see the rest: one per step, in order)" in out
    assert "==> iGSP" not in out

    # A step that fails: the operation's error, named, with whether money may have moved.
    out = run_try(tmp_path, opened, {**credited, "status": "BUSY"}).stdout
    assert "--- step credit failed: HTTP 503 upstream_unavailable" in out
    assert "==> iGSP error: HTTP 503 (retriable, money moved: unknown)" in out
    assert "step 2/2 credit: legacy error BUSY" in out

    result = run_try(tmp_path, opened, credited, credited)
    assert result.returncode == 2 and "3 --response given, but win makes 2 legacy call(s)" in result.stderr
