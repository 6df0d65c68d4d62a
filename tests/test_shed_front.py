"""The shedding front (``concurrency.early_shedding``, gateway/shed_front.py) against aiohttp alone.

Real gateway processes: one with the front, one without, the same config; the wallet holds
one bet of each (a ``delay`` fault), so partner acme is at its limit (``per_partner: 1``) in
both while the requests under test arrive. Requests are written as raw bytes on a socket —
whole, in pieces, two at once — and the answers read with llhttp (httptools). What the
front answers must be what aiohttp answers, except where gateway/shed_front.py says it is
not (a known key with a bad signature is shed, not refused).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from urllib.parse import urlsplit

import httptools
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ACME, BETA
from tests.support import IgspClient, dumps
from tests.test_overload import held_config, hold_bets
from tests.test_platform_face import bet

HOOKS = "/platforms/game-provider/hooks"


class Answers:
    """HTTP/1.1 answers read off a socket by llhttp: (status, headers, body) each."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[tuple[int, dict, bytes]] = []

    def on_message_begin(self) -> None:
        self.headers, self.body = {}, b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self.headers, self.body))


class Conn:
    """One keep-alive connection written to as raw bytes."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        self.answers = Answers()

    def send(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.sock.sendall(chunk)

    def read(self, count: int = 1, timeout: float = 10.0) -> list[tuple[int, dict, bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.answers.done) < count:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            assert data, f"connection closed after {len(self.answers.done)} of {count} answers"
            self.answers.parser.feed_data(data)
        answers, self.answers.done = self.answers.done[:count], self.answers.done[count:]
        return answers

    def closed_by_server(self, timeout: float) -> bool:
        """Whether the server closes the connection within ``timeout`` (reading and discarding)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(65536):
                    return True
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
        return False

    def close(self) -> None:
        self.sock.close()


def raw(client: IgspClient, payload, *, path: str = HOOKS, version: str = "HTTP/1.1", extra: tuple = (),
        headers: dict | None = None) -> bytes:
    """A signed hook request as bytes, exactly as a provider's client would write it."""
    body = payload if isinstance(payload, bytes) else dumps(payload)
    sent = {"Host": "gateway", "Content-Type": "application/json", **client.headers(body), **(headers or {})}
    head = [f"POST {path} {version}", *(f"{k}: {v}" for k, v in sent.items()), *extra]
    if not any(line.lower().startswith("transfer-encoding") for line in extra):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chunked(request: bytes) -> bytes:
    """The same request with its body sent chunked."""
    head, _, body = request.partition(b"\r\n\r\n")
    head = b"\r\n".join(line for line in head.split(b"\r\n") if not line.lower().startswith(b"content-length"))
    return head + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"


@pytest.fixture
def full(hub88, gateway_factory, tmp_path):
    """Two gateways, with and without the front, each holding one bet of acme (its limit)."""
    hub88.player("p1", "100.00")
    limits = {"per_partner": 1, "retry_after_seconds": 2}
    front = gateway_factory(held_config(tmp_path, concurrency={**limits, "early_shedding": True}))
    plain = gateway_factory(held_config(tmp_path, concurrency=limits))
    threads, answers, _ = hold_bets(hub88, [IgspClient(gw.url, ACME["api_key"], ACME["secret"]) for gw in (front, plain)])
    yield front, plain
    for thread in threads:
        thread.join(30)
    assert [r.status_code for r in answers.values()] == [200, 200]


def one(url: str, *chunks: bytes) -> tuple[int, dict, bytes]:
    conn = Conn(url)
    try:
        conn.send(*chunks)
        return conn.read()[0]
    finally:
        conn.close()


