"""The short soak: ~20 s of mixed load through two gateway processes, then reconciliation.

``bench/soak.py`` does the work (run it with ``--duration 600`` for the long version).
Money must reconcile exactly with the wallet's own ledger, and memory must not grow.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import ROOT


def test_short_soak_loses_and_doubles_nothing():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", "20", "--rate", "120", "--faults", "0.02",
         "--seed", "7", "--json"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["gateways"] == 2
    assert report["lost"] == [] and report["doubled"] == [], report
    assert report["balance_mismatches"] == {}, report
    assert report["inconsistent_replays"] == [] and report["internal_errors"] == 0, report
    assert report["drained"] and report["drained_after_final_pass"], report
    assert report["gateway_tracebacks"] == 0
    # The faults really happened and were answered as retriable errors.
    assert report["faults_injected"] > 0
    assert any(":5" in key for key in report["answers"]), report["answers"]
    assert report["money_transactions"] > 500
    # No unbounded growth: after warm-up, RSS of each gateway stays within a few MiB.
    assert report["rss_growth_after_warmup_kib"] < 16 * 1024, report["rss_kib"]
    assert report["ok"] and done.returncode == 0
