"""Partner IP allowlists and client addresses behind trusted proxies.

The parsing and resolution rules first, in process (gateway/clientip.py); then real gateway
processes on loopback: a partner called from an address outside its ``allowed_ips`` gets
403 ``forbidden`` before its signature is looked at, a forwarding header is read only from
a trusted proxy and from the right, ``Forwarded`` is parsed when configured, IPv6 peers
are matched as IPv6, and the provider face refuses the same way.
"""

from __future__ import annotations

import http.client
import ipaddress
import signal
from decimal import Decimal

import pytest
import requests
import yaml
from multidict import CIMultiDict

from adapters.codecs import dumps
from gateway import signing
from gateway.clientip import ClientAddress, forwarded_for, parse_address, parse_network
from gateway.config import load_config
from gateway.errors import ConfigError
from tests.conftest import ACME, BETA, platform_config
from tests.ops_support import Metrics, wait_for
from tests.support import ROOT, IgspClient, free_port, unique_timestamp
from tests.test_security import BALANCE, assert_error_response

HOOKS = "/platforms/game-provider/hooks"
ip = ipaddress.ip_address


# -- parsing and resolution (in process) ---------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("192.0.2.1", "192.0.2.1"),
    (" 192.0.2.1 ", "192.0.2.1"),
    ("192.0.2.1:4711", "192.0.2.1"),
    ("2001:db8::1", "2001:db8::1"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("[2001:db8::1]:4711", "2001:db8::1"),
    ("::ffff:192.0.2.1", "192.0.2.1"),  # what a dual-stack socket reports for an IPv4 client
    ("unknown", None), ("_hidden", None), ("", None), (None, None), ("[2001:db8::1", None),
    ("[2001:db8::1]x", None), ("192.0.2.1:80:90", None), ("300.1.1.1", None),
])
def test_parse_address(text, expected):
    assert parse_address(text) == (ip(expected) if expected else None)


@pytest.mark.parametrize("value, hops", [
    ("for=192.0.2.60;proto=http;by=203.0.113.43", ["192.0.2.60"]),
    ('for=192.0.2.43, for="[2001:db8:cafe::17]:4711"', ["192.0.2.43", "[2001:db8:cafe::17]:4711"]),
    ("For=192.0.2.43 , FOR=198.51.100.17", ["192.0.2.43", "198.51.100.17"]),
    ('proto=https;for="192.0.2.1:80";by="a,b;c"', ["192.0.2.1:80"]),  # separators inside quotes
    ("by=203.0.113.43, for=198.51.100.17", [None, "198.51.100.17"]),  # an element without for=
    ('for=unknown, for="_gazonk"', ["unknown", "_gazonk"]),
    ("for=192.0.2.1,,for=192.0.2.2", ["192.0.2.1", "192.0.2.2"]),  # empty list elements are skipped
    ("", []),
])
def test_forwarded_header_parsing(value, hops):
    assert forwarded_for(value) == hops


def _headers(**lines) -> CIMultiDict:
    headers = CIMultiDict()
    for name, values in lines.items():
        for value in values if isinstance(values, list) else [values]:
            headers.add(name.replace("_", "-"), value)
    return headers


PROXIES = (parse_network("127.0.0.1"), parse_network("10.0.0.0/8"), parse_network("fd00::/8"))


@pytest.mark.parametrize("peer, headers, expected", [
    # An untrusted peer is the client, whatever it claims.
    ("198.51.100.9", {"X_Forwarded_For": "203.0.113.7"}, "198.51.100.9"),
    ("::ffff:198.51.100.9", {"X_Forwarded_For": "203.0.113.7"}, "198.51.100.9"),
    # A trusted peer: the rightmost hop that is not a trusted proxy.
    ("127.0.0.1", {"X_Forwarded_For": "203.0.113.7"}, "203.0.113.7"),
    ("127.0.0.1", {"X_Forwarded_For": "203.0.113.7, 198.51.100.9"}, "198.51.100.9"),
    ("127.0.0.1", {"X_Forwarded_For": "198.51.100.9, 203.0.113.7, 10.1.2.3"}, "203.0.113.7"),
    ("127.0.0.1", {"X_Forwarded_For": ["203.0.113.7", "198.51.100.9"]}, "198.51.100.9"),  # two lines, in order
    ("127.0.0.1", {"X_Forwarded_For": "2001:db8::7, fd00::1"}, "2001:db8::7"),
    ("127.0.0.1", {"X_Forwarded_For": "10.1.2.3, 10.9.9.9"}, "10.1.2.3"),  # all trusted: the leftmost
    ("127.0.0.1", {}, "127.0.0.1"),  # no header: the proxy itself
    ("127.0.0.1", {"X_Forwarded_For": "203.0.113.7, unknown"}, None),  # unreadable: no address
    ("127.0.0.1", {"Forwarded": "for=203.0.113.7"}, "127.0.0.1"),  # not the configured header
    (None, {"X_Forwarded_For": "203.0.113.7"}, None),
])
def test_client_address_behind_trusted_proxies(peer, headers, expected):
    resolve = ClientAddress(PROXIES, "X-Forwarded-For")
    assert resolve(peer, _headers(**headers)) == (ip(expected) if expected else None)


