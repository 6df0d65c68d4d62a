"""A rolling restart drops nothing: real gateway processes behind a load balancer.

Two gateways share a Redis store behind a small reverse proxy that does what a Kubernetes
endpoints controller and an ingress do together: it polls every backend's ``/readyz`` and
routes only to those answering 200; a request it cannot deliver is a 502 to the client,
never retried (nginx does not retry a POST either). A steady stream of signed bets runs
through the proxy while each gateway is replaced in turn, as a Deployment with
``maxSurge: 1, maxUnavailable: 0`` does: start the new one, wait until it is routed to,
SIGTERM the old one, wait for its exit. A win slower than the grace is in flight on the old
gateway when it stops accepting, so the drain is exercised too.

Then: no request failed, the legacy wallet's own books hold every bet exactly once and
nothing else, and each old gateway exited 0 after the grace.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections import Counter
from decimal import Decimal

import aiohttp
import pytest
from aiohttp import web

from adapters.codecs import dumps
from gateway import signing
from tests.conftest import ACME, platform_config
from tests.ops_support import write_mapping
from tests.support import unique_timestamp
from tests.wallet_support import bet, win

GRACE = 2.0  # server.shutdown_grace_seconds: ample for a proxy polling every 50 ms
SLOW_WIN = GRACE + 1.5  # the wallet's delay on the win in flight across the end of the grace
START_BALANCE = Decimal("100000.00")
HOOKS = "/platforms/game-provider/hooks"
HOP_BY_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "te", "upgrade",
              "proxy-authorization", "proxy-connection"}


class ReadinessProxy:
    """Routes round-robin to the backends whose ``/readyz`` answered 200 at the last poll."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.backends: dict[str, bool] = {}  # public URL -> ready at the last poll
        self.routed: Counter = Counter()  # backend -> requests sent to it
        self.errors: list[str] = []  # requests that could not be delivered (answered 502)
        self.left: dict[str, float] = {}  # backend -> when it was first seen not ready (after being ready)
        self._next = itertools.count()

    async def start(self) -> ReadinessProxy:
        # Keep-alive connections to the backends, as an ingress keeps them.
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
        self.probes = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))  # like the kubelet
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.forward)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        self.checker = asyncio.create_task(self.check())
        return self

    async def stop(self) -> None:
        self.checker.cancel()
        await self.runner.cleanup()
        await self.session.close()
        await self.probes.close()

    def add(self, url: str) -> None:
        self.backends[url] = False

    def remove(self, url: str) -> None:
        self.backends.pop(url, None)

    def ready(self) -> list[str]:
        return [url for url, ready in self.backends.items() if ready]

    async def check(self) -> None:
        while True:
            for url in list(self.backends):
                try:
                    async with self.probes.get(url + "/readyz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                        ready = r.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ready = False
                if url in self.backends:
                    if self.backends[url] and not ready:
                        self.left.setdefault(url, time.monotonic())
                    self.backends[url] = ready
            await asyncio.sleep(self.interval)

    async def forward(self, request: web.Request) -> web.Response:
        ready = self.ready()
        if not ready:
            self.errors.append(f"{request.path}: no ready backend")
            return web.Response(status=503, text="no ready backend")
        backend = ready[next(self._next) % len(ready)]
        self.routed[backend] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            async with self.session.request(request.method, backend + request.path_qs, data=await request.read(),
                                            headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as r:
                body = await r.read()
                return web.Response(status=r.status, body=body, content_type=r.content_type)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.errors.append(f"{backend}{request.path}: {exc!r}")
            return web.Response(status=502, text=f"bad gateway: {exc!r}")


class BetStream:
    """Signed bets, each with its own transaction id, from a few concurrent clients."""

    def __init__(self, url: str, clients: int = 4):
        self.url, self.clients = url, clients
        self.sent: list[str] = []
        self.answers: dict[str, tuple[int, bytes]] = {}
        self.stopping = asyncio.Event()
        self._ids = itertools.count()

    async def run(self) -> None:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(self.client(http, n) for n in range(self.clients)))

    async def client(self, http: aiohttp.ClientSession, n: int) -> None:
        while not self.stopping.is_set():
            txid = f"roll-{n}-{next(self._ids)}"
            body = dumps(bet(txid, "1.00"))
            headers = signing.signed_headers(ACME["api_key"], ACME["secret"], body, unique_timestamp())
            self.sent.append(txid)
            try:
                async with http.post(self.url + HOOKS, data=body, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=30)) as r:
                    self.answers[txid] = (r.status, await r.read())
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.answers[txid] = (0, repr(exc).encode())

    def ok(self) -> int:
        return sum(1 for status, _ in self.answers.values() if status == 200)

    def failures(self) -> dict[str, tuple[int, bytes]]:
        return {txid: answer for txid, answer in self.answers.items() if answer[0] != 200}


