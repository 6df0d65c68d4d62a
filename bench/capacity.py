"""What one wallet transaction costs, for the capacity model (``python -m bench --only capacity``).

Why: sizing a deployment for 1k, 10k or 100k wallet transactions a second needs two
numbers measured here rather than guessed — the gateway's CPU per transaction and what a
transaction asks of Redis — and the README's capacity model does the arithmetic from them.

One gateway process (one worker, pinned to the last core) in front of the wallet stub, on
each store in turn: a private standalone ``redis-server`` (a free port, never the machine's
6379), then a private Redis Cluster of 3 masters + 3 replicas (``bench.procs.RedisCluster``;
skipped, and said so, without ``redis-cli``). After a warm-up, it sends ``bets`` unique signed
``bet`` hooks over a few keep-alive connections and reads, before and after (on a cluster,
from every master, summed; a replica's work is a copy of its master's):

* ``INFO commandstats`` — calls per command (EVALSHA of the store's scripts, WAIT, ...):
  Redis commands per transaction;
* ``INFO stats`` ``total_reads_processed`` — socket reads Redis served: the round trips
  (a pipeline of commands sent together is read at once, so this is at most the commands);
* ``INFO cpu`` — Redis's own CPU per transaction (Redis runs commands on one thread: the
  budget of one shard); on a cluster also the busiest master's share of it (the bench's one
  partner keeps its ledger on one master);
* the gateway's CPU from /proc — per transaction, at a moderate load (not at saturation,
  where batching makes it cheaper: the model stays on the safe side).

Every bet is checked to have been answered 200 and paid once by the stub.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from pathlib import Path

from bench import hooks
from bench.loadgen import connect

#: Connections of the two passes: one (no two bets share a turn of the gateway's event loop,
#: so nothing is batched: the most round trips a bet can take) and several (as under load).
PASSES = (1, 8)


def redis_info(urls: list[str]) -> dict:
    """Calls per command, socket reads and CPU of the Redis servers at ``urls``, summed (the
    masters of a cluster); ``node_cpu`` per server."""
    import redis

    out: dict = {"calls": {}, "reads": 0, "cpu": 0.0, "node_cpu": {}}
    for url in urls:
        client = redis.Redis.from_url(url)
        try:
            info = client.info("all")
        finally:
            client.close()
        for name, stats in info.items():
            if name.startswith("cmdstat_"):
                out["calls"][name[len("cmdstat_"):]] = out["calls"].get(name[len("cmdstat_"):], 0) + stats["calls"]
        cpu = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        out["reads"] += info["total_reads_processed"]
        out["cpu"] += cpu
        out["node_cpu"][url] = cpu
    return out


async def send(hostport: str, run: str, count: int, start: int = 0, connections: int = 8) -> dict:
    """``count`` bets over ``connections`` connections; their statuses counted."""
    host, port = hostport.rsplit(":", 1)
    statuses: dict[int, int] = {}
    queue = iter(range(start, start + count))
    when = hooks.timestamp()

    async def worker() -> None:
        conn = await connect(host, int(port))
        for i in queue:
            status, _, _ = await conn.send(hooks.signed_hook_request(hostport, run, i, when))
            statuses[status] = statuses.get(status, 0) + 1
        conn.transport.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return statuses


def run(work: Path, client_cpu: str | None, server_cpu: str | None, start, gateway, stop, *, bets: int = 2000,
        stores: tuple = ("redis", "cluster")) -> dict:
    """The measurement on each of ``stores``; ``start``/``gateway``/``stop`` are the benchmark's
    process helpers."""
    import shutil

    from bench.procs import Proc

    stub = start(Proc("capacity-stub", [sys.executable, "-m", "bench.stub"], cpus=client_cpu,
                      log=work / "capacity-stub.log"))
    results: dict = {}
    try:
        for store in stores:
            if store == "cluster" and not shutil.which("redis-cli"):
                results[store] = {"skipped": "redis-cli is not installed"}
                continue
            print(f"capacity: {store}", file=sys.stderr, flush=True)
            results[store] = one_store(store, work, client_cpu, stub, gateway, stop, bets)
    finally:
        stop(stub)
    return results


def one_store(store: str, work: Path, client_cpu: str | None, stub, gateway, stop, bets: int) -> dict:
    from bench.procs import Redis, RedisCluster, cpu_seconds

    server = RedisCluster(work, client_cpu) if store == "cluster" else Redis(work, client_cpu)
    server.start()
    passes = []
    try:
        urls = server.master_urls() if store == "cluster" else [server.url]
        gw = gateway(f"capacity-{store}", server.url, stub.url)
        run_id = hooks.new_run_id()
        warm = asyncio.run(send(gw.hostport, run_id, 200))  # connections, scripts loaded, caches warm
        sent = 200
        for connections in PASSES:
            count = bets if connections > 1 else max(100, bets // 4)
            before, cpu_before = redis_info(urls), cpu_seconds(gw)
            statuses = asyncio.run(send(gw.hostport, run_id, count, start=sent, connections=connections))
            after, cpu_after = redis_info(urls), cpu_seconds(gw)
            sent += count
            passes.append(measured(count, connections, statuses, before, after, cpu_after - cpu_before))
        tally = json.loads(urllib.request.urlopen(stub.url + "/ledger", timeout=30).read())  # noqa: S310
        stop(gw)
    finally:
        server.stop()
    mine = f"{hooks.PARTNER}:{run_id}-"
    paid = [n for txid, n in tally.items() if txid.startswith(mine)]
    return {"store": "redis+cluster://, 3 masters + 3 replicas" if store == "cluster" else "redis://, standalone",
            "masters": len(urls), "warmup_answers": {str(k): v for k, v in warm.items()},
            "every_bet_paid_once": len(paid) == sent and all(n == 1 for n in paid), "passes": passes}


def measured(count: int, connections: int, statuses: dict, before: dict, after: dict, gateway_cpu: float) -> dict:
    """Per-bet figures of one pass from the INFO snapshots around it."""
    calls = {name: after["calls"][name] - before["calls"].get(name, 0) for name in after["calls"]}
    calls = {name: n for name, n in sorted(calls.items(), key=lambda kv: -kv[1]) if n and name != "info"}
    scripts = calls.get("evalsha", 0) + calls.get("eval", 0)
    return {
        "bets": count, "connections": connections, "answers": {str(k): v for k, v in statuses.items()},
        # Scripts and plain commands the gateway sent; commandstats also counts the commands a
        # script runs inside Redis (hset, pexpire, ...): those are "executed".
        "redis_scripts_per_bet": round(scripts / count, 3),
        "redis_commands_executed_per_bet": round(sum(calls.values()) / count, 3),
        "redis_commands_by_name_per_bet": {name: round(n / count, 3) for name, n in calls.items()},
        # Socket reads (the INFO calls' own taken off): the gateway's (and its queue worker's).
        "redis_round_trips_per_bet": round((after["reads"] - before["reads"] - len(after["node_cpu"])) / count, 3),
        "redis_cpu_us_per_bet": round((after["cpu"] - before["cpu"]) / count * 1e6, 1),
        # The master that worked most, its CPU per bet (a shard's budget is one master's thread).
        "redis_busiest_master_cpu_us_per_bet": round(max(after["node_cpu"][u] - before["node_cpu"][u]
                                                         for u in after["node_cpu"]) / count * 1e6, 1),
        "gateway_cpu_us_per_bet": round(gateway_cpu / count * 1e6, 1),
    }


def table(results: dict) -> str:
    lines = []
    for store, found in results.items():
        if not isinstance(found, dict) or "passes" not in found:
            if isinstance(found, dict) and "skipped" in found:
                lines.append(f"capacity on {store}: skipped, {found['skipped']}")
            continue
        lines.append(f"capacity on {found['store']}: every bet answered and paid once: {found['every_bet_paid_once']}")
        for p in found["passes"]:
            top = ", ".join(f"{name} {n:g}" for name, n in list(p["redis_commands_by_name_per_bet"].items())[:8])
            lines += [
                f"  {p['bets']} bets over {p['connections']} connection(s), answers {p['answers']}",
                f"    gateway CPU per bet        {p['gateway_cpu_us_per_bet']:g} us (one process, one worker)",
                f"    Redis scripts per bet      {p['redis_scripts_per_bet']:g} (EVALSHA)",
                f"    Redis commands executed    {p['redis_commands_executed_per_bet']:g} per bet, scripts' included "
                f"({top})",
                f"    Redis round trips per bet  {p['redis_round_trips_per_bet']:g} (socket reads Redis served)",
                f"    Redis CPU per bet          {p['redis_cpu_us_per_bet']:g} us, the busiest master "
                f"{p['redis_busiest_master_cpu_us_per_bet']:g} us ({found['masters']} master(s))",
            ]
    return "\n".join(lines)
