"""The hook front changes nothing a client can see: a gateway with ``server.fast_path``
on and one with it off (aiohttp serving everything) get the same raw requests and must
give the same answers — status, headers, body — and the same access-log fields.
"""

from __future__ import annotations

import socket
import time

import pytest

from adapters.codecs import dumps
from gateway import signing
from tests.conftest import ACME, platform_config
from tests.support import unique_timestamp
from tests.wallet_support import bet

HOOKS = "/platforms/game-provider/hooks"


@pytest.fixture
def pair(gateway_factory, tmp_path):
    """(fast, plain): the same config but for the front; separate stores, one wallet."""
    def start(name: str, fast: bool):
        return gateway_factory(platform_config(f"sqlite:///{tmp_path}/{name}.db",
                                               server={"fast_path": fast, "max_body_bytes": 2048}))
    return start("fast", True), start("plain", False)


def raw_request(headers: dict, body: bytes, *, path: str = HOOKS, method: str = "POST", chunked: bool = False) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def send(url: str, raw: bytes) -> tuple[int, dict, bytes]:
    host, port = url.split("://")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        while len(body) < int(headers["content-length"]):
            body += sock.recv(65536)
        return int(lines[0].split()[1]), headers, body


def signed(payload, *, secret: str = ACME["secret"], api_key: str = ACME["api_key"], timestamp: str | None = None,
           **extra) -> tuple[dict, bytes]:
    body = payload if isinstance(payload, bytes) else dumps(payload)
    headers = signing.signed_headers(api_key, secret, body, timestamp or unique_timestamp())
    return {**headers, **extra}, body


def both(pair, make) -> list[tuple[int, dict, bytes]]:
    """Send ``make()`` (fresh per gateway: signatures are single-use) to both gateways."""
    out = []
    for gateway in pair:
        headers, body, options = make()
        out.append(send(gateway.url, raw_request(headers, body, **options)))
    return out


def same(answers, ignore_body_fields=()):
    (fast_status, fast_headers, fast_body), (plain_status, plain_headers, plain_body) = answers
    assert fast_status == plain_status, (answers)
    strip = {"date", "x-request-id"}
    assert {k: v for k, v in fast_headers.items() if k not in strip} == \
           {k: v for k, v in plain_headers.items() if k not in strip}
    assert len(fast_headers["x-request-id"]) == len(plain_headers["x-request-id"])
    if ignore_body_fields:
        import json

        fast, plain = json.loads(fast_body), json.loads(plain_body)
        assert fast.keys() == plain.keys()
        assert {k: v for k, v in fast.items() if k not in ignore_body_fields} == \
               {k: v for k, v in plain.items() if k not in ignore_body_fields}
    else:
        assert fast_body == plain_body
    return fast_status, fast_body


CASES = {
    "balance": (lambda: (*signed({"action": "balance", "player_id": "p1", "currency": "EUR"}), {}), 200),
    "chunked balance": (lambda: (*signed({"action": "balance", "player_id": "p1", "currency": "EUR"}),
                                 {"chunked": True}), 200),
    "request id kept": (lambda: (*signed({"action": "balance", "player_id": "p1", "currency": "EUR"},
                                         **{"X-Request-ID": "abc-123"}), {}), 200),
    "bad signature": (lambda: (*signed({"action": "balance", "player_id": "p1", "currency": "EUR"},
                                       secret="wrong-secret-0123456789abcdef"), {}), 403),
    "stale timestamp": (lambda: (*signed({"action": "balance", "player_id": "p1", "currency": "EUR"},
                                         timestamp="2020-01-01T00:00:00Z"), {}), 403),
    "unknown key": (lambda: (*signed({"action": "balance", "player_id": "p1", "currency": "EUR"},
                                     api_key="nobody"), {}), 401),
    "malformed json": (lambda: (*signed(b'{"action": "bet",'), {}), 400),
    "unknown action": (lambda: (*signed({"action": "steal", "player_id": "p1"}), {}), 400),
    "wrong type": (lambda: (*signed({**bet("tx-type"), "amount": "ten"}), {}), 400),
    "too big": (lambda: (*signed({"action": "balance", "player_id": "p1", "currency": "EUR", "pad": "x" * 3000}),
                         {}), 413),
    "wrong method": (lambda: (*signed(b""), {"method": "GET"}), 405),
    "query string": (lambda: (*signed({"action": "balance", "player_id": "p1", "currency": "EUR"}),
                              {"path": HOOKS + "?debug=1"}), 200),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_same_request_gets_the_same_answer_with_or_without_the_front(hub88, pair, case):
    hub88.player("p1", "100.00")
    make, status = CASES[case]
    got, body = same(both(pair, make))
    assert got == status, body
    if case == "request id kept":
        assert all(send(g.url, raw_request(*make()[:2]))[1]["x-request-id"] == "abc-123" for g in pair)


def test_bets_replays_and_the_access_log_match(hub88, pair):
    hub88.player("p1", "100.00")
    fast, plain = pair
    txid = f"tx-{time.time_ns()}"
    answers = [send(g.url, raw_request(*signed(bet(f"{txid}-{i}", "2.50")))) for i, g in enumerate(pair)]
    status, _ = same(answers, ignore_body_fields=("balance", "transaction_id"))
    assert status == 200 and hub88.balance("p1") == 95  # one debit through each gateway

    # The very same signed bytes sent twice: the second is a replay on both.
    for i, gateway in enumerate(pair):
        request = raw_request(*signed(bet(f"{txid}-again-{i}", "1.00")))
        assert send(gateway.url, request)[0] == 200
        replayed = send(gateway.url, request)
        assert replayed[0] == 403 and b"invalid_signature" in replayed[2]
    assert hub88.balance("p1") == 93

    def access(gateway):
        return [line for line in gateway.log_lines() if line.get("msg") == "request"]

    fast_lines, plain_lines = access(fast), access(plain)
    assert len(fast_lines) == len(plain_lines) == 3
    for a, b in zip(fast_lines, plain_lines, strict=True):
        assert a.keys() == b.keys()
        for field in ("partner", "face", "operation", "status", "method", "path", "error", "auth_failure"):
            assert a.get(field) == b.get(field), field
    assert fast_lines[-1]["auth_failure"] == "replayed_signature"

    # ...and the front did serve them (a gateway that never used it would pass the above too).
    for gateway in pair:
        assert gateway.stop() == 0
    [fast_stop] = [line for line in fast.log_lines() if line["msg"] == "stopped"]
    [plain_stop] = [line for line in plain.log_lines() if line["msg"] == "stopped"]
    assert fast_stop["fast_path_requests"] == 3 and fast_stop["fast_path_handovers"] == 0
    assert plain_stop["fast_path_requests"] == 0


def test_handovers_are_counted_by_kind(hub88, pair):
    from tests.ops_support import Metrics

    hub88.player("p1", "100.00")
    fast, _ = pair
    balance = {"action": "balance", "player_id": "p1", "currency": "EUR"}
    assert send(fast.url, raw_request(*signed(balance), chunked=True))[0] == 200
    assert send(fast.url, raw_request(*signed(balance), path=HOOKS + "?x=1"))[0] == 200
    assert send(fast.url, raw_request(*signed(balance)))[0] == 200  # plain: stays on the front
    metrics = Metrics.scrape(fast.url)  # a GET /metrics connection: an "other" handover itself
    assert metrics.value("igsp_fast_path_handovers_total", request="hook") == 1  # the chunked one
    assert metrics.value("igsp_fast_path_handovers_total", request="other") == 2  # query string, this scrape