async def until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def post_win(url: str, txid: str) -> tuple[int, bytes]:
    body = dumps(win(txid, "5.00"))
    headers = signing.signed_headers(ACME["api_key"], ACME["secret"], body, unique_timestamp())
    async with aiohttp.ClientSession() as http, http.post(url + HOOKS, data=body, headers=headers,
                                                          timeout=aiohttp.ClientTimeout(total=60)) as r:
        return r.status, await r.read()


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
async def test_a_rolling_restart_drops_nothing(workers, gateway_factory, hub88, redis_server, tmp_path):
    # The wins' legacy timeout must outlast the slow win (and the lease, twice that).
    mapping = write_mapping(tmp_path / "wallet.yaml", timeout=SLOW_WIN + 2)
    config = platform_config(redis_server.url, server={"shutdown_grace_seconds": GRACE, "drain_seconds": 10},
                             queue={"lease_seconds": 2 * (SLOW_WIN + 2) + 1})
    for partner in config["partners"]:
        partner["mapping"] = str(mapping)
    extra = ["--workers", str(workers)] if workers > 1 else []
    await asyncio.to_thread(hub88.player, "p1", str(START_BALANCE))

    proxy = await ReadinessProxy().start()
    stream = BetStream(proxy.url)
    running = None
    try:
        old = [await asyncio.to_thread(gateway_factory, config, extra_args=extra) for _ in range(2)]
        for gw in old:
            proxy.add(gw.url)
        await until(lambda: len(proxy.ready()) == 2, "both gateways routed to")
        running = asyncio.create_task(stream.run())
        await until(lambda: stream.ok() >= 50, "the stream to flow")

        new, slow_wins = [], []
        for index, gw in enumerate(old):
            fresh = await asyncio.to_thread(gateway_factory, config, extra_args=extra)
            new.append(fresh)
            proxy.add(fresh.url)
            await until(lambda fresh=fresh: proxy.routed[fresh.url] >= 10, "the new gateway to take traffic")
            # A win still running on the old gateway when its grace ends.
            calls = (await asyncio.to_thread(hub88.state))["calls"].get("win", 0)
            await asyncio.to_thread(hub88.fault, "delay", endpoint="win", seconds=SLOW_WIN)
            slow = asyncio.create_task(post_win(gw.url, f"slow-win-{index}"))
            slow_wins.append(slow)
            await until(lambda: hub88.server.state.calls.get("win", 0) > calls, "the slow win to reach the wallet")
            gw.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(gw.proc.wait, 60) == 0
            proxy.remove(gw.url)
            assert (await slow)[0] == 200, (await slow)[1]
        settled = stream.ok()
        await until(lambda: stream.ok() >= settled + 50, "the stream to flow on the new gateways")
    finally:
        stream.stopping.set()
        if running is not None:
            await running
        await proxy.stop()

    # Not one request failed, at the proxy or at the gateways.
    assert proxy.errors == []
    assert stream.failures() == {}
    assert len(stream.answers) == len(stream.sent) >= 150
    # Every gateway took part: the old ones before the rollout, the new ones after.
    assert all(proxy.routed[gw.url] > 0 for gw in old + new), proxy.routed
    # The wallet's own books: every bet debited exactly once, the two slow wins credited
    # once each, nothing else; the balance says the same.
    state = await asyncio.to_thread(hub88.state)
    books = Counter((e["kind"], e["txid"].split(":", 1)[1]) for e in state["ledger"])
    assert books == Counter({**{("bet", txid): 1 for txid in stream.sent},
                             ("win", "slow-win-0"): 1, ("win", "slow-win-1"): 1})
    balance = Decimal(state["players"]["p1"]["balance"])
    assert balance == START_BALANCE - len(stream.sent) + 10
    # Each old gateway: readiness failed at SIGTERM, it kept serving for the grace (the
    # proxy took it out long before it stopped accepting), then drained the slow win.
    for gw in old:
        lines = gw.log_lines()
        draining = [line for line in lines if line["msg"] == "draining"]
        stopping = [line for line in lines if line["msg"] == "stopping"]
        assert len(draining) == len(stopping) == workers
        assert all(line["shutdown_grace_seconds"] == GRACE for line in draining)
        assert max(line["inflight"] for line in stopping) >= 1  # the slow win, in flight when accepting stopped
        assert gw.url in proxy.left
