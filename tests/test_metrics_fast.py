"""The metrics' rules, without a process: which outcome each iGSP error code counts as (and
that the README says the same), and which processes the multiprocess collector describes."""

from __future__ import annotations

import os
import re

import pytest

from gateway.errors import ERROR_CODES
from gateway.faces.provider import RESOURCE_METHODS
from gateway.ops import metrics
from gateway.spec import HOOK_SCHEMAS
from tests.support import ROOT


def readme_outcomes() -> dict[str, str]:
    """code -> outcome, from the README's outcome table."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| outcome | error codes |"):]
    found: dict[str, str] = {}
    for line in table.splitlines()[2:]:
        if not line.strip().startswith("|"):
            break
        outcome_cell, codes_cell = line.strip().strip("|").split("|")
        outcome = re.match(r"\s*`(\w+)`", outcome_cell).group(1)
        for code in re.findall(r"`(\w+)`", codes_cell):
            assert code not in found, f"{code} is listed twice"
            found[code] = outcome
    return found


def test_every_error_code_has_an_outcome_and_the_readme_agrees():
    assert set(metrics.OUTCOME_OF_CODE) == set(ERROR_CODES)
    assert readme_outcomes() == metrics.OUTCOME_OF_CODE
    assert set(metrics.OUTCOME_OF_CODE.values()) == set(metrics.OUTCOMES) - {"ok"}


@pytest.mark.parametrize("code", sorted(metrics.DECLINES))
def test_business_declines_are_never_failures(code):
    assert metrics.outcome(ERROR_CODES[code], code) == "declined"


@pytest.mark.parametrize(("status", "code", "upstream", "expected"), [
    (200, None, False, "ok"),
    (402, "insufficient_funds", False, "declined"),
    (200, "insufficient_funds", False, "declined"),  # a legacy-format refusal answered 200
    (200, "upstream_timeout", False, "upstream_error"),
    (400, "invalid_request", False, "caller_error"),
    (429, "rate_limited", False, "caller_error"),
    (401, "unauthorized", False, "auth_failure"),
    (403, "invalid_signature", False, "auth_failure"),
    (503, "upstream_unavailable", False, "upstream_error"),
    (504, "upstream_timeout", False, "upstream_error"),
    (503, "transaction_in_progress", False, "upstream_error"),
    (500, "internal_error", False, "internal_error"),
    (503, "service_unavailable", False, "internal_error"),
    (500, "internal_error", True, "upstream_error"),  # an UpstreamError says so whatever its code
    # No known code: the status decides.
    (404, None, False, "caller_error"),
    (403, None, False, "auth_failure"),
    (502, "not-a-code", False, "upstream_error"),
    (500, None, False, "internal_error"),
])
def test_outcome(status, code, upstream, expected):
    assert metrics.outcome(status, code, upstream) == expected


def test_face_operations_are_the_protocol_ones():
    assert metrics.PLATFORM_OPERATIONS == tuple(HOOK_SCHEMAS)
    assert set(RESOURCE_METHODS) == set(metrics.PROVIDER_OPERATIONS)


def fake_proc(root, pid: int, parent: int, state: str = "S") -> None:
    d = root / str(pid)
    (d / "fd").mkdir(parents=True)
    for n in range(3):
        (d / "fd" / str(n)).write_text("")
    fields = [state, str(parent)] + ["0"] * 17 + ["100", "2000", "30"] + ["0"] * 20
    (d / "stat").write_text(f"{pid} (python (worker)) " + " ".join(fields))
    (d / "limits").write_text("Limit Soft Hard Units\nMax open files 1024 4096 files\n")


def test_gateway_processes_are_this_one_its_parent_and_its_live_siblings(tmp_path):
    proc, files = tmp_path / "proc", tmp_path / "metrics"
    files.mkdir()
    (proc).mkdir()
    (proc / "stat").write_text("cpu 0 0 0 0\nbtime 1700000000\n")
    me, parent = os.getpid(), os.getppid()
    sibling, zombie, stranger, gone = 4_000_001, 4_000_002, 4_000_003, 4_000_004
    fake_proc(proc, me, parent)
    fake_proc(proc, parent, 1)
    fake_proc(proc, sibling, parent)
    fake_proc(proc, zombie, parent, state="Z")
    fake_proc(proc, stranger, 4242)
    for pid in (me, parent, sibling, zombie, stranger, gone):
        (files / f"counter_{pid}.db").write_bytes(b"")
    (files / f"gauge_livemostrecent_{sibling}.db").write_bytes(b"")
    (files / "not-a-metrics-file.txt").write_text("")

    collector = metrics.GatewayProcesses(str(files), proc=str(proc))
    assert collector.pids() == sorted({me, parent, sibling})
    families = {f.name: f for f in collector.collect()}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds", "process_max_fds",
            "process_start_time_seconds", "process_virtual_memory_bytes"} <= set(families)
    assert families["process_cpu_seconds"].type == "counter"
    fds = {s.labels["pid"]: s.value for s in families["process_open_fds"].samples}
    assert fds == {str(pid): 3 for pid in (me, parent, sibling)}
    assert {s.name for s in families["process_cpu_seconds"].samples} == {"process_cpu_seconds_total"}