@pytest.mark.parametrize("headers, expected", [
    ({"Forwarded": 'for=198.51.100.9, for="[2001:db8::7]:4711";proto=https'}, "2001:db8::7"),
    ({"Forwarded": "for=203.0.113.7, for=10.0.0.2"}, "203.0.113.7"),
    ({"Forwarded": ["for=198.51.100.9", "for=203.0.113.7"]}, "203.0.113.7"),
    ({"Forwarded": 'for="_hidden"'}, None),
    ({"Forwarded": "by=10.0.0.2"}, None),
    ({"X_Forwarded_For": "203.0.113.7"}, "127.0.0.1"),  # not the configured header
])
def test_client_address_from_forwarded(headers, expected):
    resolve = ClientAddress(PROXIES, "Forwarded")
    assert resolve("127.0.0.1", _headers(**headers)) == (ip(expected) if expected else None)


def _write(tmp_path, config: dict):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def env(hub88_keys):
    return {"HUB88_WALLET_URL": "http://127.0.0.1:1", "HUB88_PRIVATE_KEY": hub88_keys[0]}


def test_allowlists_and_trusted_proxies_load(tmp_path, env):
    config = platform_config(f"sqlite:///{tmp_path}/g.db",
                             server={"trusted_proxies": ["10.0.0.0/8", "fd00::/8"], "forwarded_header": "Forwarded"})
    config["partners"][0]["allowed_ips"] = ["203.0.113.7", "2001:db8::/32"]
    loaded = load_config(_write(tmp_path, config), env=env)
    assert loaded.trusted_proxies == (parse_network("10.0.0.0/8"), parse_network("fd00::/8"))
    assert loaded.forwarded_header == "Forwarded"
    acme, beta = loaded.partners
    assert acme.allowed_ips == (parse_network("203.0.113.7/32"), parse_network("2001:db8::/32"))
    assert beta.allowed_ips is None  # no list: any address


def test_bad_networks_are_config_errors_with_file_line_and_field(tmp_path, env):
    config = platform_config(f"sqlite:///{tmp_path}/g.db", server={"trusted_proxies": ["10.0.0.0/8", "0.0.0.0/0"]})
    config["partners"][0]["allowed_ips"] = ["203.0.113.0/24", "10.0.0.1/8", "not-an-ip"]
    config["partners"][1]["allowed_ips"] = ["2001:db8::/129"]
    path = _write(tmp_path, config)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)
    problems = {p.path: p for p in caught.value.problems}
    assert set(problems) == {"partners[0].allowed_ips[1]", "partners[0].allowed_ips[2]",
                             "partners[1].allowed_ips[0]", "server.trusted_proxies[1]"}
    lines = path.read_text().splitlines()
    for field, shown in (("partners[0].allowed_ips[1]", "10.0.0.1/8"), ("partners[0].allowed_ips[2]", "not-an-ip"),
                         ("partners[1].allowed_ips[0]", "2001:db8::/129"), ("server.trusted_proxies[1]", "0.0.0.0/0")):
        problem = problems[field]
        assert problem.file == str(path) and shown in lines[problem.line - 1], (field, problem)
    assert "host bits set (the network is 10.0.0.0/8)" in problems["partners[0].allowed_ips[1]"].message
    assert "not an IPv4 or IPv6" in problems["partners[0].allowed_ips[2]"].message
    assert "trusts every address" in problems["server.trusted_proxies[1]"].message
    assert f"{path}:{problems['partners[0].allowed_ips[2]'].line}: partners[0].allowed_ips[2]" in str(caught.value)


@pytest.mark.parametrize("edit, field", [
    (lambda c: c["partners"][0].update(allowed_ips=[]), "partners[0].allowed_ips"),
    (lambda c: c["partners"][0].update(allowed_ips="10.0.0.0/8"), "partners[0].allowed_ips"),
    (lambda c: c["server"].update(forwarded_header="X-Real-IP"), "server.forwarded_header"),
])
def test_allowlist_schema(tmp_path, env, edit, field):
    config = platform_config(f"sqlite:///{tmp_path}/g.db")
    edit(config)
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, config), env=env)
    assert [p.path for p in caught.value.problems] == [field]


