"""Gateway config loading: defaults, relative paths, and the not-ready state of an empty config."""

from __future__ import annotations

import requests

from gateway.config import load_config
from tests.support import GatewayProcess


def test_empty_partner_list_starts_but_is_not_ready(tmp_path):
    config = {"version": 1, "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_seconds": 0},
              "store": {"url": "sqlite:///state/gw.db"}, "partners": []}
    gateway = GatewayProcess(config, tmp_path).start()
    try:
        assert requests.get(gateway.url + "/healthz", timeout=5).status_code == 200
        ready = requests.get(gateway.url + "/readyz", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"mappings": "none loaded", "store": "ok"}
    finally:
        gateway.stop()
    # A relative SQLite path is relative to the config file, like mapping paths.
    assert (tmp_path / "state" / "gw.db").exists()


def test_defaults(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("version: 1\npartners: []\n")
    config = load_config(path)
    assert (config.port, config.signature_window) == (8080, 300)
    assert config.hooks_path == "/platforms/game-provider/hooks" and config.provider_mount == "/igsp/v1"
    assert config.store_url == f"sqlite:///{tmp_path}/igsp-gateway.db"
    assert config.retention_seconds == 30 * 86400


def test_unset_previous_secret_means_not_rotating(tmp_path):
    from tests.support import ROOT

    path = tmp_path / "gateway.yaml"
    path.write_text(f"""version: 1
partners:
  - id: acme
    face: platform
    mapping: {ROOT}/mappings/hub88-wallet.yaml
    api_key: acme-key-0001
    secrets: ["${{ACME_SECRET}}", "${{ACME_SECRET_PREVIOUS:-}}"]
""")
    env = {"ACME_SECRET": "s" * 32, "HUB88_WALLET_URL": "http://127.0.0.1:1", "HUB88_PRIVATE_KEY": "unused"}
    import pytest

    from gateway.errors import ConfigError

    # The Hub88 key is not a PEM: the mapping must refuse it, naming the field.
    with pytest.raises(ConfigError, match=r"hub88-wallet.yaml:\d+: signer: .*(RSA|key)"):
        load_config(path, env)
    from gateway.tools.simulators.hub88_wallet import generate_keypair

    env["HUB88_PRIVATE_KEY"] = generate_keypair()[0]
    config = load_config(path, env)
    assert config.partners[0].secrets == (b"s" * 32,)
    env["ACME_SECRET_PREVIOUS"] = "p" * 32
    assert load_config(path, env).partners[0].secrets == (b"s" * 32, b"p" * 32)


def test_strict_mode_is_per_partner(tmp_path):
    from gateway.tools.simulators.hub88_wallet import generate_keypair
    from tests.support import ROOT

    path = tmp_path / "gateway.yaml"
    partner = f"""face: platform
    mapping: {ROOT}/mappings/hub88-wallet.yaml
    secrets: ["{"s" * 32}"]"""
    path.write_text(f"""version: 1
security: {{replay_protection: true}}
partners:
  - id: strict
    api_key: strict-key-0001
    {partner}
  - id: relaxed
    api_key: relaxed-key-0001
    replay_protection: false
    {partner}
""")
    env = {"HUB88_WALLET_URL": "http://127.0.0.1:1", "HUB88_PRIVATE_KEY": generate_keypair()[0]}
    strict, relaxed = load_config(path, env).partners
    assert (strict.replay_protection, strict.partial_refunds) == (True, False)
    assert (relaxed.replay_protection, relaxed.partial_refunds) == (False, False)
    path.write_text(path.read_text().replace("security: {replay_protection: true}\n", ""))
    assert [p.replay_protection for p in load_config(path, env).partners] == [False, False]
