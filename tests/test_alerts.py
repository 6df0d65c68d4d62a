"""The chart's PrometheusRule against promtool and a live gateway.

The rules are rendered from helm/igsp-gateway exactly as ``tests/test_helm.py`` renders the
chart; their ``spec.groups`` become a Prometheus rule file. ``promtool check rules`` checks
every expression and annotation template. Then a real gateway serves real traffic — an
insufficient-funds bet, legacy failures injected through the Hub88 simulator's faults, a
dead-lettered win, a refused reload — and ``promtool test rules`` evaluates every alert on
series built from its /metrics: what must fire fires, with the labels an on-call routes
on, and normal play (declines, auth failures) fires nothing.

promtool comes from Debian's ``prometheus`` package (``.ci/run`` installs it); without it
the promtool tests are skipped and the scrape-only checks still run.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

import helm_python
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.tools.simulators import hub88_wallet, start_in_thread
from tests.conftest import ACME, BETA, Hub88, platform_config
from tests.ops_support import Metrics, wait_for
from tests.support import GatewayProcess, IgspClient
from tests.test_helm import CI_DIR, FULLNAME, NAMESPACE, find, load_values, render_chart

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed: it comes with Debian's prometheus package "
    "(apt-get install prometheus; .ci/run installs it)")

ALERTS = {
    "IgspLedgerTransactionStuckPending", "IgspQueuedDeliveryOld", "IgspDeadLetters", "IgspPartnerFailureRatio",
    "IgspInternalErrors", "IgspUpstreamErrorRatio", "IgspUpstreamLatencyHigh", "IgspTargetDown",
    "IgspStoreUnavailable", "IgspConfigReloadRefused",
}
#: The labels a ServiceMonitor scrape gives every series of the release.
TARGET = {"namespace": NAMESPACE, "job": FULLNAME, "instance": "10.0.0.7:8080"}
STEP_MINUTES, STEPS, EVAL_AT = 1, 30, "20m"


def rule_groups(values: dict | None = None) -> list[dict]:
    values = dict(values or {})
    values["prometheusRule"] = {"enabled": True, **values.get("prometheusRule", {})}
    return find(render_chart(values), "PrometheusRule")["spec"]["groups"]


def rules(groups: list[dict]) -> list[dict]:
    return [rule for group in groups for rule in group["rules"]]


def write_rules(path: Path, groups: list[dict], *, annotations: bool = True) -> Path:
    if not annotations:  # promtool test compares annotations whole: the alert tests check labels
        groups = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
                  for g in groups]
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (an identifier followed by a label selector)."""
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))


# ----------------------------------------------------------------------------- rule file


@pytest.mark.parametrize("values", [
    None,
    load_values(CI_DIR / "production-values.yaml"),
    {"prometheusRule": {"job": "gateway", "for": "5m", "rateWindow": "10m", "minRequestsPerSecond": 0,
                        "failureRatio": 0.2, "upstreamP99Seconds": 1.5, "queueOldestSeconds": 60,
                        "additionalRules": [{"alert": "Extra", "expr": "vector(1) > 2", "labels": {"x": "y"}}]}},
], ids=["defaults", "production", "custom"])
@needs_promtool
def test_promtool_checks_every_rule(tmp_path, values):
    groups = rule_groups(values)
    result = promtool("check", "rules", str(write_rules(tmp_path / "rules.yaml", groups)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules(groups))} rules found" in result.stdout


def test_every_alert_has_a_runbook_and_selects_the_release():
    groups = rule_groups()
    alerts = {rule["alert"]: rule for rule in rules(groups)}
    assert set(alerts) == ALERTS
    for name, rule in alerts.items():
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, name
        assert len(rule["annotations"]["runbook"]) > 150, name  # steps, not a title
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["for"] == "2m", name
        selectors = re.findall(r"[a-z_]+\{([^}]*)\}", rule["expr"])
        assert selectors and all(f'namespace="{NAMESPACE}", job="{FULLNAME}"' in s for s in selectors), name


def test_thresholds_come_from_the_values():
    alerts = {r["alert"]: r for r in rules(rule_groups({"prometheusRule": {
        "job": "gw-scraped", "rateWindow": "10m", "minRequestsPerSecond": 2, "failureRatio": 0.25,
        "internalErrorRatio": 0.02, "upstreamErrorRatio": 0.3, "upstreamP99Seconds": 0.8,
        "pendingSeconds": 300, "queueOldestSeconds": 1200, "for": "7m"}}))}
    assert alerts["IgspPartnerFailureRatio"]["expr"].count("> 0.25") == 1
    assert "> 0.02 " in alerts["IgspInternalErrors"]["expr"]
    assert "> 0.3 " in alerts["IgspUpstreamErrorRatio"]["expr"]
    assert "> 0.8 " in alerts["IgspUpstreamLatencyHigh"]["expr"]
    assert alerts["IgspLedgerTransactionStuckPending"]["expr"].endswith("> 300")
    assert alerts["IgspQueuedDeliveryOld"]["expr"].endswith("> 1200")
    for name in ("IgspPartnerFailureRatio", "IgspInternalErrors", "IgspUpstreamErrorRatio", "IgspUpstreamLatencyHigh"):
        assert alerts[name]["expr"].endswith("[10m])) > 2"), name
    assert all('job="gw-scraped"' in r["expr"] and r["for"] == "7m" for r in alerts.values())


