"""Steps that read the ledger: what ``validate`` says about ``ledger.NAME.FIELD``, ``keep`` and a
step's ``when``, and what an operation does when its declared read is empty.

The mapping under test is the shipped betref-wallet.yaml, broken one way at a time by text
replacement, so every message is checked against a file a user could have written.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.engine.mapping import load_mapping
from gateway.errors import ConfigError
from gateway.tools.simulators import betref_wallet, start_in_thread
from tests.conftest import ACME
from tests.support import ROOT, GatewayProcess, IgspClient
from tests.wallet_support import Simulator, assert_error, bet, win

SHIPPED = (ROOT / "mappings" / "betref-wallet.yaml").read_text()
ENV = {"BETREF_WALLET_URL": "http://wallet.test", "BETREF_API_TOKEN": "t"}


def problems(tmp_path, *replacements: tuple[str, str]) -> list:
    text = SHIPPED
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "betref-wallet.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_mapping(path, ENV)
    return [(p.line, p.path, p.message, p.hint or "", text.splitlines()[p.line - 1] if p.line else "")
            for p in caught.value.problems]


def test_the_shipped_mapping_is_valid():
    mapping = load_mapping(ROOT / "mappings" / "betref-wallet.yaml", ENV)
    assert set(mapping.operations["bet"].keep) == {"wallet_bet_id"}
    assert set(mapping.operations["win"].ledger) == {"round_bet"} and mapping.operations["win"].ledger["round_bet"] is None
    assert mapping.operations["refund"].ledger["bet"].code == "transaction_not_found"


def test_an_unknown_ledger_field_names_file_line_field_and_the_close_one(tmp_path):
    [(line, field, message, hint, text)] = problems(
        tmp_path, ('bet_id: "{{ ledger.bet.wallet_bet_id }}"', 'bet_id: "{{ ledger.bet.wallet_betid }}"'))
    assert (field, message) == ("operations.refund.body.bet_id", "'ledger.bet.wallet_betid' is undefined")
    assert "wallet_betid" in text
    assert hint.startswith("did you mean 'ledger.bet.wallet_bet_id'? ledger.bet has: amount, currency, ")
    assert "legacy_transaction_id" in hint and "first_win" not in hint  # first_win is a round_bet's only


def test_an_unknown_or_undeclared_ledger_name(tmp_path):
    found = problems(tmp_path, ('bet_id: "{{ ledger.bet.wallet_bet_id }}"', 'bet_id: "{{ ledger.bets.wallet_bet_id }}"'))
    assert [(f, m) for _, f, m, _, _ in found] == [("operations.refund.body.bet_id", "'ledger.bets' is undefined")]
    assert found[0][3] == "did you mean 'ledger.bet'? operation 'refund' can read: ledger.bet"
    found = problems(tmp_path, ("    ledger:\n      bet: {missing: transaction_not_found}       # never empty for a "
                                "refund: the gateway checked the bet\n", ""))
    assert [(f, m) for _, f, m, _, _ in found] == [("operations.refund.body.bet_id",
                                                    "'ledger.bet' is read but not declared")]
    assert "ledger: {bet: optional}" in found[0][3] and "{missing: ERROR}" in found[0][3]
    assert found[0][3].startswith("it is empty in no refund (the gateway refunds only a known, accepted bet), but ")
    found = problems(tmp_path, ("round_bet: optional", "round_bets: optional"))
    assert ("operations.win.ledger.round_bets", "operation 'win' cannot read ledger.round_bets") in [
        (f, m) for _, f, m, _, _ in found]


def test_keep_belongs_to_the_bet_and_ledger_reads_to_win_refund_rollback(tmp_path):
    found = problems(
        tmp_path,
        ("      wallet_bet_id: bet.id                       # what a win credits",
         "      amount: bet.amount                          # what a win credits"),
        ("        response: {bet_id: bet.id}\n", "        response: {bet_id: bet.id}\n        keep: {zero_bet: bet.id}\n"),
        ("    path: /wallet/balance\n", "    path: /wallet/balance\n    ledger: {bet: optional}\n"))
    messages = {(f, m) for _, f, m, _, _ in found}
    assert ("operations.bet.keep.amount", "'amount' is a ledger field already") in messages
    assert ("operations.win.steps[0].keep.zero_bet", "only the bet operation keeps values ('win' does not)") in messages
    assert ("operations.balance.ledger", "operation 'balance' reads nothing of the ledger") in messages
    # With nothing kept any more, the win's and refund's reads of wallet_bet_id are unknown fields.
    assert ("operations.refund.body.bet_id", "'ledger.bet.wallet_bet_id' is undefined") in messages


def test_when_is_not_on_the_last_step_and_does_not_depend_on_the_time(tmp_path):
    found = problems(
        tmp_path,
        ("        when: >-\n          {{ ledger.round_bet is none or ledger.round_bet.wallet_bet_id is none\n"
         "             or ledger.round_bet.first_win != transaction_id }}\n",
         "        when: \"{{ now_ms > 0 }}\"\n"),
        ("      - name: credit\n", "      - name: credit\n        when: \"{{ true }}\"\n"))
    messages = [(f, m) for _, f, m, _, _ in found]
    assert ("operations.win.steps[0].when", "step 'open' of win is not safe to rerun: whether it runs depends on the "
            "time (now/now_ms), so a rerun may take another path than the first run") in messages
    assert ("operations.win.steps[1].when", "the last step cannot be skipped: its answer is the operation's") in messages
    assert all(line for line, *_ in found)


def test_when_does_not_depend_on_the_request_id(tmp_path):
    """A rerun after a crash (the sweeper's, a provider's retry taking an orphan over) has
    another request_id: a when reading it may take another path than the first run."""
    found = problems(
        tmp_path,
        ("        when: >-\n          {{ ledger.round_bet is none",
         "        when: >-\n          {{ request_id[:1] == 'a' or ledger.round_bet is none"))
    assert [(f, m) for _, f, m, _, _ in found] == [(
        "operations.win.steps[0].when", "step 'open' of win is not safe to rerun: whether it runs depends on "
        "request_id, which a rerun after a crash does not share, so it may take another path")]


def test_a_bet_that_keeps_values_takes_already_done_only_with_proof(tmp_path):
    """An unproven DUPLICATE may answer another bet under the same tx: its bet.id, kept,
    would be what this bet's win credits and its refund cancels."""
    found = problems(tmp_path, ('''        - code: DUPLICATE
          proves: {bet.tx: "{{ partner }}:{{ transaction_id }}", bet.amount: "{{ legacy_amount }}"}''',
                                "        - DUPLICATE"))
    assert [(f, m) for _, f, m, _, _ in found] == [(
        "operations.bet.result.success_codes",
        "operation 'bet' keeps values of its answer (keep: wallet_bet_id) but takes DUPLICATE as success without "
        "proof: that answer may be another transaction's, and a later win or refund would use its values")]
    assert "proves" in found[0][3]


