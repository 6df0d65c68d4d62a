"""Who gets in, how often, and what they can touch — against a real gateway process.

Rate limits, request size limits, replay protection across a restart, partner
isolation, outbound TLS verification and secrets in logs.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import time
from decimal import Decimal

import pytest
import requests
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adapters.codecs import dumps
from gateway import signing
from gateway.spec import HOOKS_SPEC, SpecValidators
from gateway.tools.simulators import RunningServer, hub88_wallet
from tests.conftest import ACME, BETA, platform_config
from tests.ops_support import wait_for
from tests.support import ROOT, IgspClient, decimal_json, unique_timestamp
from tests.test_platform_face import assert_error, bet, refund, win

SPEC = SpecValidators(HOOKS_SPEC)
BALANCE = {"action": "balance", "player_id": "p1", "currency": "EUR"}


def assert_error_response(response, status: int, code: str):
    assert_error(response, status, code)
    assert SPEC.errors("ErrorResponse", response.json()) == []
    assert "Traceback" not in response.text


def limited_config(tmp_path, rate: dict, beta_rate="unset") -> dict:
    config = platform_config(f"sqlite:///{tmp_path}/gateway.db", security={"rate_limit": rate})
    if beta_rate != "unset":
        config["partners"][1]["rate_limit"] = beta_rate
    return config


# -- rate limits ----------------------------------------------------------------------------
def test_rate_limit_answers_429_with_retry_after_per_partner(hub88, gateway_factory, tmp_path):
    hub88.player("p1", "100.00")
    # acme: the default (2 requests, then one every 2 s); beta: its own override, unlimited.
    gw = gateway_factory(limited_config(tmp_path, {"requests_per_second": 0.5, "burst": 2}, beta_rate=None))
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    beta = IgspClient(gw.url, BETA["api_key"], BETA["secret"])
    assert acme.hook(BALANCE).status_code == 200
    assert acme.hook(bet("tx-rl-1", 1)).status_code == 200
    limited = acme.hook(bet("tx-rl-2", 1))
    assert_error_response(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1
    # The refused bet never reached the wallet; another partner is not affected.
    assert hub88.balance("p1") == Decimal("99.00") and len(hub88.ledger("bet")) == 1
    for i in range(5):
        assert beta.hook(BALANCE).status_code == 200, i
    metrics = requests.get(gw.internal_url + "/metrics", timeout=5).text
    assert 'igsp_rate_limited_total{partner="acme-games"} 1.0' in metrics


def test_a_rate_limited_request_can_be_sent_again_unchanged(hub88, gateway_factory, tmp_path):
    """A 429 does not burn the signature in the replay cache: the same bytes pass later."""
    hub88.player("p1", "100.00")
    gw = gateway_factory(limited_config(tmp_path, {"requests_per_second": 0.5, "burst": 1}))
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    assert acme.hook(BALANCE).status_code == 200
    body = dumps(bet("tx-again", 2))
    headers = acme.headers(body)
    url = gw.url + "/platforms/game-provider/hooks"
    first = requests.post(url, data=body, headers=headers, timeout=5)
    assert_error_response(first, 429, "rate_limited")
    time.sleep(int(first.headers["Retry-After"]) + 0.2)
    second = requests.post(url, data=body, headers=headers, timeout=5)
    assert second.status_code == 200, second.text
    assert hub88.balance("p1") == Decimal("98.00")


def test_rate_limit_config_is_checked(tmp_path):
    from gateway.config import load_config
    from gateway.errors import ConfigError

    config = limited_config(tmp_path, {"requests_per_second": 0, "burst": 2})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"security\.rate_limit"):
        load_config(path, env={"HUB88_WALLET_URL": "http://127.0.0.1:1", "HUB88_PRIVATE_KEY": "x"})


# -- size limits ----------------------------------------------------------------------------
def _raw_exchange(url: str, request: bytes, timeout: float = 5.0) -> bytes:
    host, port = url.split("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def test_oversized_header_gets_a_clean_4xx_and_the_gateway_keeps_serving(hub88, gateway_factory, tmp_path):
    hub88.player("p1", "100.00")
    gw = gateway_factory(platform_config(f"sqlite:///{tmp_path}/g.db", server={"max_header_bytes": 2048}))
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    # Under the configured limit: served as usual.
    assert acme.hook(BALANCE, headers={"X-Pad": "a" * 1500}).status_code == 200
    # Over it: refused quickly with a 4xx and no trace, the connection closed (no hang).
    answer = _raw_exchange(gw.url, b"POST /platforms/game-provider/hooks HTTP/1.1\r\nHost: x\r\n"
                                   b"X-Pad: " + b"a" * 4000 + b"\r\nContent-Length: 0\r\n\r\n")
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.split()[1] in (b"400", b"431"), answer[:200]
    assert b"Traceback" not in answer and b"File \"" not in answer
    # An over-long request line too.
    answer = _raw_exchange(gw.url, b"GET /" + b"a" * 4000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.split(b"\r\n", 1)[0].split()[1] in (b"400", b"414", b"431"), answer[:200]
    assert acme.hook(BALANCE).status_code == 200
    assert "Traceback" not in gw.log_text()


def test_oversized_chunked_body_is_413(hub88, acme):
    hub88.player("p1", "100.00")
    body = json.dumps({**bet("tx-big"), "pad": "x" * 40000}).encode()
    headers = acme.headers(body)
    # Streamed without a Content-Length: the limit holds while reading, not by trusting a header.
    r = acme.http.post(acme.base_url + "/platforms/game-provider/hooks",
                       data=(body[i:i + 4096] for i in range(0, len(body), 4096)), headers=headers, timeout=10)
    assert_error_response(r, 413, "payload_too_large")
    assert hub88.state()["calls"].get("bet", 0) == 0


# -- replay -----------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_byte_identical_retry_gets_the_first_answer_across_a_restart(hub88, gateway_factory, tmp_path, how):
    """What an HTTP client's retry sends after a timeout: the same bytes, the same signature."""
    hub88.player("p1", "100.00")
    config = platform_config(f"sqlite:///{tmp_path}/g.db")
    gw = gateway_factory(config)
    body = dumps(win("w-replay", "1.00"))
    headers = signing.signed_headers(ACME["api_key"], ACME["secret"], body, unique_timestamp())
    first = requests.post(gw.url + "/platforms/game-provider/hooks", data=body, headers=headers, timeout=5)
    assert first.status_code == 200
    if how == "sigkill":
        gw.kill()
    else:
        gw.stop()
    again = gateway_factory(config)
    retry = requests.post(again.url + "/platforms/game-provider/hooks", data=body, headers=headers, timeout=5)
    assert (retry.status_code, retry.content) == (200, first.content)
    assert hub88.balance("p1") == Decimal("101.00") and len(hub88.ledger("win")) == 1


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_strict_mode_refuses_a_replayed_balance_across_a_restart_but_never_a_money_retry(
        hub88, gateway_factory, tmp_path, how):
    hub88.player("p1", "100.00")
    config = platform_config(f"sqlite:///{tmp_path}/g.db", security={"replay_protection": True})
    gw = gateway_factory(config)
    url = gw.url + "/platforms/game-provider/hooks"
    balance = json.dumps(BALANCE).encode()
    balance_headers = signing.signed_headers(ACME["api_key"], ACME["secret"], balance, unique_timestamp())
    assert requests.post(url, data=balance, headers=balance_headers, timeout=5).ok
    money = dumps(bet("b-strict", "2.00"))
    money_headers = signing.signed_headers(ACME["api_key"], ACME["secret"], money, unique_timestamp())
    first = requests.post(url, data=money, headers=money_headers, timeout=5)
    assert first.status_code == 200
    if how == "sigkill":
        gw.kill()
    else:
        gw.stop()
    again = gateway_factory(config)
    url = again.url + "/platforms/game-provider/hooks"
    assert_error_response(requests.post(url, data=balance, headers=balance_headers, timeout=5), 403,
                          "invalid_signature")
    # Polled: the answer reaching the client does not order this process's read of the log file.
    wait_for(lambda: any(line.get("auth_failure") == "replayed_signature" for line in again.log_lines()),
             timeout=10, what="the replayed_signature access line")
    retry = requests.post(url, data=money, headers=money_headers, timeout=5)
    assert (retry.status_code, retry.content) == (200, first.content)
    assert hub88.balance("p1") == Decimal("98.00") and len(hub88.ledger("bet")) == 1