# -- real gateway processes -----------------------------------------------------------------
def _access_lines(gw, count: int) -> list[dict]:
    """The access lines of refused requests, polled: the answer reaching the client does not
    order this process's read of the gateway's log file."""
    return wait_for(lambda: (found := [line for line in gw.log_lines() if line["msg"] == "request"
                                       and line.get("auth_failure") == "address_not_allowed"])
                    and len(found) >= count and found, timeout=10, what=f"{count} refused access lines")


def test_direct_clients_allowed_refused_and_spoofed_headers_ignored(hub88, gateway_factory, tmp_path):
    hub88.player("p1", "100.00")
    config = platform_config(f"sqlite:///{tmp_path}/g.db")
    config["partners"][0]["allowed_ips"] = ["127.0.0.1/32", "2001:db8::/32"]
    config["partners"][1]["allowed_ips"] = ["10.0.0.0/8", "2001:db8::/32"]
    gw = gateway_factory(config)  # no trusted proxies: forwarding headers are never read
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    beta = IgspClient(gw.url, BETA["api_key"], BETA["secret"])

    assert acme.hook(BALANCE).status_code == 200
    refused = beta.hook({**BALANCE})
    assert_error_response(refused, 403, "forbidden")
    assert refused.json()["message"] == "client address not allowed"
    # A bet from the refused address moves nothing and never reaches the wallet.
    bet = {"action": "bet", "player_id": "p1", "amount": "5.00", "currency": "EUR", "game_id": "g",
           "transaction_id": "tx-ip-1", "session_id": "s-1", "type": "bet", "round_id": "r-1"}
    assert_error_response(beta.hook(bet), 403, "forbidden")
    # The address is checked before the signature: a forged one is refused for its address.
    forger = IgspClient(gw.url, BETA["api_key"], "not-the-secret-0123456789abcdef")
    assert_error_response(forger.hook(BALANCE), 403, "forbidden")
    # Headers a direct client writes are its own claims: ignored.
    for spoof in ({"X-Forwarded-For": "10.1.2.3"}, {"Forwarded": "for=10.1.2.3"}, {"X-Real-IP": "10.1.2.3"},
                  {"X-Forwarded-For": "10.1.2.3", "Forwarded": 'for="[2001:db8::1]"'}):
        assert_error_response(beta.hook(BALANCE, headers=spoof), 403, "forbidden")
    assert hub88.balance("p1") == Decimal("100.00") and hub88.state()["calls"].get("bet", 0) == 0
    assert hub88.state()["calls"]["balance"] == 1  # acme's only

    m = Metrics.scrape(gw.internal_url)
    assert m.value("igsp_ip_refused_total", partner="beta-games") == 7
    assert m.value("igsp_ip_refused_total", partner="acme-games") == 0  # exported at zero
    assert m.value("igsp_signature_failures_total") == 0  # the forger never got that far
    assert m.value("igsp_requests_total", partner="unknown", outcome="auth_failure") == 7

    lines = _access_lines(gw, 7)
    assert {(line["status"], line["partner"], line["client_ip"], line["error"]) for line in lines} == {
        (403, "unknown", "127.0.0.1", "forbidden")}


