"""``python -m bench``: throughput, added latency, worker scaling and (optionally) a soak.

All servers run at once on loopback; the load moves from one to the next in rounds
(``--rounds``), so a change in the machine's background load touches every target alike
and the ratios, all measured in one run, stay fair. Besides requests per second, each
target's CPU time per request is read from /proc: on a shared machine it is the steadier
measure of what a request costs.

Layout on two or more cores: the servers under test are pinned to the last core; wrk,
the wallet stub, redis-server and the latency client to the others. The worker-scaling
runs give the gateway every core, shared with the rest: on a 2-core machine that
understates scaling, and the report says so.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import shutil
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
from bench.procs import ROOT, Proc, Redis, cpu_count, cpu_seconds, ensure_wrk, pinned, python_env

RESULTS = ROOT / "bench" / "results"
WRK_SCRIPT = ROOT / "bench" / "wrk.lua"
MAPPING = ROOT / "mappings" / "hub88-wallet.yaml"
#: The throughput floors against the peer, per store, in both pairs (signed and unsigned).
TARGET_VS_PEER = {"sqlite": 0.85, "redis": 0.8}
#: The most the gateway may add at p50 at the fixed rate, as a multiple of what the peer adds.
ADDED_P50_VS_PEER = 1.2
#: Runs that ``--only`` selects, each on its own.
ONLY = ("overload", "capacity", "cluster")
#: Requests pre-signed per second of a wrk run, per server core: above any rate reached here.
PRESIGN_RATE = 14000


@dataclass
class Plan:
    duration: float = 10.0
    rounds: int = 5
    warmup: float = 1.0
    connections: int = 32
    rate: float = 200.0
    latency_seconds: float = 10.0
    scaling: bool = True
    unsigned: bool = True
    stores: tuple = ("sqlite", "redis")
    soak: float = 0.0
    soak_rate: float = 500.0
    install_wrk: bool = True
    python_client: bool = False
    keep: bool = False
    smoke: bool = False
    only: str | None = None
    out: Path | None = None
    notes: list = field(default_factory=list)


@dataclass
class Target:
    name: str
    proc: Proc
    kind: str  # "hook" (signed iGSP hooks) or "direct" (Hub88 calls to the stub)
    group: str  # "signed" or "unsigned": which peer it is compared with
    store_url: str | None = None
    cores: int = 1
    runs: list = field(default_factory=list)


def redis_store_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gateway.store.redis") is not None


class Bench:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.work = Path(tempfile.mkdtemp(prefix="igsp-bench-"))
        self.wrk = None if plan.python_client else ensure_wrk(plan.install_wrk)
        if self.wrk is None:
            plan.notes.append("throughput measured with the Python client (bench/loadgen.py), not wrk")
        cpus = cpu_count()
        self.server_cpu = str(cpus - 1) if cpus >= 2 else None
        self.client_cpu = ",".join(map(str, range(cpus - 1))) if cpus >= 2 else None
        self.every_cpu = ",".join(map(str, range(cpus)))
        self.results: dict = {"throughput": {}, "latency": {}, "scaling": {}, "checks": {}, "soak": None}
        self.procs: list = []
        from gateway.tools.simulators.hub88_wallet import generate_keypair

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

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        if self.plan.keep:
            print(f"logs, configs and databases kept in {self.work}", file=sys.stderr)
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    def stub(self) -> Proc:
        return self.start(Proc("stub", [sys.executable, "-m", "bench.stub"], cpus=self.client_cpu,
                               log=self.work / "stub.log"))

    def peer(self, name: str, upstream: str, signed: bool) -> Proc:
        command = [sys.executable, "-m", "bench.peer", "--upstream", upstream, "--api-key", hooks.API_KEY,
                   "--secret", hooks.SECRET]
        if signed:
            command += ["--rsa-key", str(self.key_file)]
        return self.start(Proc(name, command, cpus=self.server_cpu, log=self.work / f"{name}.log"))

    def gateway(self, name: str, store_url: str, upstream: str, *, workers: int = 1, cpus: str | None = None,
                mapping: Path = MAPPING, extra: dict | None = None) -> Proc:
        config = {
            "version": 1,
            "server": {"host": "127.0.0.1", "port": 0, "drain_seconds": 2, "shutdown_grace_seconds": 0,
                       "access_log": True},
            "store": {"url": store_url},
            "logging": {"level": "info"},
            "partners": [{"id": hooks.PARTNER, "face": "platform", "mapping": str(mapping),
                          "api_key": hooks.API_KEY, "secrets": [hooks.SECRET]}],
            **(extra or {}),
        }
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return self.start(Proc(name, [sys.executable, "-m", "gateway", "serve", "--config", str(path),
                                      "--workers", str(workers)],
                               cpus=cpus or self.server_cpu, log=self.work / f"{name}.log",
                               env={"HUB88_WALLET_URL": upstream, "HUB88_PRIVATE_KEY": str(self.key_file)},
                               cwd=self.work))

    def unsigned_mapping(self) -> Path:
        """The shipped mapping without its signer: isolates the gateway's own cost."""
        data = yaml.safe_load(MAPPING.read_text())
        data.pop("signer", None)
        path = self.work / "hub88-wallet-unsigned.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def store_url_for(self, name: str, store: str) -> str:
        """A store of its own for one gateway target (its own file, its own redis-server), so
        each target's facts (ledger rows) are its own."""
        if store == "sqlite":
            return f"sqlite:///{self.work}/{name}.db"
        if store == "redis":
            redis = Redis(self.work / name, self.client_cpu)
            self.procs.append(redis)
            return redis.start().url
        raise SystemExit(f"unknown store {store!r}: use sqlite and/or redis")

    # -- load ----------------------------------------------------------------------
    def closed_loop(self, target: Target, seconds: float, cpus: str | None) -> dict:
        """One closed-loop run with wrk (the Python client when wrk is missing), with CPU used."""
        before = cpu_seconds(target.proc)
        if self.wrk is not None:
            result = self.run_wrk(target, seconds, cpus)
        else:
            result = self.loadgen([target], ["--connections", str(self.plan.connections)], seconds, cpus)[target.name]
        result["cpu_seconds"] = round(cpu_seconds(target.proc) - before, 4)
        return result

    def run_wrk(self, target: Target, seconds: float, cpus: str | None) -> dict:
        return self.start_wrk(target, seconds, cpus)()

    def presign(self, target: Target, seconds: float) -> Path:
        """The requests of one wrk run against ``target``, written to a file for ``wrk.lua``."""
        run = hooks.new_run_id()
        file = self.work / f"requests-{run}.bin"
        seconds = max(1, math.ceil(seconds))
        if target.kind == "hook":
            count = int(PRESIGN_RATE * target.cores * seconds) + 1000
            hooks.write_requests(file, hooks.hook_requests(target.proc.hostport, run, count))
        else:
            count = 20000  # the stub is stateless: direct calls may repeat
            hooks.write_requests(file, hooks.direct_requests(target.proc.hostport, run, count))
        return file

    def start_wrk(self, target: Target, seconds: float, cpus: str | None, file: Path | None = None):
        """Start one wrk run against ``target`` (on ``file``, else requests pre-signed now) and
        return the function that waits for it and gives its result: several can run at once
        (bench/cluster.py)."""
        file = file or self.presign(target, seconds)
        seconds = max(1, math.ceil(seconds))
        command = pinned([self.wrk, "-t1", f"-c{self.plan.connections}", f"-d{seconds}s", "--timeout", "5s",
                          "-s", str(WRK_SCRIPT), target.proc.url, "--", str(file), "1"], cpus)
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def result() -> dict:
            try:
                stdout, stderr = proc.communicate(timeout=seconds + 60)
            finally:
                file.unlink(missing_ok=True)
            match = re.search(r"^WRKJSON (.*)$", stdout, re.M)
            if not match:
                raise RuntimeError(f"wrk failed: {stdout}\n{stderr}")
            data = json.loads(match.group(1))
            errors = sum(data[k] for k in ("connect_errors", "read_errors", "write_errors", "non_2xx", "timeouts"))
            if target.kind == "hook":
                errors += data["wrapped"]  # a repeated transaction: answered from the ledger, not what we meant to measure
            return {"tool": "wrk", "seconds": data["duration_us"] / 1e6, "requests": data["requests"],
                    "errors": errors, "latency_ms": {k: v / 1000 for k, v in data["latency_us"].items()}}
        return result

    def start_closed_loop(self, target: Target, seconds: float, cpus: str | None, file: Path | None = None):
        """``start_wrk`` (on ``file``, from ``presign``), or the Python client's closed loop when
        wrk is missing."""
        if self.wrk is not None:
            return self.start_wrk(target, seconds, cpus, file)
        command = pinned([sys.executable, "-m", "bench.loadgen", f"{target.name}={target.kind}@{target.proc.url}",
                          "--seconds", str(seconds), "--connections", str(self.plan.connections)], cpus)
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())

        def result() -> dict:
            stdout, stderr = proc.communicate(timeout=seconds * 20 + 120)
            if proc.returncode != 0:
                raise RuntimeError(f"load generator failed: {stderr[-2000:]}")
            data = json.loads(stdout.strip().splitlines()[-1])
            return {"tool": "python", "seconds": data["seconds"], "requests": data["requests"],
                    "errors": data["non_2xx"] + data["failed"], "latency_ms": data["latency"]}
        return result

    def loadgen(self, targets: list[Target], args: list[str], seconds: float, cpus: str | None) -> dict:
        specs = [f"{t.name}={t.kind}@{t.proc.url}" for t in targets]
        command = pinned([sys.executable, "-m", "bench.loadgen", *specs, "--seconds", str(seconds), *args], cpus)
        out = subprocess.run(command, capture_output=True, text=True, env=python_env(), check=False,
                             timeout=seconds * 20 + 120)
        if out.returncode != 0:
            raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
        data = json.loads(out.stdout.strip().splitlines()[-1])
        if data.get("mode") == "closed_loop":
            data = {targets[0].name: {"tool": "python", "seconds": data["seconds"], "requests": data["requests"],
                                      "errors": data["non_2xx"] + data["failed"], "latency_ms": data["latency"]}}
        return data

    def throughput(self, targets: list[Target], cpus: str | None, rounds: int) -> dict:
        """Warm each target, then ``rounds`` rounds of one closed-loop run per target."""
        seconds = self.plan.duration / rounds
        if self.plan.warmup:
            for target in targets:
                self.closed_loop(target, self.plan.warmup, cpus)
        for _ in range(rounds):
            for target in targets:
                target.runs.append(self.closed_loop(target, seconds, cpus))
        out = {}
        for target in targets:
            runs = target.runs
            requests, secs = sum(r["requests"] for r in runs), sum(r["seconds"] for r in runs)
            cpu = sum(r["cpu_seconds"] for r in runs)
            out[target.name] = {
                "group": target.group, "tool": runs[0]["tool"], "connections": self.plan.connections,
                "rounds": len(runs), "seconds": round(secs, 2), "requests": requests,
                "rps": round(requests / secs, 1), "rps_per_round": [round(r["requests"] / r["seconds"], 1) for r in runs],
                "cpu_us_per_request": round(cpu / requests * 1e6, 1) if requests else None,
                "errors": sum(r["errors"] for r in runs), "latency_ms_last_round": runs[-1]["latency_ms"],
            }
        return out

    # -- checks ------------------------------------------------------------------------
    def gateway_facts(self, target: Target) -> dict:
        """Evidence that every feature ran: metrics counted, log lines written, ledger rows kept."""
        facts: dict = {}
        try:
            text = urllib.request.urlopen(target.proc.internal_url + "/metrics", timeout=5).read().decode()  # noqa: S310
            facts["metrics_requests_ok"] = int(sum(float(m) for m in re.findall(
                r'^igsp_requests_total\{[^}]*outcome="ok"[^}]*\} (\S+)$', text, re.M)))
        except OSError as exc:
            facts["metrics_error"] = str(exc)
        log = target.proc.log
        if log and log.exists():
            with open(log, "rb") as f:
                facts["access_log_lines"] = sum(1 for line in f if b'"msg":"request"' in line)
        if target.store_url and target.store_url.startswith("sqlite"):
            db = sqlite3.connect(f"file:{target.store_url.split(':///', 1)[1]}?mode=ro", uri=True)
            facts["ledger_rows"] = db.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]
            facts["replay_keys"] = db.execute("SELECT COUNT(*) FROM kv WHERE ns='sig'").fetchone()[0]
            db.close()
        elif target.store_url and target.store_url.startswith("redis"):
            import redis

            client = redis.Redis.from_url(target.store_url)
            facts["ledger_rows"] = sum(1 for _ in client.scan_iter("igsp:{L*}:tx:*", count=1000))
            facts["replay_keys"] = sum(1 for _ in client.scan_iter("igsp:{kv:sig:*", count=1000))
            client.close()
        return facts

    # -- the whole run -------------------------------------------------------------------
    def run(self) -> dict:
        plan = self.plan
        started = time.time()
        stub = self.stub()
        targets = [Target("direct", stub, "direct", "signed"),
                   Target("peer", self.peer("peer", stub.url, signed=True), "hook", "signed")]
        stores = [store for store in plan.stores if store != "redis" or redis_store_available()]
        if len(stores) < len(plan.stores):
            plan.notes.append("redis: skipped, the Redis store (gateway/store/redis.py) is not in this tree")
        for store in stores:
            name = f"gateway-{store}"
            url = self.store_url_for(name, store)
            targets.append(Target(name, self.gateway(name, url, stub.url), "hook", "signed", url))
        if plan.unsigned:
            targets.append(Target("peer-unsigned", self.peer("peer-unsigned", stub.url, signed=False), "hook",
                                  "unsigned"))
            for store in stores:
                name = f"gateway-{store}-unsigned"
                url = self.store_url_for(name, store)
                targets.append(Target(name, self.gateway(name, url, stub.url, mapping=self.unsigned_mapping()),
                                      "hook", "unsigned", url))

        print(f"throughput: {', '.join(t.name for t in targets)} in {plan.rounds} rounds", file=sys.stderr, flush=True)
        self.results["throughput"] = self.throughput(targets, self.client_cpu, plan.rounds)
        print(f"latency at {plan.rate:g} req/s", file=sys.stderr, flush=True)
        self.results["latency"] = self.loadgen(
            targets, ["--rate", str(plan.rate), "--rounds", str(plan.rounds)], plan.latency_seconds / plan.rounds,
            self.client_cpu)
        for target in targets:
            if target.name.startswith("gateway"):
                self.results["checks"][target.name] = self.gateway_facts(target)
        for target in targets[1:]:
            self.stop(target.proc)

        if plan.scaling and self.server_cpu is not None:
            self.scaling(stub)
        if plan.soak:
            self.soak(stub)
        self.results["elapsed_seconds"] = round(time.time() - started, 1)
        return self.summarise()

    def scaling(self, stub: Proc) -> None:
        """--workers 1 vs 2, every process free to use every core (the honest view on 2 cores)."""
        print("scaling: --workers 1 vs 2 on every core", file=sys.stderr, flush=True)
        targets = []
        for workers in (1, 2):
            name = f"gateway-sqlite-w{workers}"
            url = f"sqlite:///{self.work}/{name}.db"
            proc = self.gateway(name, url, stub.url, workers=workers, cpus=self.every_cpu)
            targets.append(Target(name, proc, "hook", "scaling", url, cores=2))
        out = self.throughput(targets, self.every_cpu, max(1, min(3, self.plan.rounds)))
        for target in targets:
            self.stop(target.proc)
        w1, w2 = out["gateway-sqlite-w1"], out["gateway-sqlite-w2"]
        out["ratio_2_over_1"] = round(w2["rps"] / w1["rps"], 2)
        # What two dedicated cores would give if CPU were the only limit: twice the work,
        # less whatever a request costs more with two workers (shared SQLite file, locks).
        out["cpu_bound_estimate_2_over_1"] = round(2 * w1["cpu_us_per_request"] / w2["cpu_us_per_request"], 2)
        self.results["scaling"] = out

    def soak(self, stub: Proc) -> None:
        url = f"sqlite:///{self.work}/soak.db"
        target = Target("gateway-soak", self.gateway("gateway-soak", url, stub.url), "hook", "soak", url)
        warmup = max(10.0, min(60.0, self.plan.soak / 10))
        print(f"soak: {warmup:.0f} s warm-up, then {self.plan.soak:.0f} s at {self.plan.soak_rate:.0f} req/s",
              file=sys.stderr, flush=True)
        # Memory is measured from the end of a warm-up at the same rate: caches, pools and
        # the client's connections have reached their working size by then.
        self.loadgen([target], ["--rate", str(self.plan.soak_rate)], warmup, self.client_cpu)
        command = pinned([sys.executable, "-m", "bench.loadgen", f"soak=hook@{target.proc.url}", "--rate",
                          str(self.plan.soak_rate), "--seconds", str(self.plan.soak)], self.client_cpu)
        client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=python_env())
        samples = []
        began = time.time()
        while client.poll() is None:
            samples.append((round(time.time() - began, 1), target.proc.rss_kib()))
            time.sleep(min(10.0, max(1.0, self.plan.soak / 30)))
        samples.append((round(time.time() - began, 1), target.proc.rss_kib()))
        result = json.loads(client.stdout.read().decode().strip().splitlines()[-1])["soak"]
        self.stop(target.proc)
        start_kib, end_kib = samples[0][1], samples[-1][1]
        self.results["soak"] = {
            "seconds": self.plan.soak, "warmup_seconds": warmup, "rate": self.plan.soak_rate,
            "achieved_rate": result.get("achieved_rate"),
            "errors": result.get("non_2xx", 0) + result.get("failed", 0), "latency": result.get("latency"),
            "waited_for_a_connection": result.get("waited_for_a_connection", 0),
            "rss_start_kib": start_kib, "rss_end_kib": end_kib, "rss_max_kib": max(s[1] for s in samples),
            "rss_change_pct": round(100 * (end_kib - start_kib) / start_kib, 1) if start_kib else None,
            "samples": samples,
        }

    # -- report --------------------------------------------------------------------------
    def summarise(self) -> dict:
        tp, lat = self.results["throughput"], self.results["latency"]
        ratios, added = {}, {}
        direct = tp["direct"]
        for name, value in tp.items():
            if name == "direct":
                continue
            peer = tp["peer-unsigned" if value["group"] == "unsigned" else "peer"]
            ratios[name] = {
                "vs_peer": round(value["rps"] / peer["rps"], 3),
                "vs_direct": round(value["rps"] / direct["rps"], 3),
                "cpu_vs_peer": round(peer["cpu_us_per_request"] / value["cpu_us_per_request"], 3)
                if value["cpu_us_per_request"] else None,
                "vs_peer_per_round": [round(a / b, 3) for a, b in zip(value["rps_per_round"], peer["rps_per_round"],
                                                                      strict=True)],
            }
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
        for store, floor in TARGET_VS_PEER.items():
            for name in (f"gateway-{store}", f"gateway-{store}-unsigned"):
                if name in ratios:
                    found[f"{name}_vs_peer_ge_{floor}"] = ratios[name]["vs_peer"] >= floor
        for name, value in added.items():
            peer = added.get("peer-unsigned" if name.endswith("-unsigned") else "peer")
            if name.startswith("gateway-") and peer and peer["p50_ms"] > 0:
                found[f"{name}_added_p50_le_{ADDED_P50_VS_PEER}x_peer"] = \
                    value["p50_ms"] <= ADDED_P50_VS_PEER * peer["p50_ms"]
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
    try:
        load = [round(x, 2) for x in __import__("os").getloadavg()]
    except OSError:
        load = None
    return {"cpus": cpu_count(), "cpu_model": model, "python": platform.python_version(), "load_average": load,
            "aiohttp": aiohttp.__version__, "uvloop": uvloop_version, "platform": platform.platform()}


