"""``igsp-gateway demo``: the README's first command works, tells the truth, and can be scripted."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from gateway import cli
from gateway.tools.demo.stack import DemoStack, provider_face_available
from tests.support import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
RECONCILED = re.compile(r"^reconciliation, platform face: legacy ledger (\d+) entries, net \+22\.50 EUR == "
                        r"iGSP ledger \1 transactions, net \+22\.50 EUR; balance 122\.50 == 122\.50 — OK$", re.M)
PROVIDER_RECONCILED = re.compile(r"^reconciliation, provider face: legacy ledger (\d+) entries, net \+6\.50 EUR == "
                                 r"iGSP ledger \1 transactions, net \+6\.50 EUR; balance 106\.50 == 106\.50 — OK$",
                                 re.M)


def demo_dir(output: str) -> Path:
    return Path(re.search(r"embedded SQLite in (\S+),", output).group(1))


def test_demo_plays_the_story_and_reconciles(tmp_path):
    # From an empty directory, with no config and no Redis: exactly the README's command.
    done = subprocess.run([sys.executable, "-m", "gateway", "demo"], capture_output=True, text=True, cwd=tmp_path,
                          env=ENV, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert RECONCILED.search(out), out
    if provider_face_available():
        assert PROVIDER_RECONCILED.search(out), out
        for step in ("26 games in 3 pages of 10", "201 the same url", "the first transactionId; cash 99.50",
                     "error 100, 100, 0; cash 106.50"):
            assert step in out
    else:
        assert "Act 2 — provider face: not part of this build" in out
    assert re.search(r"^RESULT: all \d+ steps right, legacy ledger == iGSP ledger", out, re.M)
    rows = [line for line in out.splitlines() if re.match(r"^ {0,2}\d+  ", line)]
    assert len(rows) >= 11 and all(line.endswith("  ok") for line in rows), out
    assert "FAIL" not in out and "\033[" not in out  # plain text when not a terminal
    for step in ("the same bet again (a retry)", "402 insufficient_funds", "503 upstream_unavailable",
                 "the retry queue delivers w-2", "the first answer, byte for byte"):
        assert step in out
    assert not demo_dir(out).exists()  # the temp dir is cleaned up
    assert list(tmp_path.iterdir()) == []  # and nothing was written where it ran


def test_demo_exits_1_and_keeps_the_log_when_a_step_goes_wrong(monkeypatch, capsys):
    # The legacy wallet answers garbage to the first bet: the demo must say so, not paper over it.
    start = DemoStack._start_simulators

    def with_a_fault(self):
        start(self)
        self.wallet.state.faults.append({"kind": "garbage", "endpoint": "bet"})

    monkeypatch.setattr(DemoStack, "_start_simulators", with_a_fault)
    assert cli.main(["demo"]) == 1
    out = capsys.readouterr().out
    failed = re.findall(r"^ {0,2}(\d+)  .*  FAIL$", out, re.M)
    assert failed == ["2", "3"], out  # the bet and its retry; every later step is judged on its own
    assert re.search(r"^  2  bet 10\.00 \(tx b-1\) +502 upstream_bad_response ", out, re.M)
    assert "-> expected 200, got HTTP 502" in out
    # The gateway rolled the unknown bet back, so both ledgers still agree.
    assert re.search(r"^reconciliation, platform face: legacy ledger 4 entries, .* — OK$", out, re.M)
    assert re.search(r"^RESULT: 2 of \d+ checks wrong — gateway log kept in ", out, re.M)
    kept = demo_dir(out)
    assert (kept / "gateway.log").exists()
    shutil.rmtree(kept)


def test_demo_reconciliation_catches_money_the_igsp_side_never_saw(monkeypatch, capsys):
    from gateway.tools.demo import platform_story

    reconcile = platform_story.PlatformAct.reconcile

    async def after_a_stray_debit(self):
        # A debit on the wallet's books that no iGSP answer accounts for.
        self.stack.wallet.state.move("bet", "stray", platform_story.PLAYER, Decimal("-1.00"))
        await reconcile(self)

    monkeypatch.setattr(platform_story.PlatformAct, "reconcile", after_a_stray_debit)
    assert cli.main(["demo"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^reconciliation, platform face: legacy ledger 6 entries, net \+21\.50 EUR == iGSP ledger "
                     r"5 transactions, net \+22\.50 EUR; balance 121\.50 == 122\.50 — MISMATCH$", out, re.M), out
    assert "FAIL" not in out
    shutil.rmtree(demo_dir(out))


def test_demo_serve_info_curl_and_conformance(tmp_path):
    info_file = tmp_path / "demo.json"
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--serve", "--info", str(info_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=ENV)
    try:
        deadline = time.monotonic() + 60
        while not info_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert info_file.exists(), proc.stderr.read() if proc.poll() is not None else "no info file"
        info = json.loads(info_file.read_text())
        platform = info["platform"]
        assert set(platform) == {"hooks_url", "api_key", "secret", "player_id", "other_player_id", "currency",
                                 "session_id", "game_id", "config", "partner"}
        assert platform["hooks_url"].endswith("/platforms/game-provider/hooks")
        if provider_face_available():
            assert set(info["provider"]) == {"base_url", "api_key", "secret"}
            assert info["provider"]["base_url"].endswith("/igsp/v1")
        else:
            assert info["provider"] is None

        # The kit certifies the running platform face, moving the demo player's money (net zero),
        # the laws of retries and refunds included (identical copies, refund before bet, another
        # player's refund through the demo's second player, bets raced by their refunds).
        done = subprocess.run([sys.executable, "-m", "gateway", "conformance", "platform", "--info", str(info_file),
                               "--demo"], capture_output=True, text=True, env=ENV, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "CONFORMS — 30 passed, 0 failed, 0 skipped" in done.stdout
        for check in ("wallet.balance_same_second", "wallet.bet_identical_retry", "wallet.bet_identical_concurrent",
                      "wallet.refund_before_bet", "wallet.refund_other_player", "wallet.refund_mismatch",
                      "wallet.bet_refund_race"):
            assert re.search(rf"^PASS +{re.escape(check)} ", done.stdout, re.M), check
        assert "went from 1000.00 to 1000.00 EUR" in done.stdout
        assert f"Player {info['platform']['other_player_id']!r} is sent a refund of another player's bet" in done.stdout

        if provider_face_available():
            done = subprocess.run([sys.executable, "-m", "gateway", "conformance", "provider", "--info",
                                   str(info_file)], capture_output=True, text=True, env=ENV, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "CONFORMS — 15 passed, 0 failed, 1 skipped" in done.stdout

        # The printed curl command for the balance works as pasted.
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("# certify it:"):
                break
        text = "".join(lines)
        command = re.search(r"# the demo player's balance, through the platform face\n(curl .*?)\n\n", text, re.S)
        assert command, text
        if shutil.which("curl") is None:
            pytest.skip("curl is not installed")
        answer = subprocess.run(["bash", "-c", command.group(1)], capture_output=True, text=True, timeout=30)
        assert answer.stdout == '{"balance":1000.00}', answer.stdout + answer.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, rest
    assert "stopping…" in rest


def test_every_igsp_gateway_command_in_the_readme_parses():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line)
            commands += [part.strip() for part in line.split("&&") if part.strip().startswith("igsp-gateway ")]
    assert "igsp-gateway demo" in commands
    assert any(c.startswith("igsp-gateway conformance provider") for c in commands)
    parser = cli.build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])  # SystemExit(2) on an unknown option
        assert callable(args.func), command


def _namespace(output: str) -> str:
    return re.search(r"\(namespace (demo-[0-9a-f]+)\)", output).group(1)


def _ledger_keys(url: str, namespace: str) -> list[bytes]:
    """The run's ledger records: ``{ns}:{Lk}:tx:…``, in whichever of the 16 ledger shards."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        # Ledger records live under a shard's hash tag: {namespace}:{L<k>}:tx:<partner>:<txid>.
        return list(client.scan_iter(match=f"{namespace}:{{L*}}:tx:*"))
    finally:
        client.close()