def test_two_identical_balance_requests_in_the_same_second_are_both_answered(hub88, platform_gateway):
    """The published spec's timestamps have second precision: a poll twice a second signs the same bytes."""
    hub88.player("p1", "100.00")
    body = json.dumps(BALANCE).encode()
    headers = signing.signed_headers(ACME["api_key"], ACME["secret"], body, unique_timestamp())
    answers = [requests.post(platform_gateway.url + "/platforms/game-provider/hooks", data=body, headers=headers,
                             timeout=5) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert decimal_json(answers[0]) == decimal_json(answers[1]) == {"balance": Decimal("100.00")}


# -- partner isolation --------------------------------------------------------------------------
def test_a_partner_cannot_read_or_move_another_partners_transactions(hub88, acme, platform_gateway):
    hub88.player("p1", "100.00")
    beta = IgspClient(platform_gateway.url, BETA["api_key"], BETA["secret"])
    acme_bet = acme.hook(bet("iso-1", "10.00"))
    assert acme_bet.status_code == 200
    # beta "retrying" acme's transaction id gets its own fresh transaction, never acme's stored answer.
    beta_bet = beta.hook(bet("iso-1", "3.00"))
    assert beta_bet.status_code == 200 and beta_bet.content != acme_bet.content
    assert hub88.balance("p1") == Decimal("87.00")
    # Both bets share an id on the one legacy wallet behind both partners: refunding beta's
    # must roll back beta's 3.00 there, never acme's 10.00 (the mapping namespaces legacy ids).
    assert_error(beta.hook(refund("iso-rf-0", "iso-2")), 404, "transaction_not_found")
    assert beta.hook(refund("iso-rf-b", "iso-1", "3.00")).status_code == 200
    assert hub88.balance("p1") == Decimal("90.00")
    assert acme.hook(refund("iso-rf-a", "iso-1", "10.00")).status_code == 200
    assert hub88.balance("p1") == Decimal("100.00")
    assert len(hub88.ledger("rollback")) == 2
    # acme's key signed with beta's secret, or beta's key with acme's: refused, nothing moves.
    for key, secret in ((ACME["api_key"], BETA["secret"]), (BETA["api_key"], ACME["secret"])):
        crossed = IgspClient(platform_gateway.url, key, secret)
        assert_error_response(crossed.hook(bet("iso-x", 1)), 403, "invalid_signature")
    assert hub88.balance("p1") == Decimal("100.00")


def test_body_fields_cannot_override_the_gateways_own_context(hub88, acme):
    """Extra hook fields are allowed by the spec; none may impersonate gateway variables."""
    hub88.player("p1", "100.00")
    sneaky = {**bet("ctx-1", "1.00"), "partner": BETA["id"], "legacy_amount": 99_900_000,
              "secrets": {"x": "y"}, "request_id": "forged", "now_ms": 0}
    r = acme.hook(sneaky)
    assert r.status_code == 200, r.text
    assert hub88.balance("p1") == Decimal("99.00")  # debited 1.00, not 999.00
    call = hub88.state()["ledger"][-1]
    assert call["amount"] == "-1.00000"
    assert r.headers["X-Request-ID"] != "forged"


# -- outbound TLS ----------------------------------------------------------------------------------
def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legacy-wallet.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "wallet.crt", tmp_path / "wallet.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class TlsServer(RunningServer):
    def __init__(self, app, context: ssl.SSLContext):
        super().__init__(app)
        self.context = context

    async def _start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.context).start()
        self.url = f"https://127.0.0.1:{self._runner.addresses[0][1]}"


