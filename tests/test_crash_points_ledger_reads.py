"""Crash points of the flows that read the ledger (mappings/betref-wallet.yaml): a gateway
that dies between any two of its store writes — the round index and kept values of a bet,
a win's choice of its round's bet and its first-win claim — leaves a state that a second
gateway's real sweeper and queue worker settle, with nobody retrying (the machinery of
tests/test_crash_points.py). Then a bet answered 200 is debited once (a voided one not at
all), a win is paid at most once and, answered 200, exactly once, a refund moves its bet's
stake back at most once. Both stores.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
import requests

from gateway.engine.mapping import load_mapping
from gateway.outbound.legacy import LegacyClient
from gateway.store import open_store
from gateway.tools.simulators import betref_wallet, start_in_thread
from tests.support import ROOT
from tests.test_crash_points import run_scenario, settle_as_a_survivor, wallet_on
from tests.wallet_support import Simulator, bet, refund, win


@pytest.fixture
def wallet():
    server = start_in_thread(betref_wallet.make_app(betref_wallet.State()))
    yield Simulator(server)
    server.stop()


@pytest.fixture
async def client(wallet, tmp_path):
    text = (ROOT / "mappings" / "betref-wallet.yaml").read_text()
    # 0.5 s: time enough for an answered call on a busy machine, well under the 1.5 s a faulty
    # call hangs, so the "timing out" scenarios always time out and the others never do.
    for old, new in (("  timeout: 1.5\n", "  timeout: 0.5\n"),
                     ("  max_attempts: 8\n  backoff_initial: 0.5\n  backoff_max: 60\n",
                      "  max_attempts: 50\n  backoff_initial: 0.02\n  backoff_max: 0.05\n")):
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "betref-fast.yaml"
    path.write_text(text)
    client = LegacyClient(load_mapping(path, {"BETREF_WALLET_URL": wallet.url, "BETREF_API_TOKEN": "t"}))
    yield client
    await client.close()


def hang(wallet, endpoint: str) -> None:
    requests.post(f"{wallet.url}/_control/faults", json={"kind": "apply_then_hang", "endpoint": endpoint,
                                                         "seconds": 1.5}, timeout=5).raise_for_status()


#: name -> (needs the round's bet first, the hook, the wallet endpoint that applies then hangs)
SCENARIOS = {
    "bet_answered": (False, bet("c-1", "10.00", round_id="R"), None),
    "bet_timing_out": (False, bet("c-1", "10.00", round_id="R"), "debit"),
    "win_of_the_rounds_bet_timing_out": (True, win("c-1", "7.00", round_id="R"), "credit"),
    "win_opening_a_zero_bet_timing_out": (False, win("c-1", "7.00", round_id="Z"), "credit"),
    "refund_answered": (True, refund("c-1", "c-0", "10.00", round_id="R"), None),
}
#: Store writes of each scenario run uncut: a change to them moves the crash points (checked).
EXPECTED_WRITES = {"bet_answered": 4, "bet_timing_out": 5, "win_of_the_rounds_bet_timing_out": 5,
                   "win_opening_a_zero_bet_timing_out": 4, "refund_answered": 4}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_a_crash_between_any_two_writes_of_a_ledger_reading_flow_is_settled(store_url, client, wallet, name):
    with_bet, hook, faulty = SCENARIOS[name]

    async def scenario(w, _):
        if faulty:
            hang(wallet, faulty)
        await w.handle(hook, "r-1")

    crash_at, writes = None, None
    while crash_at is None or crash_at <= writes:
        wallet.reset()
        wallet.player("p1", "100.00")
        suffix = f"{name}-{crash_at or 0}"
        store = open_store(store_url, namespace=f"crash-{suffix}") if store_url.startswith("redis") \
            else open_store(store_url.replace(".db", f"-{suffix}.db"))
        await store.open()
        try:
            if with_bet:
                await wallet_on(store, client).handle(bet("c-0", "10.00", round_id="R"), "r-0")
            start = wallet.balance("p1")
            count = await run_scenario(store, client, wallet, crash_at, scenario)
            if crash_at is None:
                assert count == EXPECTED_WRITES[name], f"{name} now makes {count} store writes: review the points"
                writes = count
            survivor = await settle_as_a_survivor(store, client)
            status, body = await survivor.handle(hook, "retry")  # the provider's retry, whenever it comes
            if crash_at == 1 and status >= 500:
                # A crash before the first write left nothing: that retry was the first attempt,
                # and met the wallet's fault still armed. Once more after it settled.
                await settle_as_a_survivor(store, client)
                status, body = await survivor.handle(hook, "retry-2")
            moved, dead = wallet.balance("p1") - start, await store.dlq_list()
            where = f"{name}, crashed at write {crash_at}: {status} {body!r}, moved {moved}, dead letters {len(dead)}"
            if hook["action"] == "bet":
                assert moved == (Decimal("-10.00") if status == 200 else 0), where
            elif hook["action"] == "win":
                assert moved == (Decimal("7.00") if status == 200 else 0), where
                assert status == 200 or dead, where
            else:
                assert moved == (Decimal("10.00") if status == 200 else 0), where
            credits = [e for e in wallet.ledger() if e["kind"] == "credit"]
            assert len(credits) <= 1, where
        finally:
            await store.close()
        crash_at = 1 if crash_at is None else crash_at + 1