ROLLBACK_OP = SHIPPED[SHIPPED.index("  # The gateway's compensating rollback"):SHIPPED.index("queue:")]


def test_a_refund_that_is_also_the_rollback_must_not_name_the_bet_only_by_its_answer(tmp_path):
    """Without a rollback operation, refund is also the compensating rollback of a bet whose
    outcome was unknown, where the bet's answer values are none: a cancel naming the bet only
    by its kept id names no bet (run live, the wallet answers BET_NOT_FOUND to every attempt
    until the rollback is dead-lettered, while the provider is told the bet was rolled back
    and the debit stays)."""
    found = problems(tmp_path, (ROLLBACK_OP, ""))
    assert [(f, m) for _, f, m, _, _ in found] == [(
        "operations.refund.body.bet_id",
        "'ledger.bet.wallet_bet_id' is none when refund runs as the gateway's compensating rollback of a bet whose "
        "outcome was unknown (this mapping has no rollback operation): that call would name no bet to undo")]
    assert 'bet_id: "{{ ledger.bet.wallet_bet_id }}"' in found[0][4]
    assert "add a rollback operation" in found[0][3] and "bet_transaction_id" in found[0][3]
    # Sending the bet's own id too (the wallet finds the bet by it when bet_id is none) is valid.
    text = SHIPPED.replace(ROLLBACK_OP, "").replace(
        '      bet_id: "{{ ledger.bet.wallet_bet_id }}"\n',
        '      bet_id: "{{ ledger.bet.wallet_bet_id }}"\n      bet_tx: "{{ partner }}:{{ bet_transaction_id }}"\n')
    path = tmp_path / "with-bet-tx.yaml"
    path.write_text(text)
    assert "rollback" not in load_mapping(path, ENV).operations


