"""Python load generators on raw asyncio connections (uvloop when present).

* ``fixed_rate``: open loop at a fixed rate (requests leave on schedule whatever the
  answers do), for latency at a moderate load, over several targets in interleaved
  rounds; each request is built (and signed) just before it leaves and timed from the
  write to the last byte of the answer.
* ``closed_loop``: N connections each sending as fast as answers come back, for
  throughput where ``wrk`` is not installed (the smoke test).

Run in its own process (``python -m bench.loadgen …``) so it can be pinned to a core;
it prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable

import orjson

from bench import hooks


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self) -> None:
        self.buffer = b""
        self.waiter: asyncio.Future | None = None
        self.need = -1
        self.lost = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            self.need = end + 4 + length
        if len(self.buffer) >= self.need:
            status = int(self.buffer[9:12])
            self.buffer = self.buffer[self.need:]
            self.need = -1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result((status, time.perf_counter()))

    async def send(self, raw: bytes) -> tuple[int, float, float]:
        """Write ``raw``; return (status, when it was written, when the answer was complete)."""
        self.waiter = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        self.transport.write(raw)
        status, finished = await self.waiter
        return status, started, finished


async def connect(host: str, port: int) -> Connection:
    _, protocol = await asyncio.get_running_loop().create_connection(Connection, host, port)
    return protocol


def percentiles(samples: list[float]) -> dict:
    """p50/p90/p99/max in milliseconds (nearest rank)."""
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 3)

    return {"count": len(ordered), "p50_ms": rank(50), "p90_ms": rank(90), "p99_ms": rank(99),
            "max_ms": round(ordered[-1] * 1000, 3)}


#: Connections a fixed-rate client keeps at most per target, as a provider's pool would.
MAX_CONNECTIONS = 64


class Target:
    """One server under test: where it is, what to send it, and a bounded connection pool."""

    def __init__(self, spec: str):
        # name=kind@http://host:port
        self.name, _, rest = spec.partition("=")
        self.kind, _, url = rest.partition("@")
        self.hostport = url.split("://", 1)[-1].rstrip("/")
        self.host, port = self.hostport.rsplit(":", 1)
        self.port = int(port)
        self.make = request_maker(self.kind, self.hostport, hooks.new_run_id())
        self.free: asyncio.Queue[Connection] = asyncio.Queue()
        self.opened = 0
        self.latencies: list[float] = []
        self.errors = {"non_2xx": 0, "failed": 0, "waited_for_a_connection": 0}
        self.sent = 0

    async def acquire(self) -> tuple[Connection, bool]:
        if not self.free.empty():
            return self.free.get_nowait(), False
        if self.opened < MAX_CONNECTIONS:
            self.opened += 1
            try:
                return await connect(self.host, self.port), False
            except OSError:
                self.opened -= 1
                raise
        self.errors["waited_for_a_connection"] += 1
        return await self.free.get(), True

    async def one(self, record: bool = True) -> None:
        due = time.perf_counter()
        try:
            conn, waited = await self.acquire()
        except OSError:
            self.errors["failed"] += 1
            return
        raw = self.make(self.sent)
        self.sent += 1
        try:
            status, started, finished = await conn.send(raw)
        except (ConnectionError, OSError):
            self.errors["failed"] += 1
            self.opened -= 1
            return
        if conn.lost:
            self.opened -= 1
        else:
            self.free.put_nowait(conn)
        if status >= 300:
            self.errors["non_2xx"] += 1
        elif record:
            # A request that had to wait for a connection was due earlier: the wait counts.
            self.latencies.append(finished - (due if waited else started))

    def close(self) -> None:
        while not self.free.empty():
            self.free.get_nowait().transport.close()


async def fixed_rate(targets: list[Target], rate: float, seconds: float, rounds: int = 1, warmup: int = 50) -> dict:
    """Open loop: in each round, each target in turn gets ``rate`` requests/s for ``seconds``.

    Request i of a phase leaves at start + i/rate on a free connection (a new one while
    fewer than MAX_CONNECTIONS are open), whatever the answers do; rounds interleave the
    targets so a change in the machine's background load touches them all alike.
    """
    loop = asyncio.get_running_loop()
    for target in targets:  # open connections and warm caches before any clock starts
        for _ in range(warmup):
            await target.one(record=False)
    achieved: dict[str, list[float]] = {t.name: [] for t in targets}
    for _ in range(rounds):
        for target in targets:
            total = int(rate * seconds)
            start = loop.time()
            tasks = []
            for i in range(total):
                delay = start + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(target.one()))
            await asyncio.gather(*tasks)
            achieved[target.name].append(total / (loop.time() - start))
    out = {}
    for target in targets:
        target.close()
        out[target.name] = {"mode": "fixed_rate", "rate": rate, "rounds": rounds,
                            "achieved_rate": round(min(achieved[target.name]), 1),
                            "latency": percentiles(target.latencies), **target.errors}
    return out


async def closed_loop(host: str, port: int, make: Callable[[int], bytes], connections: int, seconds: float) -> dict:
    """Each connection sends its next request as soon as the previous answer is in."""
    counter = iter(range(10**9))
    done = {"ok": 0, "non_2xx": 0, "failed": 0}
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        conn = await connect(host, port)
        while time.perf_counter() < deadline:
            try:
                status, sent, finished = await conn.send(make(next(counter)))
            except (ConnectionError, OSError):
                done["failed"] += 1
                conn = await connect(host, port)
                continue
            done["ok" if status < 300 else "non_2xx"] += 1
            latencies.append(finished - sent)
        conn.transport.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    total = done["ok"] + done["non_2xx"]
    return {"mode": "closed_loop", "connections": connections, "requests": total, "seconds": round(elapsed, 3),
            "rps": round(total / elapsed, 1), "latency": percentiles(latencies), **done}


def request_maker(kind: str, host: str, run: str) -> Callable[[int], bytes]:
    if kind == "hook":
        return lambda i: hooks.signed_hook_request(host, run, i)
    return lambda i: hooks.direct_request(host, run, i)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+", help="name=hook@http://host:port or name=direct@http://host:port")
    parser.add_argument("--rate", type=float, help="open loop at this many requests/s")
    parser.add_argument("--rounds", type=int, default=1, help="open loop: rounds over the targets")
    parser.add_argument("--connections", type=int, default=16, help="closed loop with this many connections")
    parser.add_argument("--seconds", type=float, default=10.0, help="per target and round")
    args = parser.parse_args(argv)
    targets = [Target(spec) for spec in args.targets]
    if args.rate:
        job = fixed_rate(targets, args.rate, args.seconds, args.rounds)
    else:
        target = targets[0]
        job = closed_loop(target.host, target.port, target.make, args.connections, args.seconds)
    try:
        import uvloop

        result = uvloop.run(job)
    except ImportError:
        result = asyncio.run(job)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
