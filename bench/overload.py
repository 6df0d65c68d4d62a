"""Overload without collapse: a gateway driven at 3x its capacity (``python -m bench --only overload``).

Why: a server that queues everything it cannot serve answers nothing in time once it is
overloaded (every answer waits behind the backlog, callers time out, retry, and make it
worse). The gateway's concurrency limits (``concurrency`` in gateway.yaml) shed the excess
with ``503`` + ``Retry-After`` before any ledger or legacy work. This run measures whether
that keeps the goodput — bets answered ``200`` within the caller's timeout, per second —
near the peak when the offered rate is three times what the gateway can do.

1. **Ramp** (closed loop, more connections each step, on the gateway without limits): the
   curve of its goodput, and the number of connections that gives its peak.
2. For each variant (no limits; limits shed by aiohttp; limits shed by the front):
   **peak before** (closed loop at ``PEAK_CONNECTIONS``, on this variant's gateway),
   **overload** (open loop at ``factor`` x that peak for ``seconds``: requests leave on
   schedule whatever the answers do, over a pool of connections open before the clock
   starts (``MAX_CONNECTIONS``); each has ``timeout`` seconds from when it was due), then,
   once the gateway is quiet again, **peak after**. The overload's goodput is judged against
   the mean of the peaks just before and just after it, on the same gateway process: a
   machine whose speed drifts over minutes (a shared host's does, by 20 % here) moves both
   alike, where a peak measured minutes earlier would not.
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
#: Connections of the closed loops that measure the peak around each overload: as many as the
#: limit lets in at once, the concurrency the gateway works at under overload. (The ramp's
#: steps of 16 and 64 connections come out within a few per cent of each other, either way
#: round from run to run on this machine.)
PEAK_CONNECTIONS = LIMITS["per_partner"]
#: Overload runs per variant, each between two closed loops at the peak (see the docstring):
#: short alternating runs, so that a machine whose speed moves by tens of per cent from one
#: second to the next (a shared virtual machine's does) moves the peak and the overload alike.
ROUNDS = 3


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


async def ramp(host: str, port: int, run: str, seconds: float, steps: tuple = RAMP) -> list[dict]:
    """Closed loop at each of ``steps`` connections: goodput (200s a second) at each."""
    from bench.loadgen import closed_loop

    results, offset = [], 0
    for connections in steps:
        base = offset
        result = await closed_loop(host, port, lambda i, b=base: hooks.signed_hook_request(f"{host}:{port}", run, b + i),
                                   connections, seconds)
        offset += result["requests"] + result["failed"] + 1
        results.append({"connections": connections, "ok": result["ok"],
                      "goodput": round(result["ok"] / result["seconds"], 1),
                      "non_2xx": result["non_2xx"], "p99_ms": result["latency"].get("p99_ms")})
    return results


def client_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overload client")
    parser.add_argument("url")
    parser.add_argument("--run", required=True)
    parser.add_argument("--ramp-seconds", type=float)
    parser.add_argument("--closed", type=int, help="one closed-loop step at this many connections (--seconds)")
    parser.add_argument("--rate", type=float)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--out", type=Path, required=True, help="where the JSON result goes")
    args = parser.parse_args(argv)
    hostport = args.url.split("://", 1)[-1].rstrip("/")
    host, port = hostport.rsplit(":", 1)
    if args.ramp_seconds:
        job = ramp(host, int(port), args.run, args.ramp_seconds)
    elif args.closed:
        job = ramp(host, int(port), args.run, args.seconds, steps=(args.closed,))
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
def summarise(name: str, rounds: list[dict], timeout: float, tally: dict) -> dict:
    """Goodput, shedding, p99 of the admitted, and the reconciliation against the wallet, over
    the variant's overload rounds (each {"data", "run", "rate", "peak"}: the client's result,
    its run id, the offered rate and the round's peak, the mean of the peaks around it)."""
    status: list[int] = []
    admitted: list[float] = []
    lag: list[float] = []
    answered_max = 0.0
    window = expected = 0.0
    rec = {"ok_bets_missing_in_wallet": 0, "bets_paid_twice": 0, "shed_bets_in_wallet": 0, "bets_in_wallet": 0,
           "ok_answers": 0}
    for one in rounds:
        data = one["data"]
        st, latency = data["status"], data["latency"]
        ok = [i for i, s in enumerate(st) if s == 200]
        shed = [i for i, s in enumerate(st) if s == 503]
        # The wallet sees "<partner>:<transaction id>" (the mapping's transaction_uuid).
        mine = f"{hooks.PARTNER}:{one['run']}-"
        paid = {int(txid[len(mine):]): n for txid, n in tally.items() if txid.startswith(mine)}
        rec["ok_bets_missing_in_wallet"] += sum(1 for i in ok if paid.get(i, 0) == 0)
        rec["bets_paid_twice"] += sum(1 for n in paid.values() if n > 1)
        rec["shed_bets_in_wallet"] += sum(1 for i in shed if i in paid)
        rec["bets_in_wallet"] += len(paid)
        rec["ok_answers"] += len(ok)
        status += st
        admitted += [latency[i] for i in ok]
        lag += data["lag"]
        answered_max = max([answered_max, *(latency[i] for i, s in enumerate(st) if s > 0)])
        # Over the window the requests were offered in: each of them was answered 200 in time
        # or was not (the last ones' answers come a moment after the window; they are its own).
        window += data["sent_for"]
        expected += data["sent_for"] * one["peak"]  # bets the gateway's peak would have answered
    by_status: dict[str, int] = {}
    for s in status:
        key = {0: "not_answered_in_time", -1: "connection_failed"}.get(s, str(s))
        by_status[key] = by_status.get(key, 0) + 1
    return {
        "gateway": name, "rounds": len(rounds), "offered_rate": round(len(status) / window, 1),
        "target_rates": [one["rate"] for one in rounds], "seconds": round(window, 2), "timeout_seconds": timeout,
        "requests": len(status), "answers": by_status,
        "goodput": round(rec["ok_answers"] / window, 1), "goodput_of_peak": round(rec["ok_answers"] / expected, 3),
        "goodput_of_peak_by_round": [round(sum(1 for s in one["data"]["status"] if s == 200)
                                           / (one["data"]["sent_for"] * one["peak"]), 3) for one in rounds],
        "admitted_latency_ms": percentiles(admitted),
        "client_start_lag_ms": percentiles(lag),
        "answered_latency_max_ms": round(answered_max * 1000, 1),
        "every_request_answered_in_time": by_status.get("not_answered_in_time", 0) == 0
                                          and by_status.get("connection_failed", 0) == 0,
        "reconciliation": rec,
    }