def test_an_empty_read_declared_missing_fails_with_its_error_and_sends_nothing(tmp_path):
    """A wallet that cannot pay a win without its round's bet says so: the declared error,
    final, stored, and nothing sent to the wallet."""
    text = SHIPPED.replace("      round_bet: optional ",
                           "      round_bet: {missing: {error: bet_not_allowed, message: \"no bet in this round\"}} ")
    path = tmp_path / "strict-betref.yaml"
    path.write_text(text)
    server = start_in_thread(betref_wallet.make_app(betref_wallet.State()))
    wallet = Simulator(server)
    config = {"version": 1, "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_seconds": 0,
                                       "drain_seconds": 2},
              "store": {"url": f"sqlite:///{tmp_path}/strict.db"},
              "partners": [{"id": ACME["id"], "face": "platform", "mapping": str(path),
                            "api_key": ACME["api_key"], "secrets": [ACME["secret"]]}]}
    gateway = GatewayProcess(config, tmp_path, env={"BETREF_WALLET_URL": server.url, "BETREF_API_TOKEN": "t"}).start()
    try:
        acme = IgspClient(gateway.url, ACME["api_key"], ACME["secret"])
        wallet.player("p1", "100.00")
        body = assert_error(acme.hook(win("w-none", "2.00", round_id="r-none")), 400, "bet_not_allowed")
        assert body["message"] == "no bet in this round"
        assert wallet.calls("debit") == 0 and wallet.calls("credit") == 0
        assert_error(acme.hook(win("w-none", "2.00", round_id="r-none")), 400, "bet_not_allowed")  # stored
        # With the round's bet, the same mapping credits it.
        assert acme.hook(bet("tx-1", "1.00", round_id="r-1")).status_code == 200
        assert acme.hook(win("w-1", "2.00", round_id="r-1")).status_code == 200
        assert wallet.balance("p1") == Decimal("101.00") and wallet.calls("credit") == 1
    finally:
        gateway.stop()
        server.stop()


def run_try(*args: str) -> str:
    import subprocess
    import sys

    hook = ('{"action":"win","player_id":"p1","amount":5,"currency":"EUR","game_id":"g","transaction_id":"w-1",'
            '"session_id":"s-1","type":"win","round_id":"r-1"}')
    done = subprocess.run([sys.executable, "-m", "gateway", "try", str(ROOT / "mappings" / "betref-wallet.yaml"), "win",
                           "--input", hook, "--request-id", "rq", "--env", "BETREF_WALLET_URL=http://wallet.test",
                           "--env", "BETREF_API_TOKEN=t", *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_try_shows_the_ledger_reads_and_a_skipped_step():
    out = run_try("--ledger", '{"round_bet": {"wallet_bet_id": "B7", "first_win": "w-1"}}', "--response",
                  '{"status":"OK","ref":"rq","player":"p1","bet":{"id":"B7","tx":"try:w-1","amount":500},'
                  '"balance":10500}')
    assert 'ledger:    round_bet = {"wallet_bet_id": "B7", "first_win": "w-1"}' in out
    assert "--- step open skipped: its when is false (later steps read it as none)" in out
    assert '"bet_id":"B7","tx":"try:w-1","amount":500' in out
    assert out.rstrip().endswith('{"balance":105.00,"transaction_id":"try:w-1"}')
    assert "with the ledger reads of the first run" in out
    # Without --ledger the read is empty: the zero bet is opened first.
    out = run_try()
    assert "ledger:    round_bet = (empty)" in out and "POST http://wallet.test/wallet/debit" in out
    assert "(give a --response for step 1 to see the rest" in out


async def test_a_when_that_needs_a_missing_variable_is_the_mappings_problem(tmp_path):
    """Like a body field, a condition reading an optional hook field the call lacks sends
    nothing and is retriable (a win is queued), never a final refusal stored for a valid hook."""
    from gateway.errors import UpstreamError
    from gateway.outbound.legacy import LegacyClient

    text = SHIPPED.replace("        when: >-\n          {{ ledger.round_bet is none",
                           "        when: >-\n          {{ round_id == 'x' or ledger.round_bet is none")
    path = tmp_path / "betref-wallet.yaml"
    path.write_text(text)
    client = LegacyClient(load_mapping(path, ENV))
    context = {"request_id": "rq", "player_id": "p1", "partner": "acme", "transaction_id": "w-1",
               "session_id": "s-1", "currency": "EUR", "game_id": "g", "legacy_amount": 500,
               "ledger": {"round_bet": None}}
    try:
        with pytest.raises(UpstreamError) as caught:
            await client.call("win", context)
    finally:
        await client.close()
    assert (caught.value.code, caught.value.applied, caught.value.kind) == ("upstream_error", False, "mapping")
    assert caught.value.message == ("step 1/2 open: mapping betref-wallet cannot build the legacy win.open request: "
                                    "operations.win.steps[0].when: 'round_id' is undefined for this call; "
                                    "nothing was sent")
