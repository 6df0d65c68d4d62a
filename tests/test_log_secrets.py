"""No secret in any log line: a whole gateway run at debug level — good traffic, forged
signatures, every kind of upstream failure, an applied and a refused reload, and start-up
config errors — grepped for every configured secret and every signature sent.

Secrets: partner secrets (current and previous), the admin token, a mapping's
``secrets``, the Hub88 RSA private key given inline and as a file. API keys are public
ids (PROTOCOL.md) and may appear; the gateway logs partners by id.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import orjson
import pytest
import yaml

from gateway.tools.simulators.hub88_wallet import generate_keypair
from tests.conftest import ACME, BETA, platform_config
from tests.ops_support import Metrics, RecordingHub88, wait_for, write_mapping
from tests.support import ROOT, IgspClient

ADMIN_TOKEN = "admin-token-5f1c2e9a7b3d"
MAPPING_SECRET = "mapping-secret-8c41d0e2aa"


class SigningRecorder(IgspClient):
    """An iGSP client that remembers every X-Signature it sent."""

    def __init__(self, *args):
        super().__init__(*args)
        self.sent: list[str] = []

    def headers(self, body, timestamp=None):
        headers = super().headers(body, timestamp)
        self.sent.append(headers["X-Signature"])
        return headers


@pytest.fixture
def hub88(hub88_keys):
    server = RecordingHub88(hub88_keys[1])
    yield server
    server.server.stop()


def forms(secret: str) -> set[str]:
    """A secret as it could appear in a log: plain, JSON-escaped, and each line of a PEM."""
    found = {secret, orjson.dumps(secret).decode()[1:-1]}
    found |= {line for line in secret.splitlines() if len(line) >= 16 and "-----" not in line}
    return found


def test_no_secret_or_signature_in_any_log_line(gateway_factory, hub88, hub88_keys, tmp_path):
    key_file = tmp_path / "hub88-key.pem"
    key_file.write_text(hub88_keys[0])
    inline = write_mapping(tmp_path / "inline-key.yaml", timeout=1.0,
                           edit=lambda d: d.update(secrets={"api_secret": MAPPING_SECRET}))
    by_file = write_mapping(tmp_path / "file-key.yaml", name="file-key-wallet", timeout=1.0,
                            edit=lambda d: d["signer"].update(private_key=str(key_file)))
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db", logging={"level": "debug"},
                             admin={"token": ADMIN_TOKEN})
    config["partners"][0].update(mapping=str(inline), replay_protection=True)  # strict: replays get logged
    config["partners"][1]["mapping"] = str(by_file)
    gw = gateway_factory(config)
    acme = SigningRecorder(gw.url, ACME["api_key"], ACME["secret"])
    old = SigningRecorder(gw.url, ACME["api_key"], ACME["old_secret"])
    beta = SigningRecorder(gw.url, BETA["api_key"], BETA["secret"])
    forger = SigningRecorder(gw.url, ACME["api_key"], "forged-secret-0123456789abcdef")
    hub88.player("p1", "100.00")

    bet = {"action": "bet", "player_id": "p1", "amount": 1, "currency": "EUR", "game_id": "g",
           "transaction_id": "tx-1", "session_id": "s-1", "type": "bet", "round_id": "r-1"}
    balance = {"action": "balance", "player_id": "p1", "currency": "EUR"}
    assert acme.hook(bet).status_code == 200
    assert acme.hook(bet).status_code == 200  # replay
    assert old.hook(balance).status_code == 200
    assert beta.hook(balance).status_code == 200
    assert forger.hook(balance).status_code == 403
    assert acme.hook(balance, timestamp="2001-01-01T00:00:00Z").status_code == 403
    # The same balance signature twice, in strict mode: refused as a replay.
    body = json.dumps(balance).encode()
    replayed = acme.headers(body)
    for expected in (200, 403):
        assert acme.http.post(f"{gw.url}/platforms/game-provider/hooks", data=body, headers=replayed,
                              timeout=10).status_code == expected
    assert acme.hook(b"{not json").status_code == 400
    for kind in ("http_500_html", "garbage", "reset"):
        hub88.fault(kind, endpoint="balance")
        assert acme.hook(balance).status_code >= 500
    hub88.fault("apply_then_hang", endpoint="bet", seconds=2)
    assert acme.hook({**bet, "transaction_id": "tx-2"}).status_code == 504
    hub88.fault("delay", endpoint="win", seconds=2)
    assert beta.hook({**bet, "action": "win", "type": "win", "transaction_id": "w-1"}).status_code == 504

    # Reloads: one applied, one refused because the new key is neither PEM nor a file.
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: Metrics.scrape(gw.internal_url).value("igsp_config_reloads_total", outcome="applied") == 1)
    leaky_key = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC-not-a-pem-" + "x" * 40
    write_mapping(by_file, name="file-key-wallet", timeout=1.0,
                  edit=lambda d: d["signer"].update(private_key=leaky_key))
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: Metrics.scrape(gw.internal_url).value("igsp_config_reloads_total", outcome="refused") == 1)
    wait_for(lambda: Metrics.scrape(gw.internal_url).value("igsp_queue_attempts_total", outcome="delivered") >= 1,
             what="the compensating rollback")
    assert gw.stop() == 0

    # Start-up failures print their problems: without the secrets they name.
    broken = dict(config, partners=[dict(config["partners"][1], secrets=["short-secret-99"])])
    broken_path = tmp_path / "broken.yaml"
    broken_path.write_text(yaml.safe_dump(broken))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    startup = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(broken_path)], env=env,
                             capture_output=True, text=True, timeout=60)
    validated = subprocess.run([sys.executable, "-m", "gateway", "validate", str(broken_path)], env=env,
                               capture_output=True, text=True, timeout=60)
    assert startup.returncode == 1 and validated.returncode == 1
    assert "is neither PEM text nor a readable file" in startup.stderr
    assert "partners[0].secrets[0]: got 15 characters, want at least 16" in startup.stderr

    text = gw.log_text() + startup.stderr + startup.stdout + validated.stderr + validated.stdout
    lines = gw.log_lines()
    # The run did exercise the paths that could leak.
    messages = {line["msg"] for line in lines}
    assert {"request", "legacy call failed", "config reloaded"} <= messages
    assert any(m.startswith("config reload refused") for m in messages)
    assert {line.get("auth_failure") for line in lines} >= {"bad_signature", "stale_timestamp", "replayed_signature"}
    assert any(line["level"] == "debug" for line in lines) or len(lines) > 20

    secrets = [ACME["secret"], ACME["old_secret"], BETA["secret"], "forged-secret-0123456789abcdef", ADMIN_TOKEN,
               MAPPING_SECRET, hub88_keys[0], leaky_key, "short-secret-99"]
    for secret in secrets:
        for form in forms(secret):
            assert form not in text, f"a secret leaked into the logs: {form[:12]}…"
    signatures = acme.sent + old.sent + beta.sent + forger.sent
    signatures += [h["X-Hub88-Signature"] for h in hub88.headers() if "X-Hub88-Signature" in h]
    assert len(signatures) > 20
    for value in signatures:
        assert value not in text, f"a signature leaked into the logs: {value[:12]}…"


def test_redaction_catches_what_a_careless_log_line_would_leak():
    import io
    import logging

    from gateway.ops.logs import JsonFormatter

    pem = generate_keypair()[0]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter([pem, ADMIN_TOKEN]))
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    try:
        logger.warning("key %s", pem, extra={"token": ADMIN_TOKEN})
        logger.warning("headers", extra={"headers": {"X-Signature": "ab12" * 16, "Authorization": "Bearer k-1"}})
        logger.warning("raw X-Signature: cafe%s and x-hub88-signature=Zm9vYmFy+/=", "0" * 60)
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "[REDACTED]" in out and len(out.splitlines()) == 3
    for leaked in (*forms(pem), ADMIN_TOKEN, "ab12" * 16, "cafe" + "0" * 60, "Zm9vYmFy"):
        assert leaked not in out, leaked
