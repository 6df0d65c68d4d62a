"""Operations end to end: /metrics values after scripted traffic, the Grafana dashboard
against what /metrics really exposes, /healthz and /readyz, request ids and access logs.

Every test runs a real gateway process against the Hub88-style wallet simulator.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid

import pytest
import requests
import yaml

from gateway.ops import metrics
from tests.conftest import ACME, BETA, platform_config
from tests.ops_support import Metrics, RecordingHub88, wait_for, write_mapping
from tests.support import ROOT, IgspClient, free_port

DASHBOARD = ROOT / "helm" / "igsp-gateway" / "files" / "dashboards" / "igsp-gateway.json"


@pytest.fixture
def hub88(hub88_keys):
    server = RecordingHub88(hub88_keys[1])
    yield server
    server.server.stop()


def bet(txid, amount=10, player="p1"):
    return {"action": "bet", "player_id": player, "amount": amount, "currency": "EUR", "game_id": "vs20olympgate",
            "transaction_id": txid, "session_id": "s-1", "type": "bet", "round_id": "r-1"}


def balance(player="p1"):
    return {"action": "balance", "player_id": player, "currency": "EUR"}


@pytest.fixture
def ops_gateway(gateway_factory, tmp_path):
    """acme-games on the Hub88 wallet; beta-games on a wallet whose port nobody listens on."""
    dead = write_mapping(tmp_path / "dead-wallet.yaml", name="dead-wallet",
                         base_url=f"http://127.0.0.1:{free_port()}")
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db")
    config["partners"][1]["mapping"] = str(dead)
    config["partners"][1]["rate_limit"] = {"requests_per_second": 0.001, "burst": 1}
    config["partners"][0]["allowed_ips"] = ["127.0.0.0/8", "::1"]  # every request passes the allowlist check
    return gateway_factory(config)


def scripted_traffic(hub88, gw) -> None:
    """The traffic whose every count the metrics test below checks."""
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    beta = IgspClient(gw.url, BETA["api_key"], BETA["secret"])
    forger = IgspClient(gw.url, ACME["api_key"], "not-the-secret-0123456789abcdef")
    stranger = IgspClient(gw.url, "nobody-key-0000", ACME["secret"])
    hub88.player("p1", "100.00")

    assert acme.hook(balance()).status_code == 200
    assert acme.hook(bet("tx-1")).status_code == 200
    for _ in range(2):  # duplicates, answered from the ledger
        assert acme.hook(bet("tx-1")).status_code == 200
    assert acme.hook(bet("tx-poor", amount=1000)).status_code == 402  # the wallet declines: normal play
    assert acme.hook({"action": "dance"}).status_code == 400  # a request no hook schema knows
    for _ in range(3):
        assert forger.hook(balance()).status_code == 403
    assert stranger.hook(balance()).status_code == 401
    assert acme.hook(balance(), timestamp="2001-01-01T00:00:00Z").status_code == 403

    for kind, status in (("http_500_html", 503), ("garbage", 502), ("reset", 503)):
        hub88.fault(kind, endpoint="balance")
        assert acme.hook(balance()).status_code == status, kind
    assert beta.hook(balance()).status_code == 503  # connection refused
    assert beta.hook(balance()).status_code == 429  # beta's one-request burst is spent

    # A win whose outcome is unknown on a wallet that does not dedupe: dead-lettered.
    hub88.fault("delay", endpoint="win", seconds=2.5)
    win = {**bet("w-1", 5), "action": "win", "type": "win"}
    assert acme.hook(win).status_code == 504
    # A bet whose outcome is unknown: 504 now, a compensating rollback queued.
    hub88.fault("delay", endpoint="bet", seconds=2.5)
    assert acme.hook(bet("tx-2")).status_code == 504


def test_metrics_count_scripted_traffic_exactly(hub88, ops_gateway):
    scripted_traffic(hub88, ops_gateway)
    # The rollback waits in the queue a few seconds (a late answer may still come), then goes.
    queued = wait_for(lambda: (m := Metrics.scrape(ops_gateway.internal_url)).value("igsp_queue_depth") == 1 and m,
                      what="the compensating rollback in the queue")
    assert queued.value("igsp_queue_oldest_age_seconds") >= 0
    m = wait_for(lambda: (m := Metrics.scrape(ops_gateway.internal_url)).value(
        "igsp_queue_attempts_total", route="wallet", outcome="delivered") == 1 and m, what="the rollback delivered")

    requests_total = {(s["partner"], s["operation"], s["outcome"]): m.value("igsp_requests_total", **s)
                      for s in m.series("igsp_requests_total") if m.value("igsp_requests_total", **s)}
    assert requests_total == {
        ("acme-games", "balance", "ok"): 1,
        ("acme-games", "bet", "ok"): 3,
        ("acme-games", "bet", "declined"): 1,  # 402 insufficient_funds: not an error of anyone's
        ("acme-games", "unknown", "caller_error"): 1,  # 400 unknown_action
        ("unknown", "unknown", "auth_failure"): 5,  # 401 and 403: signature, key, timestamp
        ("acme-games", "balance", "upstream_error"): 3,
        ("beta-games", "balance", "upstream_error"): 1,
        ("beta-games", "unknown", "caller_error"): 1,  # rate limited: refused before the body is read
        ("acme-games", "win", "upstream_error"): 1,
        ("acme-games", "bet", "upstream_error"): 1,
    }
    assert {s["face"] for s in m.series("igsp_requests_total")} == {"platform"}
    assert m.value("igsp_requests_total", outcome="internal_error") == 0
    assert m.value("igsp_request_duration_seconds_count", face="platform") == 18
    assert m.value("igsp_request_duration_seconds_count", face="platform", operation="bet") == 5
    assert m.value("igsp_request_duration_seconds_bucket", face="platform", operation="bet", le="+Inf") == 5
    # Latency per partner, so the dashboard's partner filter reaches the latency panels.
    assert m.value("igsp_request_duration_seconds_count", partner="acme-games", operation="bet") == 5
    assert m.value("igsp_request_duration_seconds_count", partner="beta-games", operation="balance") == 1
    assert m.value("igsp_request_duration_seconds_count", partner="unknown") == 5

    assert m.value("igsp_idempotent_replays_total", partner="acme-games", action="bet") == 2
    assert m.value("igsp_idempotent_replays_total") == 2

    assert m.value("igsp_signature_failures_total", reason="bad_signature") == 3
    assert m.value("igsp_signature_failures_total", reason="unknown_api_key") == 1
    assert m.value("igsp_signature_failures_total", reason="stale_timestamp") == 1
    assert m.value("igsp_signature_failures_total") == 5
    assert m.value("igsp_rate_limited_total", partner="beta-games") == 1
    assert m.value("igsp_rate_limited_total") == 1
    assert m.series("igsp_ip_refused_total") == [{"partner": "acme-games"}]  # exported at zero
    assert m.value("igsp_ip_refused_total") == 0
    assert m.value("igsp_signature_failures_total", reason="replayed_signature") == 0  # exported at zero

    errors = {(s["mapping"], s["operation"], s["kind"]): m.value("igsp_upstream_errors_total", **s)
              for s in m.series("igsp_upstream_errors_total")}
    assert errors == {
        ("hub88-wallet", "balance", "5xx"): 1,
        ("hub88-wallet", "balance", "bad_body"): 1,
        ("hub88-wallet", "balance", "reset"): 1,
        ("dead-wallet", "balance", "connect"): 1,
        ("hub88-wallet", "win", "timeout"): 1,
        ("hub88-wallet", "bet", "timeout"): 1,
    }
    # Latency of every legacy call, failed ones included; the rollback went out as "refund".
    assert m.value("igsp_upstream_duration_seconds_count", mapping="hub88-wallet", operation="balance") == 4
    assert m.value("igsp_upstream_duration_seconds_count", mapping="hub88-wallet", operation="bet") == 3
    assert m.value("igsp_upstream_duration_seconds_count", mapping="hub88-wallet", operation="win") == 1
    assert m.value("igsp_upstream_duration_seconds_count", mapping="hub88-wallet", operation="refund") == 1
    assert m.value("igsp_upstream_duration_seconds_count", mapping="dead-wallet") == 1

    assert m.value("igsp_dead_letters_total", route="wallet") == 1
    assert m.value("igsp_queue_attempts_total", route="wallet", outcome="retry") == 0
    m = wait_for(lambda: (m := Metrics.scrape(ops_gateway.internal_url)).value("igsp_queue_depth") == 0 and m,
                 what="the queue gauge to drop")
    assert m.value("igsp_queue_dead_letters") == 1
    assert m.value("igsp_catalogue_cache_total", result="hit") == 0  # no provider-face partner here

    # Low cardinality: no player, transaction or request id ever becomes a label value.
    label_values = {v for _, labels, _ in m.samples for v in labels.values()}
    assert not label_values & {"p1", "tx-1", "tx-2", "tx-poor", "w-1", "s-1"}
    assert not any(re.fullmatch(r"[0-9a-f]{32}", v) for v in label_values)


def test_a_fresh_gateway_exports_its_series_with_a_bucket_at_every_timeout(gateway_factory, tmp_path):
    """Before any request: every series the dashboard and the alerts read is there at zero, and
    the latency buckets have an edge at each configured timeout (1.5 s shipped, 1.7 s here)."""
    slow = write_mapping(tmp_path / "slow-wallet.yaml", name="slow-wallet", timeout=1.7)
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db")
    config["partners"][1]["mapping"] = str(slow)
    m = Metrics.scrape(gateway_factory(config).internal_url)
    assert {v for n, _, v in m.samples if n.startswith("igsp_") and n.endswith(("_total", "_count"))} == {0}
    for partner in ("acme-games", "beta-games"):
        found = {(s["operation"], s["outcome"]) for s in m.series("igsp_requests_total") if s["partner"] == partner}
        assert found == {(op, outcome) for op in ("balance", "bet", "win", "refund") for outcome in metrics.OUTCOMES}
        assert {s["operation"] for s in m.series("igsp_request_duration_seconds_count")
                if s["partner"] == partner} == {"balance", "bet", "win", "refund"}
        assert m.series("igsp_rate_limited_total") and m.value("igsp_rate_limited_total", partner=partner) == 0
    upstream = {(s["mapping"], s["operation"]) for s in m.series("igsp_upstream_duration_seconds_count")}
    assert {("hub88-wallet", "bet"), ("slow-wallet", "bet"), ("slow-wallet", "refund")} <= upstream
    assert m.value("igsp_store_up") == 1 and m.value("igsp_config_last_reload_successful") == 1

    for histogram in ("igsp_request_duration_seconds_bucket", "igsp_upstream_duration_seconds_bucket"):
        edges = {float(s["le"]) for s in m.series(histogram)}
        # The usual timeouts, this config's own (timeout 1.7, connect_timeout 0.5) and the top.
        assert {0.5, 1.0, 1.5, 1.7, 2.0, 2.5, 3.0, 5.0, 10.0, float("inf")} <= edges, histogram
        assert edges == set(metrics.LATENCY_BUCKETS) | {1.7, float("inf")}


def test_a_refused_reload_shows_until_one_is_applied(gateway_factory, tmp_path):
    """igsp_config_last_reload_successful, which IgspConfigReloadRefused watches, and the series
    of a partner a reload adds, there at once."""
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db")
    gamma = {**config["partners"][1], "id": "gamma-games", "api_key": "gamma-key-0003"}
    config["partners"] = config["partners"][:1]
    gw = gateway_factory(config)
    assert Metrics.scrape(gw.internal_url).value("igsp_config_last_reload_successful") == 1
    gw.config_path.write_text("version: 1\npartners: [")  # broken YAML
    gw.proc.send_signal(signal.SIGHUP)
    m = wait_for(lambda: (m := Metrics.scrape(gw.internal_url)).value("igsp_config_reloads_total", outcome="refused") == 1
                 and m, what="the refused reload")
    assert m.value("igsp_config_last_reload_successful") == 0
    assert not [s for s in m.series("igsp_requests_total") if s["partner"] == "gamma-games"]

    config["partners"].append(gamma)
    gw.config_path.write_text(yaml.safe_dump(config))
    gw.proc.send_signal(signal.SIGHUP)
    m = wait_for(lambda: (m := Metrics.scrape(gw.internal_url)).value("igsp_config_reloads_total", outcome="applied") == 1
                 and m, what="the applied reload")
    assert m.value("igsp_config_last_reload_successful") == 1
    assert {s["operation"] for s in m.series("igsp_request_duration_seconds_count")
            if s["partner"] == "gamma-games"} == {"balance", "bet", "win", "refund"}


def test_store_up_follows_the_store(gateway_factory, redis_server):
    """igsp_store_up, which the IgspStoreUnavailable alert watches, drops while Redis is away."""
    gw = gateway_factory(platform_config(redis_server.url))
    assert Metrics.scrape(gw.internal_url).value("igsp_store_up") == 1
    redis_server.stop()
    wait_for(lambda: Metrics.scrape(gw.internal_url).value("igsp_store_up") == 0, what="the store gauge to drop")
    redis_server.start()
    wait_for(lambda: Metrics.scrape(gw.internal_url).value("igsp_store_up") == 1, what="the store gauge to come back")


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
              for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    # Metric names: identifiers that are not PromQL functions, keywords or label names.
    names = set()
    for expr in exprs:
        expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
        expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
        names |= {n for n in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if n.startswith(("igsp_", "process_"))}
    return names


def test_dashboard_queries_only_metrics_the_gateway_exposes(hub88, ops_gateway):
    names = dashboard_metric_names()
    assert len(names) >= 12, names
    scripted_traffic(hub88, ops_gateway)
    exposed = Metrics.scrape(ops_gateway.internal_url).names
    missing = names - exposed
    assert not missing, f"dashboard queries metrics /metrics does not expose: {sorted(missing)}"
    # And the other way round: every family the gateway defines has a panel.
    def family(name: str) -> str:
        return re.sub(r"_(total|bucket|count|sum|created)$", "", name)

    assert {family(n) for n in exposed if n.startswith("igsp_")} <= {family(n) for n in names}


def test_dashboard_is_a_grafana_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "igsp-gateway" and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"] and panel["title"], panel
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("partner", "p99", "upstream", "signature", "replay", "queue", "dead", "cache", "store", "reload",
                  "memory"):
        assert topic in titles, topic


def test_request_id_is_echoed_logged_and_sent_to_the_legacy_api(hub88, ops_gateway):
    acme = IgspClient(ops_gateway.url, ACME["api_key"], ACME["secret"])
    hub88.player("p1", "100.00")
    given = f"req-{uuid.uuid4()}"
    r = acme.hook(bet("tx-rid", 3), headers={"X-Request-ID": given})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == given
    sent = hub88.headers("/transaction/bet")
    assert [h["X-Request-ID"] for h in sent] == [given]

    # Without one, the gateway makes one up and uses it the same way.
    r = acme.hook(balance())
    made = r.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert hub88.headers("/user/balance")[-1]["X-Request-ID"] == made

    # An unusable incoming id (too long) is replaced, not propagated.
    r = acme.hook(balance(), headers={"X-Request-ID": "x" * 200})
    assert r.status_code == 200 and r.headers["X-Request-ID"] != "x" * 200

    # A failing legacy call: its warning line carries the request id too.
    hub88.fault("garbage", endpoint="balance")
    failed = acme.hook(balance(), headers={"X-Request-ID": "req-failing-1"})
    assert failed.status_code == 502

    # The log file is read by polling: "the client has its answer" says nothing about when
    # another process's file shows a line.
    def logged():
        lines = ops_gateway.log_lines()
        done = {line.get("request_id") for line in lines if line["msg"] == "request"}
        return given in done and "req-failing-1" in done and lines

    lines = wait_for(logged, timeout=10, what="the access lines of both requests")
    access = [line for line in lines if line["msg"] == "request" and line.get("request_id") == given]
    assert len(access) == 1
    entry = access[0]
    assert entry["partner"] == "acme-games" and entry["operation"] == "bet" and entry["face"] == "platform"
    assert entry["status"] == 200 and entry["transaction_id"] == "tx-rid" and entry["latency_ms"] > 0
    assert entry["level"] == "info" and entry["logger"] == "igsp.access" and entry["ts"].endswith("Z")
    failing = [line for line in lines if line.get("request_id") == "req-failing-1"]
    assert {line["msg"] for line in failing} == {"legacy call failed", "request"}
    warning = next(line for line in failing if line["msg"] == "legacy call failed")
    assert warning["kind"] == "bad_body" and warning["mapping"] == "hub88-wallet" and warning["level"] == "warning"
    assert next(line for line in failing if line["msg"] == "request")["error"] == "upstream_bad_response"


def test_healthz_and_readyz(ops_gateway):
    assert requests.get(f"{ops_gateway.url}/healthz", timeout=5).json() == {"status": "ok"}
    r = requests.get(f"{ops_gateway.url}/readyz", timeout=5)
    assert r.status_code == 200
    assert r.json()["checks"] == {"mappings": "ok", "store": "ok"}  # upstreams not probed by default


def test_readyz_probes_upstreams_when_asked(gateway_factory, hub88, tmp_path):
    dead = write_mapping(tmp_path / "dead-wallet.yaml", name="dead-wallet",
                         base_url=f"http://127.0.0.1:{free_port()}")
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db", server={"probe_upstreams": True})
    gw = gateway_factory(config)
    r = requests.get(f"{gw.url}/readyz", timeout=5)
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"mappings": "ok", "store": "ok", "upstream:hub88-wallet": "ok"}
    gw.stop()

    config["partners"][1]["mapping"] = str(dead)
    gw = gateway_factory(config)
    r = requests.get(f"{gw.url}/readyz", timeout=5)
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "not ready"
    assert body["checks"]["upstream:hub88-wallet"] == "ok"
    assert body["checks"]["upstream:dead-wallet"].startswith("unreachable: ")
    assert "127.0.0.1" not in r.text  # names, never addresses



def test_every_metric_is_documented_in_the_readme():
    source = (ROOT / "gateway" / "ops" / "metrics.py").read_text()
    readme = (ROOT / "README.md").read_text()
    defined = re.findall(r'(Counter|Gauge|Histogram)\("(igsp_\w+)"', source)
    assert len(defined) >= 13
    for kind, name in defined:
        assert f"`{name}_total`" in readme if kind == "Counter" else f"`{name}`" in readme, name


def test_metrics_and_admin_live_on_the_internal_port_only(gateway_factory, hub88, tmp_path):
    token = "admin-token-0123456789abcdef"
    gw = gateway_factory(platform_config(f"sqlite:///{tmp_path}/gateway.db", admin={"token": token}))
    assert gw.url != gw.internal_url
    auth = {"Authorization": f"Bearer {token}"}
    hub88.player("p1", "100.00")
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    assert acme.hook(balance()).status_code == 200
    # The public port: the API and the probes; /metrics and /admin/ do not exist there,
    # whatever the method or token (a 404 exactly like an unknown path's, never a 405).
    unknown = requests.get(f"{gw.url}/no-such-path", timeout=5)
    for method, path in (("GET", "/metrics"), ("POST", "/metrics"), ("GET", "/admin/queue"), ("GET", "/admin/dlq"),
                         ("DELETE", "/admin/dlq"), ("POST", "/admin/dlq/x/replay"), ("GET", "/admin"),
                         ("GET", "/admin/"), ("PUT", "/admin/queue")):
        r = requests.request(method, gw.url + path, headers=auth, timeout=5)
        assert (r.status_code, r.json()["error"]) == (404, "not_found"), (method, path, r.text)
        assert r.json()["message"] == unknown.json()["message"]
    # The internal port: /metrics and /admin/, never the API (not even a signed request).
    assert "igsp_requests_total" in requests.get(f"{gw.internal_url}/metrics", timeout=5).text
    assert requests.get(f"{gw.internal_url}/admin/queue", headers=auth, timeout=5).json()["dead"] == 0
    internal = IgspClient(gw.internal_url, ACME["api_key"], ACME["secret"])
    r = internal.hook(balance())
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    assert requests.get(f"{gw.internal_url}/platforms/game-provider/hooks", timeout=5).status_code == 404
    assert requests.get(f"{gw.internal_url}/legacy/hub88-wallet/x", timeout=5).status_code == 404
    # Both answer the probes.
    for base in (gw.url, gw.internal_url):
        assert requests.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
        assert requests.get(f"{base}/readyz", timeout=5).json()["status"] == "ready"
    # Only the API call counted; the refused requests are not partner traffic.
    m = Metrics.scrape(gw.internal_url)
    assert m.value("igsp_requests_total") == 1


def test_the_public_and_internal_ports_must_differ(tmp_path, hub88, hub88_keys):
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db", server={"port": 18080, "internal_port": 18080})
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HUB88_WALLET_URL": hub88.url,
           "HUB88_PRIVATE_KEY": hub88_keys[0]}
    result = subprocess.run([sys.executable, "-m", "gateway", "validate", str(path)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert "server.internal_port: got 18080: the public port and the internal port (/metrics, /admin/) must differ" \
        in result.stderr
