"""A hostile legacy wallet: a raw-socket server behind a real gateway process answers every
way HTTP/1.1 can be malformed, oversized, compressed into a bomb, trickled or redirected.

For each answer the iGSP caller gets a retriable iGSP 5xx within the legacy timeout, the
gateway keeps serving (``/healthz`` polled throughout), its memory stays bounded, and the
wallet is reached exactly once (the redirect target never). One gateway serves the module;
each test resets the wallet's script and counters.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import json
import socket
import struct
import threading
import time
import uuid
import zlib

import pytest
import requests
import yaml

from tests.conftest import ACME, platform_config
from tests.support import ROOT, GatewayProcess, IgspClient

TIMEOUT = 1.0  # upstream.timeout of the mapping under test
# The client-side bound: the gateway itself must answer within TIMEOUT + 100 ms (asserted
# on its own access-log latency below); from the client, signing, loopback and a busy
# two-core CI machine scheduling three processes add a few hundred milliseconds at worst.
CLIENT_SLACK = 0.5
HEALTH_BOUND = 0.1
RSS_GROWTH = 100 * 1024 * 1024
BALANCE = {"action": "balance", "player_id": "p1", "currency": "EUR"}
OK_BODY = b'{"status":"RS_OK","user":"p1","currency":"EUR","balance":10000000,"request_uuid":"r-1"}'
MiB = 1 << 20
#: The body of the request a script answers (the raw wallet sets it before running the script).
REQUEST: contextvars.ContextVar[bytes] = contextvars.ContextVar("REQUEST", default=b"")


# -- the raw wallet ----------------------------------------------------------------------------------
class RawWallet:
    """An HTTP/1.1 server written on raw sockets: it reads each request, counts it by path,
    and lets that path's script write the answer (a well-formed RS_OK one by default); then
    it waits for the next request on the connection, so a script that stops writing leaves
    the connection open for the gateway to judge what it got. Runs its own event loop in a
    thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.lock = threading.Lock()
        self.scripts: dict = {}
        self.reset()

    def start(self) -> RawWallet:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop).result(5)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def reset(self, scripts: dict | None = None) -> None:
        with self.lock:
            self.scripts = dict(scripts or {})
            self.connections = 0
            self.requests: collections.Counter = collections.Counter()
            self.busy = 0  # scripts still writing

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self.lock:
            self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1].split("?")[0]
                length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                               if line.lower().startswith("content-length:")), 0)
                REQUEST.set(await reader.readexactly(length))
                with self.lock:
                    self.requests[path] += 1
                    self.busy += 1
                    script = self.scripts.get(path, ok_answer)
                try:
                    # No script outlives its test: endless ones stop when the gateway hangs up, or here.
                    await asyncio.wait_for(script(writer), 5)
                finally:
                    with self.lock:
                        self.busy -= 1
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


def ok_body() -> bytes:
    """OK_BODY as an answer to the request being answered: it echoes its request_uuid and user, as
    Hub88 answers do (the shipped mapping checks them)."""
    try:
        request = json.loads(REQUEST.get())
    except ValueError:
        request = {}
    return json.dumps({**json.loads(OK_BODY), "user": request.get("user"), "request_uuid": request.get("request_uuid")},
                      separators=(",", ":")).encode()


