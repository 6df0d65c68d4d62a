"""Overload without collapse: a gateway driven at 3x its capacity (``python -m bench --only overload``).

Why: a server that queues everything it cannot serve answers nothing in time once it is
overloaded (every answer waits behind the backlog, callers time out, retry, and make it
worse). The gateway's concurrency limits (``concurrency`` in gateway.yaml) shed the excess
with ``503`` + ``Retry-After`` before any ledger or legacy work. This run measures whether
that keeps the goodput — bets answered ``200`` within the caller's timeout, per second —
near the peak when the offered rate is three times what the gateway can do.

1. **Ramp** (closed loop, more connections each step): the peak goodput of the gateway.
2. **Overload** (open loop at ``factor`` x peak for ``seconds``): requests leave on schedule
   whatever the answers do, over a pool of connections that grows as a provider's would
   (up to ``MAX_CONNECTIONS``); each has ``timeout`` seconds from when it was due. Run once
   with the limits (``LIMITS``) and once without, in the same run, so the ratio shows what
   the limits do on this machine at this moment.
3. **Reconcile**: the wallet stub's tally (``GET /ledger``) against the answers: every bet
   answered 200 is in the wallet exactly once, no bet is there twice, no shed bet is there.

The gateway is pinned to the last core, the client and the stub to the others; the
machine's background load shows in the peak and moves every ratio of the run alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path

import orjson

from bench import hooks
from bench.loadgen import Connection, connect, percentiles

#: The concurrency limits of the limited gateway: per partner and per legacy API, in
#: progress per process. Enough to keep one core busy with a fast wallet, few enough that
#: what is admitted is answered well inside any caller's timeout.
LIMITS = {"per_partner": 64, "per_upstream": 128, "retry_after_seconds": 1}
#: The variants run at 3x, in this order: no limits; the limits, shed by aiohttp's request
#: handling; the limits, shed by the front (gateway/shed_front.py). The verdict is the last's.
VARIANTS = (("unlimited", None), ("limited", LIMITS), ("early", {**LIMITS, "early_shedding": True}))
VERDICT_OF = "early"
#: Connections the open-loop client opens at most (a large provider's pool).
MAX_CONNECTIONS = 512
RAMP = (4, 16, 64)


# -- the client (its own process, pinned) -------------------------------------------------------
class Client:
    """Open loop over a growing pool; an outcome per request: its status, or timeout/failed."""

    def __init__(self, host: str, port: int, requests: list[bytes], timeout: float):
        self.host, self.port, self.requests, self.timeout = host, port, requests, timeout
        self.free: list[Connection] = []
        self.opened = 0
        self.waiting: asyncio.Queue[Connection] = asyncio.Queue()
        self.status: list[int] = [0] * len(requests)  # 0 not answered in time, -1 failed
        self.latency: list[float] = [0.0] * len(requests)
        self.lag: list[float] = [0.0] * len(requests)  # how late the client itself started each request

    async def acquire(self) -> Connection:
        if self.free:
            return self.free.pop()
        if self.opened < MAX_CONNECTIONS:
            self.opened += 1
            try:
                return await connect(self.host, self.port)
            except OSError:
                self.opened -= 1
                raise
        return await self.waiting.get()

    def release(self, conn: Connection) -> None:
        if conn.lost:
            self.opened -= 1
        elif self.waiting._getters:  # someone is waiting for a connection: hand it over
            self.waiting.put_nowait(conn)
        else:
            self.free.append(conn)

    async def one(self, index: int, due: float) -> None:
        conn = None
        self.lag[index] = time.perf_counter() - due
        try:
            async with asyncio.timeout(self.timeout):
                conn = await self.acquire()
                status, _, finished = await conn.send(self.requests[index])
        except TimeoutError:
            if conn is not None:  # its answer may still come: the connection cannot be reused
                conn.transport.close()
                self.opened -= 1
            return
        except (ConnectionError, OSError):
            self.status[index] = -1
            if conn is not None:
                self.opened -= 1
            return
        self.status[index] = status
        self.latency[index] = finished - due
        self.release(conn)

    async def warm(self, count: int) -> None:
        """Open ``count`` connections before the clock starts, as a provider's pool would be
        open already (opening hundreds of them in the first second under 3x load is a
        reconnect storm, a different test)."""
        conns = await asyncio.gather(*(connect(self.host, self.port) for _ in range(count)))
        self.opened += len(conns)
        self.free.extend(conns)

    async def open_loop(self, rate: float) -> dict:
        await self.warm(MAX_CONNECTIONS)
        loop = asyncio.get_running_loop()
        tasks = []
        start = loop.time()
        clock = time.perf_counter() - start
        for i in range(len(self.requests)):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(self.one(i, start + i / rate + clock)))
        sent_for = loop.time() - start
        await asyncio.gather(*tasks)
        elapsed = loop.time() - start
        for conn in self.free:
            conn.transport.close()
        return {"sent_for": sent_for, "elapsed": elapsed}


async def ramp(host: str, port: int, run: str, seconds: float) -> list[dict]:
    """Closed loop at each of RAMP connections: goodput (200s a second) at each."""
    from bench.loadgen import closed_loop

    steps, offset = [], 0
    for connections in RAMP:
        base = offset
        result = await closed_loop(host, port, lambda i, b=base: hooks.signed_hook_request(f"{host}:{port}", run, b + i),
                                   connections, seconds)
        offset += result["requests"] + result["failed"] + 1
        steps.append({"connections": connections, "ok": result["ok"],
                      "goodput": round(result["ok"] / result["seconds"], 1),
                      "non_2xx": result["non_2xx"], "p99_ms": result["latency"].get("p99_ms")})
    return steps


def client_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overload client")
    parser.add_argument("url")
    parser.add_argument("--run", required=True)
    parser.add_argument("--ramp-seconds", type=float)
    parser.add_argument("--rate", type=float)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--out", type=Path, required=True, help="where the JSON result goes")
    args = parser.parse_args(argv)
    hostport = args.url.split("://", 1)[-1].rstrip("/")
    host, port = hostport.rsplit(":", 1)
    if args.ramp_seconds:
        job = ramp(host, int(port), args.run, args.ramp_seconds)
    else:
        when = hooks.timestamp()
        requests = [hooks.signed_hook_request(hostport, args.run, i, when) for i in range(int(args.rate * args.seconds))]
        client = Client(host, int(port), requests, args.timeout)

        async def overload() -> dict:
            timing = await client.open_loop(args.rate)
            return {**timing, "status": client.status, "latency": client.latency, "lag": client.lag}
        job = overload()
    try:
        import uvloop

        result = uvloop.run(job)
    except ImportError:
        result = asyncio.run(job)
    args.out.write_bytes(orjson.dumps(result))


# -- the driver ----------------------------------------------------------------------------------
def summarise(name: str, data: dict, rate: float, seconds: float, timeout: float, peak: float,
              tally: dict, run: str) -> dict:
    """Goodput, shedding, p99 of the admitted, and the reconciliation against the wallet."""
    status, latency = data["status"], data["latency"]
    ok = [i for i, s in enumerate(status) if s == 200]
    shed = [i for i, s in enumerate(status) if s == 503]
    # The wallet sees "<partner>:<transaction id>" (the mapping's transaction_uuid).
    mine = f"{hooks.PARTNER}:{run}-"
    paid = {int(txid[len(mine):]): n for txid, n in tally.items() if txid.startswith(mine)}
    by_status: dict[str, int] = {}
    for s in status:
        key = {0: "not_answered_in_time", -1: "connection_failed"}.get(s, str(s))
        by_status[key] = by_status.get(key, 0) + 1
    goodput = len(ok) / data["elapsed"]
    return {
        "gateway": name, "offered_rate": round(len(status) / data["sent_for"], 1), "target_rate": rate,
        "seconds": seconds, "timeout_seconds": timeout, "requests": len(status), "answers": by_status,
        "goodput": round(goodput, 1), "goodput_of_peak": round(goodput / peak, 3),
        "admitted_latency_ms": percentiles([latency[i] for i in ok]),
        "client_start_lag_ms": percentiles(data["lag"]),
        "answered_latency_max_ms": round(max((latency[i] for i, s in enumerate(status) if s > 0), default=0) * 1000,
                                         1),
        "every_request_answered_in_time": by_status.get("not_answered_in_time", 0) == 0
                                          and by_status.get("connection_failed", 0) == 0,
        "reconciliation": {
            "ok_bets_missing_in_wallet": sum(1 for i in ok if paid.get(i, 0) == 0),
            "bets_paid_twice": sum(1 for n in paid.values() if n > 1),
            "shed_bets_in_wallet": sum(1 for i in shed if i in paid),
            "bets_in_wallet": len(paid),
            "ok_answers": len(ok),
        },
    }


def run(work: Path, client_cpu: str | None, server_cpu: str | None, start, gateway, stop, *,
        factor: float = 3.0, seconds: float = 12.0, timeout: float = 2.0, ramp_seconds: float = 5.0,
        compare: bool = True) -> dict:
    """The overload run; ``start``/``gateway``/``stop`` are the benchmark's process helpers."""
    import subprocess

    from bench.procs import Proc, cpu_seconds, pinned, python_env

    def client(url: str, *args: str, limit: float) -> dict:
        result = work / "overload-client.json"
        result.unlink(missing_ok=True)
        command = pinned([sys.executable, "-m", "bench.overload", "client", url, *args, "--out", str(result)],
                         client_cpu)
        out = subprocess.run(command, capture_output=True, text=True, env=python_env(), check=False, timeout=limit)
        if out.returncode != 0 or not result.exists():
            raise RuntimeError(f"overload client failed: {out.stderr[-2000:]}")
        return json.loads(result.read_bytes())

    stub = start(Proc("overload-stub", [sys.executable, "-m", "bench.stub"], cpus=client_cpu,
                      log=work / "overload-stub.log"))
    results: dict = {"limits": LIMITS, "factor": factor}
    try:
        # The ramp runs on the gateway without limits: its capacity, not its limits' (a closed
        # loop against a limited gateway would spend the core on 503s and call that the peak).
        variants = VARIANTS if compare else VARIANTS[-1:]
        peak = cpu_per_bet = 0.0
        for name, limits in variants:
            extra = {"concurrency": limits} if limits else {}
            gw = gateway(f"overload-{name}", f"sqlite:///{work}/overload-{name}.db", stub.url, extra=extra)
            if not peak:
                print("overload: ramp to find the peak goodput", file=sys.stderr, flush=True)
                before = cpu_seconds(gw)
                steps = client(gw.url, "--run", hooks.new_run_id(), "--ramp-seconds", str(ramp_seconds),
                               limit=ramp_seconds * len(RAMP) * 10 + 60)
                bets = sum(step["ok"] for step in steps)
                cpu_per_bet = (cpu_seconds(gw) - before) / bets if bets else 0.0
                peak = max(step["goodput"] for step in steps)
                results["ramp"], results["peak_goodput"] = steps, peak
                results["cpu_us_per_admitted_bet"] = round(cpu_per_bet * 1e6, 1)
            rate = round(peak * factor, 1)
            run_id = hooks.new_run_id()
            print(f"overload: {name} gateway at {rate:g} req/s ({factor:g} x peak {peak:g}) for {seconds:g} s",
                  file=sys.stderr, flush=True)
            before = cpu_seconds(gw)
            data = client(gw.url, "--run", run_id, "--rate", str(rate), "--seconds", str(seconds), "--timeout",
                          str(timeout), limit=seconds * 10 + 120)
            used = cpu_seconds(gw) - before
            tally = json.loads(urllib.request.urlopen(stub.url + "/ledger", timeout=30).read())  # noqa: S310
            results[name] = summary = summarise(name, data, rate, seconds, timeout, peak, tally, run_id)
            answered = summary["reconciliation"]["ok_answers"] + summary["answers"].get("503", 0)
            summary["gateway_cpu_seconds"] = round(used, 2)
            summary["gateway_cpu_us_per_answer"] = round(used / answered * 1e6, 1) if answered else None
            shed = summary["answers"].get("503", 0)
            if limits and shed and cpu_per_bet:  # (without limits a 503 is a store's, not a shed)
                # An estimate: the run's CPU beyond its admitted bets' (at the ramp's cost each).
                s_ = max(0.0, used - summary["reconciliation"]["ok_answers"] * cpu_per_bet) / shed
                summary["cpu_us_per_shed_estimate"] = round(s_ * 1e6, 1)
                # What that leaves a CPU-bound process: at the peak its core does P bets of cost c;
                # at F x P offered, a admitted and F*P - a shed at cost s fill the same core:
                # a*c + (F*P - a)*s = P*c, so a/P = (1 - F*s/c) / (1 - s/c).
                r = min(s_ / cpu_per_bet, 0.999)
                summary["goodput_ceiling_estimate"] = round(max(0.0, 1 - factor * r) / (1 - r), 3)
            stop(gw)
    finally:
        stop(stub)
    limited = results[VERDICT_OF]
    rec = limited["reconciliation"]
    results["verdict"] = {
        "goodput_of_peak_at_least_0.90": limited["goodput_of_peak"] >= 0.90,
        "every_request_answered_in_time": limited["every_request_answered_in_time"],
        "nothing_lost_or_doubled": rec["ok_bets_missing_in_wallet"] == 0 and rec["bets_paid_twice"] == 0
                                   and rec["shed_bets_in_wallet"] == 0,
    }
    return results


