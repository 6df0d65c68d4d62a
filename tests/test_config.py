"""Gateway config loading: defaults, relative paths, and the not-ready state of an empty config."""

from __future__ import annotations

import requests

from gateway.config import load_config
from tests.support import GatewayProcess


def test_empty_partner_list_starts_but_is_not_ready(tmp_path):
    config = {"version": 1, "server": {"host": "127.0.0.1", "port": 0},
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
    assert (config.port, config.signature_window, config.replay_protection) == (8080, 300, True)
    assert config.hooks_path == "/platforms/game-provider/hooks" and config.provider_mount == "/igsp/v1"
    assert config.store_url == f"sqlite:///{tmp_path}/igsp-gateway.db"
    assert config.retention_seconds == 30 * 86400
