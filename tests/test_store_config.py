"""The ``store`` section's credentials and TLS: a password never has to be written into the
URL (a ConfigMap would hold it), a bad combination is refused naming the field, and the
folded URL really logs in to a password-protected Redis with an ACL user."""

from __future__ import annotations

import asyncio
import subprocess

import pytest
import yaml

from gateway.config import load_config, load_store_settings
from gateway.errors import ConfigError
from gateway.store import open_store
from tests.conftest import platform_config
from tests.support import RedisServer

PASSWORD = "p@ss:w/rd%-hunter2-long"  # every character a URL would need encoded


@pytest.fixture
def load(tmp_path, hub88_keys):
    def load(store: dict, env: dict | None = None):
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(platform_config("sqlite:///unused.db", store=store)))
        return load_config(path, env={"HUB88_WALLET_URL": "http://127.0.0.1:1", "HUB88_PRIVATE_KEY": hub88_keys[0],
                                      **(env or {})})
    return load


def problem_of(load, store: dict, env: dict | None = None) -> str:
    with pytest.raises(ConfigError) as failed:
        load(store, env)
    text = str(failed.value)
    assert PASSWORD not in text
    return text


def test_the_password_from_the_environment_is_folded_into_the_url(load):
    config = load({"url": "redis://redis.cache:6379/0", "username": "igsp", "password": "${REDIS_PASSWORD}"},
                  {"REDIS_PASSWORD": PASSWORD})
    assert config.store_url == "redis://igsp:p%40ss%3Aw%2Frd%25-hunter2-long@redis.cache:6379/0"
    assert PASSWORD in config.secrets and "p%40ss%3Aw%2Frd%25-hunter2-long" in config.secrets  # redacted in logs
    # The store reads it back exactly.
    store = open_store(config.store_url)
    from redis.asyncio.connection import parse_url

    assert parse_url(store.options["url"])["password"] == PASSWORD


def test_password_file_and_tls(load, tmp_path):
    (tmp_path / "redis-password").write_text(PASSWORD + "\n")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    config = load({"url": "redis+sentinel://s0:26379,s1:26379/mymaster?db=2", "password_file": "redis-password"})
    assert config.store_url == "redis+sentinel://:p%40ss%3Aw%2Frd%25-hunter2-long@s0:26379,s1:26379/mymaster?db=2"
    assert open_store(config.store_url).options["password"] == PASSWORD
    config = load({"url": "redis://r:6379/0", "tls": {"enabled": True, "ca_file": "ca.crt"}})
    assert config.store_url == f"rediss://r:6379/0?ssl_ca_certs={str(tmp_path / 'ca.crt').replace('/', '%2F')}"
    assert open_store(config.store_url).options["url"].startswith("rediss://")
    # operator commands (dlq) fold it the same way
    assert load_store_settings(tmp_path / "gateway.yaml").url == config.store_url
    config = load({"url": "redis+cluster://a:7000,b:7001/", "tls": {"enabled": True}})
    assert config.store_url.startswith("rediss+cluster://a:7000,b:7001/")
    assert open_store(config.store_url).options["tls"] == {"ssl": True}  # the system's CAs


@pytest.mark.parametrize(("url", "folded"), [
    ("redis://r:6379/0", "rediss://r:6379/0?ssl_ca_certs={ca}"),
    ("redis+sentinel://s0:26379,s1:26379/mymaster?db=2", "rediss+sentinel://s0:26379,s1:26379/mymaster?db=2&ssl_ca_certs={ca}"),
    ("redis+cluster://a:7000,b:7001/", "rediss+cluster://a:7000,b:7001/?ssl_ca_certs={ca}"),
    ("rediss+cluster://a:7000/?wait_replicas=1", "rediss+cluster://a:7000/?wait_replicas=1&ssl_ca_certs={ca}"),
])
def test_tls_with_a_ca_file_folds_into_a_url_the_store_takes(load, tmp_path, url, folded):
    (tmp_path / "redis-password").write_text(PASSWORD + "\n")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    config = load({"url": url, "username": "igsp", "password_file": "redis-password",
                   "tls": {"enabled": True, "ca_file": "ca.crt"}})
    ca = str(tmp_path / "ca.crt")
    expected = folded.format(ca=ca.replace("/", "%2F")).replace("://", "://igsp:p%40ss%3Aw%2Frd%25-hunter2-long@", 1)
    assert config.store_url == expected
    options = open_store(config.store_url).options  # the store takes it (a cluster URL used to refuse any option)
    if "url" in options:
        from redis.asyncio.connection import parse_url

        assert parse_url(options["url"])["ssl_ca_certs"] == ca
    else:
        assert options["tls"] == {"ssl": True, "ssl_ca_certs": ca}
        assert (options["username"], options["password"]) == ("igsp", PASSWORD)


