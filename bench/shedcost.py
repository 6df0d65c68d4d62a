"""What one shed request costs the gateway, measured directly (part of ``--only overload``).

Why: the overload run can only estimate a shed request's cost (the CPU it used beyond its
admitted bets, at the ramp's cost per bet), and that estimate carries every difference
between a bet under overload and a bet in the ramp. Here nothing is admitted: a gateway
with ``per_partner: 1`` holds one bet (its legacy API is a socket that accepts and never
answers, under a mapping whose timeout outlasts the run), and ``wrk`` sends the same signed
bet over 64 keep-alive connections for a few seconds; every answer is a shed ``503``. The
gateway's CPU time (user and system, from /proc) over the answers is the cost of one shed
request — once with aiohttp answering it (``early_shedding: false``) and once with the front
(gateway/shed_front.py).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import yaml

from bench import hooks
from bench.procs import Proc, pinned, python_env

#: wrk replays one raw request (the held partner's signed bet) as it is.
REPLAY_LUA = """
local raw
function init(args)
  local f = assert(io.open(args[1], "rb"))
  raw = f:read("*a")
  f:close()
end
function request() return raw end
"""


def _cpu(proc: Proc) -> tuple[float, float]:
    fields = Path(f"/proc/{proc.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def _first_status(url: str, raw: bytes, timeout: float = 1.0) -> int:
    """The status of ``raw``'s answer; 0 if none came within ``timeout`` (it was admitted and
    is held: it holds the partner's one slot as well as the holder would)."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(raw)
        try:
            head = sock.recv(64)
        except TimeoutError:
            return 0
    return int(head[9:12]) if head.startswith(b"HTTP/1.1 ") else 0


def run(bench, mapping_file: Path, seconds: float = 6.0, connections: int = 64, open_rate: float = 0.0) -> dict:
    """The cost per shed request with and without the front: {variant: {...}}; with
    ``open_rate``, also under the overload run's own client, open loop at that rate over its
    warm pool of connections (requests one by one, as they come: less batching than wrk's)."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # connections complete in the kernel's backlog; nothing ever answers
    mapping = yaml.safe_load(mapping_file.read_text())
    mapping["upstream"]["timeout"] = 120
    held_mapping = bench.work / "hub88-wallet-held.yaml"
    held_mapping.write_text(yaml.safe_dump(mapping, sort_keys=False))
    lua = bench.work / "replay.lua"
    lua.write_text(REPLAY_LUA)
    results: dict = {"connections": connections, "seconds": seconds}
    try:
        for name, early in (("aiohttp", False), ("front", True)):
            gw = bench.gateway(f"shedcost-{name}", f"sqlite:///{bench.work}/shedcost-{name}.db",
                               f"http://127.0.0.1:{hole.getsockname()[1]}", mapping=held_mapping,
                               extra={"concurrency": {"per_partner": 1, "early_shedding": early},
                                      "queue": {"lease_seconds": 300}})
            hostport = gw.url.split("://", 1)[1]
            run_id = hooks.new_run_id()
            held = hooks.signed_hook_request(hostport, run_id, 0)
            shed = hooks.signed_hook_request(hostport, run_id, 1)
            request_file = bench.work / f"shed-{name}.bin"
            request_file.write_bytes(shed)
            head, _, body = held.partition(b"\r\n\r\n")
            headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
            headers.pop(b"Host", None)
            holder = urllib.request.Request(gw.url + hooks.HOOKS_PATH, data=body, method="POST",
                                            headers={k.decode(): v.decode() for k, v in headers.items()})
            threading.Thread(target=lambda r=holder: _quietly(r), daemon=True).start()
            deadline = time.monotonic() + 20
            while _first_status(gw.url, shed) != 503:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"shedcost: the {name} gateway never shed")
            user0, system0 = _cpu(gw)
            out = subprocess.run(pinned(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(lua),
                                         gw.url + hooks.HOOKS_PATH, "--", str(request_file)], bench.client_cpu),
                                 capture_output=True, text=True, timeout=seconds + 60, check=False)
            user1, system1 = _cpu(gw)
            total = re.search(r"(\d+) requests in", out.stdout)
            non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
            if total is None:
                raise RuntimeError(f"shedcost: wrk said {out.stdout}{out.stderr}")
            answers = int(total.group(1))
            results[name] = {
                "answers": answers, "answers_per_second": round(answers / seconds, 1),
                "all_shed": bool(non_2xx) and int(non_2xx.group(1)) == answers,
                "user_us_per_request": round((user1 - user0) / answers * 1e6, 1),
                "system_us_per_request": round((system1 - system0) / answers * 1e6, 1),
                "cpu_us_per_request": round((user1 - user0 + system1 - system0) / answers * 1e6, 1),
            }
            if open_rate:
                out_file = bench.work / f"shedcost-{name}-open.json"
                user0, system0 = _cpu(gw)
                subprocess.run(pinned([sys.executable, "-m", "bench.overload", "client", gw.url, "--run",
                                       hooks.new_run_id(), "--rate", str(open_rate), "--seconds", str(seconds),
                                       "--out", str(out_file)], bench.client_cpu),
                               capture_output=True, timeout=seconds * 10 + 60, check=True, env=python_env())
                user1, system1 = _cpu(gw)
                status = orjson.loads(out_file.read_bytes())["status"]
                results[name]["open_loop"] = {
                    "rate": open_rate, "answers": len(status), "all_shed": all(s == 503 for s in status),
                    "cpu_us_per_request": round((user1 - user0 + system1 - system0) / len(status) * 1e6, 1),
                    "system_us_per_request": round((system1 - system0) / len(status) * 1e6, 1)}
            bench.stop(gw)
    finally:
        hole.close()
    if "aiohttp" in results and "front" in results:
        results["front_over_aiohttp"] = round(results["front"]["cpu_us_per_request"]
                                              / results["aiohttp"]["cpu_us_per_request"], 3)
    return results


def _quietly(request: urllib.request.Request) -> None:
    try:
        urllib.request.urlopen(request, timeout=300).read()  # noqa: S310 - the bench's own gateway
    except OSError:
        pass  # the gateway was stopped under it


def table(results: dict) -> str:
    lines = [f"shed request cost (wrk, {results['connections']} connections, every answer a 503):"]
    for name in ("aiohttp", "front"):
        r = results.get(name)
        if r:
            lines.append(f"  {name:<8} {r['answers_per_second']:>9g} answers/s  {r['cpu_us_per_request']:>6g} us CPU "
                         f"per shed request ({r['user_us_per_request']:g} user + {r['system_us_per_request']:g} "
                         f"system){'' if r['all_shed'] else '  NOT ALL SHED'}")
            if "open_loop" in r:
                o = r["open_loop"]
                lines.append(f"  {'':<8} open loop at {o['rate']:g}/s (the overload's client): {o['cpu_us_per_request']:g} us "
                             f"per shed request ({o['system_us_per_request']:g} system)"
                             f"{'' if o['all_shed'] else '  NOT ALL SHED'}")
    if "front_over_aiohttp" in results:
        lines.append(f"  the front costs {results['front_over_aiohttp']:.2f} of aiohttp's shed")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit("use: python -m bench --only overload")
