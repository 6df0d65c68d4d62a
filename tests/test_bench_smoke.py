"""The benchmark runs end to end and produces numbers (a few seconds; no timing is judged).

``python -m bench --smoke`` starts the stub wallet, the reference peer and the gateway
(SQLite, and Redis when that store exists) on loopback, drives each for a second,
measures latency at the fixed rate, and writes the JSON report read here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT


@pytest.mark.parametrize("client", [[], ["--python-client"]], ids=["wrk-if-installed", "python-client"])
def test_bench_smoke_produces_numbers(tmp_path, client):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--no-install", "--out", str(out), *client],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "x peer" in run.stdout and str(out) in run.stdout  # the table was printed
    results = json.loads(out.read_text())

    gateways = [name for name in results["throughput"] if name.startswith("gateway")]
    assert "gateway-sqlite" in gateways
    if "gateway-redis" not in gateways:
        assert any(note.startswith("redis: skipped") for note in results["plan"]["notes"])
    for name in ("direct", "peer", *gateways):
        measured = results["throughput"][name]
        assert measured["requests"] > 0 and measured["rps"] > 0 and measured["cpu_us_per_request"] > 0
        assert measured["errors"] == 0, (name, measured)
        latency = results["latency"][name]
        assert latency["latency"]["count"] > 0 and latency["non_2xx"] == 0 and latency["failed"] == 0
        assert 0 < latency["latency"]["p50_ms"] <= latency["latency"]["p99_ms"]
    for name in gateways:
        ratio = results["ratios"][name]
        assert ratio["vs_peer"] > 0 and ratio["vs_direct"] > 0
        assert set(results["added_latency"][name]) == {"p50_ms", "p99_ms"}
    # Every feature ran on every request the gateway answered: ledger, metrics, access log (and no
    # signature was stored: the default keeps none, a money hook's retry is the ledger's to answer).
    checks = results["checks"]["gateway-sqlite"]
    answered = checks["metrics_requests_ok"]
    assert answered > 0
    assert checks["ledger_rows"] == checks["access_log_lines"] == answered
    assert checks["replay_keys"] == 0


def test_overload_run_on_its_own_reconciles(tmp_path):
    """``--only overload``: the ramp, the runs with and without limits, and the wallet's tally
    reconciled against the answers. Speed is not judged (the machine is shared); that no
    answered bet is missing from the wallet and none is paid twice is."""
    out = tmp_path / "overload.json"
    run = subprocess.run([sys.executable, "-m", "bench", "--only", "overload", "--smoke", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verdict (early)" in run.stdout
    results = json.loads(out.read_text())
    assert results["peak_goodput"] > 0 and len(results["ramp"]) == 3
    for name in ("unlimited", "limited", "early"):
        summary = results[name]
        rec = summary["reconciliation"]
        assert rec["ok_bets_missing_in_wallet"] == 0 and rec["bets_paid_twice"] == 0
        assert rec["shed_bets_in_wallet"] == 0  # a shed bet never reached the wallet
        assert sum(summary["answers"].values()) == summary["requests"]
        assert set(summary["answers"]) <= {"200", "503", "not_answered_in_time", "connection_failed"}
    for name in ("limited", "early"):  # (without limits, a busy machine may answer none)
        assert results[name]["reconciliation"]["ok_answers"] > 0
    for name in ("aiohttp", "front"):  # the direct measure of a shed request's cost: every answer a 503
        cost = results["shed_cost"][name]
        assert cost["answers"] > 0 and cost["all_shed"] and cost["cpu_us_per_request"] > 0


def test_capacity_run_counts_redis_work_per_bet(tmp_path):
    """``--only capacity``: on a standalone Redis and on a Redis Cluster (3 masters + 3
    replicas), every bet answered and paid once, and the store's two ledger scripts per bet
    (begin, finish) show in Redis's own command statistics."""
    out = tmp_path / "capacity.json"
    run = subprocess.run([sys.executable, "-m", "bench", "--only", "capacity", "--smoke", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    stores = json.loads(out.read_text())["stores"]
    assert set(stores) == {"redis", "cluster"}
    for store, results in stores.items():
        assert results["every_bet_paid_once"] is True, store
        assert results["masters"] == (3 if store == "cluster" else 1)
        for measured in results["passes"]:
            assert measured["answers"] == {"200": measured["bets"]}
            # Two per bet (begin, finish), plus the retry-queue worker's polling while the pass runs.
            assert 1.9 <= measured["redis_scripts_per_bet"] <= 2.5, (store, measured)
            assert measured["redis_commands_executed_per_bet"] > measured["redis_scripts_per_bet"]
            assert measured["redis_round_trips_per_bet"] > 0 and measured["gateway_cpu_us_per_bet"] > 0
            assert 0 < measured["redis_busiest_master_cpu_us_per_bet"] <= measured["redis_cpu_us_per_bet"]
        one, many = results["passes"]
        assert one["connections"] == 1 and one["redis_round_trips_per_bet"] >= 1.9  # nothing to batch with
    # A cluster sends each script on its own (redis-py's cluster pipeline refuses EVALSHA):
    # nothing is batched, however many bets are in flight.
    assert stores["cluster"]["passes"][1]["redis_round_trips_per_bet"] >= 1.9


def test_cluster_run_measures_one_and_two_gateway_processes(tmp_path):
    """``--only cluster``: a Redis Cluster of 3 masters + 3 replicas started by the bench, one
    then two gateway processes over it, req/s and CPU per request of each and their ratio, and
    every bet answered 200 recorded once on the cluster. Speed is not judged."""
    out = tmp_path / "cluster.json"
    run = subprocess.run([sys.executable, "-m", "bench", "--only", "cluster", "--smoke", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 processes / 1:" in run.stdout
    results = json.loads(out.read_text())
    assert set(results["processes"]) == {"1", "2"}
    for measured in results["processes"].values():
        assert measured["requests"] > 0 and measured["rps"] > 0 and measured["errors"] == 0, measured
        assert measured["cpu_us_per_request"] > 0 and measured["redis_cpu_us_per_request"] > 0
        assert 0 < measured["busiest_master_share"] <= 1
    assert results["ratio_2_over_1"] > 0 and results["cpu_bound_estimate_2_over_1"] > 0
    assert results["bets_answered_ok"] > 0 and results["every_answered_bet_recorded_once"] is True
