"""Hot reload: SIGHUP (or --watch) swaps config and mappings under load without failing a
request; a broken mapping is refused with file:line:field and the old one keeps serving."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import threading
from decimal import Decimal

import pytest
import requests
import yaml

from gateway.config import load_config
from gateway.runtime import Runtime
from gateway.store import open_store
from tests.conftest import ACME, platform_config
from tests.ops_support import Metrics, RecordingHub88, wait_for, write_mapping
from tests.support import IgspClient


@pytest.fixture
def hub88(hub88_keys):
    server = RecordingHub88(hub88_keys[1])
    yield server
    server.server.stop()


def bet(txid, amount=1, player="p1"):
    return {"action": "bet", "player_id": player, "amount": amount, "currency": "EUR", "game_id": "vs20olympgate",
            "transaction_id": txid, "session_id": "s-1", "type": "bet", "round_id": "r-1"}


def balance(player="p1"):
    return {"action": "balance", "player_id": player, "currency": "EUR"}


def versioned(tmp_path, version: str, **kwargs):
    """The wallet mapping, tagging every legacy call with X-Mapping-Version."""
    return write_mapping(tmp_path / "wallet.yaml", headers={"X-Mapping-Version": version}, timeout=5, **kwargs)


def reloads(gw, outcome: str) -> float:
    return Metrics.scrape(gw.internal_url).value("igsp_config_reloads_total", outcome=outcome)


class Load:
    """A thread sending balance hooks without pause, remembering every status."""

    def __init__(self, client: IgspClient):
        self.client, self.statuses, self.stop = client, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            self.statuses.append(self.client.hook(balance(), timeout=20).status_code)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


def test_sighup_under_load_swaps_the_mapping_and_refuses_a_broken_one(gateway_factory, hub88, tmp_path):
    mapping = versioned(tmp_path, "1")
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db")
    config["partners"][0]["mapping"] = str(mapping)
    gw = gateway_factory(config)
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    hub88.player("p1", "100.00")

    with Load(IgspClient(gw.url, ACME["api_key"], ACME["secret"])) as load:
        wait_for(lambda: len(load.statuses) >= 20, what="traffic")
        # A slow bet is in flight across the reload: it finishes on the mapping it started with.
        hub88.fault("delay", endpoint="bet", seconds=1.5)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(acme.hook, bet("tx-across"), timeout=20)
            wait_for(lambda: hub88.headers("/transaction/bet"), what="the slow bet to reach the wallet")
            versioned(tmp_path, "2")
            gw.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: reloads(gw, "applied") == 1, what="the reload")
            assert slow.result(timeout=20).status_code == 200
        assert hub88.headers("/transaction/bet")[0]["X-Mapping-Version"] == "1"
        served = len(load.statuses)
        wait_for(lambda: len(load.statuses) >= served + 20, what="traffic after the reload")
        assert hub88.headers("/user/balance")[-1]["X-Mapping-Version"] == "2"

        # A broken edit: refused, and the running mapping goes on serving.
        def broken(data):
            data["operations"]["balance"]["response"]["balance"] = "balance[?"  # bad JMESPath

        versioned(tmp_path, "3", edit=broken)
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads(gw, "refused") == 1, what="the refusal")
        served = len(load.statuses)
        wait_for(lambda: len(load.statuses) >= served + 20, what="traffic after the refusal")

    assert set(load.statuses) == {200}, [s for s in load.statuses if s != 200]
    assert hub88.headers("/user/balance")[-1]["X-Mapping-Version"] == "2"
    assert acme.hook(bet("tx-after")).status_code == 200
    assert hub88.headers("/transaction/bet")[-1]["X-Mapping-Version"] == "2"
    assert reloads(gw, "applied") == 1

    refusal = next(line for line in gw.log_lines() if line["msg"].startswith("config reload refused"))
    assert refusal["level"] == "error" and refusal["generation"] == 2
    line_no = next(i for i, text in enumerate(mapping.read_text().splitlines(), 1) if "balance[?" in text)
    assert any(p.startswith(f"{mapping}:{line_no}: operations.balance.response.balance: JMESPath")
               for p in refusal["problems"]), refusal["problems"]
    assert f"{mapping}:{line_no}:" in refusal["msg"]
    applied = next(line for line in gw.log_lines() if line["msg"] == "config reloaded")
    assert applied["generation"] == 2 and applied["partners"] == ["acme-games", "beta-games"]


def test_watch_reloads_on_file_change(gateway_factory, hub88, tmp_path):
    mapping = versioned(tmp_path, "1")
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db")
    config["partners"][0]["mapping"] = str(mapping)
    gw = gateway_factory(config, extra_args=["--watch", "0.2"])
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    hub88.player("p1", "100.00")
    assert acme.hook(balance()).status_code == 200
    versioned(tmp_path, "2")
    wait_for(lambda: reloads(gw, "applied") == 1, what="the reload")
    assert acme.hook(balance()).status_code == 200
    assert [h["X-Mapping-Version"] for h in hub88.headers("/user/balance")] == ["1", "2"]
    mapping.write_text(mapping.read_text() + "\nbogus_key: 1\n")
    wait_for(lambda: reloads(gw, "refused") == 1, what="the refusal")
    assert acme.hook(balance()).status_code == 200
    assert hub88.headers("/user/balance")[-1]["X-Mapping-Version"] == "2"
    assert reloads(gw, "refused") == 1  # not retried until the file changes again


def test_settings_bound_to_the_socket_need_a_restart(gateway_factory, hub88, tmp_path):
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db")
    gw = gateway_factory(config)
    config["server"]["max_body_bytes"] = 1024
    config["logging"] = {"level": "debug"}
    gw.config_path.write_text(yaml.safe_dump(config))
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: reloads(gw, "applied") == 1, what="the reload")
    kept = next(line for line in gw.log_lines() if line["msg"] == "reload keeps these settings until a restart")
    assert kept["settings"] == ["max_body_bytes"]


async def test_a_replaced_generation_closes_its_pools_after_its_last_request(tmp_path, hub88_keys):
    mapping = versioned(tmp_path, "1")
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db")
    config["partners"][0]["mapping"] = str(mapping)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"HUB88_WALLET_URL": "http://127.0.0.1:9", "HUB88_PRIVATE_KEY": hub88_keys[0]}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        store = open_store(config["store"]["url"])
        await store.open()
        runtime = Runtime(load_config(path), store)
        try:
            with runtime.use() as first:
                session = first.clients["hub88-wallet"].session  # a pool in use by a request
                assert await runtime.reload()
                assert runtime.current is not first and runtime.current.number == 2
                assert not session.closed  # the request in flight still has its pool
                with runtime.use() as second:
                    assert second is runtime.current
            for _ in range(100):
                if session.closed:
                    break
                await asyncio.sleep(0.01)
            assert session.closed
            versioned(tmp_path, "2", edit=lambda d: d["upstream"].update(timeout="soon"))
            assert not await runtime.reload()
            assert runtime.current.number == 2
        finally:
            await runtime.close()
            await store.close()


def test_the_provider_face_is_rebuilt_on_reload_and_keeps_serving(tmp_path):
    from tests.test_provider_face import World

    world = World(tmp_path)
    try:
        world.player("zed", "50.00")
        assert world.get("/games", limit=5).status_code == 200
        token = world.token("sess-zed", "zed")
        world.gateway.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads(world.gateway, "applied") == 1, what="the reload")
        # Catalogue, launch and the legacy wallet callbacks all run on the new generation;
        # the session made before the reload is still known (it lives in the store).
        assert world.get("/games", limit=5).status_code == 200
        played = world.play(token, [{"op": "bet", "amount": "2.00", "reference": "z-bet"},
                                    {"op": "result", "amount": "5.00", "reference": "z-win"}])
        assert played["ok"] is True, played
        assert world.balance("zed") == Decimal("53.00")
        assert world.launch("sess-zed-2", "zed").status_code == 201
        m = Metrics.scrape(world.gateway.internal_url)
        assert m.value("igsp_catalogue_cache_total", result="miss") >= 1
        assert m.value("igsp_catalogue_cache_total", result="hit") >= 1
        assert m.value("igsp_requests_total", partner="casino-one", face="provider", operation="games",
                       outcome="ok") == 2
        assert m.value("igsp_requests_total", partner="casino-one", face="legacy", outcome="ok") >= 2
    finally:
        world.stop()


def test_a_reload_rotates_the_admin_token(gateway_factory, hub88, tmp_path):
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db", admin={"token": "admin-token-old-0001"})
    gw = gateway_factory(config)

    def queue_status(token: str) -> int:
        return requests.get(f"{gw.internal_url}/admin/queue", headers={"Authorization": f"Bearer {token}"},
                            timeout=5).status_code

    assert queue_status("admin-token-old-0001") == 200
    config["admin"]["token"] = "admin-token-new-0002"
    gw.config_path.write_text(yaml.safe_dump(config))
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: reloads(gw, "applied") == 1, what="the reload")
    assert queue_status("admin-token-new-0002") == 200
    assert queue_status("admin-token-old-0001") == 401
    assert "admin-token-old-0001" not in gw.log_text() and "admin-token-new-0002" not in gw.log_text()


async def test_a_reload_keeps_the_rate_limit_bucket_of_an_unchanged_limit(tmp_path, hub88_keys, monkeypatch):
    monkeypatch.setenv("HUB88_WALLET_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("HUB88_PRIVATE_KEY", hub88_keys[0])
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db")
    config["partners"][0]["rate_limit"] = {"requests_per_second": 1, "burst": 2}
    config["partners"][1]["rate_limit"] = {"requests_per_second": 1, "burst": 3}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    store = open_store(config["store"]["url"])
    await store.open()
    runtime = Runtime(load_config(path), store)
    try:
        first = runtime.current.limiter.buckets
        config["partners"][1]["rate_limit"]["burst"] = 5
        path.write_text(yaml.safe_dump(config))
        assert await runtime.reload()
        now = runtime.current.limiter.buckets
        assert now["acme-games"] is first["acme-games"]  # a reload is no way around a limit
        assert now["beta-games"] is not first["beta-games"] and now["beta-games"].capacity == 5
    finally:
        await runtime.close()
        await store.close()
