"""The chart's external Redis by its parts (``redis.external``): standalone, Sentinel, Cluster.

Each variant is rendered, checked against the Kubernetes schemas, and its gateway.yaml —
laid out as the pod mounts it, with the pod's environment — is accepted by ``igsp-gateway
validate``; the standalone one then logs in to a real redis-server with an ACL user and a
password that only ever travels through a Secret, and the Sentinel one over TLS to a real
TLS-only Sentinel set (tests/tls_support.py) with the CA from its mounted Secret.
"""

from __future__ import annotations

import asyncio
import re
import subprocess

import helm_python
import kubernetes_validate
import pytest

from gateway.config import load_config
from gateway.store import open_store
from tests.support import RedisServer
from tests.test_helm import KUBE_VERSIONS, find, gateway_config, pod_spec, render_chart, with_partner
from tests.test_helm_config import _pod_env, _validate

PASSWORD = "redis-pass:w@rd/0123456789"


def values(**external) -> dict:
    """Three replicas on the external Redis, one partner on the bundled Hub88 mapping."""
    return with_partner({"replicaCount": 3, "redis": {"external": external}}, mapping="hub88-wallet.yaml")


def mapping_env() -> dict:
    """What the Hub88 mapping reads from the pod's environment."""
    from gateway.tools.simulators.hub88_wallet import generate_keypair

    return {"HUB88_WALLET_URL": "http://wallet.example:8080", "HUB88_PRIVATE_KEY": generate_keypair()[0]}


STANDALONE = {"mode": "standalone", "hosts": ["redis.cache:6380"], "db": 2, "username": "igsp",
              "passwordSecret": {"name": "redis-auth", "key": "pw"},
              "tls": {"enabled": True, "caSecret": {"name": "redis-ca", "key": "ca.pem"}}}
SENTINEL = {"mode": "sentinel", "hosts": ["s0:26379", "s1:26379", "s2:26379"], "sentinelService": "mymaster",
            "db": 1, "waitReplicas": 1, "username": "igsp", "passwordSecret": {"name": "redis-auth"}}
CLUSTER = {"mode": "cluster", "hosts": ["node-0.redis:6379", "node-1.redis:6379"], "username": "igsp",
           "passwordSecret": {"name": "redis-auth"}, "tls": {"enabled": True}}
SENTINEL_TLS = {**SENTINEL, "tls": {"enabled": True, "caSecret": {"name": "redis-ca", "key": "ca.pem"}},
                "sentinelAuth": True}
VARIANTS = {"standalone": STANDALONE, "sentinel": SENTINEL, "cluster": CLUSTER, "sentinel-tls": SENTINEL_TLS}


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_renders_valid_manifests(variant, kube_version) -> None:
    manifests = render_chart(values(**VARIANTS[variant]))
    assert find(manifests, "Deployment")["spec"]["replicas"] == 3  # the shared-store guard lets it through
    assert "PersistentVolumeClaim" not in {m["kind"] for m in manifests}
    for manifest in manifests:
        kubernetes_validate.validate(manifest, kube_version, strict=True)


def test_the_store_section_of_each_variant() -> None:
    stores = {name: gateway_config(render_chart(values(**spec)))["store"] for name, spec in VARIANTS.items()}
    assert stores["standalone"] == {
        "url": "redis://redis.cache:6380/2", "username": "igsp", "password": "${REDIS_PASSWORD}",
        "tls": {"enabled": True, "ca_file": "/var/run/secrets/igsp-gateway/redis-tls/ca.pem"}, "retention_days": 30}
    assert stores["sentinel"]["url"] == "redis+sentinel://s0:26379,s1:26379,s2:26379/mymaster?db=1&wait_replicas=1"
    assert "tls" not in stores["sentinel"]
    assert stores["cluster"]["url"] == "redis+cluster://node-0.redis:6379,node-1.redis:6379/"
    assert stores["cluster"]["tls"] == {"enabled": True}  # the system CAs
    assert stores["sentinel-tls"]["url"] == stores["sentinel"]["url"]  # gateway.yaml's store.tls makes it rediss+
    assert stores["sentinel-tls"]["tls"] == {"enabled": True,
                                             "ca_file": "/var/run/secrets/igsp-gateway/redis-tls/ca.pem"}
    assert stores["sentinel-tls"]["sentinel_auth"] is True and "sentinel_auth" not in stores["sentinel"]


def test_the_notes_say_where_tls_goes() -> None:
    from tests.test_helm import render_notes

    notes = render_notes(values(**SENTINEL_TLS))
    assert "TLS to Redis (the sentinels and the Redis servers), trusting the CA in Secret redis-ca." in notes
    assert "TLS to Redis" not in render_notes(values(**SENTINEL))