def test_the_front_answers_as_aiohttp_does(full, hub88):
    front, plain = full
    shapes = {
        "bet": lambda c: raw(c, bet("f-1", "1.00")),
        "balance": lambda c: raw(c, {"action": "balance", "player_id": "p1", "currency": "EUR"}),
        "request id echoed": lambda c: raw(c, bet("f-2", "1.00"), headers={"X-Request-ID": "trace-77"}),
        "query string": lambda c: raw(c, bet("f-3", "1.00"), path=HOOKS + "?x=1"),
        "body not JSON": lambda c: raw(c, b"{not json"),
        "HTTP/1.0": lambda c: raw(c, bet("f-4", "1.00"), version="HTTP/1.0"),
        "chunked body": lambda c: chunked(raw(c, bet("f-5", "1.00"))),
        "unknown key": lambda c: raw(IgspClient(c.base_url, "no-such-key", "x"), bet("f-6", "1.00")),
        "other partner": lambda c: raw(IgspClient(c.base_url, BETA["api_key"], BETA["secret"]),
                                       {"action": "balance", "player_id": "p1", "currency": "EUR"}),
        "wrong path": lambda c: raw(c, bet("f-7", "1.00"), path="/platforms/game-provider/hookz"),
        "too many fields": lambda c: raw(c, bet("f-8", "1.00"), extra=tuple(f"X-F{i}: v" for i in range(200))),
        "no Host": lambda c: raw(c, bet("f-10", "1.00")).replace(b"Host: gateway\r\n", b""),
        "two Content-Types": lambda c: raw(c, bet("f-11", "1.00"), extra=("Content-Type: application/json",)),
        "request id with blanks": lambda c: raw(c, bet("f-12", "1.00"), headers={"X-Request-ID": " trace-78 "}),
    }
    seen = {}
    for name, make in shapes.items():
        answers = []
        for gw in (front, plain):
            client = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
            status, headers, body = one(gw.url, make(client))
            answers.append((status, headers.get("content-type"), headers.get("retry-after"), body))
            if name.startswith("request id"):
                assert headers["x-request-id"] == ("trace-77" if name == "request id echoed" else "trace-78")
            elif status != 400:
                assert headers.get("x-request-id"), f"{name}: no X-Request-ID"
        assert answers[0] == answers[1], f"{name}: the front answered {answers[0]}, aiohttp {answers[1]}"
        seen[name] = answers[0][0]
    assert seen == {"bet": 503, "balance": 503, "request id echoed": 503, "query string": 503, "body not JSON": 503,
                    "HTTP/1.0": 503, "chunked body": 503, "unknown key": 401, "other partner": 200,
                    "wrong path": 404, "too many fields": 400, "no Host": 400, "two Content-Types": 400,
                    "request id with blanks": 503}
    assert json.loads(one(front.url, raw(IgspClient(front.url, ACME["api_key"], ACME["secret"]),
                                         bet("f-9", "1.00")))[2]) == {
        "error": "service_unavailable", "message": "too many requests in progress for this partner; retry later",
        "status": 503}
    assert hub88.calls("bet") == 2  # only the two held bets reached the wallet


def test_a_known_key_with_a_bad_signature_is_shed_by_the_front(full):
    """Documented: the front does not verify signatures (a shed answer changes nothing)."""
    front, plain = full
    statuses = []
    for gw in (front, plain):
        request = raw(IgspClient(gw.url, ACME["api_key"], "not-the-secret"), bet("forged", "1.00"))
        statuses.append(one(gw.url, request)[0])
    assert statuses == [503, 403]


def test_requests_in_one_chunk_and_in_pieces_keep_their_order(full):
    front, _ = full
    acme = IgspClient(front.url, ACME["api_key"], ACME["secret"])
    beta = IgspClient(front.url, BETA["api_key"], BETA["secret"])
    conn = Conn(front.url)
    try:
        # Pipelined: a balance of beta (admitted) and a bet of acme (shed) in one write.
        conn.send(raw(beta, {"action": "balance", "player_id": "p1", "currency": "EUR"}) + raw(acme, bet("p-1", "1.00")))
        assert [status for status, _, _ in conn.read(2)] == [200, 503]
        # In pieces: nothing is answered before the request is whole.
        request = raw(acme, bet("p-2", "1.00"))
        conn.send(request[:40])
        conn.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            conn.sock.recv(1)
        conn.send(request[40:-3])
        conn.send(request[-3:])
        assert conn.read()[0][0] == 503
        # And on the same connection, after aiohttp's answers, whole ones are the front's again
        # (its answers carry no Server header; aiohttp's do).
        for i in range(3):
            conn.send(raw(acme, bet(f"p-3-{i}", "1.00")))
            status, headers, _ = conn.read()[0]
            assert status == 503 and "server" not in headers
    finally:
        conn.close()


