"""A gateway that dies between any two of its store writes leaves a state it settles itself.

Each scenario (a money hook, with the legacy wallet answering, refusing or hanging) is run
once to count its store writes; then, for every point between two writes, it is run again
with the store cut off there — the write and everything after it never happen, as after a
``kill -9`` — and a second gateway on the same store (its sweeper and its queue worker, the
real ones) is left to settle what it finds, with no provider retrying. Then:

* nothing is pending and nothing queued (dead letters aside);
* the legacy wallet and the ledger's final answer agree: a 200 bet debited exactly once,
  a voided bet debited and rolled back (or never debited), a win paid at most once;
* the provider's retry now gets a final answer.

Both stores: a SQLite file and a private redis-server.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import orjson
import pytest

from gateway.engine.mapping import load_mapping
from gateway.faces.platform import PlatformFace, PlatformObjects, deliver
from gateway.faces.sweeper import Sweeper
from gateway.faces.wallet import WALLET_ROUTE, Wallet
from gateway.outbound.legacy import LegacyClient
from gateway.retry_queue import DeliveryWorker
from gateway.store import open_store
from gateway.store.base import PENDING
from tests.ops_support import write_mapping
from tests.wallet_support import bet, refund, win

PARTNER = "acme-games"
ORPHAN_AFTER = 0.3  # this test's lease: longer than the wallet's timeout below
WRITES = frozenset({"tx_begin", "tx_finish", "tx_forget", "tx_void", "tx_unvoid", "claim", "kv_put",
                    "q_put", "q_ack", "q_retry", "q_dead"})


class Crashed(BaseException):
    """The process died here (a BaseException: nothing in the gateway may catch and go on)."""


class CrashingStore:
    """The real store, cut off at its ``crash_at``-th write: that write and every call after
    it never happen. ``crash_at=None`` counts the writes of a whole run."""

    def __init__(self, store, crash_at: int | None):
        self.store, self.crash_at, self.writes, self.dead = store, crash_at, 0, False

    def __getattr__(self, name):
        attr = getattr(self.store, name)
        if not callable(attr):
            return attr

        async def call(*args, **kwargs):
            if self.dead:
                raise Crashed(name)
            if name in WRITES:
                self.writes += 1
                if self.writes == self.crash_at:
                    self.dead = True
                    raise Crashed(name)
            return await attr(*args, **kwargs)

        return call


class _Runtime:
    """The one generation the sweeper needs (the real Runtime builds one from a config)."""

    def __init__(self, objects):
        self.objects = objects

    def acquire(self):
        return type("Gen", (), {"faces": {"platform": self.objects}})()

    def release(self, gen) -> None:
        pass


class _Face:
    name = "platform"
    settle = PlatformFace.settle


@pytest.fixture
async def client(hub88, hub88_keys, tmp_path):
    path = write_mapping(tmp_path / "hub88-fast.yaml", timeout=0.1,
                         edit=lambda d: d.update(queue={"max_attempts": 50, "backoff_initial": 0.02,
                                                        "backoff_max": 0.05}))
    mapping = load_mapping(path, {"HUB88_WALLET_URL": hub88.url, "HUB88_PRIVATE_KEY": hub88_keys[0]})
    client = LegacyClient(mapping)
    yield client
    await client.close()


def wallet_on(store, client) -> Wallet:
    return Wallet(PARTNER, client, store, retention=3600, orphan_after=ORPHAN_AFTER, wait_seconds=0.2)


async def settle_as_a_survivor(store, client) -> Wallet:
    """A second gateway on the same store: its sweeper and queue worker run until nothing is
    pending or queued (nobody retries)."""
    wallet = wallet_on(store, client)
    objects = PlatformObjects(verifier=None, wallets={PARTNER: wallet}, spec=None)
    sweeper = Sweeper(store, _Runtime(objects), {"platform": _Face()}, orphan_after=ORPHAN_AFTER)
    worker = DeliveryWorker(store, {WALLET_ROUTE: lambda entry: deliver(objects, entry)}, consumer="survivor",
                            lease_seconds=5, backoff_for=lambda entry: (0.02, 0.05))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        await sweeper.sweep_once()
        await worker.run_once()
        pending = await store.tx_pending(time.time() + 3600)
        if not pending and (await store.q_stats())["depth"] == 0:
            return wallet
        await asyncio.sleep(0.05)  # the survivor's own poll interval; the deadline bounds the wait
    raise AssertionError(f"still pending or queued after 30 s: {pending}, {await store.q_stats()}")


async def run_scenario(store, client, hub88, crash_at, scenario) -> None:
    crashing = CrashingStore(store, crash_at)
    try:
        await scenario(wallet_on(crashing, client), hub88)
    except Crashed:
        pass
    return crashing.writes


# -- scenarios: one money hook each, the wallet behaving one way ---------------------------------
async def bet_answered(wallet, hub88):
    await wallet.handle(bet("c-1", "10.00"), "r-1")


async def bet_timing_out(wallet, hub88):
    hub88.fault("apply_then_hang", endpoint="bet", seconds=0.5)  # debited, the answer too late
    await wallet.handle(bet("c-1", "10.00"), "r-1")


async def win_timing_out(wallet, hub88):
    hub88.fault("apply_then_hang", endpoint="win", seconds=0.5)  # paid, the answer too late
    await wallet.handle(win("c-1", "10.00"), "r-1")


async def refund_answered(wallet, hub88):
    await wallet.handle(refund("c-rf", "c-0", "10.00"), "r-1")


SCENARIOS = {"bet_answered": bet_answered, "bet_timing_out": bet_timing_out, "win_timing_out": win_timing_out,
             "refund_answered": refund_answered}


@pytest.fixture
async def ledger(store_url):
    store = open_store(store_url)
    await store.open()
    yield store
    await store.close()


#: Store writes of each scenario run uncut: a change to them moves the crash points (checked).
EXPECTED_WRITES = {"bet_answered": 2, "bet_timing_out": 4, "win_timing_out": 3, "refund_answered": 3}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_a_crash_between_any_two_writes_is_settled_without_a_retry(ledger, client, hub88, name):
    hub88.player("p1", "100.00")
    scenario = SCENARIOS[name]
    if name == "refund_answered":
        await wallet_on(ledger, client).handle(bet("c-0", "10.00"), "r-0")
    start = hub88.balance("p1")
    writes = await run_scenario(ledger, client, hub88, None, scenario)
    assert writes == EXPECTED_WRITES[name], f"{name} now makes {writes} store writes: review the crash points"
    await settle_as_a_survivor(ledger, client)
    baseline = await final_state(ledger, hub88, name, start)

    for crash_at in range(1, writes + 1):
        hub88.reset()
        hub88.player("p1", "100.00")
        store = open_store(ledger.url, namespace=f"crash-{name}-{crash_at}") if ledger.url.startswith("redis") \
            else open_store(ledger.url.replace(".db", f"-{name}-{crash_at}.db"))
        await store.open()
        try:
            if name == "refund_answered":
                await wallet_on(store, client).handle(bet("c-0", "10.00"), "r-0")
            await run_scenario(store, client, hub88, crash_at, scenario)
            wallet = await settle_as_a_survivor(store, client)
            state = await final_state(store, hub88, name, start)
            assert_consistent(state, name, crash_at)
            # The provider's retry, whenever it comes, gets a final answer (a crash before the
            # first write left nothing: the retry is then the first attempt, and the wallet's
            # fault may still be armed for it: once more after that settled).
            hook = {"bet_answered": bet("c-1", "10.00"), "bet_timing_out": bet("c-1", "10.00"),
                    "win_timing_out": win("c-1", "10.00"), "refund_answered": refund("c-rf", "c-0", "10.00")}[name]
            status, body = await wallet.handle(hook, "retry")
            if crash_at == 1 and status >= 500:
                await settle_as_a_survivor(store, client)
                status, body = await wallet.handle(hook, "retry-2")
            state = await final_state(store, hub88, name, start)
            assert_consistent(state, name, crash_at)
            assert status < 500 or state["dead_letters"], (crash_at, status, body)
        finally:
            await store.close()
    assert_consistent(baseline, name, 0)


async def final_state(store, hub88, name, start) -> dict:
    txid = "c-rf" if name == "refund_answered" else "c-1"
    rec = await store.tx_get(PARTNER, txid)
    dead = await store.dlq_list()
    return {"record": rec and (rec.state, rec.status, orjson.loads(rec.body) if rec.body else None),
            "moved": hub88.balance("p1") - start, "calls": hub88.state()["calls"], "dead_letters": len(dead),
            "pending": rec is not None and rec.state == PENDING}


def assert_consistent(state: dict, name: str, crash_at: int) -> None:
    where = f"{name}, crashed at write {crash_at}: {state}"
    assert not state["pending"], where
    record, moved = state["record"], state["moved"]
    if name.startswith("bet"):
        if record is not None and record[1] == 200:
            assert moved == Decimal("-10.00"), where
        else:  # never recorded (the wallet never saw it), or voided and rolled back
            assert moved == 0, where
    elif name == "win_timing_out":
        assert moved in (0, Decimal("10.00")), where  # never twice
        if moved == 0:
            assert record is None or record[1] != 200, where
    else:  # the refund of a 10.00 bet
        assert moved in (0, Decimal("10.00")), where
        if record is not None and record[1] == 200:
            assert moved == Decimal("10.00"), where