def test_the_password_comes_from_its_secret_and_the_ca_is_mounted() -> None:
    manifests = render_chart(values(**STANDALONE))
    pod = pod_spec(manifests)
    for container in pod["containers"] + pod["initContainers"]:  # validate sees what serve sees
        env = {e["name"]: e for e in container["env"]}
        assert env["REDIS_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": "redis-auth", "key": "pw"}}
        mount = next(m for m in container["volumeMounts"] if m["name"] == "redis-tls")
        assert mount == {"name": "redis-tls", "mountPath": "/var/run/secrets/igsp-gateway/redis-tls",
                         "readOnly": True}
    volume = next(v for v in pod["volumes"] if v["name"] == "redis-tls")
    assert volume["secret"] == {"secretName": "redis-ca", "items": [{"key": "ca.pem", "path": "ca.pem"}]}
    secret = find(manifests, "Secret")
    assert "REDIS_PASSWORD" not in secret["data"]  # not copied into the chart's Secret


def test_a_chart_password_lands_in_the_secret_never_in_the_configmap() -> None:
    spec = {**SENTINEL, "passwordSecret": {"name": ""}}
    manifests = render_chart({**values(**spec), "redis": {"external": spec, "password": PASSWORD}})
    text = repr(find(manifests, "ConfigMap", "gw-igsp-gateway")["data"])
    assert PASSWORD not in text and "${REDIS_PASSWORD}" in text
    assert "REDIS_PASSWORD" in find(manifests, "Secret")["data"]
    assert not any(e["name"] == "REDIS_PASSWORD" for e in pod_spec(manifests)["containers"][0]["env"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_rendered_config_validates(variant, tmp_path) -> None:
    spec = {**VARIANTS[variant]}
    if spec.get("tls", {}).get("caSecret"):
        spec["tls"] = {**spec["tls"], "mountPath": str(tmp_path / "redis-tls")}  # where this test mounts it
        (tmp_path / "redis-tls").mkdir()
        (tmp_path / "redis-tls" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    manifests = render_chart(values(**spec))
    env = {**_pod_env(manifests), **mapping_env(), "REDIS_PASSWORD": PASSWORD}
    result = _validate(manifests, tmp_path / "config", env)
    assert result.returncode == 0, result.stderr
    # Without the Secret's password the same config is refused, naming the variable.
    del env["REDIS_PASSWORD"]
    result = _validate(manifests, tmp_path / "no-password", env)
    assert result.returncode == 1 and "REDIS_PASSWORD" in result.stderr
    if spec.get("tls", {}).get("enabled"):  # TLS reaches the store URL validate checked
        config = load_config(next((tmp_path / "config").rglob("gateway.yaml")),
                             env={**_pod_env(manifests), **mapping_env(), "REDIS_PASSWORD": PASSWORD})
        scheme = {"standalone": "rediss://", "cluster": "rediss+cluster://", "sentinel-tls": "rediss+sentinel://"}
        assert config.store_url.startswith(scheme[variant]), config.store_url
        assert ("ssl_ca_certs=" in config.store_url) == bool(spec["tls"].get("caSecret")), config.store_url
        assert ("sentinel_auth=yes" in config.store_url) == bool(spec.get("sentinelAuth")), config.store_url


def test_the_rendered_standalone_config_logs_in_to_a_real_redis(tmp_path) -> None:
    server = RedisServer().start()
    try:
        for command in (f"ACL SETUSER igsp on >{PASSWORD} ~* &* +@all", "ACL SETUSER default off"):
            done = subprocess.run(["redis-cli", "-p", str(server.port), *command.split()], capture_output=True,
                                  text=True, timeout=10, check=True)
            assert done.stdout.strip() == "OK", done.stdout
        spec = {**STANDALONE, "hosts": [f"127.0.0.1:{server.port}"], "db": 0, "tls": {"enabled": False}}
        manifests = render_chart(values(**spec))
        from tests.test_helm import write_config_tree

        path = write_config_tree(manifests, tmp_path)
        config = load_config(path, env={**_pod_env(manifests), **mapping_env(), "REDIS_PASSWORD": PASSWORD})

        async def ping() -> None:
            store = open_store(config.store_url, namespace=config.store_namespace)
            await store.open()
            try:
                await store.ping()
            finally:
                await store.close()

        asyncio.run(ping())
    finally:
        server.cleanup()


def test_the_rendered_sentinel_tls_config_runs_on_real_tls_sentinels(tmp_path) -> None:
    """mode=sentinel with TLS and sentinelAuth, rendered, loaded as the pod loads it, against
    a TLS-only Sentinel set whose servers and sentinels require the password: the store logs
    in to the sentinels and finds the master through them over TLS, logs in to the master
    over TLS, and writes a transaction."""
    from tests.sentinel_support import SERVICE, SentinelSet
    from tests.tls_support import make_pki

    pki = make_pki(tmp_path / "pki")
    password = "redis-and-sentinel-pass-0123456789"  # requirepass: the default user's
    sentinels = SentinelSet(pki=pki, password=password).start()
    try:
        (tmp_path / "redis-tls").mkdir()
        (tmp_path / "redis-tls" / "ca.pem").write_bytes(pki.ca.read_bytes())  # the mounted CA Secret
        spec = {**SENTINEL_TLS, "hosts": [f"127.0.0.1:{port}" for port in sentinels.sentinel_ports],
                "sentinelService": SERVICE, "db": 0, "username": "",
                "tls": {**SENTINEL_TLS["tls"], "mountPath": str(tmp_path / "redis-tls")}}
        manifests = render_chart(values(**spec))
        from tests.test_helm import write_config_tree

        path = write_config_tree(manifests, tmp_path / "config")
        config = load_config(path, env={**_pod_env(manifests), **mapping_env(), "REDIS_PASSWORD": password})
        assert config.store_url.startswith("rediss+sentinel://:"), "TLS and the password folded in"
        assert "sentinel_auth=yes" in config.store_url

        async def write() -> None:
            from gateway.store import TxRecord

            store = open_store(config.store_url, namespace=config.store_namespace)
            await store.open()
            try:
                assert await store.tx_begin(TxRecord("acme", "tls-1", "bet", "fp"), 60) is None
                assert (await store.tx_get("acme", "tls-1")).txid == "tls-1"
            finally:
                await store.close()

        asyncio.run(write())
    finally:
        sentinels.cleanup()


@pytest.mark.parametrize(("external", "message"), [
    ({"mode": "standalone"}, "redis.external.mode=standalone needs redis.external.hosts"),
    ({"mode": "standalone", "hosts": ["a:6379", "b:6379"]}, "mode=standalone takes one host, got 2"),
    ({"mode": "sentinel", "hosts": ["s:26379"]}, "mode=sentinel needs redis.external.sentinelService"),
    ({"mode": "cluster", "hosts": ["n:6379"], "db": 3}, "a Redis Cluster has only database 0"),
    ({"mode": "standalone", "hosts": ["r:6379"], "passwordSecret": {"name": ""}},
     "redis.external.auth=true needs a password"),
    ({"mode": "cluster", "hosts": ["n:6379"], "sentinelAuth": True, "passwordSecret": {"name": "p"}},
     "redis.external.sentinelAuth=true but redis.external.mode=cluster"),
    ({"mode": "sentinel", "hosts": ["s:26379"], "sentinelService": "m", "auth": False, "sentinelAuth": True},
     "redis.external.sentinelAuth=true logs in to the sentinels with the Redis password"),
    ({"mode": "standalone", "hosts": ["r:6379"], "auth": False, "tls": {"caSecret": {"name": "ca"}}},
     "redis.external.tls.caSecret.name is set but redis.external.tls.enabled=false"),
])
def test_bad_external_values_fail_the_render_naming_the_value(external, message) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        render_chart(values(**external))


def test_external_and_url_or_internal_are_exclusive() -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape("redis.url and redis.external.mode=cluster")):
        render_chart(with_partner({"redis": {"url": "redis://r:6379/0", "external": CLUSTER}}))
    with pytest.raises(helm_python.HelmRenderError, match=re.escape("redis.internal.enabled=true are both set")):
        render_chart(with_partner({"redis": {"external": CLUSTER, "internal": {"enabled": True}, "password": "x"}}))


@pytest.mark.parametrize(("external", "where"), [
    ({"mode": "replicated"}, "/redis/external/mode"),
    ({"mode": "cluster", "hosts": ["node-0"]}, "/redis/external/hosts/0"),
    ({"mode": "standalone", "hosts": ["r:6379"], "db": 99}, "/redis/external/db"),
    ({"mode": "standalone", "hosts": ["r:6379"], "username": "a:b"}, "/redis/external/username"),
    ({"mode": "standalone", "hosts": ["r:6379"], "tls": {"mountPath": "relative"}}, "/redis/external/tls/mountPath"),
    ({"mode": "standalone", "hosts": ["r:6379"], "passwordSecret": {"nmae": "x"}}, "nmae"),
])
def test_the_schema_refuses_bad_external_values(external, where) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(where)):
        render_chart(values(**external))