@pytest.mark.parametrize(("values", "message"), [
    ({"failureRatio": 5}, "/prometheusRule/failureRatio"),
    ({"internalErrorRatio": 0}, "/prometheusRule/internalErrorRatio"),
    ({"rateWindow": "5 minutes"}, "/prometheusRule/rateWindow"),
    ({"upstreamP99Seconds": 0}, "/prometheusRule/upstreamP99Seconds"),
    ({"queueOldestSeconds": "15m"}, "/prometheusRule/queueOldestSeconds"),
    ({"pendingSecond": 60}, "pendingSecond"),
])
def test_schema_rejects_wrong_thresholds(values, message):
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(message)):
        rule_groups({"prometheusRule": values})


# ----------------------------------------------------------------------------- a live gateway


@pytest.fixture(scope="module")
def live(tmp_path_factory, hub88_keys):
    """A gateway after traffic an on-call has seen: ok, declined, auth failures, legacy failures,
    a slow legacy call, a dead letter and a refused reload. Yields (the scrape, the process)."""
    tmp_path = tmp_path_factory.mktemp("alerts")
    server = start_in_thread(hub88_wallet.make_app(hub88_wallet.State(), public_key_pem=hub88_keys[1]))
    hub88 = Hub88(server)
    gw = GatewayProcess(platform_config(f"sqlite:///{tmp_path}/gateway.db"), tmp_path,
                        env={"HUB88_WALLET_URL": hub88.url, "HUB88_PRIVATE_KEY": hub88_keys[0]}).start()
    try:
        acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
        beta = IgspClient(gw.url, BETA["api_key"], BETA["secret"])
        forger = IgspClient(gw.url, ACME["api_key"], "not-the-secret-0123456789abcdef")
        hub88.player("p1", "100.00")
        hub88.player("p2", "1.00")
        assert [acme.hook(balance("p1")).status_code for _ in range(2)] == [200, 200]
        assert acme.hook(bet("a-1", 10, "p1")).status_code == 200
        assert acme.hook(bet("a-2", 1000, "p1")).status_code == 402  # insufficient funds
        assert beta.hook(balance("p2")).status_code == 200
        assert beta.hook(bet("b-1", 5, "p2")).status_code == 402  # all beta sees is normal play
        assert forger.hook(balance("p1")).status_code == 403
        for kind, status in (("http_500_html", 503), ("garbage", 502), ("reset", 503)):
            hub88.fault(kind, endpoint="balance")
            assert acme.hook(balance("p1")).status_code == status, kind
        # Past the mapping's 1.5 s timeout: a slow call, and (the wallet does not dedupe) a dead letter.
        hub88.fault("delay", endpoint="win", seconds=2.5)
        assert acme.hook({**bet("w-1", 5, "p1"), "action": "win", "type": "win"}).status_code == 504
        gw.config_path.write_text("version: 1\npartners: [")
        gw.proc.send_signal(signal.SIGHUP)
        scrape = wait_for(lambda: (m := Metrics.scrape(gw.internal_url)).value("igsp_config_last_reload_successful") == 0
                          and m.value("igsp_queue_dead_letters") == 1 and m,
                          what="the refused reload and the dead letter in the gauges")
        yield scrape, gw
    finally:
        gw.stop()
        server.stop()


def bet(txid: str, amount: int, player: str) -> dict:
    return {"action": "bet", "player_id": player, "amount": amount, "currency": "EUR", "game_id": "vs20olympgate",
            "transaction_id": txid, "session_id": "s-1", "type": "bet", "round_id": "r-1"}


def balance(player: str) -> dict:
    return {"action": "balance", "player_id": player, "currency": "EUR"}


def test_every_alert_reads_metrics_a_live_gateway_exposes(live):
    scrape, _ = live
    for rule in rules(rule_groups()):
        missing = metric_names(rule["expr"]) - scrape.names - {"up"}  # up: Prometheus's own, per target
        assert not missing, f"{rule['alert']} reads {sorted(missing)}, which /metrics does not expose"


@needs_promtool
def test_the_live_scrape_passes_promtool_check_metrics(live):
    scrape, _ = live
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=scrape.text, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        result.stdout + result.stderr