def table(results: dict) -> str:
    lines = [f"overload: peak goodput {results['peak_goodput']:g} bets/s (ramp "
             + ", ".join(f"{s['connections']} conn {s['goodput']:g}/s" for s in results["ramp"]) + ")",
             f"{'gateway':<10} {'offered/s':>10} {'goodput/s':>10} {'of peak':>8} {'p99 admitted':>13} "
             f"{'shed 503':>9} {'late':>6} {'lost':>5} {'doubled':>8}"]
    for name, _ in VARIANTS:
        r = results.get(name)
        if not r:
            continue
        rec = r["reconciliation"]
        lines.append(f"{name:<10} {r['offered_rate']:>10g} {r['goodput']:>10g} {r['goodput_of_peak']:>8.2f} "
                     f"{r['admitted_latency_ms'].get('p99_ms', 0):>10g} ms {r['answers'].get('503', 0):>9} "
                     f"{r['answers'].get('not_answered_in_time', 0) + r['answers'].get('connection_failed', 0):>6} "
                     f"{rec['ok_bets_missing_in_wallet']:>5} {rec['bets_paid_twice']:>8}")
    lines.append(f"gateway CPU: {results['cpu_us_per_admitted_bet']:g} us per bet in the ramp; in the overload "
                 + ", ".join(f"{n} {results[n]['gateway_cpu_us_per_answer']:g} us per answer (200 or 503)"
                             for n, _ in VARIANTS if n in results))
    for name, _ in VARIANTS[1:]:
        limited = results.get(name)
        if limited and "goodput_ceiling_estimate" in limited:
            lines.append(f"shedding ({name}): ~{limited['cpu_us_per_shed_estimate']:g} us per shed request "
                         f"(estimate), so one core at {results['factor']:g} x keeps at most "
                         f"~{limited['goodput_ceiling_estimate']:.2f} of its peak")
    for name, _ in VARIANTS:
        if name in results:
            lag = results[name]["client_start_lag_ms"]
            lines.append(f"client ({name} run): requests left up to {lag['max_ms']:g} ms after they were due "
                         f"(p99 {lag['p99_ms']:g} ms); more than the timeout would make a late answer the client's")
    lines.append(f"verdict ({VERDICT_OF}): " + ", ".join(f"{k}={v}" for k, v in results["verdict"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        client_main(sys.argv[2:])
    else:
        sys.exit("use: python -m bench --only overload")
