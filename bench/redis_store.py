"""Micro benchmark of the Redis store's ledger hot path: a bet's two round trips.

``python -m bench.redis_store [--bets 20000] [--concurrency 64] [--rounds 3]`` starts a private
redis-server (never the machine's shared one), then runs ``tx_begin`` + ``tx_finish`` for
``--bets`` transactions, ``--concurrency`` at a time, in one process and one event loop (as one
gateway worker does), and prints the best round's bets per second and microseconds of client CPU
per bet. ``--variant`` picks the connection pool settings to compare (see ``VARIANTS``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from gateway.store import TxRecord, open_store
from gateway.store.base import DONE

#: name -> RedisStore attributes set before ``open`` (its pool settings).
VARIANTS = {
    "default": {},
    "plain-pool": {"blocking_pool": False},
    "health-check-15s": {"health_check_interval": 15},
    "16-connections": {"max_connections": 16},
}


async def _round(store, bets: int, concurrency: int) -> tuple[float, float]:
    prefix = uuid.uuid4().hex[:8]
    queue = iter(range(bets))

    async def worker():
        for i in queue:
            txid = f"{prefix}-{i}"
            assert await store.tx_begin(TxRecord("acme", txid, "bet", "fp"), 3600) is None
            await store.tx_finish("acme", txid, DONE, 200, b'{"balance":"97.50","transaction_id":"x"}', 3600)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - wall, time.process_time() - cpu


async def run(url: str, bets: int, concurrency: int, rounds: int, options: dict) -> dict:
    store = open_store(url, namespace=f"bench-{uuid.uuid4().hex[:8]}")
    for name, value in options.items():
        setattr(store, name, value)
    await store.open()
    try:
        await _round(store, min(bets, 2000), concurrency)  # warm up: connections, scripts
        best = min([await _round(store, bets, concurrency) for _ in range(rounds)])
    finally:
        await store.close()
    wall, cpu = best
    return {"bets_per_s": round(bets / wall), "client_cpu_us_per_bet": round(cpu / bets * 1e6, 1)}


def main(argv=None) -> int:
    from tests.support import RedisServer

    parser = argparse.ArgumentParser(prog="python -m bench.redis_store")
    parser.add_argument("--bets", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", choices=sorted(VARIANTS), action="append")
    args = parser.parse_args(argv)
    server = RedisServer(appendonly=False).start()
    try:
        for variant in args.variant or ["default"]:
            result = asyncio.run(run(server.url, args.bets, args.concurrency, args.rounds, VARIANTS[variant]))
            print(f"{variant:>16}  concurrency {args.concurrency:>3}  {result}")
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
