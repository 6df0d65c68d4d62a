"""Money safety with real processes: gateways, a Hub88-style wallet, redis-server.

Crashes (``kill -9``), legacy outages, a Redis restart, concurrent duplicates across two
replicas and the dead-letter tooling, each ending in the wallet's own books: every
transaction moved money exactly once, nothing queued was lost.
"""

from __future__ import annotations

import concurrent.futures
import json
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import redis
import requests
import yaml

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.tools.simulators import RunningServer, hub88_wallet
from gateway.tools.simulators._common import parse_fault
from tests.conftest import ACME, Hub88, platform_config
from tests.support import ROOT, GatewayProcess, IgspClient, decimal_json

ADMIN_TOKEN = "admin-token-0123456789abcdef"


class Wallet(Hub88):
    """The Hub88-style wallet simulator, stoppable and restartable on the same port with its books."""

    def __init__(self, public_key: str, **options):
        self.books, self.public_key, self.options = hub88_wallet.State(), public_key, options
        self.server, self.url, self.port = None, "", 0

    def start(self) -> Wallet:
        app = hub88_wallet.make_app(self.books, public_key_pem=self.public_key, **self.options)
        self.server = RunningServer(app, port=self.port).start()
        self.url = self.server.url
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        self.server.stop()

    def fault(self, kind: str, **options) -> None:
        """Arm a fault, also while stopped (it hits the first matching request after a start)."""
        self.books.faults.append(parse_fault({"kind": kind, **options}))

    def wins(self) -> dict[str, int]:
        """transaction id -> how many times the wallet credited it (readable while stopped too).

        The mapping sends ``<partner>:<transaction id>``; the partner prefix is dropped here."""
        counts: dict[str, int] = {}
        for e in [e for e in list(self.books.ledger) if e["kind"] == "win"]:
            txid = unprefixed(e["txid"])
            counts[txid] = counts.get(txid, 0) + 1
        return counts


def unprefixed(legacy_txid: str) -> str:
    """``acme-games:w-1`` -> ``w-1`` (the Hub88 mapping namespaces legacy ids by partner)."""
    return legacy_txid.split(":", 1)[1] if legacy_txid.startswith(f"{ACME['id']}:") else legacy_txid


@pytest.fixture
def wallet(hub88_keys):
    w = Wallet(hub88_keys[1]).start()
    w.player("p1", "100.00")
    yield w
    w.stop()


@pytest.fixture
def gateways(tmp_path, hub88_keys):
    started: list[GatewayProcess] = []

    def start(config: dict, wallet: Wallet) -> GatewayProcess:
        gw = GatewayProcess(config, tmp_path, env={"HUB88_WALLET_URL": f"http://127.0.0.1:{wallet.port}",
                                                   "HUB88_PRIVATE_KEY": hub88_keys[0]})
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        gw.stop()


def fast_mapping(tmp_path, idempotent=False, max_attempts=50) -> str:
    """The shipped Hub88 mapping with test-sized timeouts and backoffs."""
    data = yaml.safe_load((ROOT / "mappings" / "hub88-wallet.yaml").read_text())
    data["upstream"].update(timeout=1.0, idempotent=idempotent)
    data["queue"] = {"max_attempts": max_attempts, "backoff_initial": 0.2, "backoff_max": 0.4}
    path = tmp_path / f"hub88-fast-{idempotent}-{max_attempts}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def gateway_config(store_url: str, mapping: str | None = None, **overrides) -> dict:
    config = platform_config(store_url, admin={"token": ADMIN_TOKEN}, **overrides)
    if mapping:
        config.setdefault("queue", {"lease_seconds": 3, "poll_seconds": 0.1})
        for partner in config["partners"]:
            partner["mapping"] = mapping
    return config


def acme(gw: GatewayProcess) -> IgspClient:
    return IgspClient(gw.url, ACME["api_key"], ACME["secret"])


def win(txid: str, amount: str, player="p1") -> dict:
    return {"action": "win", "player_id": player, "amount": Decimal(amount), "currency": "EUR",
            "game_id": "vs20olympgate", "transaction_id": txid, "session_id": "s-1", "type": "win", "round_id": "r-1"}


