"""Hostile clients on the inbound side, against a real gateway process on loopback.

Every byte a client sends is parsed by aiohttp (llhttp) under the limits the config passes
to it: request line and header field length, header count, body size, and the read
timeout for a head and for a body. A client that drips, floods or oversizes is refused
with a 4xx or has its connection closed, costs the gateway little CPU meanwhile, and a
partner's signed request on another connection is answered as usual.

The slow clients here pace their writes with short sleeps: that pacing is the behaviour
under test. Nothing waits for the gateway's state by sleeping; reads block on the socket
with a timeout.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest

from tests.conftest import ACME, platform_config
from tests.support import IgspClient, free_port

HOOKS = "/platforms/game-provider/hooks"
READ_TIMEOUT = 2.0  # server.read_timeout_seconds of the gateway under attack
BALANCE = {"action": "balance", "player_id": "p1", "currency": "EUR"}


@pytest.fixture
def gateway(gateway_factory, hub88, tmp_path):
    hub88.player("p1", "100.00")
    return gateway_factory(platform_config(f"sqlite:///{tmp_path}/g.db",
                                           server={"read_timeout_seconds": READ_TIMEOUT}))


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


def connect(url: str, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(address(url), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # every small write its own segment
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """Whatever the server sends until it closes the connection or the socket times out."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1."):
        return None
    return int(answer.split(b" ", 2)[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat (fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drip(url: str, head: bytes, piece: int = 4, pause: float = 0.0005) -> tuple[bytes, int]:
    """Send ``head`` ``piece`` bytes per write until the server answers or closes; return
    what it answered and how many bytes it took."""
    sock = connect(url)
    sent = 0
    try:
        while sent < len(head):
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered (or closed): stop before a reset eats the answer
            try:
                sent += sock.send(head[sent:sent + piece])
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(pause)  # the client's pace: the behaviour under test
        return read_answer(sock), sent
    finally:
        sock.close()


class Partner(threading.Thread):
    """A legitimate partner sending a signed balance request every ``pause`` seconds until told
    to stop (at least one), timing each answer."""

    def __init__(self, url: str, pause: float = 0.05):
        super().__init__(daemon=True)
        self.client = IgspClient(url, ACME["api_key"], ACME["secret"])
        self.pause = pause
        self.done = threading.Event()
        self.answers: list[tuple[int, float]] = []

    def run(self) -> None:
        while not self.answers or not self.done.wait(self.pause):
            started = time.perf_counter()
            response = self.client.hook(BALANCE, timeout=10)
            self.answers.append((response.status_code, time.perf_counter() - started))

    def stop(self) -> list[tuple[int, float]]:
        self.done.set()
        self.join(30)
        return self.answers


def thousand_field_head() -> bytes:
    fields = b"".join(b"X-Drip-%04d: v\r\n" % i for i in range(1000))
    return b"POST " + HOOKS.encode() + b" HTTP/1.1\r\nHost: x\r\n" + fields + b"Content-Length: 0\r\n\r\n"


PLAIN_AIOHTTP = """
import sys
from aiohttp import web

async def ok(request):
    return web.Response(text="ok")

app = web.Application()
app.router.add_post("/platforms/game-provider/hooks", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
            print=lambda *args: print("READY", flush=True))
"""


@pytest.fixture
def plain_aiohttp():
    """A bare aiohttp app with its default limits: what the drip costs without the gateway."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", PLAIN_AIOHTTP, str(port)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().startswith(b"READY")
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def test_a_dripped_1000_field_head_is_refused_cheaply_while_a_partner_is_served(gateway, plain_aiohttp):
    head = thousand_field_head()
    partner = Partner(gateway.url)
    before = cpu_seconds(gateway.proc.pid)
    partner.start()
    answer, sent = drip(gateway.url, head)
    answers = partner.stop()
    gateway_cpu = cpu_seconds(gateway.proc.pid) - before

    # Refused by the header count limit (128), long before the 1000th field.
    assert status_of(answer) == 400, answer[:200]
    assert b"Traceback" not in answer
    assert sent < len(head) // 4
    # The partner on its own connection was answered, and quickly, all along.
    assert answers and all(status == 200 for status, _ in answers), answers
    assert max(latency for _, latency in answers) < 1.0, answers

    plain, plain_url = plain_aiohttp
    before = cpu_seconds(plain.pid)
    plain_answer, _ = drip(plain_url, head)
    plain_cpu = cpu_seconds(plain.pid) - before
    assert status_of(plain_answer) == 400
    # The drip costs the gateway what it costs aiohttp alone (measured: 0.02-0.03 s of CPU
    # each for ~530 writes; /proc counts in 10 ms ticks). The gateway also
    # served the partner (~1 ms of CPU a request) and polled its queue meanwhile, hence the
    # slack; work per byte received, or a busy loop, would blow through it.
    assert gateway_cpu < 2 * plain_cpu + 0.002 * len(answers) + 0.1, (gateway_cpu, plain_cpu, len(answers))


def test_a_head_slower_than_the_read_timeout_is_closed(gateway):
    partner = Partner(gateway.url)
    partner.start()
    sock = connect(gateway.url, timeout=READ_TIMEOUT + 5)
    started = time.monotonic()
    sock.sendall(b"POST " + HOOKS.encode() + b" HTTP/1.1\r\nHost: x\r\n")  # and then nothing more
    answer = read_answer(sock)
    waited = time.monotonic() - started
    sock.close()
    answers = partner.stop()
    assert answer == b"" or status_of(answer) in (400, 408), answer[:200]
    assert waited < READ_TIMEOUT + 3, waited  # closed by the gateway, not by our socket timeout
    assert answers and all(status == 200 for status, _ in answers), answers
    assert max(latency for _, latency in answers) < 1.0, answers


def test_a_header_flood_is_refused(gateway):
    fields = b"".join(b"X-Flood-%03d: v\r\n" % i for i in range(200))
    sock = connect(gateway.url)
    sock.sendall(b"POST " + HOOKS.encode() + b" HTTP/1.1\r\nHost: x\r\n" + fields + b"Content-Length: 0\r\n\r\n")
    answer = read_answer(sock)
    sock.close()
    assert status_of(answer) == 400, answer[:200]
    assert b"Traceback" not in answer
    # 100 extra fields are within the limit: a signed request carrying them is served.
    client = IgspClient(gateway.url, ACME["api_key"], ACME["secret"])
    extra = {f"X-Extra-{i:03d}": "v" for i in range(100)}
    assert client.hook(BALANCE, headers=extra).status_code == 200


@pytest.mark.parametrize("head", [
    b"POST " + HOOKS.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 + b"\r\nContent-Length: 0\r\n\r\n",
    b"POST " + HOOKS.encode() + b"?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
], ids=["header-field", "request-line"])
def test_an_oversized_head_is_refused(gateway, head):
    sock = connect(gateway.url)
    sock.sendall(head)
    answer = read_answer(sock)
    sock.close()
    assert status_of(answer) in (400, 413, 414, 431), answer[:200]
    assert b"Traceback" not in answer
    assert IgspClient(gateway.url, ACME["api_key"], ACME["secret"]).hook(BALANCE).status_code == 200


def test_a_huge_body_is_refused_without_being_read_to_the_end(gateway):
    declared = 50 * 1024 * 1024
    sock = connect(gateway.url)
    sock.sendall(b"POST " + HOOKS.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % declared)
    sent = 0
    while sent < declared and not select.select([sock], [], [], 0)[0]:
        try:
            sent += sock.send(b"x" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            break
    sock.settimeout(5)
    answer = read_answer(sock)
    sock.close()
    assert status_of(answer) == 413, answer[:200]
    assert b'"payload_too_large"' in answer
    assert sent < declared // 10  # answered while most of the body was still unsent


def test_a_body_that_does_not_decode_is_a_400(gateway):
    """Content-Encoding: gzip on bytes that are not gzip: aiohttp cannot read the body; the
    caller is told so (400), not given an internal error."""
    body = b'{"action": "balance", "player_id": "p1", "currency": "EUR"}'
    headers = IgspClient(gateway.url, ACME["api_key"], ACME["secret"]).headers(body)
    sock = connect(gateway.url)
    sock.sendall(b"POST " + HOOKS.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                 + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
                 + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    answer = read_answer(sock)
    sock.close()
    assert status_of(answer) == 400, answer[:300]
    assert b'"invalid_request"' in answer and b"Traceback" not in answer
    assert not any(line.get("levelname") == "ERROR" or line.get("level") == "error" for line in gateway.log_lines()
                   if line.get("logger", "").startswith("igsp"))


def test_a_body_slower_than_the_read_timeout_is_refused(gateway):
    partner = Partner(gateway.url)
    partner.start()
    sock = connect(gateway.url, timeout=READ_TIMEOUT + 5)
    sock.sendall(b"POST " + HOOKS.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 400\r\n\r\n{")
    started = time.monotonic()
    answered = threading.Event()

    def trickle():  # one byte every 0.2 s: 400 bytes would take 80 s
        while not answered.is_set():
            try:
                sock.send(b" ")
            except OSError:
                return
            answered.wait(0.2)

    dripper = threading.Thread(target=trickle, daemon=True)
    dripper.start()
    try:
        first = sock.recv(65536)
    finally:
        answered.set()
        dripper.join(5)
    waited = time.monotonic() - started
    sock.close()
    answers = partner.stop()
    assert status_of(first) == 400, first[:200]
    assert b'"invalid_request"' in first and b"Traceback" not in first
    assert b"connection: close" in first.lower()
    assert READ_TIMEOUT * 0.9 < waited < READ_TIMEOUT + 3, waited
    assert answers and all(status == 200 for status, _ in answers), answers
    assert max(latency for _, latency in answers) < 1.0, answers


def test_the_limits_are_the_configured_ones_not_aiohttps_defaults(gateway_factory, hub88, tmp_path):
    """Stricter than aiohttp's defaults (128 fields, 8190 bytes): refused only if passed through."""
    hub88.player("p1", "100.00")
    gw = gateway_factory(platform_config(f"sqlite:///{tmp_path}/g.db",
                                         server={"max_header_fields": 32, "max_header_bytes": 2048}))
    client = IgspClient(gw.url, ACME["api_key"], ACME["secret"])
    assert client.hook(BALANCE, headers={f"X-Extra-{i}": "v" for i in range(20)}).status_code == 200
    assert client.hook(BALANCE, headers={"X-Pad": "a" * 1500}).status_code == 200
    for head in (b"".join(b"X-Extra-%02d: v\r\n" % i for i in range(40)), b"X-Pad: " + b"a" * 3000 + b"\r\n"):
        sock = connect(gw.url)
        sock.sendall(b"POST " + HOOKS.encode() + b" HTTP/1.1\r\nHost: x\r\n" + head + b"Content-Length: 0\r\n\r\n")
        answer = read_answer(sock)
        sock.close()
        assert status_of(answer) in (400, 431), answer[:200]