def run(work: Path, client_cpu: str | None, server_cpu: str | None, start, gateway, stop, *,
        factor: float = 3.0, seconds: float = 8.0, timeout: float = 2.0, ramp_seconds: float = 5.0,
        peak_seconds: float = 4.0,
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

    def closed(gw, connections: int) -> tuple[float, float]:
        """Goodput (200s a second) of a closed loop at ``connections``, and CPU per bet."""
        before = cpu_seconds(gw)
        step, = client(gw.url, "--run", hooks.new_run_id(), "--closed", str(connections), "--seconds",
                       str(peak_seconds), limit=peak_seconds * 10 + 60)
        return step["goodput"], (cpu_seconds(gw) - before) / step["ok"] if step["ok"] else 0.0

    def quiet(gw, deadline: float = 30.0) -> None:
        """Until the gateway uses under a tenth of its core (or ``deadline`` passes): after an
        overload without limits it is still working on requests whose callers gave up."""
        end = time.monotonic() + deadline
        used = cpu_seconds(gw)
        while time.monotonic() < end:
            time.sleep(0.5)
            now = cpu_seconds(gw)
            if now - used < 0.05:
                return
            used = now

    try:
        # The ramp runs on the gateway without limits: its capacity, not its limits' (a closed
        # loop against a limited gateway would spend the core on 503s and call that the peak).
        variants = VARIANTS if compare else VARIANTS[-1:]
        best, ramped = PEAK_CONNECTIONS, False
        for name, limits in variants:
            extra = {"concurrency": limits} if limits else {}
            gw = gateway(f"overload-{name}", f"sqlite:///{work}/overload-{name}.db", stub.url, extra=extra)
            if not ramped:
                ramped = True
                print("overload: ramp to find the peak goodput", file=sys.stderr, flush=True)
                before = cpu_seconds(gw)
                steps = client(gw.url, "--run", hooks.new_run_id(), "--ramp-seconds", str(ramp_seconds),
                               limit=ramp_seconds * len(RAMP) * 10 + 60)
                bets = sum(step["ok"] for step in steps)
                top = max(steps, key=lambda step: step["goodput"])
                results["ramp"], results["peak_goodput"] = steps, top["goodput"]
                results["cpu_us_per_admitted_bet"] = round((cpu_seconds(gw) - before) / bets * 1e6, 1) if bets else 0
            # Peak, then (overload, peak) x rounds, all on this gateway: each overload is judged
            # against the mean of the peaks just before and just after it.
            peak, cost = closed(gw, best)
            peaks, costs, rounds, used = [peak], [cost], [], 0.0
            for _ in range(ROUNDS):
                rate = round(peaks[-1] * factor, 1)
                run_id = hooks.new_run_id()
                print(f"overload: {name} gateway at {rate:g} req/s ({factor:g} x its peak {peaks[-1]:g} just "
                      f"before) for {seconds:g} s", file=sys.stderr, flush=True)
                before = cpu_seconds(gw)
                data = client(gw.url, "--run", run_id, "--rate", str(rate), "--seconds", str(seconds), "--timeout",
                              str(timeout), limit=seconds * 10 + 120)
                used += cpu_seconds(gw) - before
                quiet(gw)
                peak, cost = closed(gw, best)
                rounds.append({"data": data, "run": run_id, "rate": rate, "peak": (peaks[-1] + peak) / 2})
                peaks.append(peak)
                costs.append(cost)
            tally = json.loads(urllib.request.urlopen(stub.url + "/ledger", timeout=30).read())  # noqa: S310
            cpu_per_bet = sum(costs) / len(costs)
            results[name] = summary = summarise(name, rounds, timeout, tally)
            summary["peak"] = {"connections": best, "closed_loops": peaks,
                               "mean": round(sum(one["peak"] for one in rounds) / len(rounds), 1),
                               "cpu_us_per_bet": round(cpu_per_bet * 1e6, 1)}
            answered = summary["reconciliation"]["ok_answers"] + summary["answers"].get("503", 0)
            summary["gateway_cpu_seconds"] = round(used, 2)
            summary["gateway_cpu_us_per_answer"] = round(used / answered * 1e6, 1) if answered else None
            shed = summary["answers"].get("503", 0)
            if limits and shed and cpu_per_bet:  # (without limits a 503 is a store's, not a shed)
                # An estimate: the run's CPU beyond its admitted bets' (at the peaks' cost each).
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
             f"{'gateway':<10} {'peak/s':>7} {'offered/s':>10} {'goodput/s':>10} "
             f"{'of peak':>8} {'p99 admitted':>13} {'shed 503':>9} {'late':>6} {'lost':>5} {'doubled':>8}"]
    for name, _ in VARIANTS:
        r = results.get(name)
        if not r:
            continue
        rec = r["reconciliation"]
        peak = r["peak"]
        lines.append(f"{name:<10} {peak['mean']:>7g} "
                     f"{r['offered_rate']:>10g} {r['goodput']:>10g} {r['goodput_of_peak']:>8.2f} "
                     f"{r['admitted_latency_ms'].get('p99_ms', 0):>10g} ms {r['answers'].get('503', 0):>9} "
                     f"{r['answers'].get('not_answered_in_time', 0) + r['answers'].get('connection_failed', 0):>6} "
                     f"{rec['ok_bets_missing_in_wallet']:>5} {rec['bets_paid_twice']:>8}")
    lines.append(f"gateway CPU: {results['cpu_us_per_admitted_bet']:g} us per bet in the ramp; at the peaks "
                 + ", ".join(f"{n} {results[n]['peak']['cpu_us_per_bet']:g}" for n, _ in VARIANTS if n in results)
                 + " us per bet; in the overload "
                 + ", ".join(f"{n} {results[n]['gateway_cpu_us_per_answer']:g} us per answer (200 or 503)"
                             for n, _ in VARIANTS if n in results))
    for name, _ in VARIANTS:
        r = results.get(name)
        if r:
            lines.append(f"{name}: closed loops at {r['peak']['connections']} connections, before and after each "
                         f"overload: {', '.join(f'{p:g}' for p in r['peak']['closed_loops'])} bets/s; "
                         f"goodput of the peak around it, by round: "
                         f"{', '.join(f'{g:.2f}' for g in r['goodput_of_peak_by_round'])}")
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