@pytest.fixture
def tls_wallet(tmp_path, hub88_keys):
    cert_file, key_file = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    server = TlsServer(hub88_wallet.make_app(hub88_wallet.State(), public_key_pem=hub88_keys[1]), context).start()
    requests.post(f"{server.url}/_control/players", json={"player_id": "p1", "balance": "100.00"},
                  verify=str(cert_file), timeout=5).raise_for_status()
    yield server, cert_file
    server.stop()


def _mapping_copy(tmp_path, **upstream) -> str:
    data = yaml.safe_load((ROOT / "mappings" / "hub88-wallet.yaml").read_text())
    data["upstream"].update(upstream)
    path = tmp_path / f"hub88-{len(upstream)}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_self_signed_upstream_is_refused_by_default(tls_wallet, gateway_factory, tmp_path):
    server, cert_file = tls_wallet
    config = platform_config(f"sqlite:///{tmp_path}/g.db")
    gw = gateway_factory(config, env={"HUB88_WALLET_URL": server.url})
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    assert_error_response(acme.hook(BALANCE), 503, "upstream_unavailable")
    assert_error_response(acme.hook(bet("tls-1", 1)), 503, "upstream_unavailable")
    wallet = requests.get(f"{server.url}/_control/state", verify=str(cert_file), timeout=5).json()
    assert wallet["ledger"] == [] and wallet["calls"] == {}  # the handshake failed: nothing was sent
    kinds = {line.get("kind") for line in gw.log_lines()}
    metrics = requests.get(gw.internal_url + "/metrics", timeout=5).text
    assert 'kind="tls"' in metrics, kinds


