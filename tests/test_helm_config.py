"""The config the Helm chart mounts is accepted by ``igsp-gateway validate``.

Rendered from the chart's scenario values (the production one uses the shipped mappings
bundled in the chart), laid out exactly as the pod mounts it, with the pod's environment
(plain values and Secret keys) and nothing else.
"""

from __future__ import annotations

import base64
import subprocess
import sys

import yaml

from gateway.tools.simulators.hub88_wallet import generate_keypair
from tests.support import ROOT
from tests.test_helm import CHART_DIR, find, gateway_config, notes_keys, render_chart, render_notes, write_config_tree


def _values(name: str) -> dict:
    return yaml.safe_load((CHART_DIR / "ci" / name).read_text())


def _pod_env(manifests) -> dict:
    """What the gateway container's environment holds: plain values and the chart's Secret."""
    container = find(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    secrets = [m for m in manifests if m["kind"] == "Secret"]
    for secret in secrets:
        env.update({k: base64.b64decode(v).decode() for k, v in secret["data"].items()})
    return env


def _validate(manifests, tmp_path, env: dict) -> subprocess.CompletedProcess:
    """What the pod's ``validate`` init container runs, on the config laid out as mounted."""
    path = write_config_tree(manifests, tmp_path)
    (init,) = find(manifests, "Deployment")["spec"]["template"]["spec"]["initContainers"]
    command = init["command"] + init["args"]
    assert command[:2] == ["igsp-gateway", "validate"] and command[-1] == "/etc/igsp-gateway/gateway.yaml"
    return subprocess.run([sys.executable, "-m", "gateway", *command[1:-1], str(path)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env}, timeout=60)


def test_production_config_validates(tmp_path):
    manifests = render_chart(_values("production-values.yaml"))
    assert gateway_config(manifests)["store"]["url"].startswith("redis://")
    # The keys an operator keeps in the existing Secret.
    existing = {"REDIS_PASSWORD": "pw", "HUB88_PRIVATE_KEY": generate_keypair()[0], "PP_SECRET_KEY": "pp-secret",
                "PP_SECURE_LOGIN": "casino", "PARTNER_ACME_GAMES_API_KEY": "acme-key-0001",
                "PARTNER_ACME_GAMES_SECRET": "a" * 32, "PARTNER_CASINO_ONE_API_KEY": "casino-key-0001",
                "PARTNER_CASINO_ONE_SECRET": "c" * 32, "PARTNER_CASINO_ONE_SECRET_PREVIOUS": "d" * 32}
    env = {**_pod_env(manifests), **existing}
    result = _validate(manifests, tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("gateway.yaml: ok")
    # Without the Secret's variables the same config is refused, naming each variable.
    del env["PARTNER_ACME_GAMES_SECRET"]
    result = _validate(manifests, tmp_path / "no-env", env)
    assert result.returncode == 1
    assert "environment variable PARTNER_ACME_GAMES_SECRET is not set" in result.stderr


def test_single_node_config_with_chart_secret_validates(tmp_path):
    manifests = render_chart(_values("single-node-values.yaml"))
    result = _validate(manifests, tmp_path, _pod_env(manifests))
    assert result.returncode == 0, result.stderr


def test_the_keys_notes_lists_are_all_the_production_config_needs(tmp_path):
    """Fill the existing Secret with exactly the keys NOTES.txt lists: the config validates.
    Leave out any one of the mappings' keys: the init container names it."""
    values = _values("production-values.yaml")
    manifests = render_chart(values)
    listed = notes_keys(render_notes(values))
    samples = {"HUB88_PRIVATE_KEY": generate_keypair()[0]}
    secret = {key: samples.get(key, f"{key.lower()}-0123456789abcdef") for key in listed}
    secret.pop("IGSP_ADMIN_TOKEN")  # optional
    result = _validate(manifests, tmp_path, {**_pod_env(manifests), **secret})
    assert result.returncode == 0, result.stderr
    for key in ("HUB88_PRIVATE_KEY", "PP_SECURE_LOGIN"):
        result = _validate(manifests, tmp_path / key, {**_pod_env(manifests), **{k: v for k, v in secret.items()
                                                                               if k != key}})
        assert result.returncode == 1
        assert f"environment variable {key} is not set" in result.stderr


def test_config_with_allowlists_and_tracing_validates(tmp_path):
    """The production shape (allowlists, trusted proxies) with tracing on: accepted as rendered."""
    values = _values("production-values.yaml")
    values["gateway"]["tracing"] = {"enabled": True, "endpoint": "http://otel-collector.observability:4318"}
    manifests = render_chart(values)
    config = gateway_config(manifests)
    assert config["tracing"]["enabled"] and config["partners"][1]["allowed_ips"]
    existing = {"REDIS_PASSWORD": "pw", "HUB88_PRIVATE_KEY": generate_keypair()[0], "PP_SECRET_KEY": "pp-secret",
                "PP_SECURE_LOGIN": "casino", "PARTNER_ACME_GAMES_API_KEY": "acme-key-0001",
                "PARTNER_ACME_GAMES_SECRET": "a" * 32, "PARTNER_CASINO_ONE_API_KEY": "casino-key-0001",
                "PARTNER_CASINO_ONE_SECRET": "c" * 32, "PARTNER_CASINO_ONE_SECRET_PREVIOUS": "d" * 32}
    result = _validate(manifests, tmp_path, {**_pod_env(manifests), **existing})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("gateway.yaml: ok")
