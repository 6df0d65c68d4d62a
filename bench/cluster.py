"""One and two gateway processes over a Redis Cluster (``python -m bench --only cluster``).

Why: the point of a shared store is that more gateway processes serve more transactions.
This run measures, in one run, what a second process adds when both share one Redis
Cluster: req/s and CPU per request of one process, then of two at once, and their ratio.

A private Redis Cluster — 3 masters + 3 replicas on free loopback ports
(``bench.procs.RedisCluster``, never the machine's 6379) — and two gateway processes over it
(each ``--workers 1``, no SQLite anywhere: the cluster is their only store), with the
configuration and the signed mapping of the other gateway targets (``mappings/hub88-wallet.yaml``,
RSA-SHA256 on every wallet call) in front of the wallet stub. Unique pre-signed ``bet``
hooks, closed loop (wrk, or bench/loadgen.py where wrk is missing), one client per gateway
process with the run's ``--connections`` each. In rounds, so the machine's background load
touches both alike: one process alone, then both at once.

Every process — the gateways, wrk, the stub and the six redis-servers — may use every core
(as in the ``--workers`` runs): on a 2-core machine the second process competes with the
first for the same two cores, so the measured ratio understates what a process on a core of
its own adds. The estimate 2 × (CPU µs/request of one) / (CPU µs/request of two) is what two
processes would give if each had a core and CPU were the only limit.

Besides the gateways' CPU (from /proc), every Redis node's CPU (``INFO cpu``, masters and
replicas) per request, and which master took the most: the bench's one partner keeps its
ledger on one slot, so on one master (gateway/store/redis.py, "Key layout"). At the end the
ledger records on the cluster are counted against the bets the gateways answered 200
(their /metrics): every answered bet is recorded once, on the cluster.
"""

from __future__ import annotations

import re
import sys
import urllib.request

from bench.procs import Proc, RedisCluster, cpu_seconds

#: The two targets of each round: one process, then both.
SIZES = (1, 2)


