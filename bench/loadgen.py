"""Python load generators on raw asyncio connections (uvloop when present).

* ``fixed_rate``: open loop at a fixed rate (requests leave on schedule whatever the
  answers do), for latency at a moderate load; each request is built (and signed) just
  before it leaves and timed from the write to the last byte of the answer.
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

    async def send(self, raw: bytes) -> tuple[int, float]:
        """Write ``raw``; return (status, seconds to the complete answer)."""
        self.waiter = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        self.transport.write(raw)
        status, finished = await self.waiter
        return status, finished - started


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


async def fixed_rate(host: str, port: int, make: Callable[[int], bytes], rate: float, seconds: float,
                     warmup: int = 50) -> dict:
    """Open loop: request i leaves at start + i/rate on a free connection (new ones as needed)."""
    idle: list[Connection] = []
    latencies: list[float] = []
    errors = {"non_2xx": 0, "failed": 0}

    async def one(index: int) -> None:
        conn = idle.pop() if idle else await connect(host, port)
        raw = make(index)
        try:
            status, elapsed = await conn.send(raw)
        except (ConnectionError, OSError):
            errors["failed"] += 1
            return
        if not conn.lost:
            idle.append(conn)
        if status >= 300:
            errors["non_2xx"] += 1
        elif index >= warmup:
            latencies.append(elapsed)

    for i in range(warmup):  # open connections and warm caches before the clock starts
        await one(i)
    loop = asyncio.get_running_loop()
    total = int(rate * seconds)
    start = loop.time()
    tasks = []
    for i in range(total):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(warmup + i)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    for conn in idle:
        conn.transport.close()
    return {"mode": "fixed_rate", "rate": rate, "achieved_rate": round(total / elapsed, 1),
            "latency": percentiles(latencies), **errors}


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
                status, elapsed = await conn.send(make(next(counter)))
            except (ConnectionError, OSError):
                done["failed"] += 1
                conn = await connect(host, port)
                continue
            done["ok" if status < 300 else "non_2xx"] += 1
            latencies.append(elapsed)
        conn.transport.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    total = done["ok"] + done["non_2xx"]
    return {"mode": "closed_loop", "connections": connections, "requests": total,
            "rps": round(total / elapsed, 1), "latency": percentiles(latencies), **done}


def request_maker(kind: str, host: str, run: str) -> Callable[[int], bytes]:
    if kind == "hook":
        return lambda i: hooks.signed_hook_request(host, run, i)
    return lambda i: hooks.direct_request(host, run, i)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="http://host:port of the target")
    parser.add_argument("--kind", choices=("hook", "direct"), required=True)
    parser.add_argument("--rate", type=float, help="open loop at this many requests/s")
    parser.add_argument("--connections", type=int, default=16, help="closed loop with this many connections")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--run", default=None, help="transaction id prefix (unique per run)")
    args = parser.parse_args(argv)
    hostport = args.url.split("://", 1)[-1].rstrip("/")
    host, port = hostport.rsplit(":", 1)
    make = request_maker(args.kind, hostport, args.run or hooks.new_run_id())
    if args.rate:
        job = fixed_rate(host, int(port), make, args.rate, args.seconds)
    else:
        job = closed_loop(host, int(port), make, args.connections, args.seconds)
    try:
        import uvloop

        result = uvloop.run(job)
    except ImportError:
        result = asyncio.run(job)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
