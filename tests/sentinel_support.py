"""A Redis Sentinel set on loopback for tests: one master, one replica, three sentinels.

Every process is a private ``redis-server`` on a free port (``--sentinel`` for the sentinels),
never the machine's shared 6379, all in one temporary directory removed at ``cleanup()``.
``SentinelSet(pki=make_pki())`` (tests/tls_support.py) makes every one of them speak TLS only:
the clients, the replica to its master, the sentinels to the servers and to each other.
``SentinelSet(password=…)`` has every one of them require that password (``requirepass``;
the replica and the sentinels log in with it).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support import free_port
from tests.tls_support import Pki

SERVICE = "igsp"


def _command(port: int, *args: str, timeout: float = 1.0, pki: Pki | None = None,
             password: str | None = None) -> list[str]:
    """One inline command over RESP (over TLS with ``pki``, after ``AUTH password`` with a
    password); the reply's lines (enough for the checks below)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
            (pki.context().wrap_socket(raw, server_hostname="127.0.0.1") if pki else raw) as sock:
        if password:
            sock.sendall(f"AUTH {password}\r\n".encode())
            said = b""
            while not said.endswith(b"\r\n"):
                chunk = sock.recv(1)
                if not chunk:
                    break
                said += chunk
            if said != b"+OK\r\n":
                raise ValueError(f"AUTH refused: {said!r}")
        sock.sendall((" ".join(args) + "\r\n").encode())
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        # Array replies may take more than one read: read until the peer is quiet.
        sock.settimeout(0.05)
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
    return data.decode(errors="replace").split("\r\n")


def _wait(what: str, check, timeout: float = 20.0):
    """Poll ``check()`` until it returns something true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, IndexError, ValueError) as exc:  # not up yet, or a partial reply
            last = exc
        else:
            if result:
                return result
            last = result
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what} (last: {last!r})")


class SentinelSet:
    def __init__(self, down_after_ms: int = 1000, pki: Pki | None = None, password: str | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="igsp-sentinel-"))
        self.master_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.down_after_ms = down_after_ms
        self.procs: dict[int, subprocess.Popen] = {}
        self.pki = pki
        self.password = password

    @property
    def url(self) -> str:
        """The store URL (with TLS: ``rediss+sentinel://`` trusting the set's CA)."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        if self.pki:
            from urllib.parse import quote

            return f"rediss+sentinel://{hosts}/{SERVICE}?ssl_ca_certs={quote(str(self.pki.ca), safe='')}"
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def _command(self, port: int, *args: str) -> list[str]:
        return _command(port, *args, pki=self.pki, password=self.password)

    def _server(self, port: int, *args: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        data = self.dir / str(port)
        data.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [binary, *(self.pki.server_args(port) if self.pki else ["--port", str(port)]), "--bind", "127.0.0.1",
             "--dir", str(data), "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no", "--logfile", str(data / "redis.log"),
             *(["--requirepass", self.password, "--masterauth", self.password] if self.password else []),
             *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(f"redis-server on {port}", lambda: self._command(port, "PING")[0] == "+PONG")

    def _sentinel(self, port: int) -> None:
        data = self.dir / str(port)
        data.mkdir()
        conf = data / "sentinel.conf"
        conf.write_text(
            (self.pki.sentinel_conf(port) if self.pki else f"port {port}\n")
            + f"bind 127.0.0.1\ndir {data}\nlogfile {data / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
            + (f"requirepass {self.password}\nsentinel auth-pass {SERVICE} {self.password}\n" if self.password else ""))
        self.procs[port] = subprocess.Popen([shutil.which("redis-server"), str(conf), "--sentinel"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(f"sentinel on {port}", lambda: self._command(port, "PING")[0] == "+PONG")

    def start(self) -> SentinelSet:
        try:
            self._server(self.master_port)
            self._server(self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
            _wait("the replica in sync", lambda: "master_link_status:up" in self._command(self.replica_port, "INFO",
                                                                                      "replication"))
            for port in self.sentinel_ports:
                self._sentinel(port)
            # Ready when every sentinel knows the master, the replica and the two other sentinels.
            for port in self.sentinel_ports:
                _wait(f"sentinel {port} to see the set", lambda port=port: self._sees_everything(port))
        except BaseException:
            self.cleanup()
            raise
        return self

    def _sees_everything(self, port: int) -> bool:
        master = self._command(port, "SENTINEL", "MASTER", SERVICE)
        fields = dict(zip(master[2::4], master[4::4], strict=False))
        return (fields.get("num-slaves") == "1" and fields.get("num-other-sentinels") == "2"
                and fields.get("flags") == "master")

    def master_address(self, via: int | None = None) -> int:
        """The master's port as a sentinel reports it now."""
        reply = self._command(via or self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(reply[4])

    def kill_master(self) -> int:
        """``kill -9`` the current master; returns its port."""
        port = self.master_address()
        proc = self.procs.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        return port

    def bring_back(self, port: int, timeout: float = 30.0) -> None:
        """Start a killed server again on its port and data; the sentinels make it a replica
        of the current master (Sentinel's own reconfiguration). Returns once it is in sync."""
        self._server(port)
        master = self.master_address()

        def in_sync():
            info = self._command(port, "INFO", "replication")
            return "role:slave" in info and "master_link_status:up" in info and f"master_port:{master}" in info
        _wait(f"{port} to replicate the master {master}", in_sync, timeout)

    def wait_for_new_master(self, old: int, timeout: float = 30.0) -> int:
        """Every sentinel names a master other than ``old``, which answers as a master."""
        def promoted():
            ports = {self.master_address(via) for via in self.sentinel_ports}
            if len(ports) != 1 or old in ports:
                return 0
            port = ports.pop()
            return port if "role:master" in self._command(port, "INFO", "replication") else 0
        return _wait("sentinels to promote the replica", promoted, timeout)

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