def node_cpu(cluster: RedisCluster) -> dict[int, tuple[str, float]]:
    """Per node: its role and the CPU (user + sys, seconds) Redis reports for it."""
    out = {}
    for port in cluster.ports:
        with cluster.client(port) as client:
            info = client.info("all")
        out[port] = (info["role"], float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return out


def ok_answers(proc: Proc) -> int:
    text = urllib.request.urlopen(proc.internal_url + "/metrics", timeout=5).read().decode()  # noqa: S310
    return int(sum(float(m) for m in re.findall(r'^igsp_requests_total\{[^}]*outcome="ok"[^}]*\} (\S+)$', text, re.M)))


def ledger_records(cluster: RedisCluster) -> int:
    import redis

    count = 0
    for url in cluster.master_urls():
        with redis.Redis.from_url(url) as client:
            count += sum(1 for _ in client.scan_iter("igsp:{L*}:tx:*", count=1000))
    return count


def run(bench, *, seconds: float, rounds: int, warmup: float) -> dict:
    """The measurement; ``bench`` is the running ``bench.run.Bench`` (its processes, its wrk)."""
    from bench.run import Target

    stub = bench.start(Proc("cluster-stub", [sys.executable, "-m", "bench.stub"], cpus=bench.client_cpu,
                            log=bench.work / "cluster-stub.log"))
    cluster = RedisCluster(bench.work, bench.every_cpu)
    print("cluster: starting 3 masters + 3 replicas", file=sys.stderr, flush=True)
    cluster.start()
    try:
        procs = [bench.gateway(f"cluster-gw-{n}", cluster.url, stub.url, cpus=bench.every_cpu) for n in (1, 2)]
        targets = [Target(f"cluster-gw-{n}", proc, "hook", "cluster", cluster.url) for n, proc in
                   zip((1, 2), procs, strict=True)]
        runs: dict[int, list] = {size: [] for size in SIZES}
        print(f"cluster: 1 then 2 gateway processes, {rounds} rounds of {seconds / rounds:g} s each",
              file=sys.stderr, flush=True)
        if warmup:
            for size in SIZES:
                load(bench, cluster, targets[:size], warmup)
        for _ in range(rounds):
            for size in SIZES:
                runs[size].append(load(bench, cluster, targets[:size], seconds / rounds))
        answered = sum(ok_answers(proc) for proc in procs)
        recorded = ledger_records(cluster)
        for proc in procs:
            bench.stop(proc)
    finally:
        cluster.stop()
        bench.stop(stub)
    return summarise(runs, answered, recorded, bench.plan.connections)


def load(bench, cluster: RedisCluster, targets: list, seconds: float) -> dict:
    """One closed-loop run on each of ``targets`` at once: requests, CPU, Redis CPU."""
    # Every client's requests are signed before the first client starts.
    files = [bench.presign(t, seconds) if bench.wrk else None for t in targets]
    cpu_before = [cpu_seconds(t.proc) for t in targets]
    redis_before = node_cpu(cluster)
    results = [bench.start_closed_loop(t, seconds, bench.every_cpu, f) for t, f in zip(targets, files, strict=True)]
    results = [wait() for wait in results]
    cpu = sum(cpu_seconds(t.proc) - before for t, before in zip(targets, cpu_before, strict=True))
    redis_after = node_cpu(cluster)
    masters = {port: redis_after[port][1] - redis_before[port][1] for port in redis_after
               if redis_after[port][0] == "master"}
    return {"processes": len(targets), "requests": sum(r["requests"] for r in results),
            "seconds": max(r["seconds"] for r in results), "errors": sum(r["errors"] for r in results),
            "rps": round(sum(r["requests"] / r["seconds"] for r in results), 1), "cpu_seconds": cpu,
            "redis_cpu_seconds": sum(after - redis_before[port][1] for port, (_, after) in redis_after.items()),
            "redis_master_cpu_seconds": masters, "tool": results[0]["tool"],
            "latency_ms": [r["latency_ms"] for r in results]}


def summarise(runs: dict, answered: int, recorded: int, connections: int) -> dict:
    out: dict = {"store": "redis+cluster://, 3 masters + 3 replicas", "connections_per_process": connections,
                 "processes": {}}
    for size, measured in runs.items():
        requests = sum(r["requests"] for r in measured)
        cpu = sum(r["cpu_seconds"] for r in measured)
        redis_cpu = sum(r["redis_cpu_seconds"] for r in measured)
        masters: dict = {}
        for r in measured:
            for port, used in r["redis_master_cpu_seconds"].items():
                masters[port] = masters.get(port, 0.0) + used
        out["processes"][str(size)] = {
            "tool": measured[0]["tool"], "rounds": len(measured), "requests": requests,
            "seconds": round(sum(r["seconds"] for r in measured), 2),
            "rps": round(sum(r["rps"] for r in measured) / len(measured), 1),
            "rps_per_round": [r["rps"] for r in measured],
            "cpu_us_per_request": round(cpu / requests * 1e6, 1) if requests else None,
            "redis_cpu_us_per_request": round(redis_cpu / requests * 1e6, 1) if requests else None,
            "busiest_master_share": round(max(masters.values()) / sum(masters.values()), 2)
            if masters and sum(masters.values()) else None,
            "errors": sum(r["errors"] for r in measured),
            "latency_ms_last_round": measured[-1]["latency_ms"],
        }
    one, two = out["processes"]["1"], out["processes"]["2"]
    out["ratio_2_over_1"] = round(two["rps"] / one["rps"], 2) if one["rps"] else None
    out["ratio_2_over_1_per_round"] = [round(b / a, 2) if a else None for a, b in
                                       zip(one["rps_per_round"], two["rps_per_round"], strict=True)]
    out["cpu_bound_estimate_2_over_1"] = (round(2 * one["cpu_us_per_request"] / two["cpu_us_per_request"], 2)
                                          if one["cpu_us_per_request"] and two["cpu_us_per_request"] else None)
    out["bets_answered_ok"], out["ledger_records"] = answered, recorded
    out["every_answered_bet_recorded_once"] = answered == recorded
    return out


def table(results: dict) -> str:
    header = ("gateway processes", "req/s", "cpu us/req", "redis cpu us/req", "busiest master", "errors",
              "req/s per round")
    rows = []
    for size, p in results["processes"].items():
        rows.append((size, f"{p['rps']:.0f}", f"{p['cpu_us_per_request']:.0f}", f"{p['redis_cpu_us_per_request']:.0f}",
                     f"{p['busiest_master_share']:.2f}" if p["busiest_master_share"] is not None else "-",
                     str(p["errors"]), str(p["rps_per_round"])))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row):
        cells = (c.ljust(w) if i in (0, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        return "  ".join(cells).rstrip()

    one, two = results["processes"]["1"], results["processes"]["2"]
    return "\n".join([
        f"cluster: {results['store']}; each gateway --workers 1 with {results['connections_per_process']} "
        f"connections of its own; every process on every core",
        line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows),
        f"2 processes / 1: {two['rps']:.0f} / {one['rps']:.0f} req/s = {results['ratio_2_over_1']}x measured "
        f"(per round {results['ratio_2_over_1_per_round']}); cpu us/req {two['cpu_us_per_request']:.0f} vs "
        f"{one['cpu_us_per_request']:.0f}, so {results['cpu_bound_estimate_2_over_1']}x with a core each (estimate)",
        f"ledger on the cluster: {results['ledger_records']} records, {results['bets_answered_ok']} bets answered 200 "
        f"(metrics): {'every answered bet recorded once' if results['every_answered_bet_recorded_once'] else 'MISMATCH'}",
    ])
