"""``python -m bench``: throughput, added latency, worker scaling and (optionally) a soak.

Layout on a machine with two or more cores: the gateway (or the peer) is pinned to one
core; ``wrk``, the wallet stub, redis-server and the latency client to another. The
worker-scaling run gives the gateway every core, shared with the rest: on a 2-core
machine that understates scaling, and the report says so.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench import hooks
from bench.procs import ROOT, Proc, Redis, cpu_count, ensure_wrk, pinned, python_env

RESULTS = ROOT / "bench" / "results"
WRK_SCRIPT = ROOT / "bench" / "wrk.lua"
#: Requests pre-signed per second of a wrk run, per server core: above any rate reached here.
PRESIGN_RATE = 14000


@dataclass
class Plan:
    duration: float = 10.0
    warmup: float = 1.5
    connections: int = 32
    rate: float = 200.0
    latency_seconds: float = 10.0
    scaling: bool = True
    stores: tuple = ("sqlite", "redis")
    soak: float = 0.0
    soak_rate: float = 500.0
    install_wrk: bool = True
    smoke: bool = False
    out: Path | None = None
    notes: list = field(default_factory=list)


def redis_store_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gateway.store.redis") is not None


class Bench:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.work = Path(tempfile.mkdtemp(prefix="igsp-bench-"))
        self.wrk = ensure_wrk(plan.install_wrk)
        cpus = cpu_count()
        self.server_cpu, self.client_cpu = (str(cpus - 1), ",".join(map(str, range(cpus - 1)))) if cpus >= 2 else (None, None)
        self.results: dict = {"throughput": {}, "latency": {}, "scaling": {}, "checks": {}, "soak": None}
        self.procs: list = []
        from gateway.simulators.hub88_wallet import generate_keypair

        private, _ = generate_keypair()
        self.key_file = self.work / "hub88-private.pem"
        self.key_file.write_text(private)

    # -- processes -----------------------------------------------------------------
    def start(self, proc):
        self.procs.append(proc)
        return proc.start()

    def stop(self, proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stub(self) -> Proc:
        return self.start(Proc("stub", [sys.executable, "-m", "bench.stub"], cpus=self.client_cpu,
                               log=self.work / "stub.log"))

    def peer(self, upstream: str) -> Proc:
        return self.start(Proc("peer", [sys.executable, "-m", "bench.peer", "--upstream", upstream, "--api-key",
                                        hooks.API_KEY, "--secret", hooks.SECRET, "--rsa-key", str(self.key_file)],
                               cpus=self.server_cpu, log=self.work / "peer.log"))

    def gateway(self, name: str, store_url: str, upstream: str, workers: int = 1, cpus: str | None = "server") -> Proc:
        config = {
            "version": 1,
            "server": {"host": "127.0.0.1", "port": 0, "drain_seconds": 2, "access_log": True},
            "store": {"url": store_url},
            "logging": {"level": "info"},
            "security": {"replay_protection": True},
            "partners": [{"id": hooks.PARTNER, "face": "platform", "mapping": str(ROOT / "mappings" / "hub88-wallet.yaml"),
                          "api_key": hooks.API_KEY, "secrets": [hooks.SECRET]}],
        }
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return self.start(Proc(name, [sys.executable, "-m", "gateway", "serve", "--config", str(path),
                                      "--workers", str(workers)],
                               cpus=self.server_cpu if cpus == "server" else cpus, log=self.work / f"{name}.log",
                               env={"HUB88_WALLET_URL": upstream, "HUB88_PRIVATE_KEY": str(self.key_file)},
                               cwd=self.work))

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    # -- load ----------------------------------------------------------------------
    def throughput(self, target: Proc, kind: str, *, cores: int = 1, client_cpu: str | None = "client") -> dict:
        """Closed-loop throughput with wrk (the Python client when wrk is missing)."""
        cpus = self.client_cpu if client_cpu == "client" else client_cpu
        if self.wrk is None:
            if self.plan.warmup:
                self.loadgen(target, kind, ["--connections", str(self.plan.connections)], self.plan.warmup, cpus)
            return self.loadgen(target, kind, ["--connections", str(self.plan.connections)], self.plan.duration, cpus)
        if self.plan.warmup:
            self.run_wrk(target, kind, self.plan.warmup, cores, cpus)
        return self.run_wrk(target, kind, self.plan.duration, cores, cpus)

    def run_wrk(self, target: Proc, kind: str, seconds: float, cores: int, cpus: str | None) -> dict:
        run = hooks.new_run_id()
        file = self.work / f"requests-{run}.bin"
        if kind == "hook":
            count = int(PRESIGN_RATE * cores * seconds) + 1000
            hooks.write_requests(file, hooks.hook_requests(target.hostport, run, count))
        else:
            count = 20000  # the stub is stateless: direct calls may repeat
            hooks.write_requests(file, hooks.direct_requests(target.hostport, run, count))
        command = pinned([self.wrk, "-t1", f"-c{self.plan.connections}", f"-d{max(1, round(seconds))}s",
                          "--timeout", "5s", "-s", str(WRK_SCRIPT), target.url, "--", str(file), "1"], cpus)
        out = subprocess.run(command, capture_output=True, text=True, check=False, timeout=seconds + 60)
        file.unlink(missing_ok=True)
        match = re.search(r"^WRKJSON (.*)$", out.stdout, re.M)
        if not match:
            raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
        data = json.loads(match.group(1))
        seconds_run = data["duration_us"] / 1e6
        errors = sum(data[k] for k in ("connect_errors", "read_errors", "write_errors", "non_2xx", "timeouts"))
        if kind == "hook" and data["wrapped"]:
            errors += data["wrapped"]
        return {"tool": "wrk", "connections": self.plan.connections, "seconds": round(seconds_run, 2),
                "requests": data["requests"], "rps": round(data["requests"] / seconds_run, 1), "errors": errors,
                "latency_ms": {k: v / 1000 for k, v in data["latency_us"].items()}, "presigned": count,
                "wrapped": data["wrapped"]}

    def loadgen(self, target: Proc, kind: str, args: list[str], seconds: float, cpus: str | None) -> dict:
        command = pinned([sys.executable, "-m", "bench.loadgen", target.url, "--kind", kind, "--seconds",
                          str(seconds), *args], cpus)
        out = subprocess.run(command, capture_output=True, text=True, env=python_env(), check=False,
                             timeout=seconds + 120)
        if out.returncode != 0:
            raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
        data = json.loads(out.stdout.strip().splitlines()[-1])
        if data["mode"] == "closed_loop":
            data.update(tool="python", errors=data["non_2xx"] + data["failed"])
        return data

    def latency(self, target: Proc, kind: str) -> dict:
        return self.loadgen(target, kind, ["--rate", str(self.plan.rate)], self.plan.latency_seconds, self.client_cpu)

    # -- checks ------------------------------------------------------------------------
    def gateway_facts(self, proc: Proc, name: str, store_url: str) -> dict:
        """Evidence that every feature ran: metrics counted, log lines written, ledger rows kept."""
        facts: dict = {}
        try:
            text = urllib.request.urlopen(proc.url + "/metrics", timeout=5).read().decode()  # noqa: S310 - loopback
            facts["metrics_requests_ok"] = sum(float(m) for m in re.findall(
                r'^igsp_requests_total\{[^}]*outcome="ok"[^}]*\} (\S+)$', text, re.M))
        except OSError as exc:
            facts["metrics_error"] = str(exc)
        log = self.work / f"{name}.log"
        if log.exists():
            with open(log, "rb") as f:
                facts["access_log_lines"] = sum(1 for line in f if b'"msg":"request"' in line)
        if store_url.startswith("sqlite"):
            db = sqlite3.connect(f"file:{store_url.split(':///', 1)[1]}?mode=ro", uri=True)
            facts["ledger_rows"] = db.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]
            facts["replay_keys"] = db.execute("SELECT COUNT(*) FROM kv WHERE ns='sig'").fetchone()[0]
            db.close()
        return facts

    # -- the whole run -------------------------------------------------------------------
    def run(self) -> dict:
        plan = self.plan
        started = time.time()
        stub = self.stub()
        peer = self.peer(stub.url)
        tp, lat = self.results["throughput"], self.results["latency"]

        print(f"direct: wrk -> stub {stub.url}", file=sys.stderr, flush=True)
        tp["direct"] = self.throughput(stub, "direct")
        lat["direct"] = self.latency(stub, "direct")
        print("peer: the hand-written translator", file=sys.stderr, flush=True)
        tp["peer"] = self.throughput(peer, "hook")
        lat["peer"] = self.latency(peer, "hook")
        self.stop(peer)

        stores = []
        for store in plan.stores:
            if store == "sqlite":
                stores.append(("gateway-sqlite", f"sqlite:///{self.work}/gateway.db", None))
            elif store == "redis":
                if not redis_store_available():
                    plan.notes.append("redis: skipped, the Redis store (gateway/store/redis.py) is not in this tree yet")
                    continue
                redis = Redis(self.work, self.client_cpu)
                self.procs.append(redis)
                stores.append(("gateway-redis", redis.start().url, redis))
        for name, url, _ in stores:
            print(f"{name}: the gateway, one worker", file=sys.stderr, flush=True)
            gw = self.gateway(name, url, stub.url)
            tp[name] = self.throughput(gw, "hook")
            lat[name] = self.latency(gw, "hook")
            self.results["checks"][name] = self.gateway_facts(gw, name, url)
            self.stop(gw)

        if plan.scaling and self.server_cpu is not None:
            self.scaling(stub)
        if plan.soak:
            self.soak(stub)
        self.results["elapsed_seconds"] = round(time.time() - started, 1)
        return self.summarise()

    def scaling(self, stub: Proc) -> None:
        """One worker vs two, both with every core available to everything (2-core honest view)."""
        every = ",".join(map(str, range(cpu_count())))
        out = self.results["scaling"]
        for workers in (1, 2):
            name = f"gateway-sqlite-w{workers}"
            gw = self.gateway(name, f"sqlite:///{self.work}/{name}.db", stub.url, workers=workers, cpus=every)
            print(f"{name}: scaling, every core shared", file=sys.stderr, flush=True)
            out[f"workers_{workers}"] = self.throughput(gw, "hook", cores=2, client_cpu=every)
            self.stop(gw)
        out["ratio_2_over_1"] = round(out["workers_2"]["rps"] / out["workers_1"]["rps"], 2)

    def soak(self, stub: Proc) -> None:
        gw = self.gateway("gateway-soak", f"sqlite:///{self.work}/soak.db", stub.url)
        print(f"soak: {self.plan.soak:.0f} s at {self.plan.soak_rate:.0f} req/s", file=sys.stderr, flush=True)
        self.loadgen(gw, "hook", ["--rate", str(self.plan.soak_rate)], 5, self.client_cpu)  # warm up
        command = pinned([sys.executable, "-m", "bench.loadgen", gw.url, "--kind", "hook", "--rate",
                          str(self.plan.soak_rate), "--seconds", str(self.plan.soak)], self.client_cpu)
        client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=python_env())
        samples = []
        began = time.time()
        while client.poll() is None:
            samples.append((round(time.time() - began, 1), gw.rss_kib()))
            time.sleep(min(10.0, max(1.0, self.plan.soak / 30)))
        samples.append((round(time.time() - began, 1), gw.rss_kib()))
        result = json.loads(client.stdout.read().decode().strip().splitlines()[-1])
        self.stop(gw)
        start_kib, end_kib = samples[0][1], samples[-1][1]
        self.results["soak"] = {
            "seconds": self.plan.soak, "rate": self.plan.soak_rate, "achieved_rate": result.get("achieved_rate"),
            "errors": result.get("non_2xx", 0) + result.get("failed", 0), "latency": result.get("latency"),
            "rss_start_kib": start_kib, "rss_end_kib": end_kib, "rss_max_kib": max(s[1] for s in samples),
            "rss_change_pct": round(100 * (end_kib - start_kib) / start_kib, 1) if start_kib else None,
            "samples": samples,
        }

    # -- report --------------------------------------------------------------------------
    def summarise(self) -> dict:
        tp, lat = self.results["throughput"], self.results["latency"]
        ratios, added = {}, {}
        for name in tp:
            if name.startswith("gateway"):
                ratios[name] = {"vs_peer": round(tp[name]["rps"] / tp["peer"]["rps"], 3),
                                "vs_direct": round(tp[name]["rps"] / tp["direct"]["rps"], 3)}
        ratios["peer"] = {"vs_peer": 1.0, "vs_direct": round(tp["peer"]["rps"] / tp["direct"]["rps"], 3)}
        base = lat["direct"]["latency"]
        for name, value in lat.items():
            if name != "direct" and value["latency"].get("count"):
                added[name] = {"p50_ms": round(value["latency"]["p50_ms"] - base["p50_ms"], 3),
                               "p99_ms": round(value["latency"]["p99_ms"] - base["p99_ms"], 3)}
        self.results.update(ratios=ratios, added_latency=added, targets=self.targets(ratios, added))
        self.results["machine"] = machine()
        self.results["plan"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.plan).items()}
        return self.results

    def targets(self, ratios: dict, added: dict) -> dict:
        found = {}
        if "gateway-sqlite" in ratios:
            found["sqlite_vs_peer_ge_1.0"] = ratios["gateway-sqlite"]["vs_peer"] >= 1.0
        if "gateway-redis" in ratios:
            found["redis_vs_peer_ge_0.8"] = ratios["gateway-redis"]["vs_peer"] >= 0.8
        for name, value in added.items():
            if name.startswith("gateway"):
                found[f"{name}_added_p50_le_0.5ms"] = value["p50_ms"] <= 0.5
                found[f"{name}_added_p99_le_2ms"] = value["p99_ms"] <= 2.0
        if self.results["scaling"].get("ratio_2_over_1"):
            found["workers_2_over_1_ge_1.7"] = self.results["scaling"]["ratio_2_over_1"] >= 1.7
        if self.results["soak"]:
            change = self.results["soak"]["rss_change_pct"]
            found["soak_rss_within_10pct"] = change is not None and abs(change) <= 10
        return found


def machine() -> dict:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    import aiohttp

    try:
        import uvloop

        uvloop_version = uvloop.__version__
    except ImportError:
        uvloop_version = None
    return {"cpus": cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "aiohttp": aiohttp.__version__, "uvloop": uvloop_version, "platform": platform.platform()}


def table(results: dict) -> str:
    tp, lat, ratios, added = results["throughput"], results["latency"], results["ratios"], results["added_latency"]
    rate = results["plan"]["rate"]
    rows = [("target", "req/s", "errors", "x peer", "x direct", f"p50@{rate:g}/s", f"p99@{rate:g}/s",
             "+p50 ms", "+p99 ms")]
    for name in tp:
        t, l_ = tp[name], lat.get(name, {}).get("latency", {})
        r, a = ratios.get(name, {}), added.get(name, {})
        rows.append((name, f"{t['rps']:.0f}", str(t.get("errors", 0)), f"{r['vs_peer']:.2f}" if r else "-",
                     f"{r['vs_direct']:.2f}" if r else "1.00", f"{l_.get('p50_ms', 0):.3f}", f"{l_.get('p99_ms', 0):.3f}",
                     f"{a['p50_ms']:+.3f}" if a else "-", f"{a['p99_ms']:+.3f}" if a else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    scaling = results["scaling"]
    if scaling.get("ratio_2_over_1"):
        lines.append(f"\n--workers 2 / --workers 1 (every core shared with wrk and the stub): "
                     f"{scaling['workers_2']['rps']:.0f} / {scaling['workers_1']['rps']:.0f} req/s = "
                     f"{scaling['ratio_2_over_1']:.2f}x")
    if results["soak"]:
        s = results["soak"]
        lines.append(f"soak {s['seconds']:.0f} s at {s['rate']:.0f} req/s: RSS {s['rss_start_kib'] / 1024:.1f} -> "
                     f"{s['rss_end_kib'] / 1024:.1f} MiB ({s['rss_change_pct']:+.1f} %), max "
                     f"{s['rss_max_kib'] / 1024:.1f} MiB, errors {s['errors']}")
    for name, facts in results["checks"].items():
        lines.append(f"{name}: " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in facts.items()))
    for note in results["plan"]["notes"]:
        lines.append(f"note: {note}")
    if results["targets"]:
        lines.append("targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in results["targets"].items()))
    return "\n".join(lines)


def parse(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each throughput run (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--rate", type=float, default=200.0, help="fixed rate of the latency runs (default 200/s)")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="length of each latency run (default 10)")
    parser.add_argument("--stores", default="sqlite,redis", help="gateway store variants (default sqlite,redis)")
    parser.add_argument("--no-scaling", action="store_true", help="skip the --workers 1 vs 2 runs")
    parser.add_argument("--soak", type=float, default=0.0, metavar="SECONDS", help="add a memory soak of this long")
    parser.add_argument("--soak-rate", type=float, default=500.0, help="request rate of the soak (default 500/s)")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install wrk (use the Python client)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds in all: checks that it runs, not speed")
    parser.add_argument("--out", type=Path, help="the JSON result file (default bench/results/bench-<time>.json)")
    args = parser.parse_args(argv)
    plan = Plan(duration=args.duration, connections=args.connections, rate=args.rate,
                latency_seconds=args.latency_seconds, stores=tuple(s for s in args.stores.split(",") if s),
                scaling=not args.no_scaling, soak=args.soak, soak_rate=args.soak_rate,
                install_wrk=not args.no_install, smoke=args.smoke, out=args.out)
    if plan.smoke:
        plan.duration, plan.warmup, plan.latency_seconds, plan.scaling, plan.connections = 1.0, 0.0, 1.0, False, 8
    return plan


def main(argv: list[str] | None = None) -> int:
    plan = parse(argv)
    bench = Bench(plan)
    try:
        results = bench.run()
    finally:
        bench.cleanup()
    out = plan.out or RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
