"""Checks on the Helm chart in helm/igsp-gateway, rendered offline.

No ``helm`` binary, network or cluster: ``helm_python`` (helm-python-sdk) embeds Helm's Go
SDK to lint and render, and ``kubernetes_validate`` checks every manifest against the
Kubernetes OpenAPI schemas it ships. CRD kinds it has no schema for (ServiceMonitor) are
checked by hand.

Helpers for other tests:

    manifests = render_chart({"replicaCount": 1})
    config = gateway_config(manifests)            # parsed gateway.yaml
    path = write_config_tree(manifests, tmp_path)  # gateway.yaml + mappings/ as the pod sees them
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = ROOT / "helm" / "igsp-gateway"
CI_DIR = CHART_DIR / "ci"
TEST_VALUES_DIR = Path(__file__).resolve().parent / "helm_values"
RELEASE = "gw"
NAMESPACE = "igsp"
FULLNAME = f"{RELEASE}-igsp-gateway"
# Oldest and newest schema sets kubernetes-validate ships offline.
KUBE_VERSIONS = ("1.33.0", kubernetes_validate.latest_version())
GRACE_MARGIN = 10
NO_REDIS_HINT = ("needs a shared store: set redis.url, redis.external.mode or redis.internal.enabled=true "
                 "(SQLite is single-node)")

SCENARIOS = sorted(CI_DIR.glob("*.yaml")) + sorted(TEST_VALUES_DIR.glob("*.yaml"))


# ----------------------------------------------------------------------------- helpers


def load_values(path: Path) -> dict[str, Any]:
    """A values file as a dict (an empty file is ``{}``)."""
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def render_chart(
    values: dict[str, Any] | None = None,
    *,
    chart_dir: Path = CHART_DIR,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[dict[str, Any]]:
    """Render the chart offline and return its manifests (NOTES.txt and empty docs left out).

    Raises ``helm_python.HelmValuesError`` when the values break values.schema.json and
    ``helm_python.HelmRenderError`` when a template ``fail``s.
    """
    with helm_python.Chart.load(chart_dir) as chart:
        rendered = chart.render(values, name=name, namespace=namespace)
    manifests = []
    for path in sorted(rendered):
        if path.endswith(".txt"):
            continue
        manifests.extend(doc for doc in yaml.safe_load_all(rendered[path]) if doc)
    return manifests


def render_notes(values: dict[str, Any] | None = None) -> str:
    with helm_python.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def find(manifests: list[dict], kind: str, name: str | None = None) -> dict:
    """The one manifest of ``kind`` (and ``name``); fails the test if there is not exactly one."""
    found = [m for m in manifests if m["kind"] == kind and name in (None, m["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[m['metadata']['name'] for m in found]}"
    return found[0]


def kinds(manifests: list[dict]) -> set[str]:
    return {m["kind"] for m in manifests}


def gateway_config(manifests: list[dict]) -> dict[str, Any]:
    """The rendered gateway.yaml, parsed."""
    config_map = find(manifests, "ConfigMap", FULLNAME)
    return yaml.safe_load(config_map["data"]["gateway.yaml"])


def write_config_tree(manifests: list[dict], directory: Path) -> Path:
    """Lay out the config volume exactly as the Deployment mounts it; returns gateway.yaml's path.

    Follows the volume's ``items`` (key -> path), so ``mappings/<file>`` references in
    gateway.yaml resolve the same way they do in the pod.
    """
    config_map = find(manifests, "ConfigMap", FULLNAME)
    pod = find(manifests, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    for item in volume["configMap"]["items"]:
        target = directory / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(config_map["data"][item["key"]], encoding="utf-8")
    return directory / "gateway.yaml"


def pod_spec(manifests: list[dict]) -> dict:
    return find(manifests, "Deployment")["spec"]["template"]["spec"]


def checksum(manifests: list[dict]) -> str:
    return find(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def with_partner(values: dict | None = None, **partner: Any) -> dict:
    """Values with one platform partner whose keys live in the chart's Secret."""
    entry = {
        "id": "acme-games",
        "face": "platform",
        "mapping": "acme.yaml",
        "apiKey": "acme-api-key-1",
        "secret": "acme-signing-secret-1",
    }
    entry.update(partner)
    entry = {key: value for key, value in entry.items() if value is not None}  # None drops a key
    merged = {"mappings": {"acme.yaml": "version: 1\nname: acme\n"}, "partners": [entry]}
    merged.update(values or {})
    return merged


@pytest.fixture(scope="module")
def default_manifests() -> list[dict]:
    return render_chart()


@pytest.fixture(scope="module")
def production_manifests() -> list[dict]:
    return render_chart(load_values(CI_DIR / "production-values.yaml"))


# ----------------------------------------------------------------------------- lint


@pytest.mark.parametrize("values_file", SCENARIOS, ids=lambda p: p.name)
def test_lint_has_no_errors_or_warnings(values_file: Path) -> None:
    report = helm_python.lint(
        CHART_DIR, load_values(values_file), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSIONS[0]}"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == []


def test_chart_metadata_matches_the_package() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text(encoding="utf-8"))
    assert (chart["apiVersion"], chart["name"], chart["version"]) == ("v2", "igsp-gateway", "0.1.0")
    init = ROOT / "gateway" / "__init__.py"
    if not init.exists():
        pytest.skip("gateway/__init__.py not written yet")
    version = re.search(r'^__version__\s*=\s*"([^"]+)"', init.read_text(encoding="utf-8"), re.M)
    assert version and chart["appVersion"] == version.group(1)


