"""``igsp-gateway chaos`` against the shipped wallet mappings and their simulators.

Real processes on loopback: each simulator (a legacy wallet with its bad habits) runs as
its own process, chaos as another, and chaos starts its own gateway process behind its
fault proxy. Every shipped wallet mapping must pass every fault; a deliberately unsafe
mapping must fail with the money it got wrong; the demo's ``--info`` points chaos at the
demo. A new wallet mapping joins by adding its simulator to ``SIMULATORS``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import defusedxml.ElementTree as SafeET
import pytest
import requests
import yaml

from gateway.engine.mapping import load_mapping
from gateway.engine.yamlload import load_yaml
from gateway.tools.chaos.proxy import FAULTS
from gateway.tools.chaos.scenario import OPERATION_OF as TARGETS
from gateway.tools.simulators import hub88_wallet, spawn
from tests.support import ROOT

PLAYER, CURRENCY, START = "chaos-player", "EUR", "100.00"
API_KEY, SECRET = "chaos-key-0001", "chaos-secret-0123456789abcdef"
LINE = re.compile(r"^(PASS|FAIL|SKIP)  (\w+) on (bet|win without a bet|win|refund)(?:, call (\d)/\d)? +expected (.+?), "
                  r"actual ([-0-9.]+) EUR, difference ([-+0-9.]+)[^\n]*\n(?: {6}(\S[^\n]*))?", re.M)
#: the first answer the gateway gave when the fault hit a bet: proof it met that very fault
FIRST_ANSWER = {"lost_answer": "503", "late_answer": "504", "error_after_apply": "503", "reset_mid_body": "502",
                "trickle": "504"}


def hub88(tmp_path: Path) -> tuple[subprocess.Popen, dict]:
    private_pem, public_pem = hub88_wallet.generate_keypair()
    (tmp_path / "hub88.pem").write_text(private_pem)
    (tmp_path / "hub88.pub").write_text(public_pem)
    proc, url = spawn("hub88_wallet", "--public-key-file", str(tmp_path / "hub88.pub"),
                      "--player", f"{PLAYER}:{START}:{CURRENCY}")
    return proc, {"HUB88_WALLET_URL": url, "HUB88_PRIVATE_KEY": str(tmp_path / "hub88.pem")}


def soap(tmp_path: Path) -> tuple[subprocess.Popen, dict]:
    proc, url = spawn("soap_wallet", "--password", "chaos-soap-password", "--player", f"{PLAYER}:{START}:{CURRENCY}")
    return proc, {"SOAP_WALLET_URL": url, "SOAP_WALLET_PASSWORD": "chaos-soap-password"}


def betref(tmp_path: Path) -> tuple[subprocess.Popen, dict]:
    proc, url = spawn("betref_wallet", "--token", "chaos-betref-token", "--player", f"{PLAYER}:{START}:{CURRENCY}")
    return proc, {"BETREF_WALLET_URL": url, "BETREF_API_TOKEN": "chaos-betref-token"}


def hmacsha1(tmp_path: Path) -> tuple[subprocess.Popen, dict]:
    key, merchant = "chaos-hmacsha1-key-0123456789", "chaos-merchant"
    proc, url = spawn("hmacsha1_wallet", "--key", key, "--merchant-id", merchant,
                      "--player", f"{PLAYER}:{START}:{CURRENCY}")
    return proc, {"HMACSHA1_WALLET_URL": url, "HMACSHA1_WALLET_KEY": key, "HMACSHA1_WALLET_MERCHANT_ID": merchant}


#: mapping name -> starts its simulator with PLAYER funded; returns (process, the variables the mapping reads)
SIMULATORS = {"hub88-wallet": hub88, "soap-wallet": soap, "betref-wallet": betref, "hmacsha1-wallet": hmacsha1}


def load_mapping_of(name: str, variables: dict):
    return load_mapping(ROOT / "mappings" / f"{name}.yaml", {**os.environ, **variables})


def wallet_mappings() -> list[Path]:
    return sorted(p for p in (ROOT / "mappings").glob("*.yaml") if load_yaml(p).get("face") == "platform")


def write_config(tmp_path: Path, mapping: Path) -> Path:
    config = {"version": 1, "partners": [{"id": "chaos-games", "face": "platform", "mapping": str(mapping),
                                          "api_key": API_KEY, "secrets": [SECRET]}]}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def chaos(config: Path, env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "chaos", "--config", str(config), "--partner",
                           "chaos-games", "--player-id", PLAYER, "--currency", CURRENCY, *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def wallet_balance(env: dict) -> Decimal:
    url = next(v for k, v in env.items() if k.endswith("_URL"))
    return Decimal(requests.get(url + "/_control/state", timeout=10).json()["players"][PLAYER]["balance"])


@pytest.fixture
def simulator(request, tmp_path):
    proc, env = SIMULATORS[request.param](tmp_path)
    yield env
    proc.terminate()
    proc.wait(10)


def test_every_shipped_wallet_mapping_has_a_simulator_here():
    names = {load_yaml(p)["name"] for p in wallet_mappings()}
    assert {"hub88-wallet", "soap-wallet"} <= names
    assert names <= set(SIMULATORS), f"add a simulator to SIMULATORS for {sorted(names - set(SIMULATORS))}"


@pytest.mark.parametrize("simulator", sorted(SIMULATORS), indirect=True)
def test_shipped_wallet_mapping_passes_every_fault(simulator, request, tmp_path):
    name = request.node.callspec.params["simulator"]
    junit = tmp_path / "chaos.xml"
    done = chaos(write_config(tmp_path, ROOT / "mappings" / f"{name}.yaml"), simulator, "--junit", str(junit))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = LINE.findall(done.stdout)
    assert {(fault, op) for _, fault, op, *_ in lines} == {(f, op) for f in FAULTS for op in TARGETS}
    reuses = load_mapping_of(name, simulator).reuse_connections
    for verdict, fault, op, call, _, _, diff, reason in lines:
        assert diff == "+0.00", (fault, op)
        if verdict == "SKIP":
            # Only a later step the round did not take, or a duplicated answer on a gateway
            # that never reuses a connection to this wallet (its answers echo nothing).
            assert (call not in ("", "1") and "did not make that legacy call" in reason) or (
                fault == "duplicate_answer" and not reuses and "opens a new connection for every call" in reason), \
                (fault, op, call, reason)
        else:
            assert verdict == "PASS", (fault, op, reason)
    # Every fault met every step at least once.
    assert {(f, op) for v, f, op, *_ in lines if v == "PASS"} >= {
        (f, op) for f in FAULTS for op in TARGETS if reuses or f != "duplicate_answer"}
    assert "nothing lost, nothing paid twice" in done.stdout and "Traceback" not in done.stdout + done.stderr
    # Each fault reached the gateway as that fault: a bet it hit was answered accordingly
    # (then voided and rolled back); a duplicated answer was read by the next call, the win.
    for fault, status in FIRST_ANSWER.items():
        assert re.search(rf"^PASS  {fault} on bet .*\[bet {status}→409 transaction_voided \(not applied\);",
                         done.stdout, re.M), (fault, done.stdout)
    if reuses:
        assert re.search(r"^PASS  duplicate_answer on bet .*\[bet 200 \(applied\); win 502", done.stdout, re.M)
    # Chaos read the balance through the mapping; the wallet's own books say the same.
    assert Decimal(lines[-1][5]) == wallet_balance(simulator)

    suite = SafeET.parse(junit).getroot().find("testsuite")
    assert suite.get("name") == "igsp-chaos" and suite.get("tests") == str(len(lines)) and suite.get("failures") == "0"
    cases = suite.findall("testcase")
    assert len(cases) == len(lines) and all(c.find("failure") is None for c in cases)
    assert {p.get("name"): p.get("value") for p in suite.find("properties")}["mapping"] == name


def claims_idempotent(mapping: dict) -> None:
    """A non-idempotent wallet declared ``idempotent: true``: a win whose answer was lost is
    redelivered, and paid again."""
    mapping["upstream"]["idempotent"] = True


def refuses_on_duplicate(mapping: dict) -> None:
    """The SOAP wallet's "duplicate transaction" (code 3) read as a final refusal: a win whose
    answer was lost is redelivered, the wallet says it has it, and the provider is told it
    was never paid while the wallet paid it."""
    mapping["result"].pop("success_codes", None)
    mapping["result"]["errors"]["3"] = "transaction_conflict"


@pytest.mark.parametrize(("simulator", "break_it"), [("hub88-wallet", claims_idempotent),
                                                     ("soap-wallet", refuses_on_duplicate)], indirect=["simulator"])
def test_an_unsafe_mapping_fails_with_the_money_it_got_wrong(simulator, break_it, request, tmp_path):
    name = request.node.callspec.params["simulator"]
    unsafe = yaml.safe_load((ROOT / "mappings" / f"{name}.yaml").read_text())
    break_it(unsafe)
    mapping = tmp_path / "unsafe-wallet.yaml"
    mapping.write_text(yaml.safe_dump(unsafe))
    junit = tmp_path / "chaos.xml"
    done = chaos(write_config(tmp_path, mapping), simulator, "--faults", "lost_answer,late_answer",
                 "--operations", "win,bet", "--junit", str(junit))
    assert done.returncode == 1, done.stdout + done.stderr
    verdicts = {(fault, op): (verdict, diff) for verdict, fault, op, _, _, _, diff, _ in LINE.findall(done.stdout)}
    for fault in ("lost_answer", "late_answer"):
        assert verdicts[(fault, "win")] == ("FAIL", "+0.40")
        assert verdicts[(fault, "win without a bet")] == ("FAIL", "+0.30")
        assert verdicts[(fault, "bet")] == ("PASS", "+0.00")  # bets are rolled back, never redelivered
    assert re.search(r"RESULT: 4 of 6 cases FAILED \(money off by 1\.40 EUR in all\)", done.stdout), done.stdout
    failures = SafeET.parse(junit).getroot().find("testsuite").findall("testcase/failure")
    shown = sorted(re.search(r"the legacy wallet shows ([-+0-9.]+) against", f.get("message")).group(1)
                   for f in failures)
    assert shown == ["+0.30", "+0.30", "+0.40", "+0.40"]


@pytest.mark.parametrize("simulator", ["hub88-wallet"], indirect=True)
def test_every_step_of_a_multi_step_operation_meets_every_fault(simulator, tmp_path):
    """A win in two legacy calls (a balance lookup, then the credit): each fault hits each call."""
    mapping = yaml.safe_load((ROOT / "mappings" / "hub88-wallet.yaml").read_text())
    win = mapping["operations"]["win"]
    lookup = {"name": "lookup", "moves_money": False, "path": "/user/balance",
              "body": mapping["operations"]["balance"]["body"], "response": {"balance": "balance"}}
    credit = {"name": "credit", "path": win.pop("path"), "body": win.pop("body"), "response": win.pop("response")}
    win["steps"] = [lookup, credit]
    (tmp_path / "two-step-wallet.yaml").write_text(yaml.safe_dump(mapping))
    done = chaos(write_config(tmp_path, tmp_path / "two-step-wallet.yaml"), simulator, "--operations", "win")
    assert done.returncode == 0, done.stdout + done.stderr
    names = re.findall(r"^PASS  (\w+ on win(?: without a bet)?, call \d/2) ", done.stdout, re.M)
    assert sorted(names) == sorted(f"{f} on {target}, call {c}/2" for f in FAULTS for c in (1, 2)
                                   for target in ("win", "win without a bet")), done.stdout
    # The fault on the credit (call 2) is the one that can pay twice: it met the gateway as that fault.
    assert re.search(r"^PASS  lost_answer on win, call 2/2 .*win 503 upstream_unavailable \(held", done.stdout, re.M)


def test_bad_input_is_refused_before_anything_runs(tmp_path):
    config = write_config(tmp_path, ROOT / "mappings" / "hub88-wallet.yaml")
    (tmp_path / "hub88.pem").write_text(hub88_wallet.generate_keypair()[0])
    env = {"HUB88_WALLET_URL": "http://127.0.0.1:9", "HUB88_PRIVATE_KEY": str(tmp_path / "hub88.pem")}
    for args, message in [(["--faults", "lost_answer,meteor"], "--faults: unknown 'meteor'"),
                          (["--operations", "balance"], "--operations: unknown 'balance'"),
                          (["--currency", "eur"], "--currency: 'eur' is not an ISO 4217 code"),
                          (["--junit", str(tmp_path / "no" / "such.xml")], "--junit: no directory")]:
        done = chaos(config, env, *args, timeout=60)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and SECRET not in done.stdout + done.stderr
    done = subprocess.run([sys.executable, "-m", "gateway", "chaos", "--config", str(config), "--partner", "nobody",
                           "--player-id", PLAYER, "--currency", CURRENCY], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert done.returncode == 2 and "unknown partner 'nobody'; configured: chaos-games" in done.stderr
    # A broken config is refused with validate's file:line: field problems, its secrets redacted.
    done = chaos(config, {**env, "HUB88_PRIVATE_KEY": str(tmp_path / "missing.pem")}, timeout=60)
    assert done.returncode == 2 and "hub88-wallet.yaml:" in done.stderr and "cannot load RSA key" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.glob("*.db"))


@pytest.mark.parametrize("simulator", ["hub88-wallet"], indirect=True)
def test_a_player_without_enough_money_is_refused_before_any_bet(simulator, tmp_path):
    url = simulator["HUB88_WALLET_URL"]
    requests.post(url + "/_control/players", json={"player_id": PLAYER, "balance": "5.00"}, timeout=10)
    done = chaos(write_config(tmp_path, ROOT / "mappings" / "hub88-wallet.yaml"), simulator, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"player '{PLAYER}' has 5.00 EUR; 24 case(s) need 22.40 EUR in the legacy wallet" in done.stderr
    state = requests.get(url + "/_control/state", timeout=10).json()
    assert state["ledger"] == [] and state["calls"].get("bet", 0) == 0 and state["calls"]["balance"] >= 1


def test_the_demo_info_points_chaos_at_the_demo(tmp_path):
    info_file = tmp_path / "demo.json"
    demo = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--serve", "--info", str(info_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 120
        while not info_file.exists() and demo.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # polling for the file the demo writes once everything runs
        assert info_file.exists(), demo.stderr.read() if demo.poll() is not None else "no info file"
        platform = json.loads(info_file.read_text())["platform"]
        # From a shell that has none of the demo's variables: the config is complete on its own.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB88_", "PP_"))}
        done = subprocess.run([sys.executable, "-m", "gateway", "chaos", "--config", platform["config"],
                               "--partner", platform["partner"], "--player-id", platform["player_id"],
                               "--currency", platform["currency"], "--faults", "lost_answer,duplicate_answer",
                               "--operations", "bet"], capture_output=True, text=True, timeout=300,
                              env={**env, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert [(v, f) for v, f, *_ in LINE.findall(done.stdout)] == [("PASS", "lost_answer"),
                                                                     ("PASS", "duplicate_answer")]
    finally:
        demo.terminate()
        demo.wait(30)
