"""Operations end to end: /metrics values after scripted traffic, the Grafana dashboard
against what /metrics really exposes, /healthz and /readyz, request ids and access logs.

Every test runs a real gateway process against the Hub88-style wallet simulator.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
import requests

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
    queued = wait_for(lambda: (m := Metrics.scrape(ops_gateway.url)).value("igsp_queue_depth") == 1 and m,
                      what="the compensating rollback in the queue")
    assert queued.value("igsp_queue_oldest_age_seconds") >= 0
    m = wait_for(lambda: (m := Metrics.scrape(ops_gateway.url)).value(
        "igsp_queue_attempts_total", route="wallet", outcome="delivered") == 1 and m, what="the rollback delivered")

    requests_total = {(s["partner"], s["operation"], s["outcome"]): m.value("igsp_requests_total", **s)
                      for s in m.series("igsp_requests_total")}
    assert requests_total == {
        ("acme-games", "balance", "ok"): 1,
        ("acme-games", "bet", "ok"): 3,
        ("unknown", "unknown", "client_error"): 5,
        ("acme-games", "balance", "server_error"): 3,
        ("beta-games", "balance", "server_error"): 1,
        ("beta-games", "unknown", "client_error"): 1,  # rate limited: refused before the body is read
        ("acme-games", "win", "server_error"): 1,
        ("acme-games", "bet", "server_error"): 1,
    }
    assert {s["face"] for s in m.series("igsp_requests_total")} == {"platform"}
    assert m.value("igsp_request_duration_seconds_count", face="platform") == 16
    assert m.value("igsp_request_duration_seconds_count", face="platform", operation="bet") == 4
    assert m.value("igsp_request_duration_seconds_bucket", face="platform", operation="bet", le="+Inf") == 4

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
    assert m.value("igsp_upstream_duration_seconds_count", mapping="hub88-wallet", operation="bet") == 2
    assert m.value("igsp_upstream_duration_seconds_count", mapping="hub88-wallet", operation="win") == 1
    assert m.value("igsp_upstream_duration_seconds_count", mapping="hub88-wallet", operation="refund") == 1
    assert m.value("igsp_upstream_duration_seconds_count", mapping="dead-wallet") == 1

    assert m.value("igsp_dead_letters_total", route="wallet") == 1
    assert m.value("igsp_queue_attempts_total", route="wallet", outcome="retry") == 0
    m = wait_for(lambda: (m := Metrics.scrape(ops_gateway.url)).value("igsp_queue_depth") == 0 and m,
                 what="the queue gauge to drop")
    assert m.value("igsp_queue_dead_letters") == 1
    assert m.value("igsp_catalogue_cache_total", result="hit") == 0  # no provider-face partner here

    # Low cardinality: no player, transaction or request id ever becomes a label value.
    label_values = {v for _, labels, _ in m.samples for v in labels.values()}
    assert not label_values & {"p1", "tx-1", "tx-2", "w-1", "s-1"}
    assert not any(re.fullmatch(r"[0-9a-f]{32}", v) for v in label_values)


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
        names |= {n for n in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if n.startswith("igsp_")}
    return names


def test_dashboard_queries_only_metrics_the_gateway_exposes(hub88, ops_gateway):
    names = dashboard_metric_names()
    assert len(names) >= 12, names
    scripted_traffic(hub88, ops_gateway)
    exposed = Metrics.scrape(ops_gateway.url).names
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
    for topic in ("partner", "p99", "upstream", "signature", "replay", "queue", "dead", "cache"):
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
