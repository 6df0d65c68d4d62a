"""Shared fixtures: simulators on loopback, the gateway as a real process, redis-server."""

from __future__ import annotations

import pytest

from gateway.tools.simulators import hub88_wallet, start_in_thread
from tests.support import GatewayProcess, IgspClient, RedisServer
from tests.wallet_support import Simulator

ACME = {"id": "acme-games", "api_key": "acme-key-0001", "secret": "acme-secret-0123456789abcdef",
        "old_secret": "acme-old-secret-0123456789abcdef"}
BETA = {"id": "beta-games", "api_key": "beta-key-0002", "secret": "beta-secret-0123456789abcdef"}


@pytest.fixture(scope="session")
def hub88_keys():
    return hub88_wallet.generate_keypair()


class Hub88(Simulator):
    """A running Hub88-style wallet simulator, driven through its control API."""


@pytest.fixture
def hub88(hub88_keys):
    server = start_in_thread(hub88_wallet.make_app(hub88_wallet.State(), public_key_pem=hub88_keys[1]))
    yield Hub88(server)
    server.stop()


def platform_config(store_url: str, **overrides) -> dict:
    config = {
        "version": 1,
        # No shutdown grace: nothing routes by /readyz here (tests/test_rollout.py has one).
        "server": {"host": "127.0.0.1", "port": 0, "max_body_bytes": 16384, "drain_seconds": 5,
                   "shutdown_grace_seconds": 0},
        "store": {"url": store_url},
        "security": {"signature_window_seconds": 300},
        "partners": [
            {"id": ACME["id"], "face": "platform", "mapping": f"{_mappings()}/hub88-wallet.yaml",
             "api_key": ACME["api_key"], "secrets": [ACME["secret"], ACME["old_secret"]]},
            {"id": BETA["id"], "face": "platform", "mapping": f"{_mappings()}/hub88-wallet.yaml",
             "api_key": BETA["api_key"], "secrets": [BETA["secret"]]},
        ],
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def _mappings() -> str:
    from tests.support import ROOT

    return str(ROOT / "mappings")


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/gateway.db"
    else:
        server = RedisServer().start()
        yield server.url
        server.cleanup()


@pytest.fixture
def gateway_factory(tmp_path, hub88, hub88_keys):
    started = []

    def start(config: dict, env: dict | None = None, extra_args=()) -> GatewayProcess:
        proc = GatewayProcess(config, tmp_path, env={"HUB88_WALLET_URL": hub88.url, "HUB88_PRIVATE_KEY": hub88_keys[0],
                                                      **(env or {})}, extra_args=extra_args).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def platform_gateway(gateway_factory, tmp_path):
    return gateway_factory(platform_config(f"sqlite:///{tmp_path}/gateway.db"))


@pytest.fixture
def acme(platform_gateway):
    return IgspClient(platform_gateway.url, ACME["api_key"], ACME["secret"])