def _raw_hook(url: str, body: bytes, headers: list[tuple[str, str]]) -> int:
    """A signed hook sent with header lines exactly as given (repeated names too)."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=10)
    try:
        conn.putrequest("POST", HOOKS)
        for name, value in [*signing.signed_headers(BETA["api_key"], BETA["secret"], body, unique_timestamp()).items(),
                            ("Content-Length", str(len(body))), *headers]:
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_forwarded_addresses_from_a_trusted_proxy(hub88, gateway_factory, tmp_path):
    """The test client plays the ingress: 127.0.0.1/32 is a trusted proxy."""
    config = platform_config(f"sqlite:///{tmp_path}/g.db",
                             server={"trusted_proxies": ["127.0.0.1/32", "10.0.0.0/8"]})
    config["partners"][1]["allowed_ips"] = ["203.0.113.0/24", "2001:db8::/32"]
    gw = gateway_factory(config)
    beta = IgspClient(gw.url, BETA["api_key"], BETA["secret"])
    hub88.player("p1", "100.00")

    def status(**headers) -> int:
        return beta.hook(BALANCE, headers={k.replace("_", "-"): v for k, v in headers.items()}).status_code

    assert status(X_Forwarded_For="203.0.113.7") == 200
    assert status(X_Forwarded_For="198.51.100.9, 203.0.113.7") == 200  # a client's own entry, left of it
    assert status(X_Forwarded_For="203.0.113.7, 10.0.0.5") == 200  # a second trusted proxy hop
    assert status(X_Forwarded_For="2001:db8::7") == 200
    assert status(X_Forwarded_For="203.0.113.7, 198.51.100.9") == 403  # a spoofed entry is never reached
    assert status(X_Forwarded_For="203.0.113.7, unknown") == 403  # unreadable hop: fail closed
    assert status() == 403  # no header: the proxy's own address, not allowed
    assert status(Forwarded="for=203.0.113.7") == 403  # not the configured header
    body = dumps(BALANCE)
    assert _raw_hook(gw.url, body, [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "10.0.0.5")]) == 200
    assert _raw_hook(gw.url, body, [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "198.51.100.9")]) == 403
    refused = _access_lines(gw, 5)
    assert [line["client_ip"] for line in refused] == ["198.51.100.9", None, "127.0.0.1", "127.0.0.1",
                                                       "198.51.100.9"]

    # The same proxies maintaining Forwarded instead: switched by a reload (no restart).
    config["server"]["forwarded_header"] = "Forwarded"
    gw.config_path.write_text(yaml.safe_dump(config))
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(line["msg"] == "config reloaded" for line in gw.log_lines()), timeout=15,
             what="the reload")
    assert status(Forwarded='for=198.51.100.9, for="[2001:db8::7]:4711";proto=https') == 200
    assert status(Forwarded='For="203.0.113.7:1234";by=10.0.0.2, for=10.0.0.3') == 200
    assert status(Forwarded="for=203.0.113.7, for=198.51.100.9") == 403
    assert status(Forwarded='for="_hidden"') == 403
    assert status(Forwarded="for=203.0.113.7;proto=https, by=10.0.0.2") == 403  # an element without for=
    assert status(X_Forwarded_For="203.0.113.7") == 403  # no longer the configured header
    assert Metrics.scrape(gw.internal_url).value("igsp_ip_refused_total", partner="beta-games") == 9


PP_ENV = {"PP_API_URL": "http://127.0.0.1:1", "PP_SECRET_KEY": "pp-secret-key-0123", "PP_SECURE_LOGIN": "casino"}
CASINO = {"id": "casino-one", "api_key": "casino-one-key", "secret": "casino-one-secret-0123456789"}


def test_ipv6_peers_and_the_provider_face(hub88, gateway_factory, tmp_path):
    """A gateway on ::1: IPv6 peers match IPv6 networks only, and a header from ::1 is not
    trusted when only 127.0.0.1 is. The provider face refuses the same way."""
    config = platform_config(f"sqlite:///{tmp_path}/g.db",
                             server={"host": "::1", "trusted_proxies": ["127.0.0.1/32"]})
    config["partners"][0]["allowed_ips"] = ["::1/128"]
    config["partners"][1]["allowed_ips"] = ["127.0.0.0/8"]
    config["partners"].append({"id": CASINO["id"], "face": "provider", "api_key": CASINO["api_key"],
                               "secrets": [CASINO["secret"]], "allowed_ips": ["192.0.2.0/24"],
                               "mapping": str(ROOT / "mappings" / "pragmatic-provider.yaml"),
                               "hooks_url": f"http://127.0.0.1:{free_port()}/hooks"})
    gw = gateway_factory(config, env=PP_ENV)
    url = f"http://[::1]:{gw.url.rsplit(':', 1)[1]}"  # the READY line does not bracket an IPv6 host
    acme = IgspClient(url, ACME["api_key"], ACME["secret"])
    beta = IgspClient(url, BETA["api_key"], BETA["secret"])
    casino = IgspClient(url + "/igsp/v1", CASINO["api_key"], CASINO["secret"])
    hub88.player("p1", "100.00")

    assert acme.hook(BALANCE).status_code == 200
    assert_error_response(beta.hook(BALANCE), 403, "forbidden")
    assert_error_response(beta.hook(BALANCE, headers={"X-Forwarded-For": "127.0.0.1"}), 403, "forbidden")
    assert_error_response(casino.get("/games"), 403, "forbidden")
    assert_error_response(casino.post("/sessions", {"session_id": "s-1"}), 403, "forbidden")

    m = Metrics.scrape(f"http://[::1]:{gw.internal_url.rsplit(':', 1)[1]}")
    assert (m.value("igsp_ip_refused_total", partner="beta-games"),
            m.value("igsp_ip_refused_total", partner="casino-one"),
            m.value("igsp_ip_refused_total", partner="acme-games")) == (2, 2, 0)
    assert {line["client_ip"] for line in _access_lines(gw, 4)} == {"::1"}
    assert requests.get(url + "/readyz", timeout=5).status_code == 200