def test_a_request_asking_to_close_gets_its_answer_then_the_close(full):
    front, _ = full
    conn = Conn(front.url)
    try:
        conn.send(raw(IgspClient(front.url, ACME["api_key"], ACME["secret"]), bet("c-1", "1.00"),
                      extra=("Connection: close",)))
        status, headers, _ = conn.read()[0]
        assert status == 503 and headers["connection"] == "close"
        assert conn.closed_by_server(5)
    finally:
        conn.close()


def test_shed_requests_are_counted_and_logged(full):
    front, _ = full
    acme = IgspClient(front.url, ACME["api_key"], ACME["secret"])

    def shed_count() -> float:
        text = requests.get(front.internal_url + "/metrics", timeout=10).text
        return sum(sample.value for family in text_string_to_metric_families(text) if family.name == "igsp_requests"
                   for sample in family.samples
                   if sample.name == "igsp_requests_total" and sample.labels.get("partner") == ACME["id"]
                   and sample.labels.get("operation") == "unknown")

    before = shed_count()
    conn = Conn(front.url)
    try:
        for i in range(5):
            conn.send(raw(acme, bet(f"m-{i}", "1.00")))
            assert conn.read()[0][0] == 503
    finally:
        conn.close()
    assert shed_count() - before == 5
    deadline = time.monotonic() + 10
    while not any(line.get("shed_by") == "front" for line in front.log_lines()):
        assert time.monotonic() < deadline, "no access-log line for the front's shed requests"
        time.sleep(0.05)
    line = next(line for line in front.log_lines() if line.get("shed_by") == "front")
    assert (line["status"], line["partner"], line["face"], line["error"]) == (503, ACME["id"], "platform",
                                                                              "service_unavailable")


def test_slots_come_back_after_the_held_bets(hub88, gateway_factory, tmp_path):
    hub88.player("p1", "100.00")
    gw = gateway_factory(held_config(tmp_path, concurrency={"per_partner": 1, "early_shedding": True}))
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    conn = Conn(gw.url)
    try:
        threads, answers, _ = hold_bets(hub88, [acme])
        conn.send(raw(acme, bet("s-1", "1.00")))
        assert conn.read()[0][0] == 503
        # A client that gives up on a forwarded request: its count goes with its connection.
        quitter = Conn(gw.url)
        quitter.send(raw(acme, bet("s-2", "1.00")))
        assert quitter.read()[0][0] == 503
        quitter.close()
        for thread in threads:
            thread.join(30)
        assert [r.status_code for r in answers.values()] == [200]
        # The same keep-alive connection, now admitted: the front's counts are back to zero.
        for i in range(3):
            conn.send(raw(acme, bet(f"s-3-{i}", "1.00")))
            assert conn.read()[0][0] == 200
    finally:
        conn.close()
    assert len(hub88.ledger("bet")) == 4


