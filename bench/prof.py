"""A quick A/B of CPU per request: the unsigned peer against the unsigned gateway.

    python bench/prof.py sqlite redis       # alternating rounds, CPU us/request and ratio to the peer
    python bench/prof.py sqlite spy         # py-spy of the SQLite gateway under load (raw stacks)
    python bench/prof.py sqlite yappi       # yappi (CPU clock) of the SQLite gateway under load
    python bench/prof.py sqlite spy peer    # the same of the peer
    python bench/prof.py sqlite threads     # CPU seconds of each of the gateway's threads under load

The same targets as ``python -m bench``'s unsigned pair, in a few seconds instead of minutes;
for comparing one change with the code before it. The machine's noise moves both sides:
read the ratio to the peer of the same run, not the absolute numbers. ``PROF_BASE=DIR`` adds
the same gateway targets run from another copy of the code (``git archive REV | tar -x -C
DIR``), for a before/after in one run; ``PROF_BASE_FIRST=1`` runs those first in each
round (repeat with and without: the order alone moves a target by a few per cent), and
``PROF_CUR=DIR`` takes the first targets' code from another copy too. ``PROF_ROUNDS``,
``PROF_SECONDS`` (the whole closed-loop time per target) and ``PROF_OUT`` (where py-spy and
yappi write) change the defaults.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bench.procs
import bench.run as br
from bench.procs import Redis
from bench.run import Bench, Plan, Target

OUT = Path(os.environ.get("PROF_OUT", "/tmp/igsp-prof"))
YAPPI_MAIN = Path(__file__).with_name("prof_yappi.py")


def _with_yappi() -> None:
    """Start gateway targets under bench/prof_yappi.py instead of ``-m gateway``."""
    original = br.Proc.__init__

    def init(self, name, command, **kw):
        if name.startswith("gw"):
            i = command.index("-m")
            command = command[:i] + [str(YAPPI_MAIN)] + command[i + 2:]
        original(self, name, command, **kw)

    br.Proc.__init__ = init


def thread_cpu(pid: int) -> dict:
    """CPU seconds so far of each thread of process ``pid``, by (tid, name)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        out[(task.name, (task / "comm").read_text().strip())] = \
            (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def main(which: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    if "yappi" in which:
        os.environ["PROF_OUT"] = str(OUT)
        _with_yappi()
    rounds = int(os.environ.get("PROF_ROUNDS", "3"))
    plan = Plan(duration=float(os.environ.get("PROF_SECONDS", "6")), rounds=rounds, warmup=1, scaling=False,
                soak=0)
    b = Bench(plan)
    try:
        stub = b.stub()
        targets = [Target("peer-unsigned", b.peer("peer-unsigned", stub.url, signed=False), "hook", "unsigned")]
        mapping = b.unsigned_mapping()
        base = os.environ.get("PROF_BASE")
        here_root = Path(os.environ["PROF_CUR"]) if os.environ.get("PROF_CUR") else None
        order = [("", here_root)] + ([("-base", Path(base))] if base else [])
        if os.environ.get("PROF_BASE_FIRST"):
            order.reverse()  # the order of the targets in a round, swapped (it may favour one)
        for suffix, root in order:
            here = bench.procs.ROOT
            if root is not None:
                bench.procs.ROOT = root  # the gateway's code comes from there
            try:
                if "sqlite" in which:
                    url = f"sqlite:///{b.work}/gu{suffix}.db"
                    name = f"gw-sqlite-u{suffix}"
                    targets.append(Target(name, b.gateway(name, url, stub.url, mapping=mapping), "hook", "unsigned", url))
                if "redis" in which:
                    redis = Redis(b.work / f"redis{suffix}", b.client_cpu)
                    b.procs.append(redis)
                    url = redis.start().url
                    name = f"gw-redis-u{suffix}"
                    targets.append(Target(name, b.gateway(name, url, stub.url, mapping=mapping), "hook", "unsigned", url))
            finally:
                bench.procs.ROOT = here
        if "threads" in which:
            pid = targets[1].proc.proc.pid
            before = thread_cpu(pid)
            result = b.closed_loop(targets[1], 8, b.client_cpu)
            after = thread_cpu(pid)
            for key, seconds in after.items():
                print(key, round(seconds - before.get(key, 0), 3))
            print("requests", result["requests"], "cpu us/req", round(result["cpu_seconds"] / result["requests"] * 1e6, 1))
        elif "yappi" in which:
            result = b.closed_loop(targets[1], 8, b.client_cpu)
            print("requests", result["requests"], "->", OUT / "yappi.pstat")
        elif "spy" in which:
            gw = targets[0 if "peer" in which else 1]
            spy = subprocess.Popen(["py-spy", "record", "-p", str(gw.proc.proc.pid), "-r", "500", "-f", "raw",
                                    "-o", str(OUT / "spy.txt"), "-d", "8", "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            result = b.closed_loop(gw, 8, b.client_cpu)
            spy.wait()
            print("requests", result["requests"], "cpu_seconds", result["cpu_seconds"], "->", OUT / "spy.txt")
        else:
            out = b.throughput(targets, b.client_cpu, plan.rounds)
            peer = out["peer-unsigned"]
            for name, v in out.items():
                print(f"{name:15} {v['rps']:8} req/s {v['cpu_us_per_request']:7} us/req "
                      f"x{peer['cpu_us_per_request'] / v['cpu_us_per_request']:.3f} errors {v['errors']}", flush=True)
    finally:
        b.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:] or ["sqlite"])