def test_sentinel_auth_folds_into_the_url(load, tmp_path):
    (tmp_path / "redis-password").write_text(PASSWORD + "\n")
    config = load({"url": "redis+sentinel://s0:26379/mymaster", "password_file": "redis-password",
                   "sentinel_auth": True})
    assert config.store_url == "redis+sentinel://:p%40ss%3Aw%2Frd%25-hunter2-long@s0:26379/mymaster?sentinel_auth=yes"
    options = open_store(config.store_url).options
    assert options["sentinel_auth"] is True and options["password"] == PASSWORD
    assert open_store("redis+sentinel://:pw@s0/m").options["sentinel_auth"] is False


@pytest.mark.parametrize(("store", "field", "says"), [
    ({"url": "redis://r/0", "password": PASSWORD, "sentinel_auth": True}, "store.sentinel_auth",
     "is for Redis behind Sentinel"),
    ({"url": "redis+sentinel://s/m", "sentinel_auth": True}, "store.sentinel_auth", "give store.password"),
    ({"url": "redis+sentinel://s/m?sentinel_auth=yes", "password": PASSWORD, "sentinel_auth": True},
     "store.sentinel_auth", "already has sentinel_auth"),
    ({"url": "redis+sentinel://s/m?sentinel_auth=yes"}, "store.url", "the URL has none"),
    ({"url": "redis+sentinel://s/m?sentinel_auth=maybe"}, "store.url", "sentinel_auth must be yes or no"),
    ({"url": "sqlite:///gw.db", "password": PASSWORD}, "store.password", "is for a Redis store"),
    ({"url": "redis://r/0", "password": PASSWORD, "password_file": "redis-password"}, "store.password_file",
     "not both"),
    ({"url": "redis://r/0", "password_file": "missing"}, "store.password_file", "cannot read"),
    ({"url": "redis://:x@r/0", "password": PASSWORD}, "store.password", "already has a user or password"),
    ({"url": "sqlite:///gw.db", "tls": {"enabled": True}}, "store.tls", "is for a Redis store"),
    ({"url": "rediss+sentinel://s:26379/m", "tls": {"enabled": False}}, "store.tls.enabled",
     "is false but store.url is rediss+sentinel://"),
    ({"url": "rediss://r/0?ssl_ca_certs=%2Fca.pem", "tls": {"enabled": True, "ca_file": "redis-password"}},
     "store.tls.ca_file", "already has ssl_ca_certs"),
    ({"url": "redis+cluster://a:7000/?ssl_ca_certs=%2Fca.pem"}, "store.url", "is a TLS option: use rediss+cluster://"),
    ({"url": "redis+sentinel://s:26379/m?ssl_ca_certs=%2Fca.pem"}, "store.url",
     "is a TLS option: use rediss+sentinel://"),
    ({"url": "rediss+cluster://a:7000/?ssl_cert_reqs=none", "tls": {"enabled": True}}, "store.url",
     "unknown rediss+cluster:// option(s): ssl_cert_reqs"),
    ({"url": "redis://r/0", "tls": {"enabled": True, "ca_file": "nowhere.crt"}}, "store.tls.ca_file",
     "no such file"),
    ({"url": "redis://r/0", "tls": {"ca_file": "ca.crt"}}, "store.tls.ca_file", "store.tls.enabled is not true"),
    ({"url": "redis://r/0", "username": ""}, "store.username", ""),
])
def test_bad_store_credentials_are_refused_naming_the_field(load, tmp_path, store, field, says):
    (tmp_path / "redis-password").write_text(PASSWORD)
    text = problem_of(load, store)
    assert field in text and says in text, text
    assert "gateway.yaml:" in text, text  # the file and line


def test_an_acl_user_logs_in_with_a_password_file(load, tmp_path):
    server = RedisServer()
    server.start()
    try:
        # A user with just what the store needs; the default user is switched off.
        acl = f"ACL SETUSER igsp on >{PASSWORD} ~* &* +@all"
        for command in (acl, "ACL SETUSER default off"):
            done = subprocess.run(["redis-cli", "-p", str(server.port), *command.split()], capture_output=True,
                                  text=True, timeout=10, check=True)
            assert done.stdout.strip() == "OK", done.stdout
        (tmp_path / "redis-password").write_text(PASSWORD + "\n")
        good = load({"url": server.url, "username": "igsp", "password_file": "redis-password"})
        bad = load({"url": server.url, "username": "igsp", "password": "not-the-password-at-all"})

        async def ping(url: str) -> None:
            store = open_store(url)
            await store.open()
            try:
                await store.ping()
            finally:
                await store.close()

        asyncio.run(ping(good.store_url))
        from gateway.store.base import StoreUnavailable

        with pytest.raises(StoreUnavailable):
            asyncio.run(ping(bad.store_url))
    finally:
        server.cleanup()
