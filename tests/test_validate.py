"""``igsp-gateway validate``: every problem of every file at once, each naming file, line
and field, and a non-zero exit code. Secrets in a broken file are never echoed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

BROKEN_MAPPING = """\
version: 1
name: broken-wallet
face: platform
upstream:
  base_url: ${BROKEN_WALLET_URL}        # <- env
  timeout: soon                         # <- type
  retries: 3                            # <- unknown-key
codec: msgpack                          # <- adapter
result:
  success: "status == 'OK'"
  code: status
  errors:
    E_FUNDS: not_enough_money           # <- error-code
operations:
  balance:
    path: /balance
    body:
      user: "{{ player_id }"            # <- template
    response:
      balance: "balance[?"              # <- jmespath
  bet:
    path: /bet
    response: {balance: balance}
  win:
    path: /win
    response: {balance: balance}
  refund:
    path: /refund
"""

SYNTAX_ERROR = """\
version: 1
name: syntax
operations:
  bet: [unclosed, list                  # <- syntax
  win: {}
"""

BROKEN_CONFIG = """\
version: 1
server:
  port: eighty                          # <- port
  colour: blue                          # <- server-key
partners:
  - id: acme-games
    face: platform
    mapping: broken-mapping.yaml
    api_key: acme-key-0001
    secrets: ["${ACME_SECRET}"]         # <- secret-env
  - id: beta-games
    face: platform
    mapping: broken-mapping.yaml
    api_key: beta-key-0002
    secrets: ["tooshort-beta-1"]        # <- short-secret
"""


MISPLACED_ADAPTERS = """\
version: 1
name: misplaced
face: platform
upstream: {base_url: "http://127.0.0.1:9"}
codec: {adapter: md5_params, secret: s3cret}   # <- codec
signer: json                                   # <- signer
extensions: [json_extras, soap]                # <- extensions
operations:
  balance: {path: /balance, response: {balance: balance}}
  bet: {path: /bet, response: {balance: balance}}
  win: {path: /win, response: {balance: balance}}
  refund: {path: /refund}
"""


def line_of(text: str, marker: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.rstrip().endswith(f"# <- {marker}"))


def validate(*files: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gateway", "validate", *map(str, files)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def broken(tmp_path):
    files = {"broken-mapping.yaml": BROKEN_MAPPING, "syntax.yaml": SYNTAX_ERROR, "gateway.yaml": BROKEN_CONFIG}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_validate_reports_every_problem_of_a_mapping_at_once(broken):
    result = validate(broken / "broken-mapping.yaml", cwd=broken)
    assert result.returncode == 1
    file = broken / "broken-mapping.yaml"
    expected = {
        "env": ("upstream.base_url", "environment variable BROKEN_WALLET_URL is not set"),
        "type": ("upstream.timeout", "got 'soon', want number"),
        "unknown-key": ("upstream.retries", "unknown key 'retries'; allowed keys: base_url, connect_timeout"),
        "adapter": ("codec", "unknown adapter 'msgpack'; installed adapters: "),
        "error-code": ("result.errors.E_FUNDS", "got 'not_enough_money', want one of bet_not_allowed, "),
        "template": ("operations.balance.body.user", "template error"),
        "jmespath": ("operations.balance.response.balance", "JMESPath parse error"),
    }
    lines = result.stderr.splitlines()
    for marker, (field, message) in expected.items():
        prefix = f"{file}:{line_of(BROKEN_MAPPING, marker)}: {field}: {message}"
        assert any(line.startswith(prefix) for line in lines), f"{marker}: no line starting {prefix!r}\n{result.stderr}"
    assert lines[-1] == f"{len(expected)} problem(s) found"
    assert len(lines) == len(expected) + 1  # nothing reported twice (the empty URL is not a second problem)
    assert "Hint: export BROKEN_WALLET_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_reports_a_yaml_syntax_error_with_its_line(broken):
    result = validate(broken / "syntax.yaml", cwd=broken)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{broken / 'syntax.yaml'}:{line_of(SYNTAX_ERROR, 'syntax') + 1}: <root>: "
                                    "YAML syntax error: ")


def test_validate_reports_config_and_mapping_problems_together(broken):
    result = validate(broken / "gateway.yaml", broken / "syntax.yaml", cwd=broken)
    assert result.returncode == 1
    config, mapping = broken / "gateway.yaml", broken / "broken-mapping.yaml"
    for marker, field, message in (
        ("port", "server.port", "got 'eighty', want integer"),
        ("server-key", "server.colour", "unknown key 'colour'"),
        ("secret-env", "partners[0].secrets[0]", "environment variable ACME_SECRET is not set"),
        ("short-secret", "partners[1].secrets[0]", "got 15 characters, want at least 16"),
    ):
        prefix = f"{config}:{line_of(BROKEN_CONFIG, marker)}: {field}: {message}"
        assert any(line.startswith(prefix) for line in result.stderr.splitlines()), f"{prefix}\n{result.stderr}"
    # The mapping both partners name is checked too, once, and so is the other file.
    assert result.stderr.count(f"{mapping}:{line_of(BROKEN_MAPPING, 'jmespath')}: ") == 1
    assert f"{broken / 'syntax.yaml'}:" in result.stderr
    assert "tooshort-beta-1" not in result.stderr + result.stdout


def test_validate_passes_the_shipped_mapping(tmp_path):
    env_file = tmp_path / "key.pem"
    from gateway.tools.simulators.hub88_wallet import generate_keypair

    env_file.write_text(generate_keypair()[0])
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "validate", str(ROOT / "mappings" / "hub88-wallet.yaml")],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HUB88_WALLET_URL": "http://127.0.0.1:1",
             "HUB88_PRIVATE_KEY": str(env_file)},
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("hub88-wallet.yaml: ok")


def test_validate_refuses_an_adapter_in_a_place_its_role_does_not_fit(tmp_path):
    """``codec: md5_params`` once validated, then failed every request with NotImplementedError,
    answered 400 and stored as the ledger's final answer. Now each misplaced adapter is a
    load problem naming file, line and field, and where it belongs."""
    path = tmp_path / "misplaced.yaml"
    path.write_text(MISPLACED_ADAPTERS)
    result = validate(path, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    line = line_of(MISPLACED_ADAPTERS, "extensions")
    assert lines[2].startswith(f"{path}:{line}: extensions[0]: unknown adapter 'json_extras'; installed adapters: ")
    del lines[2]
    assert lines == [
        f"{path}:{line_of(MISPLACED_ADAPTERS, 'codec')}: codec: adapter 'md5_params' is a signer, not a codec; "
        "a signer belongs under 'signer'",
        f"{path}:{line_of(MISPLACED_ADAPTERS, 'signer')}: signer: adapter 'json' is a codec, not a signer; "
        "a codec belongs under 'codec'",
        f"{path}:{line}: extensions[1]: adapter 'soap' is a codec, not an extension or a flow; "
        "a codec belongs under 'codec'",
        "4 problem(s) found",
    ]