async def ok_answer(writer) -> None:
    body = ok_body()
    await send(writer, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def raw(data: bytes):
    """A script that writes ``data`` (the connection stays open)."""
    async def script(writer):
        await send(writer, data)
    return script


def endless(head: bytes, unit: bytes, pause: float = 0.001):
    """Writes ``head``, then ``unit`` again and again until hung up on.

    Paced (a few MB/s, still a flood for a wallet answer): unpaced, this thread would hold
    the test process's GIL and the /healthz poller here would measure itself, not the gateway.
    """
    async def script(writer):
        await send(writer, head)
        while True:
            await send(writer, unit)
            await asyncio.sleep(pause)  # pacing the peer, not waiting for a state
    return script


def ok_head(extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra


def _bomb(encoding: str, inflated: int = 1024 * MiB) -> bytes:
    """``inflated`` zero bytes in ~1 MB: one 1 MiB deflate block (full flush, so it stands
    alone) repeated, framed as gzip (RFC 1952) or zlib (RFC 1950, HTTP's "deflate")."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    body = block * (inflated // MiB) + c.flush()
    if encoding == "gzip":
        crc = 0
        for _ in range(inflated // MiB):
            crc = zlib.crc32(bytes(MiB), crc)
        return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + body + struct.pack("<II", crc, inflated & 0xFFFFFFFF)
    adler = ((inflated % 65521) << 16) | 1  # of zeros: a stays 1, b counts the bytes
    return b"\x78\xda" + body + struct.pack(">I", adler)


def bomb(encoding: str):
    async def script(writer):
        data = BOMBS[encoding]
        await send(writer, ok_head(b"Content-Encoding: %s\r\nContent-Length: %d\r\n\r\n" % (encoding.encode(), len(data))))
        for i in range(0, len(data), 65536):
            await send(writer, data[i:i + 65536])
    return script


def big_body(size: int = 10 * MiB):
    async def script(writer):
        await send(writer, ok_head(b"Content-Length: %d\r\n\r\n" % size) + b'{"status":"RS_OK","pad":"')
        piece = b"x" * 65536
        for _ in range(size // len(piece)):
            await send(writer, piece)
    return script


async def reset_mid_body(writer) -> None:
    await send(writer, ok_head(b"Content-Length: %d\r\n\r\n" % len(OK_BODY)) + OK_BODY[:20])
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # an RST, not a FIN


async def trickle(writer) -> None:
    await send(writer, ok_head(b"Content-Length: %d\r\n\r\n" % len(OK_BODY)))
    for byte in OK_BODY:  # one byte every 50 ms: ~4 s in all, far past the 1 s timeout
        await send(writer, bytes([byte]))
        await asyncio.sleep(0.05)


def redirect(status: int):
    async def script(writer):
        page = b"<a href=/user/balance>moved</a>"
        await send(writer, b"HTTP/1.1 %d Moved\r\nLocation: %s/user/balance\r\nContent-Type: text/html\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (status, TARGET.url.encode(), len(page), page))
    return script


CHUNKED = ok_head(b"Transfer-Encoding: chunked\r\n\r\n")
BOMBS: dict[str, bytes] = {}
TARGET: RawWallet  # the server a redirect points at (set by the fixture)

#: case -> (script, the iGSP codes acceptable for it)
BAD = ("upstream_bad_response",)
CASES = {
    "chunk-size-negative": (raw(CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n"), BAD),
    "chunk-size-0x": (raw(CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n"), BAD),
    "chunk-size-overflow": (raw(CHUNKED + b"1" * 40 + b"\r\nhello\r\n"), BAD),
    "chunk-size-huge": (raw(CHUNKED + b"7fffffffffffffff\r\n" + OK_BODY), ("upstream_timeout",)),
    "chunk-size-endless": (endless(CHUNKED, b"0" * 4096), BAD + ("upstream_timeout",)),
    "trailer-flood": (endless(CHUNKED + b"5\r\nhello\r\n0\r\n", b"X-Trailer: flood\r\n" * 256), BAD),
    "gzip-bomb": (bomb("gzip"), BAD),
    "deflate-bomb": (bomb("deflate"), BAD),
    "body-10MB": (big_body(), BAD),
    "content-length-duplicate": (raw(ok_head(b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n"
                                             % (len(OK_BODY), len(OK_BODY))) + OK_BODY), BAD),
    "content-length-conflicting": (raw(ok_head(b"Content-Length: %d\r\nContent-Length: 5\r\n\r\n"
                                               % len(OK_BODY)) + OK_BODY), BAD),
    "content-length-plus": (raw(ok_head(b"Content-Length: +%d\r\n\r\n" % len(OK_BODY)) + OK_BODY), BAD),
    "content-length-and-chunked": (raw(ok_head(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
                                       + b"%x\r\n%s\r\n0\r\n\r\n" % (len(OK_BODY), OK_BODY)), BAD),
    "status-line-non-ascii": (raw("HTTP/1.1 ²00 OK\r\nContent-Length: %d\r\n\r\n".encode() % len(OK_BODY)
                                  + OK_BODY), BAD),
    "1xx-flood": (endless(b"", b"HTTP/1.1 100 Continue\r\n\r\n" * 64), BAD + ("upstream_timeout",)),
    "101-switching": (raw(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                          + OK_BODY), BAD),
    "204-with-body": (raw(b"HTTP/1.1 204 No Content\r\nContent-Length: %d\r\n\r\n%s" % (len(OK_BODY), OK_BODY)), BAD),
    "reset-mid-body": (reset_mid_body, BAD),
    "trickle": (trickle, ("upstream_timeout",)),
    "redirect-301": (redirect(301), BAD),
    "redirect-307": (redirect(307), BAD),
}


# -- the gateway under test -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wallet():
    global TARGET
    BOMBS.update(gzip=_bomb("gzip"), deflate=_bomb("deflate"))
    TARGET = RawWallet().start()
    server = RawWallet().start()
    yield server
    server.stop()
    TARGET.stop()


@pytest.fixture(scope="module")
def gateway(wallet, hub88_keys, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    mapping = yaml.safe_load((ROOT / "mappings" / "hub88-wallet.yaml").read_text())
    mapping["upstream"].update(timeout=TIMEOUT, connect_timeout=0.5)  # max_response_bytes: the default
    (tmp / "hub88.yaml").write_text(yaml.safe_dump(mapping))
    config = platform_config(f"sqlite:///{tmp}/gateway.db")
    for partner in config["partners"]:
        partner["mapping"] = str(tmp / "hub88.yaml")
    proc = GatewayProcess(config, tmp, env={"HUB88_WALLET_URL": wallet.url,
                                            "HUB88_PRIVATE_KEY": hub88_keys[0]}).start()
    proc.client = IgspClient(proc.url, ACME["api_key"], ACME["secret"])
    yield proc
    proc.stop()


def reset_peak(pid: int) -> None:
    """Start VmHWM afresh (Linux >= 4.0), so that the peak read after a test is that test's."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def memory(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (peak since start or since reset_peak) of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}


class HealthPoller:
    """Polls ``/healthz`` back to back in a thread while a hostile call is in flight."""

    def __init__(self, url: str):
        self.url, self.latencies, self.failures = url + "/healthz", [], []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        http = requests.Session()
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                status = http.get(self.url, timeout=2).status_code
            except requests.RequestException as exc:
                status = repr(exc)
            self.latencies.append(time.monotonic() - started)
            if status != 200:
                self.failures.append(status)
            self.stopping.wait(0.01)

    def __enter__(self) -> HealthPoller:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(5)


def access_latency_ms(gateway: GatewayProcess, request_id: str) -> float:
    """The gateway's own measure of a request, from its access log (written after the answer)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in gateway.log_lines():
            if line.get("request_id") == request_id and "latency_ms" in line:
                return line["latency_ms"]
        time.sleep(0.05)  # polling the log file, bounded by the deadline
    raise AssertionError(f"no access-log line for {request_id}")


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)  # polling, bounded by the deadline


# -- tests --------------------------------------------------------------------------------------------
def test_a_well_formed_answer_goes_through(gateway, wallet):
    """The harness itself: the raw wallet's normal answer is a 200 with the exact balance."""
    wallet.reset()
    r = gateway.client.hook(BALANCE)
    assert r.status_code == 200, r.text
    assert r.content == b'{"balance":100.00}'
    assert wallet.requests == {"/user/balance": 1}


def test_a_compressed_answer_is_decompressed(gateway, wallet):
    async def gzipped(writer):
        body = zlib.compress(ok_body(), wbits=31)
        await send(writer, ok_head(b"Content-Encoding: gzip\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                                   % len(body)) + body)
    wallet.reset({"/user/balance": gzipped})
    r = gateway.client.hook(BALANCE)
    assert r.status_code == 200 and r.content == b'{"balance":100.00}', r.text


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_answer_is_a_5xx_in_time(gateway, wallet, case):
    script, codes = CASES[case]
    wallet.reset({"/user/balance": script})
    TARGET.reset()
    pid = gateway.proc.pid
    reset_peak(pid)
    before = memory(pid)["VmRSS"]
    request_id = f"hostile-{case}-{uuid.uuid4().hex[:8]}"
    with HealthPoller(gateway.url) as health:
        started = time.monotonic()
        r = gateway.client.hook(BALANCE, headers={"X-Request-ID": request_id}, timeout=10)
        elapsed = time.monotonic() - started
        wait_for(lambda: len(health.latencies) >= 3)  # /healthz was also polled after the answer

    body = r.json()
    assert 500 <= r.status_code < 600 and body["error"] in codes and body["status"] == r.status_code, (case, r.text)
    assert "Traceback" not in r.text
    latency = access_latency_ms(gateway, request_id)
    assert latency < TIMEOUT * 1000 + 100, (case, latency, elapsed)
    assert elapsed < TIMEOUT + CLIENT_SLACK, (case, elapsed)
    assert health.failures == [] and max(health.latencies) < HEALTH_BOUND, (case, sorted(health.latencies)[-5:])
    # The peak during this test over the resident size before it: what this answer cost.
    assert memory(pid)["VmHWM"] - before < RSS_GROWTH, (case, memory(pid), before)
    assert wallet.requests == {"/user/balance": 1} and wallet.connections <= 1, (wallet.connections, wallet.requests)
    assert TARGET.connections == 0  # a redirect is never followed
    wait_for(lambda: wallet.busy == 0)  # an endless answer ends: the gateway hung up on it


def test_a_redirected_bet_is_not_followed_and_its_outcome_is_unknown(gateway, wallet):
    """A 307 would make a client replay the signed POST to the Location; the gateway does not.
    The bet was delivered, so its outcome is unknown: it is voided and rolled back."""
    wallet.reset({"/transaction/bet": redirect(307)})
    TARGET.reset()
    bet = {"action": "bet", "player_id": "p1", "amount": 10, "currency": "EUR", "game_id": "g-1",
           "transaction_id": "tx-redirect", "session_id": "s-1", "type": "bet", "round_id": "r-1"}
    r = gateway.client.hook(bet)
    assert r.status_code == 502 and r.json()["error"] == "upstream_bad_response", r.text
    wait_for(lambda: wallet.requests["/transaction/rollback"] >= 1, timeout=15)
    assert wallet.requests["/transaction/bet"] == 1 and TARGET.connections == 0
    r = gateway.client.hook(bet)
    assert r.status_code == 409 and r.json()["error"] == "transaction_voided", r.text
    assert wallet.requests["/transaction/bet"] == 1


def test_the_gateway_logged_no_traceback(gateway):
    assert "Traceback" not in gateway.log_text()
