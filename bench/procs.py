"""Starting and stopping the benchmark's processes, pinned to cores with ``taskset``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def pinned(command: list[str], cpus: str | None) -> list[str]:
    """``command`` under ``taskset -c cpus`` when both are available."""
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", cpus, *command]
    return command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def python_env(extra: dict | None = None) -> dict:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT), **(extra or {})}


class Proc:
    """A child process that prints ``READY http://host:port`` when it is serving (the gateway
    adds ``internal=http://host:port``, where /metrics is)."""

    def __init__(self, name: str, command: list[str], *, cpus: str | None = None, env: dict | None = None,
                 log: Path | None = None, cwd: Path | None = None):
        self.name = name
        self.command = pinned(command, cpus)
        self.env = python_env(env)
        self.log = log
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.url = self.internal_url = ""

    def start(self, timeout: float = 30.0) -> Proc:
        stderr = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self._stderr = stderr
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=stderr, env=self.env, cwd=self.cwd)
        line = _readline(self.proc, timeout)
        if not line.startswith("READY "):
            self.stop()
            tail = self.log.read_text(errors="replace")[-2000:] if self.log and self.log.exists() else ""
            raise RuntimeError(f"{self.name} did not start: {line!r}\n{tail}")
        fields = line.split()
        self.url = fields[1]
        self.internal_url = next((f.split("=", 1)[1] for f in fields if f.startswith("internal=")), self.url)
        return self

    @property
    def hostport(self) -> str:
        return self.url.split("://", 1)[-1]

    def rss_kib(self) -> int:
        """Resident memory of the process and its children (pre-forked workers), in KiB."""
        if self.proc is None:
            return 0
        return sum(_rss(pid) for pid in [self.proc.pid, *_children(self.proc.pid)])

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        if self._stderr not in (None, subprocess.DEVNULL):
            self._stderr.close()
        self.proc = None


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline().decode()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(proc: Proc) -> float:
    """CPU time (user + system) used so far by a process and its live children."""
    if proc.proc is None:
        return 0.0
    total = 0
    for pid in [proc.proc.pid, *_children(proc.proc.pid)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / _TICKS


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(p) for p in found]


class Redis:
    """A private ``redis-server`` on a free port (never the machine's shared 6379)."""

    def __init__(self, workdir: Path, cpus: str | None = None):
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.cpus = cpus
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        # AOF fsync every second: the setting a production gateway would use.
        self.proc = subprocess.Popen(
            pinned([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                    "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
                    "--logfile", str(self.dir / "redis.log")], self.cpus),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


class RedisCluster:
    """A private Redis Cluster: ``masters`` masters, each with one replica, on free loopback
    ports (their cluster bus too), never the machine's 6379: ``redis-server --cluster-enabled
    yes`` per node, joined by ``redis-cli --cluster create --cluster-replicas 1``.

    The benchmark's own starter (tests/cluster_support.py drives failovers and slot moves for
    the tests; this one only starts, measures and stops). Settings as the Redis above, the
    production ones: AOF, ``appendfsync everysec``.
    """

    def __init__(self, workdir: Path, cpus: str | None = None, masters: int = 3):
        self.dir = workdir / "redis-cluster"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.masters = masters
        self.ports = [free_port() for _ in range(masters * 2)]
        self.bus = {port: free_port() for port in self.ports}
        self.cpus = cpus
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        """A store URL naming two nodes (the client learns the rest from them)."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]},127.0.0.1:{self.ports[1]}/"

    def start(self, timeout: float = 60.0) -> RedisCluster:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed for a cluster")
        try:
            for port in self.ports:
                data = self.dir / str(port)
                data.mkdir(exist_ok=True)
                self.procs[port] = subprocess.Popen(
                    pinned([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                            "--cluster-port", str(self.bus[port]), "--cluster-node-timeout", "5000",
                            # Stopped at the end of the run: no waiting for replicas stopped with it.
                            "--shutdown-on-sigterm", "now",
                            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
                            "--logfile", str(data / "redis.log")], self.cpus),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + timeout
            for port in self.ports:
                _poll(f"redis-server on {port}", lambda p=port: self.ping(p), deadline)
            subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
                            "--cluster-replicas", "1", "--cluster-yes"], check=True, capture_output=True,
                           timeout=timeout)
            _poll("the cluster healthy, every master with a replica in sync", self._healthy, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def client(port: int):
        import redis

        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=1,
                           decode_responses=True)

    def ping(self, port: int) -> bool:
        with self.client(port) as client:
            return client.ping()

    def _healthy(self) -> bool:
        for port in self.ports:
            with self.client(port) as client:
                if client.cluster("info")["cluster_state"] != "ok":
                    return False
        roles = [self.replication(port) for port in self.ports]
        masters = [r for r in roles if r["role"] == "master"]
        if not (len(masters) == self.masters and all(r.get("connected_slaves") == 1 for r in masters)
                and all(r.get("master_link_status") == "up" for r in roles if r["role"] == "slave")):
            return False
        # A replica rewrites its AOF after its first sync (and refuses SIGTERM until it is done):
        # nothing is measured, or stopped, before that is over.
        for port in self.ports:
            with self.client(port) as client:
                info = client.info("persistence")
            if info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]:
                return False
        return True

    def replication(self, port: int) -> dict:
        with self.client(port) as client:
            return client.info("replication")

    def master_urls(self) -> list[str]:
        """``redis://`` URLs of the masters now (to read their INFO, one by one)."""
        return [f"redis://127.0.0.1:{port}/0" for port in self.ports if self.replication(port)["role"] == "master"]

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, sent again while a node is still up (one busy writing its AOF refuses it),
        SIGKILL at the deadline."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [proc for proc in self.procs.values() if proc.poll() is None]
            if not running:
                break
            for proc in running:
                proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.procs.clear()


def _poll(what: str, check, deadline: float) -> None:
    """Poll ``check()`` until it is true; fail naming ``what`` at ``deadline`` (monotonic)."""
    import redis

    last: object = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, redis.RedisError, KeyError, ValueError) as exc:  # not up yet
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what} (last: {last!r})")


def ensure_wrk(install: bool) -> str | None:
    """The ``wrk`` binary, installed from the distribution's packages when asked and missing."""
    found = shutil.which("wrk")
    if found or not install:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        print("installing wrk (apt-get install wrk) ...", file=sys.stderr, flush=True)
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, check=False, stdout=subprocess.DEVNULL)
    return shutil.which("wrk")
