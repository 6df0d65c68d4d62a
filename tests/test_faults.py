"""Fault injection with real processes: a misbehaving legacy wallet, a gateway killed
mid-flight, a full disk under SQLite.

For each: the caller gets the right retriable (5xx) or fatal (4xx) answer, money moves
at most once (checked against the wallet simulator's own ledger, which is NOT
idempotent), and queued work survives.
"""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest
import requests
import yaml

from gateway.tools.simulators import hub88_wallet, start_in_thread
from tests.conftest import ACME, Hub88, platform_config
from tests.support import ROOT, IgspClient, decimal_json
from tests.test_platform_face import _wait_for, assert_error, bet, refund, win


def dead_letters(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT payload FROM queue WHERE dead=1")]


def queue_depth(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM queue WHERE dead=0").fetchone()[0]


@pytest.fixture
def gw(gateway_factory, tmp_path):
    db = tmp_path / "gateway.db"
    proc = gateway_factory(platform_config(f"sqlite:///{db}"))
    proc.db = db
    proc.client = IgspClient(proc.url, ACME["api_key"], ACME["secret"])
    return proc


# -- a misbehaving legacy wallet: bets -------------------------------------------------------------
# fault -> (first answer, does the fault apply the bet, is the bet compensated)
BET_FAULTS = {
    "delay": ({"seconds": 2}, 504, "upstream_timeout"),  # applied late, after the gateway gave up
    "apply_then_hang": ({"seconds": 5}, 504, "upstream_timeout"),
    "reset": ({}, 503, "upstream_unavailable"),
    "http_500_html": ({}, 503, "upstream_unavailable"),
    "garbage": ({}, 502, "upstream_bad_response"),
}


@pytest.mark.parametrize("kind", sorted(BET_FAULTS))
def test_bet_with_unknown_outcome_is_voided_and_rolled_back_once(hub88, gw, kind):
    options, status, code = BET_FAULTS[kind]
    hub88.player("p1", "100.00")
    hub88.fault(kind, endpoint="bet", **options)
    r = gw.client.hook(bet("tx-f", 10))
    assert_error(r, status, code)
    assert "<html" not in r.text.lower() and "Traceback" not in r.text
    # Whatever the wallet did, the player ends where they started, with at most one debit
    # and one rollback on the wallet's own books.
    _wait_for(lambda: hub88.state()["calls"].get("rollback", 0) >= 1 and queue_depth(gw.db) == 0, timeout=15)
    assert hub88.balance("p1") == Decimal("100.00")
    assert len(hub88.ledger("bet")) <= 1 and len(hub88.ledger("rollback")) == len(hub88.ledger("bet"))
    # Every retry of that bet gets the same fatal answer; a new bet works.
    for _ in range(2):
        assert_error(gw.client.hook(bet("tx-f", 10)), 409, "transaction_voided")
    assert gw.client.hook(bet("tx-f2", 10)).status_code == 200
    assert hub88.balance("p1") == Decimal("90.00")
    assert dead_letters(gw.db) == []


def test_extra_fields_with_nested_numbers_survive_the_queue(hub88, gw):
    """The spec allows extra hook fields; a compensation must still be queued with them."""
    hub88.player("p1", "100.00")
    hub88.fault("apply_then_hang", endpoint="bet", seconds=5)
    extra = {"meta": {"rtp": Decimal("96.5"), "lines": [Decimal("0.25"), 3]}, "jackpot": Decimal("1.5")}
    assert_error(gw.client.hook(bet("tx-x", 10, **extra)), 504, "upstream_timeout")
    _wait_for(lambda: hub88.balance("p1") == Decimal("100.00"), timeout=15)
    assert_error(gw.client.hook(bet("tx-x", 10, **extra)), 409, "transaction_voided")
    assert "Traceback" not in gw.log_text()


def test_bet_while_wallet_is_down_is_not_remembered_and_can_be_retried(hub88, gw):
    hub88.player("p1", "100.00")
    hub88.fault("down", endpoint="bet", count=2)
    for _ in range(2):
        assert_error(gw.client.hook(bet("tx-d", 10)), 503, "upstream_unavailable")
    r = gw.client.hook(bet("tx-d", 10))  # the wallet is back: the provider's retry goes through, once
    assert r.status_code == 200 and str(decimal_json(r)["balance"]) == "90.00"
    assert len(hub88.ledger("bet")) == 1 and hub88.state()["calls"].get("rollback", 0) == 0


def test_partially_down_wallet_keeps_serving_what_works(hub88, gw):
    """Only the win endpoint is down: bets and balances are unaffected, the win is queued."""
    hub88.player("p1", "100.00")
    hub88.fault("down", endpoint="win", count=3)
    assert gw.client.hook(bet("pd-1", 10)).status_code == 200
    assert_error(gw.client.hook(win("pd-w", 5)), 503, "upstream_unavailable")
    assert gw.client.hook({"action": "balance", "player_id": "p1", "currency": "EUR"}).status_code == 200
    _wait_for(lambda: hub88.balance("p1") == Decimal("95.00"), timeout=15)
    assert gw.client.hook(win("pd-w", 5)).status_code == 200
    assert len(hub88.ledger("win")) == 1


# -- wins and refunds with an unknown outcome ----------------------------------------------------------
@pytest.mark.parametrize(("kind", "applied"), [("apply_then_hang", True), ("reset", False)])
def test_unknown_win_on_a_non_idempotent_wallet_is_dead_lettered_not_redelivered(hub88, gw, kind, applied):
    hub88.player("p1", "100.00")
    hub88.fault(kind, endpoint="win", **({"seconds": 5} if kind == "apply_then_hang" else {}))
    r = gw.client.hook(win("w-u", 5))
    assert r.status_code in (503, 504) and r.json()["error"] in ("upstream_timeout", "upstream_unavailable")
    # A redelivery could pay twice: an operator reconciles it from the dead-letter queue.
    letters = dead_letters(gw.db)
    assert len(letters) == 1 and '"w-u"' in letters[0]
    assert_error(gw.client.hook(win("w-u", 5)), 503, "transaction_in_progress")
    time.sleep(3.5)  # past the queue's first due time: nothing may be redelivered
    assert hub88.state()["calls"]["win"] == 1
    assert hub88.balance("p1") == Decimal("105.00" if applied else "100.00")


@pytest.fixture
def idempotent_wallet(hub88_keys):
    server = start_in_thread(hub88_wallet.make_app(hub88_wallet.State(), public_key_pem=hub88_keys[1],
                                                   idempotency="original"))
    yield Hub88(server)
    server.stop()


def test_unknown_win_on_an_idempotent_wallet_is_redelivered_and_paid_once(idempotent_wallet, gateway_factory,
                                                                          tmp_path):
    wallet = idempotent_wallet
    mapping = yaml.safe_load((ROOT / "mappings" / "hub88-wallet.yaml").read_text())
    mapping["upstream"]["idempotent"] = True
    (tmp_path / "idem.yaml").write_text(yaml.safe_dump(mapping))
    config = platform_config(f"sqlite:///{tmp_path}/g.db")
    config["partners"][0]["mapping"] = str(tmp_path / "idem.yaml")
    gw = gateway_factory(config, env={"HUB88_WALLET_URL": wallet.url})
    client = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    wallet.player("p1", "100.00")
    wallet.fault("apply_then_hang", endpoint="win", seconds=5)
    assert_error(client.hook(win("w-i", 5)), 504, "upstream_timeout")
    _wait_for(lambda: wallet.state()["calls"].get("win", 0) >= 2, timeout=15)  # redelivered...
    _wait_for(lambda: client.hook(win("w-i", 5)).status_code == 200, timeout=10)
    assert wallet.balance("p1") == Decimal("105.00") and len(wallet.ledger("win")) == 1  # ...paid once
    assert dead_letters(tmp_path / "g.db") == []


def test_refund_with_unknown_outcome_moves_money_at_most_once(hub88, gw):
    hub88.player("p1", "100.00")
    assert gw.client.hook(bet("tx-r", 10)).status_code == 200
    hub88.fault("apply_then_hang", endpoint="rollback", seconds=5)
    assert_error(gw.client.hook(refund("rf-r", "tx-r")), 504, "upstream_timeout")
    assert_error(gw.client.hook(refund("rf-r", "tx-r")), 503, "transaction_in_progress")
    assert_error(gw.client.hook(refund("rf-other", "tx-r")), 409, "transaction_already_refunded")
    assert hub88.balance("p1") == Decimal("100.00") and len(hub88.ledger("rollback")) == 1
    assert len(dead_letters(gw.db)) == 1


# -- the gateway killed mid-flight ---------------------------------------------------------------------
def _bet_in_background(client: IgspClient, payload: dict) -> concurrent.futures.Future:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(lambda: client.hook(payload, timeout=10))
    pool.shutdown(wait=False)
    return future


def _kill_mid_bet(hub88, gateway_factory, tmp_path):
    """Start a bet the wallet applies and then hangs on; kill -9 the gateway while it waits."""
    db = tmp_path / "gateway.db"
    # A record pending longer than the queue lease (> 2 x the legacy timeout) is orphaned.
    config = platform_config(f"sqlite:///{db}", queue={"lease_seconds": 4})
    first = gateway_factory(config)
    hub88.player("p1", "100.00")
    hub88.fault("apply_then_hang", endpoint="bet", seconds=5)
    pending = _bet_in_background(IgspClient(first.url, ACME["api_key"], ACME["secret"]), bet("tx-k", 10))
    _wait_for(lambda: hub88.state()["calls"].get("bet", 0) == 1, timeout=5)
    first.kill()
    with pytest.raises(requests.ConnectionError):
        pending.result(timeout=10)
    assert hub88.balance("p1") == Decimal("90.00")  # the wallet debited; the gateway died before knowing
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT state FROM ledger WHERE txid='tx-k'").fetchone() == ("pending",)
    second = gateway_factory(config)
    return second, IgspClient(second.url, ACME["api_key"], ACME["secret"])


def test_bet_left_pending_by_a_killed_gateway_is_settled_by_its_retry(hub88, gateway_factory, tmp_path):
    gw, client = _kill_mid_bet(hub88, gateway_factory, tmp_path)
    # Right after the restart the first copy could still be running elsewhere: retriable.
    assert_error(client.hook(bet("tx-k", 10)), 503, "transaction_in_progress")
    # Once no legacy call can still be running (timeout + margin), the retry settles it:
    # unknown outcome -> voided, compensating rollback queued; every later retry agrees.
    _wait_for(lambda: client.hook(bet("tx-k", 10)).status_code == 409, timeout=15)
    assert_error(client.hook(bet("tx-k", 10)), 409, "transaction_voided")
    _wait_for(lambda: hub88.balance("p1") == Decimal("100.00"), timeout=15)
    assert len(hub88.ledger("rollback")) == 1
    # The provider's refund of that bet is acknowledged without a second rollback.
    r = client.hook(refund("rf-k", "tx-k"))
    assert r.status_code == 200 and str(decimal_json(r)["balance"]) == "100.00"
    time.sleep(0.5)
    assert len(hub88.ledger("rollback")) == 1 and hub88.balance("p1") == Decimal("100.00")


def test_bet_left_pending_by_a_killed_gateway_is_settled_by_its_refund(hub88, gateway_factory, tmp_path):
    gw, client = _kill_mid_bet(hub88, gateway_factory, tmp_path)
    # A refund racing a bet that may still be in flight is retriable, never a fatal 404.
    assert_error(client.hook(refund("rf-k", "tx-k")), 503, "transaction_in_progress")
    _wait_for(lambda: client.hook(refund("rf-k", "tx-k")).status_code == 200, timeout=15)
    _wait_for(lambda: hub88.balance("p1") == Decimal("100.00"), timeout=15)
    assert len(hub88.ledger("rollback")) == 1
    assert_error(client.hook(bet("tx-k", 10)), 409, "transaction_voided")


def test_queued_win_survives_a_kill_and_is_delivered_once_by_the_next_process(hub88, gateway_factory, tmp_path):
    db = tmp_path / "gateway.db"
    config = platform_config(f"sqlite:///{db}")
    first = gateway_factory(config)
    hub88.player("p1", "100.00")
    hub88.fault("down", endpoint="win", count=2)
    assert_error(IgspClient(first.url, ACME["api_key"], ACME["secret"]).hook(win("w-k", 5)), 503,
                 "upstream_unavailable")
    first.kill()
    assert queue_depth(db) == 1
    second = gateway_factory(config)
    _wait_for(lambda: hub88.balance("p1") == Decimal("105.00"), timeout=20)
    client = IgspClient(second.url, ACME["api_key"], ACME["secret"])
    _wait_for(lambda: client.hook(win("w-k", 5)).status_code == 200, timeout=5)
    assert len(hub88.ledger("win")) == 1 and queue_depth(db) == 0


# -- a full disk under SQLite ----------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs root and mount rights; skipped where the sandbox forbids mounts)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:  # unbuffered: nothing left to flush on close
        for size in (65536, 4096, 512, 1):  # down to the last byte: no room left for a page
            try:
                while True:
                    out.write(b"\0" * size)
                    os.fsync(out.fileno())
            except OSError:
                pass
    return filler


def test_disk_full_answers_503_and_leaves_no_debit_unsettled(hub88, gateway_factory, small_disk):
    hub88.player("p1", "1000.00")
    db = small_disk / "gateway.db"
    gw = gateway_factory(platform_config(f"sqlite:///{db}", queue={"lease_seconds": 4, "poll_seconds": 0.1}))
    client = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    assert client.hook(bet("df-0", 1)).status_code == 200
    filler = _fill(small_disk)
    # SQLite may still fit a few commits in pages it already holds (WAL frames it rewrites):
    # bets go through while they can be recorded; the first one that cannot is a 503.
    accepted = 1
    for i in range(1, 400):
        r = client.hook(bet(f"df-{i}", 1))
        if r.status_code == 200:
            accepted += 1
            continue
        assert_error(r, 503, "service_unavailable")
        assert "Traceback" not in r.text and "sqlite" not in r.text.lower()
        refused = f"df-{i}"
        break
    else:
        pytest.fail("399 bets recorded on a full 4 MiB disk")
    r = client.hook(bet("df-other", 1))
    if r.status_code == 200:
        # The checkpoint thread may have let the WAL start over meanwhile: a write that fits
        # again is a write made (and counted), never a half-made one.
        accepted += 1
    else:
        assert_error(r, 503, "service_unavailable")
    # A bet reaches the wallet only once its record is written: the refused one did not, or
    # its record was written and only its answer could not be (the wallet debited it then).
    debited_unanswered = hub88.state()["calls"]["bet"] - accepted
    assert debited_unanswered in (0, 1)
    assert hub88.balance("p1") == Decimal(1000 - accepted - debited_unanswered)
    assert requests.get(gw.url + "/healthz", timeout=5).ok
    filler.unlink()
    # Space is back. A debit whose answer was lost is rolled back by the gateway itself
    # (the sweeper, once the lease has passed); the provider's retry then learns the outcome.
    _wait_for(lambda: hub88.balance("p1") == Decimal(1000 - accepted), timeout=30)
    retry = client.hook(bet(refused, 1))
    if debited_unanswered:
        assert_error(retry, 409, "transaction_voided")
        assert len(hub88.ledger("rollback")) == 1
    else:
        assert retry.status_code == 200, retry.text
        assert hub88.balance("p1") == Decimal(999 - accepted)
    assert client.hook(bet("df-other", 1)).status_code == 200
    gw.stop()