def test_demo_on_a_standalone_redis(tmp_path):
    from tests.support import RedisServer

    server = RedisServer().start()
    try:
        done = subprocess.run([sys.executable, "-m", "gateway", "demo", "--store", server.url], capture_output=True,
                              text=True, cwd=tmp_path, env=ENV, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert RECONCILED.search(done.stdout), done.stdout
        assert f"store {server.url} (namespace demo-" in done.stdout
        # The story's ledger is in that Redis, under the run's own namespace (not in a SQLite file).
        keys = _ledger_keys(server.url, _namespace(done.stdout))
        assert any(b":tx:demo-games:b-1" in key for key in keys), keys
        assert list(tmp_path.iterdir()) == []
    finally:
        server.cleanup()


def test_demo_on_redis_behind_sentinel(tmp_path):
    from tests.sentinel_support import SentinelSet

    sentinels = SentinelSet().start()
    try:
        done = subprocess.run([sys.executable, "-m", "gateway", "demo", "--store", sentinels.url],
                              capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert RECONCILED.search(done.stdout), done.stdout
        master = f"redis://127.0.0.1:{sentinels.master_address()}/0"
        assert any(b":tx:demo-games:b-1" in key for key in _ledger_keys(master, _namespace(done.stdout)))
    finally:
        sentinels.cleanup()


@pytest.fixture(scope="module")
def cluster():
    from tests.cluster_support import RedisClusterSet

    c = RedisClusterSet().start()
    yield c
    c.cleanup()


def _cluster_ledger_keys(cluster, namespace: str) -> list[bytes]:
    keys = []
    for port in cluster.master_ports():
        keys += _ledger_keys(f"redis://127.0.0.1:{port}/0", namespace)
    return keys


def test_demo_on_a_redis_cluster(tmp_path, cluster):
    done = subprocess.run([sys.executable, "-m", "gateway", "demo", "--store", cluster.url], capture_output=True,
                          text=True, cwd=tmp_path, env=ENV, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert RECONCILED.search(done.stdout), done.stdout
    assert re.search(r"^RESULT: all \d+ steps right, legacy ledger == iGSP ledger", done.stdout, re.M), done.stdout
    assert f"store {cluster.url} (namespace demo-" in done.stdout
    # The story's ledger is on the cluster's masters, under the run's own namespace, in a
    # ledger shard's hash slot (not in a SQLite file).
    keys = _cluster_ledger_keys(cluster, _namespace(done.stdout))
    assert any(re.search(rb":\{L\d+\}:tx:demo-games:b-1$", key) for key in keys), keys
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("url", "says"), [
    ("mysql://db/igsp", "a store URL starts with one of sqlite://, redis://"),
    ("redis+sentinel://127.0.0.1:26379/", "name the Sentinel service"),
    ("redis://:hunter2-secret@127.0.0.1:1/0?wait_replicas=two", "wait_replicas and wait_timeout_ms must be whole"),
    ("sqlite://relative.db", "write sqlite:///path/to/file.db"),
])
def test_demo_refuses_a_bad_store_url_before_starting_anything(url, says, capsys):
    assert cli.main(["demo", "--store", url]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing started, no story
    assert captured.err.startswith("demo: --store: ") and says in captured.err, captured.err
    assert "hunter2" not in captured.err  # a password in the URL is never printed