def bet(txid: str, amount: str, player="p1") -> dict:
    return {**win(txid, amount, player), "action": "bet", "type": "bet"}


def admin(gw: GatewayProcess, method: str, path: str, token: str | None = ADMIN_TOKEN) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, gw.internal_url + path, headers=headers, timeout=10)


def queue_stats(gw: GatewayProcess) -> dict:
    r = admin(gw, "GET", "/admin/queue")
    assert r.status_code == 200, r.text
    return r.json()


def queue_attempts(gw: GatewayProcess, outcome: str) -> float:
    """igsp_queue_attempts_total{outcome=…} from the gateway's /metrics."""
    text = requests.get(gw.internal_url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("igsp_queue_attempts_total{") and f'outcome="{outcome}"' in line)


def leased_entries(store_url: str) -> int:
    """Queue entries currently leased to some worker, read straight from the store."""
    if store_url.startswith("redis"):
        client = redis.Redis.from_url(store_url)
        try:
            from gateway.store.redis import SHARDS

            return sum(client.xpending(f"igsp:{{Q{k}}}:stream", "workers")["pending"] for k in range(SHARDS))
        finally:
            client.close()
    with sqlite3.connect(store_url[len("sqlite:///"):]) as db:
        return db.execute("SELECT COUNT(*) FROM queue WHERE lease_until > ?", (time.time(),)).fetchone()[0]


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout} s")


def assert_error(response, status: int, code: str):
    assert response.status_code == status, response.text
    assert response.json()["error"] == code


