"""Process life cycle: graceful shutdown on SIGTERM and pre-forked workers (--workers).

A SIGTERM first turns /readyz to 503 "draining" while the gateway keeps serving for the
grace (a second SIGTERM, or SIGINT, ends it); then it lets the request in flight and the
queue delivery in progress finish, refuses new connections, and exits 0 (a rolling
restart behind a load balancer: tests/test_rollout.py). With two workers, /metrics adds both processes up — any
worker answers the scrape — and a worker that dies is replaced without losing counts.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from decimal import Decimal
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from tests.conftest import ACME, platform_config
from tests.ops_support import Metrics, wait_for, write_mapping
from tests.support import ROOT, IgspClient


def bet(txid, amount=10, player="p1"):
    return {"action": "bet", "player_id": player, "amount": amount, "currency": "EUR", "game_id": "vs20olympgate",
            "transaction_id": txid, "session_id": "s-1", "type": "bet", "round_id": "r-1"}


def balance(player="p1"):
    return {"action": "balance", "player_id": player, "currency": "EUR"}


def refused(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return False
    except (ConnectionRefusedError, ConnectionResetError):
        # Reset: the connection reached the backlog just as the listener closed.
        return True


def test_sigterm_finishes_the_request_in_flight_and_refuses_new_connections(gateway_factory, hub88, tmp_path):
    slow = write_mapping(tmp_path / "slow-wallet.yaml", timeout=15)
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db", server={"drain_seconds": 15},
                             queue={"lease_seconds": 40})  # longer than twice the slowest call
    config["partners"][0]["mapping"] = str(slow)
    gw = gateway_factory(config)
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    hub88.player("p1", "100.00")
    hub88.fault("delay", endpoint="bet", seconds=3)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow_bet = pool.submit(acme.hook, bet("tx-slow"), timeout=30)
        wait_for(lambda: hub88.state()["calls"].get("bet") == 1, what="the bet to reach the wallet")
        gw.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refused(gw.url), what="new connections to be refused")
        response = slow_bet.result(timeout=30)
    assert response.status_code == 200, response.text
    assert str(response.json()["balance"]) in ("90", "90.0", "90.00")
    assert hub88.balance("p1") == Decimal("90.00")
    assert gw.proc.wait(timeout=30) == 0
    lines = gw.log_lines()
    draining = next(line for line in lines if line["msg"] == "draining")
    assert draining["inflight"] == 1
    assert [line for line in lines if line["msg"] == "request"][-1]["status"] == 200
    assert lines[-1]["msg"] == "stopped"


def test_sigterm_turns_readyz_to_draining_and_keeps_serving_for_the_grace(gateway_factory, hub88, tmp_path):
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db", server={"shutdown_grace_seconds": 60})
    gw = gateway_factory(config)
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])  # one keep-alive connection
    hub88.player("p1", "100.00")
    assert acme.hook(balance()).status_code == 200
    for base in (gw.url, gw.internal_url):
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
    gw.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: requests.get(f"{gw.url}/readyz", timeout=5).status_code == 503, what="readyz to fail")
    for base in (gw.url, gw.internal_url):
        r = requests.get(f"{base}/readyz", timeout=5)
        assert (r.status_code, r.json()["status"], r.json()["checks"]) == (503, "draining", {"shutdown": "draining"})
        assert requests.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}  # alive: no restart
    # Still serving, on the connection opened before the signal and on new ones; every
    # answer now closes its connection, so keep-alive clients come back through the balancer.
    r = acme.hook(bet("tx-grace"))
    assert r.status_code == 200, r.text
    assert r.headers["Connection"] == "close"
    assert IgspClient(gw.url, ACME["api_key"], ACME["secret"]).hook(balance()).status_code == 200
    assert hub88.balance("p1") == Decimal("90.00")
    assert Metrics.scrape(gw.internal_url).value("igsp_requests_total", outcome="ok") == 3
    assert not refused(gw.url)
    # A second SIGTERM skips what is left of the grace (60 s: longer than this wait).
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(timeout=30) == 0
    lines = gw.log_lines()
    assert [line["msg"] for line in lines if line["msg"] in ("draining", "stopping", "stopped")] == [
        "draining", "stopping", "stopped"]
    draining = next(line for line in lines if line["msg"] == "draining")
    assert (draining["shutdown_grace_seconds"], draining["drain_seconds"]) == (60, 5)


def test_sigint_drains_at_once(gateway_factory, hub88, tmp_path):
    """Ctrl-C in a terminal: nobody routes by /readyz there, so no grace."""
    gw = gateway_factory(platform_config(f"sqlite:///{tmp_path}/gateway.db", server={"shutdown_grace_seconds": 60}))
    gw.proc.send_signal(signal.SIGINT)
    assert gw.proc.wait(timeout=30) == 0
    draining = next(line for line in gw.log_lines() if line["msg"] == "draining")
    assert draining["shutdown_grace_seconds"] == 0


def test_sigterm_still_records_a_bet_whose_client_reset_the_connection(gateway_factory, hub88, tmp_path):
    """The client is gone, the wallet has the bet: the store must not close under it."""
    import struct

    from adapters.codecs import dumps
    from gateway import signing

    slow = write_mapping(tmp_path / "slow-wallet.yaml", timeout=15)
    db = tmp_path / "gateway.db"
    config = platform_config(f"sqlite:///{db}", server={"drain_seconds": 15},
                             queue={"lease_seconds": 40})
    config["partners"][0]["mapping"] = str(slow)
    gw = gateway_factory(config)
    hub88.player("p1", "100.00")
    hub88.fault("delay", endpoint="bet", seconds=2)
    body = dumps(bet("tx-gone"))
    headers = signing.signed_headers(ACME["api_key"], ACME["secret"], body)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    parts = urlsplit(gw.url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(f"POST /platforms/game-provider/hooks HTTP/1.1\r\nHost: x\r\n{head}"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    wait_for(lambda: hub88.state()["calls"].get("bet") == 1, what="the bet to reach the wallet")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset: the client will never read the answer
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(timeout=30) == 0
    assert hub88.balance("p1") == Decimal("90.00")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT state, status FROM ledger WHERE txid='tx-gone'").fetchall() == [("done", 200)]


def test_sigterm_lets_the_current_queue_delivery_finish(gateway_factory, hub88, tmp_path):
    def slow_refunds(data):
        data["operations"]["refund"]["timeout"] = 10  # the compensating rollback may take its time

    mapping = write_mapping(tmp_path / "wallet.yaml", timeout=1.0, edit=slow_refunds)
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db", server={"drain_seconds": 15})
    config["partners"][0]["mapping"] = str(mapping)
    gw = gateway_factory(config)
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    hub88.player("p1", "100.00")
    hub88.fault("apply_then_hang", endpoint="bet", seconds=3)  # debited, then no answer: a rollback is queued
    assert acme.hook(bet("tx-lost")).status_code == 504
    hub88.fault("delay", endpoint="rollback", seconds=3)
    wait_for(lambda: hub88.state()["calls"].get("rollback") == 1, what="the rollback delivery to start")
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(timeout=30) == 0
    # The delivery finished before the exit: the wallet rolled the bet back and the
    # queue no longer holds it.
    assert hub88.balance("p1") == Decimal("100.00")
    assert [e["kind"] for e in hub88.ledger()] == ["bet", "rollback"]
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        assert db.execute("SELECT COUNT(*) FROM queue").fetchone()[0] == 0


@pytest.fixture
def two_workers(gateway_factory, tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"from a previous run")
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db")
    gw = gateway_factory(config, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, extra_args=["--workers", "2"])
    gw.metrics_dir = metrics_dir
    return gw


def worker_pids(gw) -> set[int]:
    return {line["pid"] for line in gw.log_lines() if line["msg"] == "listening"}


def test_two_workers_add_up_on_scrape(hub88, two_workers):
    gw = two_workers
    assert not (gw.metrics_dir / "counter_999999.db").exists()  # a previous run's samples are cleared
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    hub88.player("p1", "100.00")
    sent = 40
    for _ in range(sent):  # a new connection each time, so the kernel spreads them
        assert acme.hook(balance(), headers={"Connection": "close"}).status_code == 200
    served = wait_for(lambda: len(pids := [line["pid"] for line in gw.log_lines() if line["msg"] == "request"])
                      >= sent and pids, what="every access line")
    assert len(served) == sent and len(set(served)) == 2 and set(served) == worker_pids(gw)
    for _ in range(4):  # whichever worker answers the scrape, the total is the same
        m = Metrics.scrape(gw.internal_url)
        assert m.value("igsp_requests_total", partner="acme-games", operation="balance", outcome="ok") == sent
        assert m.value("igsp_request_duration_seconds_count", operation="balance") == sent
        assert m.value("igsp_upstream_duration_seconds_count", mapping="hub88-wallet", operation="balance") == sent

    # Gauges are not summed over workers: both see the same store, one value is exported.
    hub88.fault("delay", endpoint="bet", seconds=2.5)
    assert acme.hook(bet("tx-lost")).status_code == 504
    m = wait_for(lambda: (m := Metrics.scrape(gw.internal_url)).value("igsp_queue_depth") == 1 and m,
                 what="the queued rollback in the gauge")
    assert len(m.series("igsp_queue_depth")) == 1
    wait_for(lambda: Metrics.scrape(gw.internal_url).value("igsp_queue_attempts_total", outcome="delivered") == 1,
             what="the rollback delivered by either worker")


def test_a_dead_worker_is_replaced_and_its_counts_kept(hub88, two_workers):
    gw = two_workers
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    hub88.player("p1", "100.00")
    for _ in range(20):
        assert acme.hook(balance(), headers={"Connection": "close"}).status_code == 200
    first = worker_pids(gw)
    victim = max(first, key=lambda pid: sum(1 for line in gw.log_lines()
                                            if line["msg"] == "request" and line["pid"] == pid))
    assert (gw.metrics_dir / f"counter_{victim}.db").exists()
    wait_for(lambda: (gw.metrics_dir / f"gauge_livemostrecent_{victim}.db").exists(), what="the victim's gauges")
    os.kill(victim, signal.SIGKILL)
    replaced = wait_for(lambda: len(pids := worker_pids(gw)) == 3 and pids, what="a replacement worker")
    assert any(line["msg"] == "worker exited unexpectedly; starting a new one" and line["worker_pid"] == victim
               for line in gw.log_lines())
    # Its live gauges are gone, its counters stay: nothing it counted is lost.
    assert not (gw.metrics_dir / f"gauge_livemostrecent_{victim}.db").exists()
    assert (gw.metrics_dir / f"counter_{victim}.db").exists()
    for _ in range(20):
        assert acme.hook(balance(), headers={"Connection": "close"}).status_code == 200
    assert Metrics.scrape(gw.internal_url).value("igsp_requests_total", outcome="ok") == 40
    assert len(replaced - first) == 1
    assert gw.stop() == 0


def test_the_metrics_directory_made_for_workers_is_removed_at_exit(gateway_factory, hub88, tmp_path):
    gw = gateway_factory(platform_config(f"sqlite:///{tmp_path}/gateway.db"), extra_args=["--workers", "2"])
    made = next(line["metrics_dir"] for line in gw.log_lines() if line["msg"] == "workers started")
    assert os.path.isdir(made)
    assert Metrics.scrape(gw.internal_url).value("igsp_signature_failures_total") == 0
    assert gw.stop() == 0
    assert not os.path.exists(made)


def test_sighup_to_the_parent_reloads_every_worker(hub88, two_workers):
    gw = two_workers
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: Metrics.scrape(gw.internal_url).value("igsp_config_reloads_total", outcome="applied") == 2,
             what="both workers to reload")
    # The counter moves just before the log line is written: poll the log too.
    reloaded = wait_for(lambda: len(pids := {line["pid"] for line in gw.log_lines()
                                             if line["msg"] == "config reloaded"}) >= 2 and pids,
                        what="both workers' reload lines")
    assert reloaded == worker_pids(gw)
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    hub88.player("p1", "100.00")
    assert acme.hook(balance()).status_code == 200
    assert gw.stop() == 0


def test_workers_that_cannot_start_make_the_server_exit_1(hub88, hub88_keys, tmp_path):
    (tmp_path / "a-directory").mkdir()
    config = platform_config(f"sqlite:///{tmp_path}/a-directory")  # the store cannot open
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HUB88_WALLET_URL": hub88.url, "HUB88_PRIVATE_KEY": hub88_keys[0]}
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path), "--workers", "2"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "READY" not in result.stdout
    assert "a worker failed to start" in result.stderr
    assert all(line.startswith("{") for line in result.stderr.splitlines())  # JSON lines, no bare traceback


PROCESS_METRICS = ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
                   "process_open_fds", "process_max_fds", "process_start_time_seconds")


def process_metrics_by_pid(m: Metrics) -> dict[str, dict[int, float]]:
    return {name: {int(labels["pid"]): value for n, labels, value in m.samples if n == name}
            for name in PROCESS_METRICS}


def test_workers_keep_every_process_metric(hub88, two_workers):
    """Multiprocess mode has no process metrics of its own: every live process's are added,
    labelled pid, whichever worker answers the scrape; a dead worker's go with it."""
    gw = two_workers
    workers = worker_pids(gw)
    assert len(workers) == 2
    expected = workers | {gw.proc.pid}  # the parent counts too: it is part of the pod's memory
    for _ in range(4):
        found = process_metrics_by_pid(Metrics.scrape(gw.internal_url))
        assert {name: set(pids) for name, pids in found.items()} == {name: expected for name in PROCESS_METRICS}
        assert all(v > 0 for v in found["process_resident_memory_bytes"].values())
        assert all(found["process_open_fds"][pid] < found["process_max_fds"][pid] for pid in expected)

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    replaced = wait_for(lambda: len(pids := worker_pids(gw)) == 3 and pids, what="a replacement worker")
    now = (replaced - {victim}) | {gw.proc.pid}
    wait_for(lambda: set(process_metrics_by_pid(Metrics.scrape(gw.internal_url))["process_cpu_seconds_total"]) == now,
             what="the dead worker's process metrics to go and its replacement's to come")
    assert gw.stop() == 0