def test_tls_verify_false_accepts_the_self_signed_upstream(tls_wallet, gateway_factory, tmp_path):
    server, cert_file = tls_wallet
    config = platform_config(f"sqlite:///{tmp_path}/g.db")
    config["partners"][0]["mapping"] = _mapping_copy(tmp_path, tls_verify=False)
    gw = gateway_factory(config, env={"HUB88_WALLET_URL": server.url})
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    r = acme.hook(bet("tls-2", "2.50"))
    assert r.status_code == 200, r.text
    assert str(decimal_json(r)["balance"]) == "97.50"


# -- secrets ----------------------------------------------------------------------------------------
def test_no_secret_ever_reaches_the_log(hub88, hub88_keys, gateway_factory, tmp_path):
    hub88.player("p1", "100.00")
    gw = gateway_factory(platform_config(f"sqlite:///{tmp_path}/g.db", logging={"level": "debug"}))
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    acme.hook(bet("sec-1", 1))
    acme.hook(bet("sec-1", 1))
    IgspClient(gw.url, ACME["api_key"], "wrong-secret-0123456789").hook(BALANCE)
    IgspClient(gw.url, ACME["api_key"], ACME["old_secret"]).hook(BALANCE)
    hub88.fault("garbage", endpoint="bet")
    acme.hook(bet("sec-2", 1))
    acme.post("/platforms/game-provider/hooks", b"{broken", headers={"X-Debug": ACME["secret"]})
    gw.stop()
    log = gw.log_text()
    assert '"status": 200' in log or '"status":200' in log  # the access log was written
    private_body = "".join(hub88_keys[0].splitlines()[1:-1])
    for secret in (ACME["secret"], ACME["old_secret"], BETA["secret"], ACME["api_key"], BETA["api_key"]):
        assert secret not in log
    assert private_body[:40] not in log and private_body[-40:] not in log


# -- admin API ------------------------------------------------------------------------------------------
ADMIN_TOKEN = "admin-token-0123456789abcdef"
ADMIN_ROUTES = [("GET", "/admin/queue"), ("GET", "/admin/dlq"), ("GET", "/admin/dlq/x"),
                ("POST", "/admin/dlq/x/replay"), ("POST", "/admin/dlq/x/resolve"), ("DELETE", "/admin/dlq/x"),
                ("DELETE", "/admin/dlq")]


def test_admin_api_is_off_without_a_token(hub88, platform_gateway):
    for method, path in ADMIN_ROUTES:
        for base in (platform_gateway.url, platform_gateway.internal_url):
            r = requests.request(method, base + path, headers={"Authorization": "Bearer x"}, timeout=5)
            assert_error_response(r, 404, "not_found")


def test_admin_api_refuses_everything_but_its_own_token(hub88, gateway_factory, tmp_path):
    hub88.player("p1", "100.00")
    db = tmp_path / "g.db"
    gw = gateway_factory(platform_config(f"sqlite:///{db}", admin={"token": ADMIN_TOKEN}))
    # One dead letter to protect: an unknown win on the non-idempotent wallet.
    hub88.fault("apply_then_hang", endpoint="win", seconds=5)
    IgspClient(gw.url, ACME["api_key"], ACME["secret"]).hook(win("w-adm", 1))
    signed = signing.signed_headers(ACME["api_key"], ACME["secret"], b"")
    attempts = [{}, {"Authorization": "Bearer"}, {"Authorization": f"Bearer {ACME['api_key']}"},
                {"Authorization": f"Bearer {ACME['secret']}"}, signed,
                {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"}, {"Authorization": f"Basic {ADMIN_TOKEN}"},
                {"X-Admin-Token": ADMIN_TOKEN}]
    for method, path in ADMIN_ROUTES:
        for headers in attempts:
            r = requests.request(method, gw.internal_url + path, headers=headers, timeout=5)
            assert_error_response(r, 401, "unauthorized")
    ok = requests.get(gw.internal_url + "/admin/dlq", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
    assert ok.status_code == 200 and ok.json()["count"] == 1  # nothing was purged or resolved by the refused calls
    # The public port has no admin API, whatever the token.
    for method, path in ADMIN_ROUTES:
        r = requests.request(method, gw.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
        assert_error_response(r, 404, "not_found")
    ok = requests.get(gw.internal_url + "/admin/dlq", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
    assert ok.json()["count"] == 1
    gw.stop()
    assert ADMIN_TOKEN not in gw.log_text()