def test_a_connection_the_front_answered_is_closed_when_idle(hub88, gateway_factory, tmp_path):
    """aiohttp's keep-alive timer (server.read_timeout_seconds) does not see the front's answers;
    the front keeps its own: an idle connection, or one dripping a head, is closed after it."""
    hub88.player("p1", "100.00")
    config = held_config(tmp_path, concurrency={"per_partner": 1, "early_shedding": True},
                         server={"read_timeout_seconds": 1})
    gw = gateway_factory(config)
    acme = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    threads, _, _ = hold_bets(hub88, [acme])
    idle, dripping = Conn(gw.url), Conn(gw.url)
    try:
        for conn in (idle, dripping):
            conn.send(raw(acme, bet(f"i-{id(conn)}", "1.00")))
            assert conn.read()[0][0] == 503
        dripping.send(b"POST " + HOOKS.encode())  # a head that never ends
        assert idle.closed_by_server(4) and dripping.closed_by_server(4)
    finally:
        idle.close()
        dripping.close()
        for thread in threads:
            thread.join(30)


# -- the front alone, with an injected clock -------------------------------------------------------
class FakeTransport:
    def __init__(self) -> None:
        self.written, self.closed = b"", False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


class FakeAiohttp:
    """Stands for aiohttp's protocol object: what it was given."""

    def __init__(self) -> None:
        self.received, self.kept_alive = b"", 0

    def connection_made(self, transport) -> None:
        pass

    def connection_lost(self, exc) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self.received += data

    def keep_alive(self, value: bool) -> None:
        self.kept_alive += 1


def shedder(partners: list, limits: dict[str, int]):
    """A Shedder over a stand-in app: the config, runtime and concurrency counts it reads."""
    from types import SimpleNamespace

    from gateway.config import Config
    from gateway.context import CONFIG, LIFECYCLE, RUNTIME, SHED_LINES, Lifecycle
    from gateway.ops.shedlog import ShedLines
    from gateway.ratelimit import Concurrency
    from gateway.shed_front import Shedder

    concurrency = Concurrency(limits, {p.id: "wallet" for p in partners}, {}, retry_after=3)
    config = Config(file="gateway.yaml", partners=tuple(partners), access_log=False)
    runtime = SimpleNamespace(current=SimpleNamespace(config=config, limiter=SimpleNamespace(concurrency=concurrency)))
    return Shedder({CONFIG: config, RUNTIME: runtime, LIFECYCLE: Lifecycle(), SHED_LINES: ShedLines()}), concurrency


def partner(pid: str, face: str):
    from types import SimpleNamespace

    return SimpleNamespace(id=pid, face=face, api_key=f"{pid}-key", allowed_ips=None)


def request_bytes(method: str, path: str, key: str, body: bytes = b"", extra: tuple = ()) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: gateway", f"Authorization: Bearer {key}", *extra]
    if body or method == "POST":
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def front_for(shed, idle_timeout: float = 5.0):
    from gateway.shed_front import FRONTS, ShedFront

    inner, transport = FakeAiohttp(), FakeTransport()
    front = ShedFront(inner, shed, idle_timeout)
    front.connection_made(transport)
    return front, inner, transport, FRONTS


