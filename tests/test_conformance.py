"""The conformance kit certifies correct iGSP endpoints and names exactly what a broken one breaks.

Positive controls: the gateway's platform face (a real gateway process in front of the
non-idempotent Hub88-style wallet simulator), the bundled iGSP platform simulator, and
correct fake servers. Negative controls: the same fakes with one law broken at a time.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import xml.etree.ElementTree as ET
from decimal import Decimal

import pytest

from gateway.spec import HOOKS_SPEC, PROVIDER_SPEC, SpecValidators
from gateway.tools.conformance import checks_platform, checks_provider
from gateway.tools.conformance.client import SignedClient
from gateway.tools.conformance.runner import FAIL, MONEY_SKIP_REASON, PASS, SKIP, RunOptions, run_checks
from gateway.tools.demo.stack import DemoStack, provider_face_available
from gateway.tools.simulators import igsp_platform, start_in_thread
from tests.conftest import ACME, platform_config
from tests.igsp_fakes import platform_app, provider_app
from tests.support import ROOT

KEY, SECRET = "kit-key-0001", "kit-secret-0123456789abcdef"
HOOKS = "/platforms/game-provider/hooks"
SIGNATURE_CHECKS = {"signature.missing_credentials", "signature.unknown_key", "signature.flipped_body_byte",
                    "signature.flipped_signature", "signature.stale_timestamp"}
#: the laws of retries and refunds (issue 15): each is shown to pass and to fail below
RETRY_AND_REFUND_CHECKS = {"wallet.balance_same_second", "wallet.bet_identical_retry",
                           "wallet.bet_identical_concurrent", "wallet.refund_before_bet",
                           "wallet.refund_other_player", "wallet.refund_mismatch", "wallet.bet_refund_race"}


def run_platform_kit(url, api_key=KEY, secret=SECRET, allow_money=True, only=(), **target) -> dict:
    target = {"player_id": "p1", **target}

    async def go():
        async with SignedClient(url, api_key, secret, SpecValidators(HOOKS_SPEC)) as client:
            ctx = checks_platform.PlatformContext(checks_platform.PlatformTarget(url, api_key, secret, **target), client)
            return await run_checks(checks_platform.CHECKS, ctx, RunOptions(allow_money=allow_money, select=only))

    return {r.check.id: r for r in asyncio.run(go())}


def run_provider_kit(url, api_key=KEY, secret=SECRET, **target) -> dict:
    async def go():
        async with SignedClient(url, api_key, secret, SpecValidators(PROVIDER_SPEC)) as client:
            ctx = checks_provider.ProviderContext(checks_provider.ProviderTarget(url, api_key, secret, **target), client)
            return await run_checks(checks_provider.CHECKS, ctx)

    return {r.check.id: r for r in asyncio.run(go())}


def failing(results: dict) -> set:
    return {cid for cid, r in results.items() if r.outcome == FAIL}


def assert_all_pass(results: dict) -> None:
    bad = {cid: f"{r.outcome}: {r.reason}" for cid, r in results.items() if r.outcome != PASS}
    assert not bad, bad


@pytest.fixture
def serve():
    servers = []

    def _serve(app):
        servers.append(start_in_thread(app))
        return servers[-1].url

    yield _serve
    for server in servers:
        server.stop()


# -- positive controls ---------------------------------------------------------------------------------

def test_platform_kit_passes_against_the_gateway_platform_face(hub88, gateway_factory, store_url):
    gateway = gateway_factory(platform_config(store_url))
    hub88.player("p-conf", "100.00")
    hub88.player("q-conf", "50.00")
    results = run_platform_kit(gateway.url + HOOKS, ACME["api_key"], ACME["secret"], player_id="p-conf",
                               other_player_id="q-conf", game_id="vs20olympgate")
    assert_all_pass(results)
    assert RETRY_AND_REFUND_CHECKS <= set(results)
    # The wallet behind the gateway debits every copy it receives: one debit per bet despite the
    # retried, byte-identical and concurrent copies the kit sent. A, B and the win stay; C, D, E, F
    # and G are refunded; the late bet never reached the wallet; each raced bet that got through
    # was rolled back by its refund.
    assert hub88.balance("p-conf") == Decimal("100.00") and hub88.balance("q-conf") == Decimal("50.00")
    bets, rollbacks = len(hub88.ledger("bet")), len(hub88.ledger("rollback"))
    raced = bets - 7
    assert 0 <= raced <= checks_platform.RACE_PAIRS and rollbacks == 5 + raced, (bets, rollbacks)
    assert len(hub88.ledger("win")) == 1


def test_platform_kit_passes_against_the_hmacsha1_wallet_mapping(store_url, tmp_path):
    """The shipped HMAC-SHA1 mapping, in front of its simulator (every call signed with a fresh
    nonce, which the wallet refuses to see twice): the kit passes, and money adds up."""
    from gateway.tools.simulators import hmacsha1_wallet
    from tests.support import GatewayProcess
    from tests.wallet_support import Simulator

    key, merchant = "conf-merchant-key-0123", "conf-merchant"
    wallet = start_in_thread(hmacsha1_wallet.make_app(hmacsha1_wallet.State(), key=key, merchant_id=merchant))
    config = platform_config(store_url)
    config["partners"] = [{**config["partners"][0], "mapping": str(ROOT / "mappings" / "hmacsha1-wallet.yaml")}]
    gateway = GatewayProcess(config, tmp_path, env={"HMACSHA1_WALLET_URL": wallet.url, "HMACSHA1_WALLET_KEY": key,
                                                    "HMACSHA1_WALLET_MERCHANT_ID": merchant}).start()
    try:
        sim = Simulator(wallet)
        sim.player("p-conf", "100.00")
        sim.player("q-conf", "50.00")
        results = run_platform_kit(gateway.url + HOOKS, ACME["api_key"], ACME["secret"], player_id="p-conf",
                                   other_player_id="q-conf", game_id="vs20olympgate")
        assert_all_pass(results)
        assert RETRY_AND_REFUND_CHECKS <= set(results)
        assert sim.balance("p-conf") == Decimal("100.00") and sim.balance("q-conf") == Decimal("50.00")
        state = sim.state()
        assert state["refusals"] == {} and len(state["nonces"]) == sum(state["calls"].values())
        assert len(sim.ledger("win")) == 1
    finally:
        gateway.stop()
        wallet.stop()


def test_platform_kit_without_the_money_flag_moves_nothing(hub88, platform_gateway):
    hub88.player("p-conf", "100.00")
    results = run_platform_kit(platform_gateway.url + HOOKS, ACME["api_key"], ACME["secret"], allow_money=False,
                               player_id="p-conf")
    skipped = {cid for cid, r in results.items() if r.outcome == SKIP}
    assert skipped == {cid for cid in results if cid.startswith("wallet.")} - {
        "wallet.balance", "wallet.balance_same_second", "wallet.balances_add_up"}
    assert all(results[cid].reason == MONEY_SKIP_REASON for cid in skipped)
    assert not failing(results)
    assert hub88.ledger() == [] and hub88.state()["calls"].get("bet", 0) == 0


def test_platform_kit_passes_against_the_igsp_platform_simulator(serve):
    url = serve(igsp_platform.make_app(api_key=KEY, secret=SECRET))
    import requests

    for player in ("p1", "p2"):
        requests.post(f"{url}/_control/players", json={"player_id": player, "balance": "50.00", "currency": "EUR"},
                      timeout=5).raise_for_status()
    results = run_platform_kit(url + HOOKS, other_player_id="p2")
    assert_all_pass(results)
    ledger = requests.get(f"{url}/_control/state", timeout=5).json()["ledger"]
    assert sum(Decimal(e["amount"]) for e in ledger) == 0 and all(e["player"] == "p1" for e in ledger)
    # Bets A-G, refunds of C-G and the win; each raced pair moved twice or not at all.
    raced = len(ledger) - 13
    assert raced % 2 == 0 and 0 <= raced // 2 <= checks_platform.RACE_PAIRS


def test_platform_kit_passes_against_a_correct_fake_in_jpy(serve):
    url = serve(platform_app(KEY, SECRET, players={"p1": "1000", "p2": "0"}))
    assert_all_pass(run_platform_kit(url + HOOKS, currency="JPY", amount=Decimal("100"), other_player_id="p2"))


@pytest.mark.skipif(not provider_face_available(), reason="the provider face is not on this branch")
def test_provider_kit_passes_against_the_gateway_provider_face(store_url, tmp_path):
    stack = DemoStack(store_url=store_url).start()
    try:
        partner = stack.platform_partner
        results = run_provider_kit(stack.provider_base_url, partner.api_key, partner.secret)
        assert not failing(results), {cid: r.reason for cid, r in results.items() if r.outcome == FAIL}
        # The Pragmatic-style mapping describes one studio: there is nothing to page through.
        assert {cid: r.reason for cid, r in results.items() if r.outcome == SKIP} == {
            "pagination.providers_walk": "GET /providers has 1 item(s): nothing to page through"}
        assert stack.gateway_running()
    finally:
        stack.stop()


def test_provider_kit_passes_against_a_correct_fake(serve):
    url = serve(provider_app(KEY, SECRET)) + "/igsp/v1"
    assert_all_pass(run_provider_kit(url))


# -- negative controls ---------------------------------------------------------------------------------

def test_platform_kit_names_a_signature_check_that_accepts_anything(serve):
    url = serve(platform_app(KEY, SECRET, broken=frozenset({"signature"})))
    results = run_platform_kit(url + HOOKS)
    assert failing(results) == SIGNATURE_CHECKS
    assert results["signature.flipped_body_byte"].reason.startswith(
        "a body with one byte flipped after signing was accepted: got HTTP 200 {\"balance\":")
    assert results["signature.flipped_body_byte"].reason.endswith("want HTTP 403")
    assert "X-Timestamp is 10 minutes old was accepted" in results["signature.stale_timestamp"].reason
    assert "want HTTP 401" in results["signature.unknown_key"].reason


def test_platform_kit_names_a_double_debiting_wallet(serve):
    url = serve(platform_app(KEY, SECRET, broken=frozenset({"double_debit"})))
    results = run_platform_kit(url + HOOKS)
    assert failing(results) == {"wallet.bet_duplicate", "wallet.bet_identical_retry",
                                "wallet.bet_concurrent_duplicates", "wallet.bet_identical_concurrent",
                                "wallet.bet_conflict", "wallet.balances_add_up"}
    assert results["wallet.bet_duplicate"].reason == (
        "the retried bet (same transaction_id) got another balance: 98.00, the first answer had 99.00 "
        "(a retry must get the original outcome)")
    assert results["wallet.bet_identical_retry"].reason == (
        "the bet sent again byte for byte (same body, X-Timestamp and X-Signature) got another balance: 96.00, the "
        f"first answer had 97.00 (a retry must get the original outcome) — {checks_platform.SAME_ANSWER}")
    assert results["wallet.bet_identical_concurrent"].reason.startswith(
        "a byte-identical concurrent copy of the bet got another balance: ")
    assert results["wallet.bet_conflict"].reason.startswith(
        "the bet's transaction_id reused with another amount was accepted: got HTTP 200")
    # Without --other-player-id that one law cannot be checked, and says so.
    assert results["wallet.refund_other_player"].outcome == SKIP
    assert results["wallet.refund_other_player"].reason == "needs a second test player of the wallet (--other-player-id)"
    # The run's own accounting shows the damage: one extra debit for each of the two retries,
    # four for the concurrent copies, fifteen for the byte-identical ones, and the conflicting
    # bet of 2.00; a conforming wallet would have kept bets A, B, D and E and paid the win of 2.00.
    assert results["wallet.balances_add_up"].reason.endswith("but the accepted transactions add up to -2.00 EUR")
    assert "the balance went from 100.00 to 75.00 (-25.00)" in results["wallet.balances_add_up"].reason


def test_platform_kit_names_a_wallet_that_refuses_identical_copies_as_replays(serve):
    url = serve(platform_app(KEY, SECRET, broken=frozenset({"replay_refusal"}), players={"p1": "100.00", "q": "0"}))
    results = run_platform_kit(url + HOOKS, other_player_id="q")
    assert failing(results) == {"wallet.balance_same_second", "wallet.bet_identical_retry",
                                "wallet.bet_identical_concurrent"}
    refused = 'got HTTP 403 {"error": "invalid_signature", "message": "this signature was used before", "status": 403}'
    assert results["wallet.balance_same_second"].reason == (
        "the same balance request again (same bytes, same X-Timestamp, so the same X-Signature): "
        f"{refused}, want HTTP 200 — {checks_platform.SAME_SECOND}")
    assert results["wallet.bet_identical_retry"].reason.startswith(
        f"the bet sent again byte for byte (same body, X-Timestamp and X-Signature): {refused}, the first answer was "
        "HTTP 200 ")
    assert results["wallet.bet_identical_concurrent"].reason.startswith(
        f"15 of {checks_platform.IDENTICAL_COPIES} byte-identical copies of one bet sent at once were refused: HTTP 403")
    for cid in ("wallet.bet_identical_retry", "wallet.bet_identical_concurrent"):
        assert results[cid].reason.endswith("a 4xx (such as a 403 'replay') on that retry is fatal in iGSP: the "
                                            "provider gives up on a bet the wallet debited")
    # Re-signed retries are still answered: only the byte-identical ones are refused.
    assert results["wallet.bet_duplicate"].outcome == PASS


def test_platform_kit_names_a_wallet_that_takes_a_bet_after_its_refund(serve):
    url = serve(platform_app(KEY, SECRET, broken=frozenset({"no_tombstone"})))
    results = run_platform_kit(url + HOOKS, only=("wallet.balance", "wallet.refund_before_bet",
                                                  "wallet.balances_add_up"))
    assert failing(results) == {"wallet.refund_before_bet", "wallet.balances_add_up"}
    assert results["wallet.refund_before_bet"].reason.startswith(
        'the bet arriving after its refund was answered 404 was accepted: got HTTP 200 {"balance":99.00,')
    assert results["wallet.refund_before_bet"].reason.endswith(f"want HTTP 4xx — {checks_platform.LATE_BET}")


@pytest.mark.parametrize("broken", [(), ("no_tombstone",)])
def test_the_race_check_tells_a_refused_late_bet_from_a_lost_stake(serve, broken):
    # Every bet is held until its refund was answered: each pair races and the refund wins.
    url = serve(platform_app(KEY, SECRET, broken=frozenset({"refund_overtakes", *broken})))
    results = run_platform_kit(url + HOOKS, only=("wallet.balance", "wallet.bet_refund_race",
                                                  "wallet.balances_add_up"))
    if not broken:  # (refund 404, bet 409) every time: legal
        assert_all_pass(results)
        return
    assert failing(results) == {"wallet.bet_refund_race", "wallet.balances_add_up"}
    reason = results["wallet.bet_refund_race"].reason
    pairs = checks_platform.RACE_PAIRS
    assert reason.startswith(f"{pairs} of {pairs} bets sent together with their refunds ended otherwise than "
                             "(bet 200, refund 200) or (refund 404, bet 4xx): pair 1: bet HTTP 200 ")
    assert reason.count("refund HTTP 404") == pairs and reason.endswith(checks_platform.RACE)
    assert "the balance went from 100.00 to 96.00 (-4.00)" in results["wallet.balances_add_up"].reason


def test_platform_kit_names_a_wallet_that_refunds_whatever_a_refund_says(serve):
    url = serve(platform_app(KEY, SECRET, broken=frozenset({"refund_any"}), players={"p1": "100.00", "q": "50.00"}))
    results = run_platform_kit(url + HOOKS, other_player_id="q")
    assert failing(results) == {"wallet.refund_other_player", "wallet.refund_mismatch", "wallet.balances_add_up"}
    assert results["wallet.refund_other_player"].reason.startswith(
        'a refund by player \'q\' naming a bet of \'p1\' was accepted: got HTTP 200 {"balance":51.00,')
    assert results["wallet.refund_other_player"].reason.endswith(f"want HTTP 4xx — {checks_platform.OTHER_PLAYER}")
    assert results["wallet.refund_mismatch"].reason.startswith(
        "a refund of 2.00 naming a bet of 1.00 was accepted: got HTTP 200")
    assert results["wallet.refund_mismatch"].reason.endswith(checks_platform.MISMATCH)


def test_the_gateway_in_strict_mode_fails_only_the_same_second_balance(hub88, gateway_factory, tmp_path):
    """Strict mode (replay_protection) accepts a balance signature once, by design; money retries still pass."""
    gateway = gateway_factory(platform_config(f"sqlite:///{tmp_path}/strict.db",
                                              security={"replay_protection": True}))
    hub88.player("p-conf", "100.00")
    results = run_platform_kit(gateway.url + HOOKS, ACME["api_key"], ACME["secret"], player_id="p-conf",
                               only=("wallet.balance", "wallet.balance_same_second", "wallet.bet",
                                     "wallet.bet_identical_*"))
    assert failing(results) == {"wallet.balance_same_second"}
    assert results["wallet.balance_same_second"].reason.startswith(
        "the same balance request again (same bytes, same X-Timestamp, so the same X-Signature): got HTTP 403 ")
    assert results["wallet.bet_identical_retry"].outcome == PASS
    assert results["wallet.bet_identical_concurrent"].outcome == PASS


def test_provider_kit_names_a_signature_check_that_accepts_anything(serve):
    url = serve(provider_app(KEY, SECRET, broken=frozenset({"signature"}))) + "/igsp/v1"
    results = run_provider_kit(url)
    assert failing(results) == SIGNATURE_CHECKS
    assert results["signature.flipped_signature"].reason.startswith(
        "GET /games with one hex digit of the signature changed was accepted: got HTTP 200")


@pytest.mark.parametrize(("broken", "words"), [("pagination_duplicates", "came twice"),
                                                ("pagination_gaps", "never came (gaps)")])
def test_provider_kit_names_broken_pagination(serve, broken, words):
    url = serve(provider_app(KEY, SECRET, broken=frozenset({broken}))) + "/igsp/v1"
    results = run_provider_kit(url)
    assert failing(results) == {"pagination.games_walk", "pagination.providers_walk"}
    assert results["pagination.games_walk"].reason.startswith("paging GET /games with limit=5: ")
    assert results["pagination.providers_walk"].reason.startswith(
        "paging GET /providers with limit=2: ")
    assert words in results["pagination.games_walk"].reason


# -- the command line ----------------------------------------------------------------------------------

def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "conformance", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_cli_prints_the_table_and_writes_junit(serve, tmp_path):
    url = serve(provider_app(KEY, SECRET, broken=frozenset({"pagination_gaps"}))) + "/igsp/v1"
    junit = tmp_path / "conformance.xml"
    done = _cli("provider", "--url", url, "--api-key", KEY, "--secret", SECRET, "--junit", str(junit))
    assert done.returncode == 1, done.stderr
    assert "FAIL    pagination.games_walk" in done.stdout and "PASS    signature.valid" in done.stdout
    assert "DOES NOT CONFORM — 14 passed, 2 failed, 0 skipped" in done.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("name") == "igsp-conformance.provider"
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("16", "2", "0")
    failed = {case.get("name"): case.find("failure").get("message") for case in suite.iter("testcase")
              if case.find("failure") is not None}
    assert set(failed) == {"pagination.games_walk", "pagination.providers_walk"}
    assert "never came (gaps)" in failed["pagination.games_walk"]


def test_cli_skips_money_checks_without_the_flag_and_exits_0(serve, tmp_path):
    url = serve(platform_app(KEY, SECRET)) + HOOKS
    junit = tmp_path / "platform.xml"
    done = _cli("platform", "--url", url, "--api-key", KEY, "--secret", SECRET, "--player-id", "p1",
                "--junit", str(junit))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Wallet checks that move money are SKIPPED" in done.stdout
    assert f"SKIP    wallet.bet                        {MONEY_SKIP_REASON}" in done.stdout
    skipped = [c for c in ET.parse(junit).getroot().iter("testcase") if c.find("skipped") is not None]
    assert len(skipped) == 16 and skipped[0].find("skipped").get("message") == MONEY_SKIP_REASON


def test_cli_refuses_incomplete_options():
    done = _cli("platform", "--url", "http://127.0.0.1:9/hooks", "--api-key", KEY, "--secret", SECRET)
    assert done.returncode == 2 and "missing: --player-id" in done.stderr


def test_unreachable_target_fails_every_check_with_the_reason():
    results = run_platform_kit("http://127.0.0.1:9" + HOOKS, allow_money=False)
    assert results["signature.valid"].outcome == FAIL
    assert "no answer (ClientConnectorError" in results["signature.valid"].reason


def test_platform_kit_passes_against_the_betref_wallet_mapping(tmp_path):
    """mappings/betref-wallet.yaml (a credit names an open bet; HTTP 200 + status) behind a real
    gateway: every law holds, and the wallet's own money adds up to what iGSP was told."""
    from gateway.tools.simulators import betref_wallet
    from tests.support import GatewayProcess
    from tests.wallet_support import Simulator

    server = start_in_thread(betref_wallet.make_app(betref_wallet.State(), token="kit-token"))
    wallet = Simulator(server)
    config = {"version": 1, "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_seconds": 0,
                                       "drain_seconds": 2},
              "store": {"url": f"sqlite:///{tmp_path}/betref.db"},
              "partners": [{"id": ACME["id"], "face": "platform", "mapping": str(ROOT / "mappings" / "betref-wallet.yaml"),
                            "api_key": ACME["api_key"], "secrets": [ACME["secret"]]}]}
    gateway = GatewayProcess(config, tmp_path, env={"BETREF_WALLET_URL": server.url,
                                                    "BETREF_API_TOKEN": "kit-token"}).start()
    try:
        wallet.player("p-conf", "100.00")
        wallet.player("q-conf", "50.00")
        results = run_platform_kit(gateway.url + HOOKS, ACME["api_key"], ACME["secret"], player_id="p-conf",
                                   other_player_id="q-conf", game_id="vs20olympgate")
        assert_all_pass(results)
        assert RETRY_AND_REFUND_CHECKS <= set(results) and len(results) >= 20, sorted(results)
        print(f"kit: {len(results)} checks passed; wallet ledger: {len(wallet.ledger())} movements")
        assert wallet.balance("p-conf") == Decimal("100.00") and wallet.balance("q-conf") == Decimal("50.00")
        assert len(wallet.ledger("credit")) == 1
    finally:
        gateway.stop()
        server.stop()
