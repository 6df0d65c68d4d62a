"""A Redis Cluster on loopback for tests: three masters, each with one replica.

Six private ``redis-server --cluster-enabled yes`` processes on free ports (their cluster bus
on free ports too, ``cluster-port``), joined by ``redis-cli --cluster create
--cluster-replicas 1``, never the machine's shared 6379, all in one temporary directory
removed at ``cleanup()``. ``kill_master`` / ``wait_for_failover`` / ``bring_back`` drive a
failover the way an operator meets one: a master ``kill -9``ed, its replica promoted by the
cluster itself, the old master back as a replica.

Settings chosen for tests, and recommended for the store: ``cluster-node-timeout`` short (a
failover in about two seconds here), ``cluster-require-full-coverage no`` (the slots of the
other masters keep serving while one is failing over), ``cluster-replica-validity-factor 0``
(a replica is promoted however long its link was down: a test machine under load).

``RedisClusterSet(pki=make_pki())`` (tests/tls_support.py) makes every node speak TLS only:
clients, replication and the cluster bus (``tls-cluster yes``).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.support import free_port
from tests.tls_support import Pki

NODE_TIMEOUT_MS = 1000


def _wait(what: str, check, timeout: float = 30.0):
    """Poll ``check()`` until it returns something true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, redis.RedisError, IndexError, ValueError) as exc:  # not up yet, or mid-change
            last = exc
        else:
            if result:
                return result
            last = result
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what} (last: {last!r})")


def _client(port: int, pki: Pki | None = None) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=1, decode_responses=True,
                       **(pki.redis_kwargs() if pki else {}))


class RedisClusterSet:
    def __init__(self, masters: int = 3, pki: Pki | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="igsp-cluster-"))
        self.ports = [free_port() for _ in range(masters * 2)]
        self.bus = {port: free_port() for port in self.ports}
        self.masters = masters
        self.procs: dict[int, subprocess.Popen] = {}
        self.pki = pki

    @property
    def url(self) -> str:
        """A store URL naming two of the nodes (the client learns the rest from them); with
        TLS, ``rediss+cluster://`` trusting the cluster's CA."""
        hosts = f"127.0.0.1:{self.ports[0]},127.0.0.1:{self.ports[1]}"
        if self.pki:
            from urllib.parse import quote

            return f"rediss+cluster://{hosts}/?ssl_ca_certs={quote(str(self.pki.ca), safe='')}"
        return f"redis+cluster://{hosts}/"

    def _client(self, port: int) -> redis.Redis:
        return _client(port, self.pki)

    def _server(self, port: int) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        data = self.dir / str(port)
        data.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [binary, *(self.pki.server_args(port) + ["--tls-cluster", "yes"] if self.pki else ["--port", str(port)]),
             "--bind", "127.0.0.1", "--dir", str(data), "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--cluster-port", str(self.bus[port]),
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-require-full-coverage", "no",
             "--cluster-replica-validity-factor", "0", "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--daemonize", "no", "--logfile", str(data / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(f"redis-server on {port}", lambda: self._client(port).ping())

    def start(self) -> RedisClusterSet:
        try:
            for port in self.ports:
                self._server(port)
            tls = ["--tls", "--cacert", str(self.pki.ca)] if self.pki else []
            subprocess.run([shutil.which("redis-cli"), *tls, "--cluster", "create",
                            *(f"127.0.0.1:{port}" for port in self.ports), "--cluster-replicas", "1",
                            "--cluster-yes"], check=True, capture_output=True, timeout=60)
            self.wait_healthy()
        except BaseException:
            self.cleanup()
            raise
        return self

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Every running node says ``cluster_state:ok``, there are ``masters`` masters each with
        a replica in sync."""
        def healthy():
            for port in self.procs:
                if self._client(port).cluster("info")["cluster_state"] != "ok":
                    return False
            roles = [self._client(port).info("replication") for port in self.procs]
            masters = [r for r in roles if r["role"] == "master"]
            replicas = [r for r in roles if r["role"] == "slave"]
            return (len(masters) == self.masters and all(r.get("connected_slaves") == 1 for r in masters)
                    and all(r.get("master_link_status") == "up" for r in replicas))
        _wait("the cluster healthy, every master with a replica in sync", healthy, timeout)

    def master_ports(self) -> list[int]:
        return [port for port in self.procs if self._client(port).info("replication")["role"] == "master"]

    def port_of_slot_owner(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now."""
        any_port = next(iter(self.procs))
        slot = self._client(any_port).cluster("keyslot", key)
        for port in self.master_ports():
            for start, end in self._slots(port):
                if start <= slot <= end:
                    return port
        raise LookupError(f"no master serves slot {slot}")

    def _slots(self, port: int) -> list[tuple[int, int]]:
        myself = next(line for line in self._client(port).execute_command("CLUSTER", "NODES").splitlines()
                      if "myself" in line.split()[2])
        out = []
        for field in myself.split()[8:]:
            if field.startswith("["):
                continue  # a slot being migrated
            start, _, end = field.partition("-")
            out.append((int(start), int(end or start)))
        return out

    def replica_of(self, port: int) -> int:
        """The port of the replica of the master on ``port``."""
        nodes = [line.split() for line in self._client(port).execute_command("CLUSTER", "NODES").splitlines()]
        master_id = next(fields[0] for fields in nodes if "myself" in fields[2])
        return next(int(fields[1].split("@")[0].rsplit(":", 1)[1]) for fields in nodes if fields[3] == master_id)

    def kill(self, port: int) -> None:
        """``kill -9`` the node on ``port``."""
        proc = self.procs.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def wait_for_failover(self, replica: int, timeout: float = 60.0) -> None:
        """``replica`` (of a killed master) is a master now and every running node says
        ``cluster_state:ok``."""
        def promoted():
            return (self._client(replica).info("replication")["role"] == "master"
                    and all(self._client(port).cluster("info")["cluster_state"] == "ok" for port in self.procs))
        _wait(f"the replica {replica} promoted", promoted, timeout)

    def bring_back(self, port: int, timeout: float = 60.0) -> None:
        """Start a killed node again on its port and data: it rejoins as a replica of the master
        that took its slots. Returns once the cluster is healthy again."""
        self._server(port)
        self.wait_healthy(timeout)

    def node_id(self, port: int) -> str:
        return self._client(port).execute_command("CLUSTER", "MYID")

    def begin_slot_move(self, slot: int, source: int, target: int, keys: int) -> None:
        """Start moving ``slot`` from the master on ``source`` to the one on ``target`` as
        ``redis-cli --cluster reshard`` does (IMPORTING, MIGRATING, MIGRATE), stopping after
        ``keys`` keys: the slot is half moved, its keys answered ``ASK`` from ``source``."""
        self._client(target).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        self._client(source).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))
        self._migrate(slot, source, target, keys)

    def end_slot_move(self, slot: int, source: int, target: int) -> None:
        """Move the rest of ``slot``'s keys and give the slot to ``target`` on every master."""
        self._migrate(slot, source, target, None)
        for port in (target, source, *self.master_ports()):
            self._client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", self.node_id(target))

    def _migrate(self, slot: int, source: int, target: int, limit: int | None) -> None:
        moved = 0
        while limit is None or moved < limit:
            keys = self._client(source).execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1 if limit else 100)
            if not keys:
                return
            self._client(source).execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)

    def flush(self) -> None:
        for port in self.master_ports():
            self._client(port).flushall()

    def cleanup(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