async def test_the_front_sheds_only_what_the_route_takes():
    """aiohttp answers 404/405 on the provider face before it looks at the caller, and a HEAD
    answer has no body: those, and anything it refuses (no Host, a repeated Content-Type, an
    encoded body), are aiohttp's."""
    pragmatic, acme = partner("prag", "provider"), partner("acme", "platform")
    shed, concurrency = shedder([pragmatic, acme], {"prag": 1, "acme": 1})
    concurrency.counts.update({("partner", "prag"): 1, ("partner", "acme"): 1})  # both at their limit
    hook = "/platforms/game-provider/hooks"
    cases = {
        ("GET", "/igsp/v1/games"): True, ("GET", "/igsp/v1/providers?limit=5"): True,
        ("POST", "/igsp/v1/sessions"): True, ("HEAD", "/igsp/v1/games"): False,
        ("GET", "/igsp/v1/sessions"): False, ("DELETE", "/igsp/v1/nonexistent"): False,
        ("GET", "/igsp/v1/.."): False, ("GET", "/igsp/v1/games/x"): False, ("POST", hook): False,
    }
    for (method, path), sheds in cases.items():
        front, inner, transport, fronts = front_for(shed)
        front.data_received(request_bytes(method, path, "prag-key"))
        assert bool(transport.written) == sheds and bool(inner.received) != sheds, (method, path)
        if sheds:
            assert transport.written.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 3\r\n" in transport.written
        front.connection_lost(None)
    refused_by_aiohttp = [
        request_bytes("POST", hook, "acme-key", b"{}").replace(b"Host: gateway\r\n", b""),
        request_bytes("POST", hook, "acme-key", b"{}", ("Content-Type: a/b", "Content-Type: a/b")),
        request_bytes("POST", hook, "acme-key", b"{}", ("Content-Encoding: gzip",)),
        request_bytes("POST", hook, "acme-key", b"{}", ("Authorization: Bearer acme-key",)),
    ]
    for request in refused_by_aiohttp:
        front, inner, transport, _ = front_for(shed)
        front.data_received(request)
        assert not transport.written and inner.received == request
        front.connection_lost(None)
    front, inner, transport, _ = front_for(shed)
    front.data_received(request_bytes("POST", hook, "acme-key", b"{}", ("X-Request-ID:  trace-1 \t",)))
    assert b"\r\nX-Request-ID: trace-1\r\n" in transport.written  # trimmed as aiohttp reads it
    front.connection_lost(None)
    assert not fronts


async def test_a_forwarded_request_counts_until_its_handler_is_done():
    """Not until its answer is written: a client that never reads its answers must not keep
    its requests (forged ones included) counted against the partner."""
    from types import SimpleNamespace

    from gateway.shed_front import request_done

    acme = partner("acme", "platform")
    shed, concurrency = shedder([acme], {"acme": 2})
    hook = "/platforms/game-provider/hooks"
    (first, _, first_transport, _), (second, _, _, _) = front_for(shed), front_for(shed)
    for front in (first, second):
        front.data_received(request_bytes("POST", hook, "acme-key", b"{}"))
    assert shed.counts[("partner", "acme")] == 2
    other, _, other_transport, _ = front_for(shed)
    other.data_received(request_bytes("POST", hook, "acme-key", b"{}"))  # the partner is at 2: shed
    assert other_transport.written.startswith(b"HTTP/1.1 503 ")
    request_done(SimpleNamespace(transport=first_transport))  # the first handler is done; nothing written yet
    assert shed.counts[("partner", "acme")] == 1
    # The second is still with aiohttp: a request on its connection goes there too, uncounted.
    second.data_received(request_bytes("POST", hook, "acme-key", b"{}"))
    assert shed.counts[("partner", "acme")] == 1
    second.connection_lost(None)  # its handler never reports now: the connection took it along
    assert shed.counts[("partner", "acme")] == 0
    for front in (first, other):
        front.connection_lost(None)


async def test_the_idle_timer_leaves_a_body_on_its_way_to_aiohttp():
    acme, beta = partner("acme", "platform"), partner("beta", "platform")
    shed, concurrency = shedder([acme, beta], {"acme": 1, "beta": 1})
    concurrency.counts[("partner", "acme")] = 1
    hook = "/platforms/game-provider/hooks"
    loop_time = asyncio.get_running_loop().time
    outcomes = {}
    for case, then in {"idle": b"", "dripping head": b"POST /plat",
                       "body on its way": request_bytes("POST", hook, "beta-key", b'{"a": 1}')[:-3]}.items():
        front, inner, transport, _ = front_for(shed, idle_timeout=1.0)
        front.data_received(request_bytes("POST", hook, "acme-key", b"{}"))  # shed by the front
        assert transport.written.startswith(b"HTTP/1.1 503 ") and inner.kept_alive == 1
        if then:
            front.data_received(then)
        front.last_answer = loop_time() - 2.0  # the idle timeout has passed (an injected clock)
        front._idle()
        outcomes[case] = transport.closed
        front.connection_lost(None)
    assert outcomes == {"idle": True, "dripping head": True, "body on its way": False}