GROUP_TITLES = {
    "signed": "signed upstream: the shipped mapping (RSA-SHA256 on every wallet call); the peer signs too",
    "unsigned": "unsigned upstream: the same mapping without its signer; the peer without RSA",
}


def table(results: dict) -> str:
    tp, lat, ratios, added = results["throughput"], results["latency"], results["ratios"], results["added_latency"]
    rate = results["plan"]["rate"]
    header = ("target", "req/s", "cpu us/req", "x peer", "x peer cpu", "x direct", f"p50@{rate:g}/s",
              f"p99@{rate:g}/s", "+p50 ms", "+p99 ms", "errors")
    rows = []
    for group in ("signed", "unsigned"):
        names = [n for n, v in tp.items() if v["group"] == group]
        if not names:
            continue
        rows.append((f"# {GROUP_TITLES[group]}",))
        for name in names:
            t, l_ = tp[name], lat.get(name, {}).get("latency", {})
            r, a = ratios.get(name), added.get(name)
            rows.append((name, f"{t['rps']:.0f}", f"{t['cpu_us_per_request']:.0f}",
                         f"{r['vs_peer']:.2f}" if r else "-", f"{r['cpu_vs_peer']:.2f}" if r else "-",
                         f"{r['vs_direct']:.3f}" if r else "1", f"{l_.get('p50_ms', 0):.3f}",
                         f"{l_.get('p99_ms', 0):.3f}", f"{a['p50_ms']:+.3f}" if a else "-",
                         f"{a['p99_ms']:+.3f}" if a else "-", str(t["errors"])))
    widths = [max(len(row[i]) for row in [header, *rows] if len(row) > 1) for i in range(len(header))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    lines = [line(header), "  ".join("-" * w for w in widths)]
    lines += [row[0] if len(row) == 1 else line(row) for row in rows]
    for name, r in ratios.items():
        if name.startswith("gateway"):
            lines.append(f"{name}: x peer per round {r['vs_peer_per_round']}")
    scaling = results["scaling"]
    if scaling.get("ratio_2_over_1"):
        w1, w2 = scaling["gateway-sqlite-w1"], scaling["gateway-sqlite-w2"]
        lines.append(f"--workers 2 / --workers 1 (every core shared with wrk and the stub): "
                     f"{w2['rps']:.0f} / {w1['rps']:.0f} req/s = {scaling['ratio_2_over_1']:.2f}x measured; "
                     f"cpu us/req {w2['cpu_us_per_request']:.0f} vs {w1['cpu_us_per_request']:.0f}, so "
                     f"{scaling['cpu_bound_estimate_2_over_1']:.2f}x on two cores of its own (estimate)")
    if results["soak"]:
        s = results["soak"]
        lines.append(f"soak {s['seconds']:.0f} s at {s['rate']:.0f} req/s: RSS {s['rss_start_kib'] / 1024:.1f} -> "
                     f"{s['rss_end_kib'] / 1024:.1f} MiB ({s['rss_change_pct']:+.1f} %), max "
                     f"{s['rss_max_kib'] / 1024:.1f} MiB, errors {s['errors']}")
    for name, facts in results["checks"].items():
        lines.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in facts.items()))
    lines.append(f"machine: {results['machine']['cpus']} cpus, load average {results['machine']['load_average']}, "
                 f"{results['elapsed_seconds']} s")
    for note in results["plan"]["notes"]:
        lines.append(f"note: {note}")
    if results["targets"]:
        lines.append("targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in results["targets"].items()))
    return "\n".join(lines)


def parse(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per target (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds the load is split into (default 5)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--rate", type=float, default=200.0, help="fixed rate of the latency runs (default 200/s)")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="latency run per target (default 10)")
    parser.add_argument("--stores", default="sqlite,redis", help="gateway store variants (default sqlite,redis)")
    parser.add_argument("--no-unsigned", action="store_true", help="skip the unsigned-upstream pair")
    parser.add_argument("--no-scaling", action="store_true", help="skip the --workers 1 vs 2 runs")
    parser.add_argument("--soak", type=float, default=0.0, metavar="SECONDS", help="add a memory soak of this long")
    parser.add_argument("--soak-rate", type=float, default=500.0, help="request rate of the soak (default 500/s)")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install wrk (use the Python client)")
    parser.add_argument("--python-client", action="store_true", help="closed-loop load from bench/loadgen.py, not wrk")
    parser.add_argument("--keep", action="store_true", help="keep the logs, configs and databases of the run")
    parser.add_argument("--smoke", action="store_true", help="a few seconds in all: checks that it runs, not speed")
    parser.add_argument("--only", choices=ONLY, help="run only this: overload (3x capacity, bench/overload.py), "
                                                     "capacity (Redis commands per bet, bench/capacity.py) or "
                                                     "cluster (1 and 2 gateway processes over a Redis Cluster, "
                                                     "bench/cluster.py)")
    parser.add_argument("--out", type=Path, help="the JSON result file (default bench/results/bench-[<only>-]<time>.json)")
    args = parser.parse_args(argv)
    plan = Plan(duration=args.duration, rounds=max(1, args.rounds), connections=args.connections, rate=args.rate,
                latency_seconds=args.latency_seconds, stores=tuple(s for s in args.stores.split(",") if s),
                scaling=not args.no_scaling, unsigned=not args.no_unsigned, soak=args.soak,
                soak_rate=args.soak_rate, install_wrk=not args.no_install, python_client=args.python_client,
                keep=args.keep, smoke=args.smoke, only=args.only, out=args.out)
    if plan.smoke:
        plan.duration, plan.rounds, plan.warmup, plan.latency_seconds = 1.0, 1, 0.0, 1.0
        plan.scaling, plan.unsigned, plan.connections = False, False, 8
    return plan


def run_only(bench: Bench, plan: Plan) -> tuple[dict, str]:
    """One run on its own (``--only``): its results and its table."""
    if plan.only == "overload":
        from bench import overload

        seconds, peak, ramp = (1.0, 1.0, 1.0) if plan.smoke else (8.0, 4.0, 12.0)
        results = overload.run(bench.work, bench.client_cpu, bench.server_cpu, bench.start, bench.gateway,
                               bench.stop, seconds=seconds, peak_seconds=peak, ramp_seconds=ramp)
        table = overload.table(results)
        if shutil.which("wrk"):
            from bench import shedcost

            results["shed_cost"] = shedcost.run(bench, MAPPING, seconds=1.0 if plan.smoke else 6.0,
                                                open_rate=results["early"]["offered_rate"] if "early" in results else 0.0)
            table += "\n" + shedcost.table(results["shed_cost"])
        results["machine"], results["notes"] = machine(), plan.notes
        return results, table
    if plan.only == "cluster":
        from bench import cluster

        seconds, rounds, warmup = (1.0, 1, 0.0) if plan.smoke else (24.0, 3, 2.0)
        results = cluster.run(bench, seconds=seconds, rounds=rounds, warmup=warmup)
        results["machine"], results["notes"] = machine(), plan.notes
        return results, cluster.table(results)
    from bench import capacity

    results = capacity.run(bench.work, bench.client_cpu, bench.server_cpu, bench.start, bench.gateway, bench.stop,
                           bets=200 if plan.smoke else 2000)
    results = {"stores": results, "machine": machine(), "notes": plan.notes}
    return results, capacity.table(results["stores"])


def main(argv: list[str] | None = None) -> int:
    plan = parse(argv)
    bench = Bench(plan)
    try:
        if plan.only:
            results, text = run_only(bench, plan)
        else:
            results = bench.run()
            text = table(results)
    finally:
        bench.cleanup()
    out = plan.out or RESULTS / f"bench-{plan.only + '-' if plan.only else ''}{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(text)
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
