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
NO_REDIS_HINT = "needs a shared store: set redis.url or redis.internal.enabled=true (SQLite is single-node)"

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


def test_service_monitor_scrapes_the_service(production_manifests: list[dict]) -> None:
    """ServiceMonitor is a CRD kubernetes-validate has no schema for: check its shape here."""
    monitor = find(production_manifests, "ServiceMonitor")
    service = find(production_manifests, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_prometheus_rule_alerts_on_metrics_the_gateway_exports(production_manifests: list[dict]) -> None:
    from gateway.ops import metrics

    rule = find(production_manifests, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    (group,) = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    stuck = alerts["IgspLedgerTransactionStuckPending"]
    assert stuck["expr"] == f'max(igsp_ledger_oldest_pending_seconds{{namespace="{NAMESPACE}"}}) > 120'
    assert stuck["for"] == "2m" and stuck["labels"]["severity"] == "critical"
    assert "{{ $value | humanizeDuration }}" in stuck["annotations"]["summary"]
    exported = {metrics.LEDGER_OLDEST_PENDING._name, metrics.QUEUE_DEAD._name}
    assert {r["expr"].split("{")[0].removeprefix("max(") for r in group["rules"]} == exported
    assert not any(m["kind"] == "PrometheusRule" for m in render_chart())  # off by default


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
        (
            {"redis": {"url": "redis://:${REDIS_PASSWORD}@r:6379/0"}},
            "redis.url references ${REDIS_PASSWORD} but redis.password is empty",
        ),
        ({"redis": {"internal": {"enabled": True}}}, "redis.internal.auth=true needs a password"),
        (
            with_partner(mapping="missing.yaml"),
            "partners[0].mapping=missing.yaml is not a known mapping file: add it under mappings or the "
            "chart's files/mappings/ (known: acme.yaml, hub88-wallet.yaml, pragmatic-provider.yaml, soap-wallet.yaml)",
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
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["envFrom"] == [{"secretRef": {"name": FULLNAME}}]


@pytest.mark.parametrize("drain", [0, 20, 45])
def test_termination_grace_is_drain_plus_margin(drain: int) -> None:
    manifests = render_chart({"gateway": {"drainSeconds": drain}})
    assert pod_spec(manifests)["terminationGracePeriodSeconds"] == drain + GRACE_MARGIN
    assert gateway_config(manifests)["server"]["drain_seconds"] == drain


def test_in_chart_redis() -> None:
    manifests = render_chart(load_values(CI_DIR / "internal-redis-values.yaml"))
    redis = find(manifests, "StatefulSet")
    service = find(manifests, "Service", f"{FULLNAME}-redis")
    pod = redis["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--appendonly yes" in " ".join(container["command"])
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


def test_gateway_yaml_sections(default_manifests: list[dict]) -> None:
    config = gateway_config(default_manifests)
    assert config["version"] == 1
    assert config["server"] == {
        "host": "0.0.0.0",
        "port": 8080,
        "workers": 1,
        "max_body_bytes": 65536,
        "drain_seconds": 20,
    }
    assert config["store"] == {"url": "sqlite:////var/lib/igsp-gateway/gateway.db", "retention_days": 30}
    assert config["security"] == {"signature_window_seconds": 300, "replay_protection": False}
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
    assert f"port-forward svc/{FULLNAME} 8080:8080" in notes and "curl -s http://127.0.0.1:8080/metrics" in notes
    assert "Traces: off." in notes and "--set gateway.tracing.enabled=true" in notes
    assert "curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:8080/admin/queue" in notes
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