def dlq_cli(config_path, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """``igsp-gateway dlq …``; ``env``: the gateway's (``resolve --applied`` loads its mappings)."""
    return subprocess.run([sys.executable, "-m", "gateway", "dlq", *args, "--config", str(config_path)],
                          capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)


def resolve_admin(gw: GatewayProcess, entry_id: str, body) -> requests.Response:
    return requests.post(f"{gw.internal_url}/admin/dlq/{entry_id}/resolve", data=body if isinstance(body, bytes) else
                         json.dumps(body), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)


def dead_letter_of(gw: GatewayProcess, txid: str) -> str:
    """The id of the dead letter delivering transaction ``txid`` (or rolling back bet ``txid``)."""
    entries = admin(gw, "GET", "/admin/dlq").json()["entries"]
    return next(e["id"] for e in entries if txid in (e["payload"]["hook"]["transaction_id"],
                                                     e["payload"]["hook"].get("bet_transaction_id")))


# -- duplicates across replicas ----------------------------------------------------------
@pytest.mark.parametrize("shared", ["redis", "sqlite"])
def test_fifty_concurrent_copies_through_two_replicas_debit_once(wallet, gateways, shared, request, tmp_path):
    # Two processes on one Redis, or on one SQLite file (as --workers shares it): each
    # process commits its own group of writes, taking turns on the file's write lock.
    url = request.getfixturevalue("redis_server").url if shared == "redis" else f"sqlite:///{tmp_path}/shared.db"
    config = gateway_config(url)
    replicas = [gateways(config, wallet), gateways(config, wallet)]
    start = datetime.now(timezone.utc)
    # Every copy is signed on its own (distinct microsecond timestamps): replay protection
    # lets each one in, and the shared ledger must let one through.
    stamps = [(start + timedelta(microseconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ") for i in range(50)]
    barrier = threading.Barrier(50)

    def send(i):
        client = acme(replicas[i % 2])
        barrier.wait(10)
        return client.hook(bet("tx-fifty", "7.25"), timestamp=stamps[i])

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(send, range(50)))
    assert [a.status_code for a in answers] == [200] * 50, {a.text for a in answers}
    assert len({a.content for a in answers}) == 1
    assert str(decimal_json(answers[0])["balance"]) == "92.75"
    assert len(wallet.ledger("bet")) == 1 and wallet.state()["calls"]["bet"] == 1
    assert wallet.balance("p1") == Decimal("92.75")


# -- legacy outage -----------------------------------------------------------------------
def test_wins_during_a_wallet_outage_are_delivered_exactly_once(wallet, gateways, store_url, tmp_path):
    gw = gateways(gateway_config(store_url, fast_mapping(tmp_path)), wallet)
    client = acme(gw)
    amounts = {f"w-{i}": f"1.{i:02d}" for i in range(12)}
    for txid in ("w-0", "w-1"):
        assert client.hook(win(txid, amounts[txid])).status_code == 200
    wallet.stop()
    for txid in list(amounts)[2:]:
        assert_error(client.hook(win(txid, amounts[txid])), 503, "upstream_unavailable")
    assert_error(client.hook(win("w-5", amounts["w-5"])), 503, "transaction_in_progress")  # provider retry
    assert queue_stats(gw)["depth"] == 10
    # The queue keeps trying against the dead wallet (every entry at least once) meanwhile.
    wait_for(lambda: queue_attempts(gw, "retry") >= 10, what="failed delivery attempts")
    assert wallet.wins() == {"w-0": 1, "w-1": 1} and queue_stats(gw)["dead"] == 0
    wallet.start()
    wait_for(lambda: queue_stats(gw)["depth"] == 0, what="queue drained")
    assert wallet.wins() == dict.fromkeys(amounts, 1)
    expected = Decimal("100.00") + sum(Decimal(a) for a in amounts.values())
    assert wallet.balance("p1") == expected
    # The provider's retries now get the delivered outcome, and move nothing.
    for txid in ("w-2", "w-11"):
        r = client.hook(win(txid, amounts[txid]))
        assert r.status_code == 200 and decimal_json(r)["transaction_id"], r.text
    assert wallet.wins() == dict.fromkeys(amounts, 1) and wallet.balance("p1") == expected
    assert queue_stats(gw) == {"depth": 0, "oldest_age": 0.0, "dead": 0}


def test_unknown_outcome_on_redelivery_is_dead_lettered_not_paid_twice(wallet, gateways, store_url, tmp_path):
    """The wallet is not idempotent: a queued win whose delivery timed out after the wallet
    applied it must not be sent again — it waits in the dead letters for an operator."""
    gw = gateways(gateway_config(store_url, fast_mapping(tmp_path)), wallet)
    wallet.stop()
    assert_error(acme(gw).hook(win("w-hang", "5.00")), 503, "upstream_unavailable")
    wallet.fault("apply_then_hang", endpoint="win", seconds=3)
    wallet.start()
    wait_for(lambda: queue_stats(gw)["dead"] == 1, what="dead letter")
    assert wallet.wins() == {"w-hang": 1} and wallet.balance("p1") == Decimal("105.00")
    [dead] = admin(gw, "GET", "/admin/dlq").json()["entries"]
    assert dead["payload"]["hook"]["transaction_id"] == "w-hang"
    assert "non-idempotent" in dead["last_error"]
    time.sleep(1.0)  # nothing is resent behind the operator's back
    assert wallet.wins() == {"w-hang": 1}


# -- crashes -----------------------------------------------------------------------------
def test_kill_9_with_deliveries_in_flight_another_process_finishes_them(hub88_keys, gateways, store_url, tmp_path):
    # An idempotent wallet (it dedupes transaction_uuid), so at-least-once is exactly-once.
    wallet = Wallet(hub88_keys[1], idempotency="original").start()
    try:
        wallet.player("p1", "100.00")
        config = gateway_config(store_url, fast_mapping(tmp_path, idempotent=True))
        first = gateways(config, wallet)
        wallet.stop()
        amounts = {f"k-{i}": f"2.{i:02d}" for i in range(6)}
        for txid, amount in amounts.items():
            assert_error(acme(first).hook(win(txid, amount)), 503, "upstream_unavailable")
        # The wallet comes back slow: the first delivery hangs there, the rest of the
        # batch is leased to the same process — which dies.
        wallet.fault("delay", endpoint="win", seconds=2.5)
        wallet.start()
        wait_for(lambda: wallet.state()["calls"].get("win", 0) >= 1, what="a delivery in flight")
        first.kill()
        assert wallet.wins() == {}
        assert leased_entries(store_url) >= 1  # held by the dead process until the lease runs out
        second = first if store_url.startswith("sqlite") else gateways(config, wallet)
        if second is first:
            first.start()  # SQLite: the restarted process; Redis: another replica
        wait_for(lambda: queue_stats(second)["depth"] == 0, timeout=30, what="queue drained")
        wait_for(lambda: len(wallet.wins()) == len(amounts), what="every win applied")
        time.sleep(0.5)
        assert wallet.wins() == dict.fromkeys(amounts, 1)
        assert wallet.balance("p1") == Decimal("100.00") + sum(Decimal(a) for a in amounts.values())
        r = acme(second).hook(win("k-3", amounts["k-3"]))
        assert r.status_code == 200, r.text
    finally:
        wallet.stop()


def test_bets_orphaned_by_kill_9_mid_call_are_rolled_back(wallet, gateways, store_url, tmp_path):
    """A gateway dies while the wallet has debited but not yet answered: the ledger holds two
    pending bets nobody will finish. A retry of one, and a refund of the other, settle them."""
    config = gateway_config(store_url, fast_mapping(tmp_path))
    first = gateways(config, wallet)
    wallet.fault("apply_then_hang", endpoint="bet", seconds=5)
    wallet.fault("apply_then_hang", endpoint="bet", seconds=5)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    for txid in ("o-1", "o-2"):
        pool.submit(acme(first).hook, bet(txid, "10.00"))
    wait_for(lambda: len(wallet.ledger("bet")) == 2, what="both bets debited")
    first.kill()
    pool.shutdown()
    assert wallet.balance("p1") == Decimal("80.00")
    second = first.start() if store_url.startswith("sqlite") else gateways(config, wallet)
    client = acme(second)

    answers = []  # each retry is retriable (503) until the bet is settled, then final
    wait_for(lambda: answers.append(client.hook(bet("o-1", "10.00"))) or answers[-1].status_code < 500,
             what="the bet retry settled")
    assert {a.status_code for a in answers[:-1]} <= {503}
    assert_error(answers[-1], 409, "transaction_voided")
    refunds = []
    wait_for(lambda: refunds.append(client.hook({**bet("rf-2", "10.00"), "action": "refund",
                                                 "bet_transaction_id": "o-2"})) or refunds[-1].status_code < 500,
             what="the refund settled")
    assert all(r.json()["error"] == "transaction_in_progress" for r in refunds[:-1])
    assert refunds[-1].status_code == 200, refunds[-1].text

    wait_for(lambda: wallet.balance("p1") == Decimal("100.00"), what="both bets rolled back")
    assert sorted(unprefixed(e["txid"]) for e in wallet.ledger("rollback")) == ["o-1:rollback", "o-2:rollback"]
    assert client.hook({**bet("rf-2", "10.00"), "action": "refund", "bet_transaction_id": "o-2"}).content \
        == refunds[-1].content
    time.sleep(0.5)
    assert wallet.balance("p1") == Decimal("100.00") and len(wallet.ledger("rollback")) == 2


def test_redis_restart_keeps_queued_deliveries(wallet, gateways, redis_server, tmp_path):
    gw = gateways(gateway_config(redis_server.url, fast_mapping(tmp_path)), wallet)
    client = acme(gw)
    wallet.stop()
    amounts = {f"r-{i}": f"3.{i:02d}" for i in range(5)}
    for txid, amount in amounts.items():
        assert_error(client.hook(win(txid, amount)), 503, "upstream_unavailable")
    redis_server.stop()
    r = requests.get(gw.url + "/readyz", timeout=10)
    assert r.status_code == 503 and r.json()["checks"]["store"].startswith("unreachable")
    # Without its ledger the gateway moves no money: a retriable 503, the wallet untouched.
    assert_error(client.hook(bet("b-during", "1.00")), 503, "service_unavailable")
    redis_server.start()
    wallet.start()
    wait_for(lambda: requests.get(gw.url + "/readyz", timeout=10).status_code == 200, what="ready again")
    wait_for(lambda: queue_stats(gw)["depth"] == 0, what="queue drained")
    assert wallet.wins() == dict.fromkeys(amounts, 1)
    assert wallet.ledger("bet") == []
    assert wallet.balance("p1") == Decimal("100.00") + sum(Decimal(a) for a in amounts.values())


# -- dead letters: CLI and admin API -----------------------------------------------------
def test_dead_letters_listed_replayed_and_purged(wallet, gateways, store_url, tmp_path):
    config = gateway_config(store_url, fast_mapping(tmp_path, max_attempts=2))
    gw = gateways(config, wallet)
    client = acme(gw)
    wallet.stop()
    for txid in ("d-1", "d-2", "d-3"):
        assert_error(client.hook(win(txid, "4.00")), 503, "upstream_unavailable")
    wait_for(lambda: queue_stats(gw)["dead"] == 3, what="three dead letters")
    wait_for(lambda: "igsp_queue_dead_letters 3.0" in requests.get(gw.internal_url + "/metrics", timeout=10).text,
             what="the dead-letter gauge")
    assert queue_attempts(gw, "dead") == 3

    listed = dlq_cli(gw.config_path, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = {e["payload"]["hook"]["transaction_id"]: e for e in json.loads(listed.stdout)}
    assert set(entries) == {"d-1", "d-2", "d-3"}
    assert all(e["attempts"] == 2 and "not reachable" in e["last_error"] for e in entries.values())
    table = dlq_cli(gw.config_path, "list")
    assert table.returncode == 0 and all(e["id"] in table.stdout for e in entries.values())
    shown = dlq_cli(gw.config_path, "show", entries["d-2"]["id"], "--json")
    assert json.loads(shown.stdout)["payload"]["hook"]["amount"] == "4.00"
    missing = dlq_cli(gw.config_path, "replay", "no-such-id")
    assert missing.returncode == 1 and "no dead letter" in missing.stderr

    wallet.start()
    replayed = dlq_cli(gw.config_path, "replay", entries["d-1"]["id"])
    assert replayed.returncode == 0, replayed.stderr
    wait_for(lambda: wallet.wins() == {"d-1": 1}, what="d-1 delivered")
    assert client.hook(win("d-1", "4.00")).status_code == 200
    # d-2's win is still open (retries get 503): purge refuses it; only a resolution closes it.
    refused = dlq_cli(gw.config_path, "purge", entries["d-2"]["id"], "--json")
    assert refused.returncode == 1 and "still open" in refused.stderr and "resolve" in refused.stderr
    assert_error(client.hook(win("d-2", "4.00")), 503, "transaction_in_progress")
    resolved = dlq_cli(gw.config_path, "resolve", entries["d-2"]["id"], "--not-applied", "--json")
    assert resolved.returncode == 0, resolved.stderr
    assert json.loads(resolved.stdout)["status"] == 409
    assert_error(client.hook(win("d-2", "4.00")), 409, "transaction_not_applied")
    assert [e["id"] for e in json.loads(dlq_cli(gw.config_path, "list", "--json").stdout)] == [entries["d-3"]["id"]]

    # The same through the admin API, which wants the token.
    d3 = entries["d-3"]["id"]
    assert_error(admin(gw, "GET", "/admin/dlq", token=None), 401, "unauthorized")
    assert_error(admin(gw, "GET", "/admin/dlq", token="wrong-token"), 401, "unauthorized")
    assert_error(admin(gw, "POST", f"/admin/dlq/{d3}/replay", token="x" + ADMIN_TOKEN), 401, "unauthorized")
    assert_error(admin(gw, "POST", f"/admin/dlq/{d3}/resolve", token=None), 401, "unauthorized")
    assert [e["id"] for e in admin(gw, "GET", "/admin/dlq").json()["entries"]] == [d3]
    assert admin(gw, "GET", f"/admin/dlq/{d3}").json()["payload"]["hook"]["transaction_id"] == "d-3"
    assert_error(admin(gw, "GET", "/admin/dlq/no-such-id"), 404, "not_found")
    assert_error(admin(gw, "GET", "/admin/dlq?limit=zero"), 400, "invalid_request")
    assert_error(admin(gw, "GET", "/admin/dlq?limit=%C2%B2"), 400, "invalid_request")  # "²": a digit to isdigit()
    assert admin(gw, "POST", f"/admin/dlq/{d3}/replay").json() == {"replayed": d3}
    assert_error(admin(gw, "POST", f"/admin/dlq/{d3}/replay"), 404, "not_found")
    wait_for(lambda: wallet.wins() == {"d-1": 1, "d-3": 1}, what="d-3 delivered")

    wallet.stop()
    for txid in ("d-4", "d-5"):
        assert_error(client.hook(win(txid, "4.00")), 503, "upstream_unavailable")
    wait_for(lambda: queue_stats(gw)["dead"] == 2, what="two more dead letters")
    d4, d5 = dead_letter_of(gw, "d-4"), dead_letter_of(gw, "d-5")
    assert_error(admin(gw, "DELETE", f"/admin/dlq/{d4}"), 409, "transaction_conflict")
    assert admin(gw, "DELETE", "/admin/dlq").json() == {"purged": 0, "kept": [d4, d5]}
    # "Applied" needs the player's balance from the wallet, which is down: nothing changes.
    assert_error(resolve_admin(gw, d4, {"applied": True}), 503, "upstream_unavailable")
    assert queue_stats(gw)["dead"] == 2
    assert_error(client.hook(win("d-4", "4.00")), 503, "transaction_in_progress")
    for entry_id in (d4, d5):
        assert resolve_admin(gw, entry_id, {"applied": False}).status_code == 200
    assert_error(admin(gw, "DELETE", f"/admin/dlq/{d4}"), 404, "not_found")
    assert queue_stats(gw) == {"depth": 0, "oldest_age": 0.0, "dead": 0}
    wallet.start()
    for txid in ("d-4", "d-5"):
        assert_error(client.hook(win(txid, "4.00")), 409, "transaction_not_applied")
    assert wallet.wins() == {"d-1": 1, "d-3": 1}
    assert wallet.balance("p1") == Decimal("108.00")


def test_win_resolved_applied_answers_its_retries_200_with_the_balance(wallet, gateways, store_url, tmp_path):
    """A win the wallet applied while the gateway timed out: dead-lettered (the wallet does
    not dedupe). The operator finds it paid: from then on its retries get 200."""
    gw = gateways(gateway_config(store_url, fast_mapping(tmp_path)), wallet)
    client = acme(gw)
    wallet.fault("apply_then_hang", endpoint="win", seconds=3)
    assert_error(client.hook(win("w-paid", "5.00")), 504, "upstream_timeout")
    assert queue_stats(gw)["dead"] == 1 and wallet.wins() == {"w-paid": 1}
    assert_error(client.hook(win("w-paid", "5.00")), 503, "transaction_in_progress")
    entry_id = dead_letter_of(gw, "w-paid")
    usage = dlq_cli(gw.config_path, "resolve", entry_id)
    assert usage.returncode == 2 and "--applied or --not-applied" in usage.stderr
    # The balance is read from the legacy wallet through the mapping: the CLI needs its environment.
    blind = dlq_cli(gw.config_path, "resolve", entry_id, "--applied",
                    env={k: v for k, v in gw.env.items() if not k.startswith("HUB88_")})
    assert blind.returncode == 1 and "nothing was changed" in blind.stderr
    assert queue_stats(gw)["dead"] == 1

    first = dlq_cli(gw.config_path, "resolve", entry_id, "--applied", "--json", env=gw.env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert (report["outcome"], report["transaction_id"], report["status"], report["ledger"]) == (
        "applied", "w-paid", 200, "finished")
    answers = [client.hook(win("w-paid", "5.00")) for _ in range(3)]
    assert [a.status_code for a in answers] == [200] * 3 and len({a.content for a in answers}) == 1
    assert answers[0].content.decode() == report["answer"]
    assert str(decimal_json(answers[0])["balance"]) == "105.00" and decimal_json(answers[0])["transaction_id"]
    # Resolving again: the same result, never a different one; the other answer is refused.
    again = dlq_cli(gw.config_path, "resolve", entry_id, "--applied", "--json", env=gw.env)
    assert again.returncode == 0 and again.stdout == first.stdout
    other = dlq_cli(gw.config_path, "resolve", entry_id, "--not-applied")
    assert other.returncode == 1 and "resolved as applied" in other.stderr and "final" in other.stderr
    assert client.hook(win("w-paid", "5.00")).content == answers[0].content
    table = dlq_cli(gw.config_path, "resolve", entry_id, "--applied", env=gw.env)
    assert table.returncode == 0 and "resolved as applied" in table.stdout and "answers 200" in table.stdout
    assert_error(resolve_admin(gw, entry_id, {"applied": False}), 409, "transaction_conflict")
    assert resolve_admin(gw, entry_id, {"applied": True}).json() == report
    missing = dlq_cli(gw.config_path, "resolve", "no-such-id", "--applied")
    assert missing.returncode == 1 and "no dead letter" in missing.stderr
    assert queue_stats(gw) == {"depth": 0, "oldest_age": 0.0, "dead": 0}
    assert wallet.wins() == {"w-paid": 1} and wallet.balance("p1") == Decimal("105.00")


def test_win_resolved_not_applied_through_the_admin_api(wallet, gateways, store_url, tmp_path):
    gw = gateways(gateway_config(store_url, fast_mapping(tmp_path)), wallet)
    client = acme(gw)
    wallet.fault("http_500_html", endpoint="win")  # refused: nothing applied, but the gateway cannot know
    assert_error(client.hook(win("w-lost", "5.00")), 503, "upstream_unavailable")
    entry_id = dead_letter_of(gw, "w-lost")
    for bad in (b"", b"not json", {"applied": "yes"}, {"applied": 1}, {}, {"applied": True, "note": "x"}, [True]):
        assert_error(resolve_admin(gw, entry_id, bad), 400, "invalid_request")
    assert_error(resolve_admin(gw, "no-such-id", {"applied": False}), 404, "not_found")
    assert queue_stats(gw)["dead"] == 1

    first = resolve_admin(gw, entry_id, {"applied": False})
    assert first.status_code == 200, first.text
    report = first.json()
    assert (report["id"], report["outcome"], report["partner"], report["transaction_id"], report["status"]) == (
        entry_id, "not-applied", ACME["id"], "w-lost", 409)
    answers = [client.hook(win("w-lost", "5.00")) for _ in range(3)]
    assert {a.status_code for a in answers} == {409} and len({a.content for a in answers}) == 1
    assert answers[0].json()["error"] == "transaction_not_applied" and answers[0].text == report["answer"]
    # A resent resolve (its reply lost) gets the same answer; the other one is refused.
    assert resolve_admin(gw, entry_id, {"applied": False}).content == first.content
    refused = resolve_admin(gw, entry_id, {"applied": True})
    assert_error(refused, 409, "transaction_conflict")
    assert "not-applied" in refused.json()["message"]
    assert queue_stats(gw) == {"depth": 0, "oldest_age": 0.0, "dead": 0}
    assert wallet.wins() == {} and wallet.balance("p1") == Decimal("100.00")
    # A new transaction for the same win goes through once.
    assert client.hook(win("w-lost-2", "5.00")).status_code == 200
    assert wallet.wins() == {"w-lost-2": 1}


def refund(txid: str, bet_txid: str, amount: str) -> dict:
    return {**bet(txid, amount), "action": "refund", "bet_transaction_id": bet_txid}


def test_refund_resolved_not_applied_lets_a_new_refund_refund_the_bet(wallet, gateways, store_url, tmp_path):
    gw = gateways(gateway_config(store_url, fast_mapping(tmp_path)), wallet)
    client = acme(gw)
    assert client.hook(bet("b-1", "10.00")).status_code == 200
    wallet.fault("http_500_html", endpoint="rollback")
    assert_error(client.hook(refund("rf-1", "b-1", "10.00")), 503, "upstream_unavailable")
    entry_id = dead_letter_of(gw, "rf-1")
    # The bet is held by rf-1 until it is resolved.
    assert_error(client.hook(refund("rf-2", "b-1", "10.00")), 409, "transaction_already_refunded")

    resolved = dlq_cli(gw.config_path, "resolve", entry_id, "--not-applied", "--json")
    assert resolved.returncode == 0, resolved.stderr
    assert_error(client.hook(refund("rf-1", "b-1", "10.00")), 409, "transaction_not_applied")
    r = client.hook(refund("rf-3", "b-1", "10.00"))
    assert r.status_code == 200 and str(decimal_json(r)["balance"]) == "100.00", r.text
    assert [unprefixed(e["txid"]) for e in wallet.ledger("rollback")] == ["rf-3"]
    assert_error(client.hook(refund("rf-4", "b-1", "10.00")), 409, "transaction_already_refunded")
    assert wallet.balance("p1") == Decimal("100.00") and queue_stats(gw)["dead"] == 0


def test_purge_keeps_open_transactions_and_drops_final_ones(wallet, gateways, store_url, tmp_path):
    gw = gateways(gateway_config(store_url, fast_mapping(tmp_path, max_attempts=2)), wallet)
    client = acme(gw)
    wallet.fault("http_500_html", endpoint="bet")  # unknown outcome: voided, a rollback queued
    assert_error(client.hook(bet("x-bet", "10.00")), 503, "upstream_unavailable")
    wallet.stop()  # the rollback, and a win, run out of attempts
    assert_error(client.hook(win("x-win", "3.00")), 503, "upstream_unavailable")
    wait_for(lambda: queue_stats(gw)["dead"] == 2, what="two dead letters")
    rollback, open_win = dead_letter_of(gw, "x-bet"), dead_letter_of(gw, "x-win")

    # "Not applied" is no answer for a rollback: the player would stay debited.
    refused = dlq_cli(gw.config_path, "resolve", rollback, "--not-applied")
    assert refused.returncode == 1 and "replay" in refused.stderr
    purged = dlq_cli(gw.config_path, "purge", "--all", "--json")
    assert purged.returncode == 1 and json.loads(purged.stdout) == {"purged": 1, "kept": [open_win]}
    table = dlq_cli(gw.config_path, "purge", "--all")
    assert table.returncode == 1 and open_win in table.stdout and "resolve" in table.stdout
    assert [e["id"] for e in json.loads(dlq_cli(gw.config_path, "list", "--json").stdout)] == [open_win]
    assert_error(client.hook(bet("x-bet", "10.00")), 409, "transaction_voided")
    assert_error(client.hook(win("x-win", "3.00")), 503, "transaction_in_progress")
    # A purged entry stays purged: it cannot be resolved afterwards.
    late = dlq_cli(gw.config_path, "resolve", rollback, "--applied")
    assert late.returncode == 1 and "purged" in late.stderr

    assert dlq_cli(gw.config_path, "resolve", open_win, "--not-applied").returncode == 0
    again = dlq_cli(gw.config_path, "purge", "--all", "--json")
    assert again.returncode == 0 and json.loads(again.stdout) == {"purged": 0, "kept": []}
    assert queue_stats(gw) == {"depth": 0, "oldest_age": 0.0, "dead": 0}
    assert_error(client.hook(win("x-win", "3.00")), 409, "transaction_not_applied")
    wallet.start()
    assert wallet.balance("p1") == Decimal("100.00") and wallet.wins() == {}


def test_admin_api_is_absent_without_a_token(wallet, gateways, tmp_path):
    config = gateway_config(f"sqlite:///{tmp_path}/g.db")
    del config["admin"]
    gw = gateways(config, wallet)
    for method, path in (("GET", "/admin/dlq"), ("GET", "/admin/queue"), ("DELETE", "/admin/dlq")):
        assert_error(admin(gw, method, path), 404, "not_found")


def test_config_refuses_a_lease_a_delivery_could_outlast(tmp_path, hub88_keys):
    env = {"HUB88_WALLET_URL": "http://127.0.0.1:9", "HUB88_PRIVATE_KEY": hub88_keys[0]}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config("redis://127.0.0.1:9/0", queue={"lease_seconds": 2.5})))
    with pytest.raises(ConfigError, match=r"queue.lease_seconds: got 2.5: a lease must be longer than twice "
                                          r"the slowest legacy timeout \(1.5 s in mapping 'hub88-wallet'\)"):
        load_config(path, env)
    path.write_text(yaml.safe_dump(gateway_config("redis://127.0.0.1:9/0", queue={"lease_seconds": 4},
                                                  store={"namespace": "gw-blue"})))
    config = load_config(path, env)
    assert (config.queue_lease_seconds, config.store_namespace) == (4.0, "gw-blue")