def test_every_value_is_documented() -> None:
    """helm-docs style: each key outside list items has a comment block containing ``# --``."""
    lines = (CHART_DIR / "values.yaml").read_text(encoding="utf-8").splitlines()
    undocumented, list_indent = [], None
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)(- )?([A-Za-z_][\w.-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        if match.group(2):  # a list item: example data, not a key
            list_indent = indent
            continue
        if list_indent is not None and indent > list_indent:
            continue
        list_indent = None
        block = []
        for previous in reversed(lines[:number]):
            if not previous.strip().startswith("#"):
                break
            block.append(previous.strip())
        if not any(comment.startswith("# --") for comment in block):
            undocumented.append(f"values.yaml:{number + 1}: {match.group(3)}")
    assert undocumented == []


def test_readme_lists_every_value() -> None:
    """The README's values table (helm-docs style) has a row for every leaf value."""

    def leaves(node: Any, prefix: str = "") -> set[str]:
        if isinstance(node, dict) and node:
            return set().union(*(leaves(value, f"{prefix}{key}.") for key, value in node.items()))
        return {prefix.rstrip(".")}

    readme = (CHART_DIR / "README.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| ([\w.-]+) \|", readme, re.M))
    assert leaves(load_values(CHART_DIR / "values.yaml")) - rows == set()


def test_schema_is_draft07_and_closed() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    defaults = load_values(CHART_DIR / "values.yaml")
    assert set(defaults) <= set(schema["properties"])
    assert all("description" in spec for spec in schema["properties"].values())


# ----------------------------------------------------------------------------- objects


def test_default_render_objects(default_manifests: list[dict]) -> None:
    assert {"Deployment", "Service", "ConfigMap", "Secret", "ServiceAccount"} <= kinds(default_manifests)
    assert not {"HorizontalPodAutoscaler", "Ingress", "NetworkPolicy", "StatefulSet"} & kinds(default_manifests)
    deployment = find(default_manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # one SQLite owner at a time
    pvc = find(default_manifests, "PersistentVolumeClaim")
    data = next(v for v in pod_spec(default_manifests)["volumes"] if v["name"] == "data")
    assert data["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]


def test_production_render_objects(production_manifests: list[dict]) -> None:
    found = kinds(production_manifests)
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "NetworkPolicy",
        "Ingress",
    } <= found
    assert "Secret" not in found and "PersistentVolumeClaim" not in found
    deployment = find(production_manifests, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns the replica count
    hpa = find(production_manifests, "HorizontalPodAutoscaler")
    assert (hpa["apiVersion"], hpa["spec"]["minReplicas"]) == ("autoscaling/v2", 3)
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    container = pod_spec(production_manifests)["containers"][0]
    assert {"secretRef": {"name": "igsp-gateway-keys"}} in container["envFrom"]
    assert "data" not in {v["name"] for v in pod_spec(production_manifests)["volumes"]}
    ingress = find(production_manifests, "Ingress")
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    assert ingress["spec"]["tls"] == [{"hosts": ["igsp.example.com"], "secretName": "igsp-gateway-tls"}]
    dashboard = find(production_manifests, "ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["igsp-gateway.json"])["panels"]


def test_service_monitor_scrapes_the_internal_service(production_manifests: list[dict]) -> None:
    """ServiceMonitor is a CRD kubernetes-validate has no schema for: check its shape here."""
    monitor = find(production_manifests, "ServiceMonitor")
    internal = find(production_manifests, "Service", f"{FULLNAME}-internal")
    public = find(production_manifests, "Service", FULLNAME)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= internal["metadata"]["labels"].items()
    assert not selector.items() <= public["metadata"]["labels"].items()  # /metrics is not on the public port
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == "internal"
    assert [p["name"] for p in internal["spec"]["ports"]] == ["internal"]
    # The series keep job=<fullname> (the public Service's name), which the alerts select on.
    assert internal["metadata"]["labels"][monitor["spec"]["jobLabel"]] == FULLNAME
    rules = [rule for group in find(production_manifests, "PrometheusRule")["spec"]["groups"]
             for rule in group["rules"]]
    assert rules and all(f'job="{FULLNAME}"' in rule["expr"] for rule in rules)


def test_prometheus_rule_alerts_on_metrics_the_gateway_exports(production_manifests: list[dict]) -> None:
    """Shape and selectors here; tests/test_alerts.py runs the rules through promtool and a live scrape."""
    source = (ROOT / "gateway" / "ops" / "metrics.py").read_text(encoding="utf-8")
    defined = set(re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"(igsp_\w+)"', source))

    rule = find(production_manifests, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert [g["name"] for g in rule["spec"]["groups"]] == [f"{FULLNAME}.{name}" for name in
                                                            ("money", "traffic", "availability")]
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    stuck = alerts["IgspLedgerTransactionStuckPending"]
    selector = f'namespace="{NAMESPACE}", job="{FULLNAME}"'
    assert stuck["expr"] == f"max by (namespace, job) (igsp_ledger_oldest_pending_seconds{{{selector}}}) > 120"
    assert stuck["for"] == "2m" and stuck["labels"]["severity"] == "critical"
    assert "{{ $value | humanizeDuration }}" in stuck["annotations"]["summary"]
    assert alerts["IgspTargetDown"]["expr"] == f"up{{{selector}}} == 0"
    for name, alert in alerts.items():
        for metric in re.findall(r"([a-z_:]+)\{", alert["expr"]):
            family = re.sub(r"_(total|bucket|count|sum)$", "", metric)
            assert metric == "up" or family in defined, f"{name} reads {metric}, which the gateway does not define"
    # The job the rules select is the one the ServiceMonitor gives: the value of its jobLabel
    # on the (internal) Service it scrapes, the public Service's name.
    monitor = find(production_manifests, "ServiceMonitor")
    service = find(production_manifests, "Service", f"{FULLNAME}-internal")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == FULLNAME
    assert not any(m["kind"] == "PrometheusRule" for m in render_chart())  # off by default


def test_prometheus_rule_additional_rules_get_a_group_of_their_own() -> None:
    extra = {"alert": "MyGatewayAlert", "expr": "vector(1) > 2", "labels": {"team": "payments"}}
    rule = find(render_chart({"prometheusRule": {"enabled": True, "additionalRules": [extra]}}), "PrometheusRule")
    assert rule["spec"]["groups"][-1] == {"name": f"{FULLNAME}.additional", "rules": [extra]}


def test_service_selects_only_gateway_pods() -> None:
    manifests = render_chart(load_values(CI_DIR / "internal-redis-values.yaml"))
    selector = find(manifests, "Service", FULLNAME)["spec"]["selector"]
    redis_labels = find(manifests, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    gateway_labels = find(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= gateway_labels.items()
    assert not selector.items() <= redis_labels.items()


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", [None, *SCENARIOS], ids=lambda p: p.name if p else "chart-defaults")
def test_every_manifest_validates(values_file: Path | None, kube_version: str) -> None:
    manifests = render_chart(load_values(values_file) if values_file else None)
    for manifest in manifests:
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            assert manifest["kind"] in {"ServiceMonitor", "PrometheusRule"} and manifest["spec"], where
            continue
        try:
            kubernetes_validate.validate(manifest, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{where} against Kubernetes {kube_version}: {path}: {exc.message}")


# ----------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "three"}, "at '/replicaCount': got string, want integer"),
        ({"service": {"port": "x"}}, "at '/service/port': got string, want integer"),
        ({"service": {"port": 70000}}, "/service/port"),
        ({"gateway": {"drainSeconds": "20s"}}, "/gateway/drainSeconds"),
        ({"gateway": {"logLevel": "verbose"}}, "/gateway/logLevel"),
        ({"autoscaling": {"enabled": "yes"}}, "/autoscaling/enabled"),
        ({"replicaCont": 2}, "additional properties 'replicaCont' not allowed"),
        ({"redis": {"url": "http://redis:6379"}}, "/redis/url"),
        ({"redis": {"internal": {"enabeld": True}}}, "enabeld"),
        ({"mappings": {"sub/dir.yaml": "x: 1"}}, "invalid propertyName 'sub/dir.yaml'"),
        (with_partner(face="casino"), "/partners/0/face"),
        (with_partner(id="Acme_Games"), "/partners/0/id"),
        (with_partner(secret="short"), "/partners/0/secret"),
        (with_partner(face="provider"), "hooksUrl"),
        (with_partner(allowedIps=["office network"]), "/partners/0/allowedIps/0"),
        ({"gateway": {"trustedProxies": "10.0.0.0/8"}}, "/gateway/trustedProxies"),
        ({"gateway": {"forwardedHeader": "X-Real-IP"}}, "/gateway/forwardedHeader"),
        ({"gateway": {"tracing": {"sampler": "sometimes"}}}, "/gateway/tracing/sampler"),
        ({"gateway": {"tracing": {"endpoint": "otel-collector:4318"}}}, "/gateway/tracing/endpoint"),
    ],
)
def test_schema_rejects_wrong_values(values: dict, message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(message)):
        render_chart(values)


# ----------------------------------------------------------------------------- render-time checks


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 3}, f"replicaCount=3 {NO_REDIS_HINT}"),
        (
            {"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}},
            f"autoscaling.maxReplicas=4 {NO_REDIS_HINT}",
        ),
        (
            {
                "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2},
                "redis": {"url": "redis://r:6379/0"},
            },
            "autoscaling.minReplicas=5 is greater than autoscaling.maxReplicas=2",
        ),
        (
            {"redis": {"url": "redis://r:6379/0", "internal": {"enabled": True}}},
            "redis.url and redis.internal.enabled=true are both set",
        ),
        ({"redis": {"url": "redis://:hunter2@r:6379/0"}}, "redis.url contains a literal password"),
        ({"redis": {"url": "redis+sentinel://:hunter2@s0:26379,s1:26379/mymaster"}}, "redis.url contains a literal password"),
        (
            {"redis": {"url": "redis://:${REDIS_PASSWORD}@r:6379/0"}},
            "redis.url references ${REDIS_PASSWORD} but redis.password is empty",
        ),
        ({"redis": {"internal": {"enabled": True}}}, "redis.internal.auth=true needs a password"),
        (
            with_partner(mapping="missing.yaml"),
            "partners[0].mapping=missing.yaml is not a known mapping file: add it under mappings or the "
            "chart's files/mappings/ (known: acme.yaml, betref-wallet.yaml, hmacsha1-wallet.yaml, hub88-wallet.yaml, pragmatic-provider.yaml, soap-wallet.yaml)",
        ),
        (with_partner(apiKey=None), "partners[0].apiKey (acme-games) is empty: set it or use existingSecret"),
        (
            with_partner({"mappings": {"gateway.yaml": "x: 1", "acme.yaml": "x: 1"}}),
            "a mapping file cannot be named gateway.yaml",
        ),
    ],
)
def test_render_fails_with_the_value_and_the_fix(values: dict, message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        render_chart(values)


def test_replicas_with_redis_behind_sentinel_render() -> None:
    url = "redis+sentinel://:${REDIS_PASSWORD}@s0:26379,s1:26379,s2:26379/mymaster?db=1&wait_replicas=1"
    manifests = render_chart({"replicaCount": 3, "redis": {"url": url, "password": "p" * 16},
                              "gateway": {"rateLimits": {"shared": True}}})
    assert find(manifests, "Deployment")["spec"]["replicas"] == 3
    assert gateway_config(manifests)["store"]["url"] == url
    assert gateway_config(manifests)["rate_limits"]["shared"] is True
    assert "PersistentVolumeClaim" not in kinds(manifests)


def test_replicas_with_redis_render() -> None:
    manifests = render_chart({"replicaCount": 3, "redis": {"url": "redis://redis.cache:6379/0"}})
    deployment = find(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "PersistentVolumeClaim" not in kinds(manifests)


# ----------------------------------------------------------------------------- pods


def test_deployment_security_context(default_manifests: list[dict]) -> None:
    pod = pod_spec(default_manifests)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == 10001
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"requests", "limits"} <= container["resources"].keys()
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/tmp"] == "tmp" and mounts["/var/lib/igsp-gateway"] == "data"
    assert mounts["/etc/igsp-gateway"] == "config"
    assert {"emptyDir": {}, "name": "tmp"} in pod["volumes"]


def test_container_command_probes_and_port(default_manifests: list[dict]) -> None:
    (container,) = pod_spec(default_manifests)["containers"]
    assert container["command"] + container["args"] == [
        "igsp-gateway",
        "serve",
        "--config",
        "/etc/igsp-gateway/gateway.yaml",
    ]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                  {"name": "internal", "containerPort": 8081, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["envFrom"] == [{"secretRef": {"name": FULLNAME}}]


@pytest.mark.parametrize(("grace", "drain"), [(0, 0), (5, 20), (15, 45)])
def test_termination_grace_is_grace_plus_drain_plus_margin(grace: int, drain: int) -> None:
    manifests = render_chart({"gateway": {"shutdownGraceSeconds": grace, "drainSeconds": drain}})
    assert pod_spec(manifests)["terminationGracePeriodSeconds"] == grace + drain + GRACE_MARGIN
    server = gateway_config(manifests)["server"]
    assert (server["shutdown_grace_seconds"], server["drain_seconds"]) == (grace, drain)
    (container,) = pod_spec(manifests)["containers"]
    assert "lifecycle" not in container  # the gateway's grace is the preStop sleep


def test_in_chart_redis() -> None:
    manifests = render_chart(load_values(CI_DIR / "internal-redis-values.yaml"))
    redis = find(manifests, "StatefulSet")
    service = find(manifests, "Service", f"{FULLNAME}-redis")
    pod = redis["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    conf = find(manifests, "ConfigMap", f"{FULLNAME}-redis")["data"]["redis.conf"]
    settings = dict(line.split(" ", 1) for line in conf.splitlines() if line and not line.startswith("#"))
    assert settings == {"dir": "/data", "appendonly": "yes", "maxmemory": str(128 * 2**20),  # 50 % of 256Mi
                        "maxmemory-policy": "noeviction", "include": "/run/redis/auth.conf"}
    assert container["command"][-1].splitlines()[-1] == "exec redis-server /etc/redis/redis.conf"
    assert "checksum/config" in redis["spec"]["template"]["metadata"]["annotations"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert redis["spec"]["serviceName"] == service["metadata"]["name"]
    url = gateway_config(manifests)["store"]["url"]
    assert url == f"redis://:${{REDIS_PASSWORD}}@{service['metadata']['name']}:6379/0"
    assert find(manifests, "Deployment")["spec"]["replicas"] == 2


# ----------------------------------------------------------------------------- config and keys


def test_gateway_yaml_store_url(default_manifests: list[dict], production_manifests: list[dict]) -> None:
    assert gateway_config(default_manifests)["store"]["url"].startswith("sqlite:")
    assert gateway_config(production_manifests)["store"]["url"].startswith("redis://")


def test_gateway_yaml_shared_rate_limits(production_manifests: list[dict]) -> None:
    config = gateway_config(production_manifests)
    assert config["rate_limits"] == {"shared": True, "on_store_error": "local"}
    assert config["security"]["rate_limit"] == {"requests_per_second": 500, "burst": 1000}
    assert config["security"]["signature_window_seconds"] == 300  # extraConfig merged, not replaced


def test_gateway_yaml_sections(default_manifests: list[dict]) -> None:
    config = gateway_config(default_manifests)
    assert config["version"] == 1
    assert config["server"] == {
        "host": "0.0.0.0",
        "port": 8080,
        "internal_port": 8081,
        "workers": 1,
        "max_body_bytes": 65536,
        "shutdown_grace_seconds": 5,
        "drain_seconds": 20,
    }
    assert config["store"] == {"url": "sqlite:////var/lib/igsp-gateway/gateway.db", "retention_days": 30}
    assert config["security"] == {"signature_window_seconds": 300, "replay_protection": False}
    assert config["rate_limits"] == {"shared": False, "on_store_error": "local"}
    assert config["logging"] == {"level": "info"}
    assert config["platform_face"] == {"hooks_path": "/platforms/game-provider/hooks"}
    assert config["provider_face"] == {"mount": "/igsp/v1"}
    assert config["admin"] == {"token": "${IGSP_ADMIN_TOKEN:-}"}


def test_partners_reference_secret_keys_not_values() -> None:
    values = load_values(CI_DIR / "single-node-values.yaml")
    manifests = render_chart(values)
    (partner,) = gateway_config(manifests)["partners"]
    assert partner == {
        "id": "acme-games",
        "face": "platform",
        "mapping": "mappings/acme-wallet.yaml",
        "api_key": "${PARTNER_ACME_GAMES_API_KEY}",
        "secrets": ["${PARTNER_ACME_GAMES_SECRET}", "${PARTNER_ACME_GAMES_SECRET_PREVIOUS}"],
    }
    secret = find(manifests, "Secret")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {
        "IGSP_ADMIN_TOKEN": values["adminToken"],
        "PARTNER_ACME_GAMES_API_KEY": values["partners"][0]["apiKey"],
        "PARTNER_ACME_GAMES_SECRET": values["partners"][0]["secret"],
        "PARTNER_ACME_GAMES_SECRET_PREVIOUS": values["partners"][0]["previousSecret"],
    }
    config_text = find(manifests, "ConfigMap", FULLNAME)["data"]["gateway.yaml"]
    assert not any(v in config_text for v in decoded.values())
    # Every ${VAR} in gateway.yaml (except optional ones) is a key of the Secret.
    referenced = set(re.findall(r"\$\{([A-Z0-9_]+)\}", config_text))
    assert referenced <= decoded.keys()


def test_allowlists_and_trusted_proxies_render() -> None:
    values = load_values(CI_DIR / "production-values.yaml")
    manifests = render_chart(values)
    config = gateway_config(manifests)
    assert config["server"]["trusted_proxies"] == ["10.244.0.0/16", "fd00:10:244::/56"]
    assert config["server"]["forwarded_header"] == "X-Forwarded-For"
    by_id = {p["id"]: p for p in config["partners"]}
    assert by_id["casino-one"]["allowed_ips"] == ["198.51.100.0/24", "2001:db8:c1::/48"]
    assert "allowed_ips" not in by_id["acme-games"]  # no list: any address
    notes = render_notes(values)
    assert "IP allowlists: casino-one" in notes and "WARNING: gateway.trustedProxies" not in notes
    # Behind the ingress without trusted proxies every partner with a list would be refused: said so.
    del values["gateway"]["trustedProxies"]
    assert "trusted_proxies" not in gateway_config(render_chart(values))["server"]
    assert "WARNING: gateway.trustedProxies is empty" in render_notes(values)


def test_tracing_renders_into_gateway_yaml() -> None:
    assert "tracing" not in gateway_config(render_chart({}))  # off by default: no section at all
    values = {"gateway": {"tracing": {"enabled": True, "endpoint": "http://otel-collector.observability:4318",
                                      "samplerArg": 0.25, "serviceName": "igsp-eu"}}}
    assert gateway_config(render_chart(values))["tracing"] == {
        "enabled": True, "endpoint": "http://otel-collector.observability:4318", "protocol": "http/protobuf",
        "sampler": "parentbased_traceidratio", "sampler_arg": 0.25, "service_name": "igsp-eu"}


def test_notes_say_how_to_reach_metrics_traces_and_the_admin_api() -> None:
    notes = render_notes({"adminToken": "test-admin-token"})
    # /metrics and /admin/ are on the internal port, behind the internal Service.
    assert f"port-forward svc/{FULLNAME}-internal 8081:8081" in notes
    assert "curl -s http://127.0.0.1:8081/metrics" in notes and "127.0.0.1:8080/metrics" not in notes
    assert "Traces: off." in notes and "--set gateway.tracing.enabled=true" in notes
    assert "curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:8081/admin/queue" in notes
    assert "127.0.0.1:8080/admin" not in notes
    assert f"get secret {FULLNAME} -o jsonpath='{{.data.IGSP_ADMIN_TOKEN}}'" in notes
    values = load_values(CI_DIR / "production-values.yaml")
    values["gateway"]["tracing"] = {"enabled": True, "endpoint": "http://otel-collector.observability:4318"}
    notes = render_notes(values)
    assert f'ServiceMonitor "{FULLNAME}"' in notes and f'ConfigMap "{FULLNAME}-dashboard"' in notes
    assert "Traces: OTLP (http/protobuf) to http://otel-collector.observability:4318" in notes
    assert "sampler parentbased_traceidratio (0.1 of new traces" in notes
    assert "get secret igsp-gateway-keys" in notes and "Keep /admin/ off the ingress" in notes
    assert "Admin API: off" in render_notes({})


def test_existing_secret_notes_list_the_keys() -> None:
    notes = render_notes(load_values(CI_DIR / "production-values.yaml"))
    for key in (
        "REDIS_PASSWORD",
        "PARTNER_ACME_GAMES_API_KEY",
        "PARTNER_ACME_GAMES_SECRET",
        "PARTNER_CASINO_ONE_SECRET_PREVIOUS",
    ):
        assert f"  - {key}\n" in notes
    assert "TLS terminates at the ingress" in notes


def test_config_tree_matches_the_mount(tmp_path: Path) -> None:
    manifests = render_chart(load_values(CI_DIR / "production-values.yaml"))
    config_file = write_config_tree(manifests, tmp_path)
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    for partner in config["partners"]:
        assert (config_file.parent / partner["mapping"]).is_file(), partner["mapping"]


# ----------------------------------------------------------------------------- rolling on change


def test_checksum_changes_when_a_mapping_changes() -> None:
    base = with_partner()
    before = checksum(render_chart(base))
    changed = with_partner({"mappings": {"acme.yaml": "version: 1\nname: acme-v2\n"}})
    assert checksum(render_chart(changed)) != before
    unrelated = with_partner({"resources": {"requests": {"cpu": "200m", "memory": "128Mi"}}})
    assert checksum(render_chart(unrelated)) == before


def test_checksum_changes_when_gateway_settings_change() -> None:
    assert checksum(render_chart({"gateway": {"logLevel": "debug"}})) != checksum(render_chart())


def test_mapping_given_as_a_yaml_tree() -> None:
    tree = {"version": 1, "name": "acme", "upstream": {"base_url": "https://wallet.example"}}
    manifests = render_chart(with_partner({"mappings": {"acme.yaml": tree}}))
    assert yaml.safe_load(find(manifests, "ConfigMap", FULLNAME)["data"]["acme.yaml"]) == tree


def test_bundled_mapping_files_are_mounted_and_rolled(tmp_path: Path) -> None:
    chart_dir = tmp_path / "igsp-gateway"
    shutil.copytree(CHART_DIR, chart_dir)
    bundled = chart_dir / "files" / "mappings" / "bundled.yaml"
    bundled.write_text("version: 1\nname: bundled\n", encoding="utf-8")
    values = with_partner(mapping="bundled.yaml")
    manifests = render_chart(values, chart_dir=chart_dir)
    config_map = find(manifests, "ConfigMap", FULLNAME)
    assert config_map["data"]["bundled.yaml"] == "version: 1\nname: bundled\n"
    items = next(v for v in pod_spec(manifests)["volumes"] if v["name"] == "config")["configMap"]["items"]
    assert {"key": "bundled.yaml", "path": "mappings/bundled.yaml"} in items
    assert "README.md" not in config_map["data"]
    bundled.write_text("version: 1\nname: bundled-v2\n", encoding="utf-8")
    assert checksum(render_chart(values, chart_dir=chart_dir)) != checksum(manifests)


# ----------------------------------------------------------------------------- dashboard


def test_dashboard_uses_the_gateway_metrics() -> None:
    dashboard = json.loads((CHART_DIR / "files" / "dashboards" / "igsp-gateway.json").read_text(encoding="utf-8"))
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", []))
    for metric in (
        "igsp_requests_total",
        "igsp_request_duration_seconds_bucket",
        "igsp_upstream_duration_seconds_bucket",
        "igsp_upstream_errors_total",
        "igsp_queue_depth",
        "igsp_queue_oldest_age_seconds",
        "igsp_dead_letters_total",
    ):
        assert metric in exprs


# ----------------------------------------------------------------------------- ports and exposure


def test_public_and_internal_services() -> None:
    manifests = render_chart(load_values(TEST_VALUES_DIR / "everything-on.yaml"))  # service.type LoadBalancer
    public = find(manifests, "Service", FULLNAME)
    internal = find(manifests, "Service", f"{FULLNAME}-internal")
    assert public["spec"]["type"] == "LoadBalancer"
    assert [(p["name"], p["targetPort"]) for p in public["spec"]["ports"]] == [("http", "http")]
    assert internal["spec"]["type"] == "ClusterIP"  # /metrics and /admin/ never get a load balancer
    assert [(p["name"], p["port"], p["targetPort"]) for p in internal["spec"]["ports"]] == [
        ("internal", 8081, "internal")]
    assert internal["spec"]["selector"] == public["spec"]["selector"]
    (container,) = pod_spec(manifests)["containers"]
    assert {p["name"] for p in container["ports"]} == {"http", "internal"}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"


def test_ports_render_into_gateway_yaml_and_must_differ() -> None:
    manifests = render_chart({"gateway": {"port": 9000, "internalPort": 9100}})
    server = gateway_config(manifests)["server"]
    assert (server["port"], server["internal_port"]) == (9000, 9100)
    (container,) = pod_spec(manifests)["containers"]
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("http", 9000), ("internal", 9100)]
    with pytest.raises(helm_python.HelmRenderError, match="gateway.port and gateway.internalPort are both 8080"):
        render_chart({"gateway": {"internalPort": 8080}})


def ingress_paths(manifests: list[dict]) -> list[tuple[str, str]]:
    (rule,) = find(manifests, "Ingress")["spec"]["rules"]
    paths = rule["http"]["paths"]
    assert {p["backend"]["service"]["port"]["name"] for p in paths} == {"http"}
    assert {p["backend"]["service"]["name"] for p in paths} == {FULLNAME}
    return [(p["path"], p["pathType"]) for p in paths]


PROVIDER = {"id": "casino-one", "face": "provider", "mapping": "pragmatic-provider.yaml", "apiKey": "casino-api-key",
            "secret": "casino-signing-secret-1", "hooksUrl": "https://casino.example/igsp/hooks"}


@pytest.mark.parametrize(
    ("faces", "expected"),
    [
        ([], [("/platforms/game-provider/hooks", "Exact"), ("/igsp/v1", "Prefix"), ("/legacy", "Prefix")]),
        (["platform"], [("/platforms/game-provider/hooks", "Exact")]),
        (["provider"], [("/igsp/v1", "Prefix"), ("/legacy", "Prefix")]),
        (["platform", "provider"],
         [("/platforms/game-provider/hooks", "Exact"), ("/igsp/v1", "Prefix"), ("/legacy", "Prefix")]),
    ],
)
def test_ingress_routes_only_the_public_paths_of_the_configured_faces(faces, expected) -> None:
    values = {"ingress": {"enabled": True}}
    if "platform" in faces:
        values = with_partner(values)
    if "provider" in faces:
        values.setdefault("partners", []).append(PROVIDER)
    manifests = render_chart(values)
    assert ingress_paths(manifests) == expected
    notes = render_notes(values)
    for path, path_type in expected:
        assert f"http://igsp-gateway.example.com{path} ({path_type})" in notes


def test_ingress_paths_follow_the_configured_mount_and_hooks_path() -> None:
    values = {"ingress": {"enabled": True}, "gateway": {"platformFace": {"hooksPath": "/wallet/hooks"},
                                                        "providerFace": {"mount": "/igsp/v2"}}}
    assert ingress_paths(render_chart(values)) == [("/wallet/hooks", "Exact"), ("/igsp/v2", "Prefix"),
                                                   ("/legacy", "Prefix")]
    explicit = {"ingress": {"enabled": True, "hosts": [{"host": "a.example", "paths": [{"path": "/igsp/v1"}]}]}}
    assert ingress_paths(render_chart(explicit)) == [("/igsp/v1", "Prefix")]


def test_production_ingress_includes_the_legacy_callbacks(production_manifests: list[dict]) -> None:
    assert ingress_paths(production_manifests) == [
        ("/platforms/game-provider/hooks", "Exact"), ("/igsp/v1", "Prefix"), ("/legacy", "Prefix")]


def test_network_policy_opens_the_internal_port_to_internal_from_only(production_manifests: list[dict]) -> None:
    policy = find(production_manifests, "NetworkPolicy", FULLNAME)
    public, internal = policy["spec"]["ingress"]
    assert public["ports"] == [{"port": "http", "protocol": "TCP"}] and "from" not in public  # allowExternal
    assert internal["ports"] == [{"port": "internal", "protocol": "TCP"}]
    assert internal["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    # Without internalFrom nobody reaches the internal port (and NOTES says why a scrape fails).
    values = load_values(CI_DIR / "production-values.yaml")
    del values["networkPolicy"]["internalFrom"]
    (rule,) = find(render_chart(values), "NetworkPolicy", FULLNAME)["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert "networkPolicy.internalFrom is empty" in render_notes(values)


def test_the_helm_test_pod_is_selected_by_nothing_of_the_gateway() -> None:
    manifests = render_chart(load_values(TEST_VALUES_DIR / "everything-on.yaml"))
    test_pod = find(manifests, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    labels = test_pod["metadata"]["labels"]
    selectors = {
        "Service": find(manifests, "Service", FULLNAME)["spec"]["selector"],
        "internal Service": find(manifests, "Service", f"{FULLNAME}-internal")["spec"]["selector"],
        "PodDisruptionBudget": find(manifests, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "NetworkPolicy": find(manifests, "NetworkPolicy", FULLNAME)["spec"]["podSelector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert not selector.items() <= labels.items(), kind
    # It still gets through the gateway's NetworkPolicy (allowExternal=false): a pod of the release.
    public = find(manifests, "NetworkPolicy", FULLNAME)["spec"]["ingress"][0]
    release_peer = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE}}}
    assert release_peer in public["from"] and labels["app.kubernetes.io/instance"] == RELEASE
    (container,) = test_pod["spec"]["containers"]
    assert container["args"][-1] == f"http://{FULLNAME}:80/readyz"


# ----------------------------------------------------------------------------- disruption and scaling


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"podDisruptionBudget": {"minAvailable": 1}},
         "podDisruptionBudget.minAvailable=1 keeps all 1 pods (replicaCount=1): no eviction would ever be allowed"),
        ({"replicaCount": 3, "redis": {"url": "redis://r:6379/0"}, "podDisruptionBudget": {"minAvailable": "100%"}},
         "podDisruptionBudget.minAvailable=100% keeps all 3 pods (replicaCount=3)"),
        ({"podDisruptionBudget": {"minAvailable": "50%"}},  # rounded up: 1 of 1
         "podDisruptionBudget.minAvailable=50% keeps all 1 pods"),
        ({"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 5}, "redis": {"url": "redis://r:6379/0"},
          "podDisruptionBudget": {"minAvailable": 2}},
         "keeps all 2 pods (autoscaling.minReplicas=2): no eviction would ever be allowed and every node drain "
         "would block. Set minAvailable below the replica count, raise autoscaling.minReplicas"),
        ({"podDisruptionBudget": {"maxUnavailable": 0}},
         "podDisruptionBudget.maxUnavailable=0 allows no pod to be evicted (replicaCount=1)"),
        ({"podDisruptionBudget": {"maxUnavailable": "0%"}}, "podDisruptionBudget.maxUnavailable=0% allows no pod"),
    ],
)
def test_a_disruption_budget_that_blocks_every_drain_fails_the_render(values: dict, message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        render_chart(values)


@pytest.mark.parametrize(
    ("values", "spec"),
    [
        ({}, {"maxUnavailable": 1}),
        ({"replicaCount": 3, "redis": {"url": "redis://r:6379/0"}, "podDisruptionBudget": {"minAvailable": 2}},
         {"minAvailable": 2}),
        ({"replicaCount": 3, "redis": {"url": "redis://r:6379/0"}, "podDisruptionBudget": {"minAvailable": "50%"}},
         {"minAvailable": "50%"}),
        ({"podDisruptionBudget": {"maxUnavailable": "10%"}}, {"maxUnavailable": "10%"}),  # rounded up: 1
    ],
)
def test_a_disruption_budget_that_allows_an_eviction_renders(values: dict, spec: dict) -> None:
    pdb = find(render_chart(values), "PodDisruptionBudget")["spec"]
    assert {k: v for k, v in pdb.items() if k != "selector"} == spec


@pytest.fixture(scope="module")
def probe_chart(tmp_path_factory) -> Path:
    """A copy of the chart with one more template, rendering ``.Values.probe`` as a template
    expression: what the chart's named templates return for given arguments."""
    chart_dir = tmp_path_factory.mktemp("probe") / "igsp-gateway"
    shutil.copytree(CHART_DIR, chart_dir)
    (chart_dir / "values.schema.json").unlink()  # .Values.probe is not a chart value
    (chart_dir / "templates" / "zz-probe.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata:\n"
        "  value: {{ tpl .Values.probe . | quote }}\n", encoding="utf-8")
    return chart_dir


def render_helper(chart_dir: Path, expression: str) -> str:
    manifests = render_chart({"probe": "{{ " + expression + " }}"}, chart_dir=chart_dir)
    return find(manifests, "ConfigMap", "probe")["data"]["value"]


def test_enabling_the_hpa_keeps_the_running_replica_count(probe_chart: Path) -> None:
    """Under the HPA the Deployment carries the count it runs with (looked up in the cluster),
    never below minReplicas; with nothing to look up (first install, offline render) none."""

    def replicas(live: str) -> str:
        return render_helper(probe_chart, f'include "igsp-gateway.replicasUnderHpa" (dict "live" {live} "min" 3)')

    assert replicas('(dict "spec" (dict "replicas" 5))') == "5"  # what the HPA or replicaCount had set
    assert replicas('(dict "spec" (dict "replicas" 1))') == "3"
    assert replicas("(dict)") == ""  # lookup finds nothing
    hpa = {"autoscaling": {"enabled": True}, "redis": {"url": "redis://r:6379/0"}}
    assert "replicas" not in find(render_chart(hpa), "Deployment")["spec"]


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [("256Mi", 268435456), ("1Gi", 1073741824), ("512M", 512000000),
                                                     ("1000", 1000), ("1.5Gi", 1610612736)])
def test_memory_quantities(probe_chart: Path, quantity: str, expected: int) -> None:
    assert render_helper(probe_chart, f'include "igsp-gateway.bytes" "{quantity}"') == str(expected)


def test_in_chart_redis_maxmemory_follows_the_limit() -> None:
    values = load_values(CI_DIR / "internal-redis-values.yaml")
    values["redis"]["internal"].update(maxmemoryPercent=60, resources={"limits": {"memory": "1Gi"}})
    conf = find(render_chart(values), "ConfigMap", f"{FULLNAME}-redis")["data"]["redis.conf"]
    assert f"\nmaxmemory {int(2**30 * 0.6)}\n" in conf and "maxmemory-policy noeviction" in conf
    with pytest.raises(helm_python.HelmValuesError, match="maxmemoryPercent"):
        render_chart({"redis": {**values["redis"], "internal": {"enabled": True, "maxmemoryPercent": 95}}})


def test_in_chart_redis_password_is_never_on_a_command_line_or_in_the_environment() -> None:
    manifests = render_chart(load_values(CI_DIR / "internal-redis-values.yaml"))
    pod = find(manifests, "StatefulSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    script = container["command"][-1]
    assert "REDIS_PASSWORD" not in script and "requirepass" in script and "--requirepass" not in script
    assert "env" not in container
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["password"]["secret"] == {"secretName": FULLNAME, "defaultMode": 0o440,
                                             "items": [{"key": "REDIS_PASSWORD", "path": "password"}]}
    assert volumes["run"]["emptyDir"]["medium"] == "Memory"
    probe = " ".join(container["readinessProbe"]["exec"]["command"])
    assert 'REDISCLI_AUTH="$(cat /run/secrets/redis/password)"' in probe
    resources = container["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"]  # not the first evicted


def test_in_chart_redis_without_auth() -> None:
    manifests = render_chart({"replicaCount": 2, "redis": {"internal": {"enabled": True, "auth": False}}})
    conf = find(manifests, "ConfigMap", f"{FULLNAME}-redis")["data"]["redis.conf"]
    assert "protected-mode no" in conf and "include" not in conf
    pod = find(manifests, "StatefulSet")["spec"]["template"]["spec"]
    assert "password" not in {v["name"] for v in pod["volumes"]}
    assert "requirepass" not in pod["containers"][0]["command"][-1]


def test_default_topology_spread_gets_the_gateway_selector() -> None:
    manifests = render_chart()
    selector = find(manifests, "Deployment")["spec"]["selector"]["matchLabels"]
    constraints = pod_spec(manifests)["topologySpreadConstraints"]
    assert [(c["topologyKey"], c["whenUnsatisfiable"], c["maxSkew"]) for c in constraints] == [
        ("kubernetes.io/hostname", "ScheduleAnyway", 1), ("topology.kubernetes.io/zone", "ScheduleAnyway", 1)]
    assert all(c["labelSelector"] == {"matchLabels": selector} for c in constraints)
    own = {"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
           "labelSelector": {"matchLabels": {"team": "x"}}}
    assert pod_spec(render_chart({"topologySpreadConstraints": [own]}))["topologySpreadConstraints"] == [own]
    assert "topologySpreadConstraints" not in pod_spec(render_chart({"topologySpreadConstraints": []}))


# ----------------------------------------------------------------------------- keys the mappings need


def required_env(mapping_text: str) -> set[str]:
    """``${VAR}`` references without a default, comment lines left out (what the gateway requires)."""
    text = "\n".join(line for line in mapping_text.splitlines() if not line.lstrip().startswith("#"))
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))


def notes_keys(notes: str) -> list[str]:
    return re.findall(r"^  - ([A-Z0-9_]+)\b", notes, re.M)


def test_notes_list_every_variable_the_configured_mappings_need() -> None:
    values = load_values(CI_DIR / "production-values.yaml")
    notes = render_notes(values)
    used = {p["mapping"] for p in values["partners"]}
    needed = set().union(*(required_env((CHART_DIR / "files" / "mappings" / m).read_text()) for m in used))
    assert {"HUB88_PRIVATE_KEY", "PP_SECRET_KEY", "PP_SECURE_LOGIN"} <= needed
    from_extra_env = {e["name"] for e in values["extraEnv"]}
    listed = notes_keys(notes)
    assert needed - from_extra_env <= set(listed)
    assert not from_extra_env & set(listed)  # HUB88_WALLET_URL, PP_API_URL come from extraEnv
    assert "PP_IMAGE_BASE_URL" not in listed  # ${PP_IMAGE_BASE_URL:-…} has a default
    assert "  - HUB88_PRIVATE_KEY  (referenced by hub88-wallet.yaml)\n" in notes
    assert "  - PP_SECRET_KEY  (referenced by pragmatic-provider.yaml)\n" in notes


def test_notes_warn_about_mapping_keys_nothing_provides() -> None:
    values = with_partner(mapping="hub88-wallet.yaml")
    notes = render_notes(values)
    assert "WARNING: these variables are needed but set nowhere" in notes
    assert "  - HUB88_PRIVATE_KEY  (referenced by hub88-wallet.yaml)\n" in notes
    assert "  - HUB88_WALLET_URL  (referenced by hub88-wallet.yaml)\n" in notes
    values.update(secretEnv={"HUB88_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\n..."},
                  extraEnv=[{"name": "HUB88_WALLET_URL", "value": "https://wallet.example"}])
    notes = render_notes(values)
    assert "set nowhere" not in notes
    secret = find(render_chart(values), "Secret")
    assert base64.b64decode(secret["data"]["HUB88_PRIVATE_KEY"]).decode().startswith("-----BEGIN")
    assert checksum(render_chart(values)) == checksum(render_chart(with_partner(mapping="hub88-wallet.yaml")))


def test_validate_runs_as_an_init_container_with_the_gateway_environment(default_manifests: list[dict]) -> None:
    pod = pod_spec(default_manifests)
    (init,) = pod["initContainers"]
    (container,) = pod["containers"]
    assert init["name"] == "validate" and init["image"] == container["image"]
    assert init["command"] + init["args"] == ["igsp-gateway", "validate", "/etc/igsp-gateway/gateway.yaml"]
    assert (init["envFrom"], init["env"]) == (container["envFrom"], container["env"])
    assert init["securityContext"] == container["securityContext"]
    assert {"name": "config", "mountPath": "/etc/igsp-gateway", "readOnly": True} in init["volumeMounts"]
    assert "initContainers" not in pod_spec(render_chart({"validateConfig": False}))