def input_series(text: str, overrides: dict | None = None) -> list[dict]:
    """Every igsp_ and process_ sample of a scrape as a promtool input series under the target's
    labels: a counter grows by (its scraped value) per second, so a rate is the scraped count
    and a ratio the ratio of counts; a gauge holds its value. ``overrides``: (name, labels) ->
    value, for the values a failure would bring."""
    overrides = dict(overrides or {})
    series = []
    for family in text_string_to_metric_families(text):
        counting = family.type in ("counter", "histogram")
        for sample in family.samples:
            if not sample.name.startswith(("igsp_", "process_")) or sample.name.endswith("_created"):
                continue
            labels = {**sample.labels, **TARGET}
            value = overrides.pop((sample.name, frozenset(sample.labels.items())), sample.value)
            assert all('"' not in v and "\\" not in v for v in labels.values())
            selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            if counting:
                series.append({"series": f"{sample.name}{{{selector}}}",
                               "values": f"0+{value * 60 * STEP_MINUTES}x{STEPS}"})
            else:
                series.append({"series": f"{sample.name}{{{selector}}}", "values": f"{value}+0x{STEPS}"})
    assert not overrides, f"no such series in the scrape: {list(overrides)}"
    return series


def up(instance: str, value: int) -> dict:
    labels = {**TARGET, "instance": instance}
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"up{{{selector}}}", "values": f"{value}+0x{STEPS}"}


def expect(alerts: dict[str, list[dict]]) -> list[dict]:
    """An alert_rule_test per alert: exactly these label sets fire (none for an alert not named)."""
    tests = []
    for name in sorted(ALERTS):
        tests.append({"eval_time": EVAL_AT, "alertname": name,
                      "exp_alerts": [{"exp_labels": labels} for labels in alerts.get(name, [])]})
    return tests


RELEASE = {"namespace": NAMESPACE, "job": FULLNAME}


@needs_promtool
def test_alerts_on_a_live_scrape(live, tmp_path):
    scrape, _ = live
    m = scrape
    # What the traffic was, as the alerts will read it.
    assert m.value("igsp_requests_total", partner="beta-games", outcome="declined") == 1
    assert m.value("igsp_requests_total", partner="acme-games", outcome="declined") == 1
    assert m.value("igsp_requests_total", partner="acme-games", outcome="upstream_error") == 4
    assert m.value("igsp_requests_total", partner="unknown", outcome="auth_failure") == 1
    assert m.value("igsp_upstream_errors_total", mapping="hub88-wallet", operation="bet") == 0

    groups = rule_groups()
    rule_file = write_rules(tmp_path / "rules.yaml", groups, annotations=False)
    base = input_series(m.text)
    warning, critical = {"severity": "warning", **RELEASE}, {"severity": "critical", **RELEASE}
    instance = {"instance": TARGET["instance"]}
    healthy = {
        # acme: 4 of 8 answers failed upstream; beta (ok, declined) and unknown (auth) fire nothing.
        "IgspPartnerFailureRatio": [{**warning, "partner": "acme-games"}],
        # balance: 3 failures of 6 calls; win: its one call timed out. bet: the decline is an answer.
        "IgspUpstreamErrorRatio": [{**warning, "mapping": "hub88-wallet", "operation": "balance"},
                                   {**warning, "mapping": "hub88-wallet", "operation": "win"}],
        "IgspUpstreamLatencyHigh": [{**warning, "mapping": "hub88-wallet", "operation": "win"}],
        "IgspDeadLetters": [warning],
        "IgspConfigReloadRefused": [{**warning, **instance}],
    }
    # The same series with what a failure would bring: the store gone, a stuck transaction,
    # an old delivery, internal errors for beta, a second pod Prometheus cannot scrape.
    failing_input = input_series(m.text, overrides={
        ("igsp_store_up", frozenset()): 0,
        ("igsp_ledger_oldest_pending_seconds", frozenset()): 600,
        ("igsp_queue_oldest_age_seconds", frozenset()): 3600,
        ("igsp_requests_total", frozenset({"partner": "beta-games", "face": "platform", "operation": "bet",
                                           "outcome": "internal_error"}.items())): 2,
    })
    failing = {**healthy,
               "IgspStoreUnavailable": [{**critical, **instance}],
               "IgspLedgerTransactionStuckPending": [critical],
               "IgspQueuedDeliveryOld": [warning],
               "IgspInternalErrors": [{**critical, "partner": "beta-games"}],
               "IgspPartnerFailureRatio": [{**warning, "partner": "acme-games"},
                                           {**warning, "partner": "beta-games"}],
               "IgspTargetDown": [{**warning, "instance": "10.0.0.8:8080"}]}
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump({
        "rule_files": [rule_file.name],
        "evaluation_interval": f"{STEP_MINUTES}m",
        "tests": [
            {"name": "live scrape", "interval": f"{STEP_MINUTES}m",
             "input_series": [*base, up(TARGET["instance"], 1)], "alert_rule_test": expect(healthy)},
            {"name": "live scrape, then failures", "interval": f"{STEP_MINUTES}m",
             "input_series": [*failing_input, up(TARGET["instance"], 1), up("10.0.0.8:8080", 0)],
             "alert_rule_test": expect(failing)},
        ],
    }, sort_keys=False))
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
