"""Test helpers others can use too: run the gateway and redis-server as real processes
on loopback, and send correctly signed iGSP requests."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import requests
import yaml

from adapters.codecs import dumps
from gateway import signing

ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unique_timestamp() -> str:
    """Now, in microseconds: every signed request gets its own signature (replay protection)."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}Z"


class IgspClient:
    """Signs exactly as PROTOCOL.md says: HMAC-SHA256(secret, raw body + X-Timestamp)."""

    def __init__(self, base_url: str, api_key: str, secret: str):
        self.base_url, self.api_key, self.secret = base_url.rstrip("/"), api_key, secret
        self.http = requests.Session()

    def headers(self, body: bytes, timestamp: str | None = None) -> dict:
        return signing.signed_headers(self.api_key, self.secret, body, timestamp or unique_timestamp())

    def post(self, path: str, payload, *, timestamp: str | None = None, headers: dict | None = None,
             timeout: float = 10) -> requests.Response:
        body = payload if isinstance(payload, bytes) else dumps(payload)
        sent = self.headers(body, timestamp)
        sent.update(headers or {})
        return self.http.post(self.base_url + path, data=body, headers=sent, timeout=timeout)

    def get(self, path: str, params: dict | None = None, timeout: float = 10) -> requests.Response:
        return self.http.get(self.base_url + path, params=params, headers=self.headers(b""), timeout=timeout)

    def hook(self, payload, **kwargs) -> requests.Response:
        return self.post("/platforms/game-provider/hooks", payload, **kwargs)


def decimal_json(response: requests.Response):
    return json.loads(response.content, parse_float=Decimal)


class GatewayProcess:
    """``python -m gateway serve`` as a real process; stderr (the JSON log) goes to a file.

    ``url`` is the public port (the iGSP API, legacy callbacks), ``internal_url`` the
    internal one (``/metrics``, ``/admin/``); both answer ``/healthz`` and ``/readyz``."""

    def __init__(self, config: dict | Path, workdir: Path, env: dict | None = None, extra_args=()):
        self.workdir = Path(workdir)
        if isinstance(config, dict):
            self.config_path = self.workdir / f"gateway-{next(_counter)}.yaml"
            self.config_path.write_text(yaml.safe_dump(config))
        else:
            self.config_path = Path(config)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.extra_args = list(extra_args)
        self.log_path = self.workdir / f"gateway-{next(_counter)}.log"
        self.proc: subprocess.Popen | None = None
        self.url = self.internal_url = ""

    def start(self, timeout: float = 20) -> GatewayProcess:
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path), *self.extra_args],
            stdout=subprocess.PIPE, stderr=self.log_file, env=self.env, cwd=self.workdir,
        )
        line = _readline(self.proc, timeout)
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"gateway did not start: {line!r}\n{self.log_text()}")
        fields = line.split()
        self.url = fields[1]
        self.internal_url = next(f.split("=", 1)[1] for f in fields if f.startswith("internal="))
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log_text().splitlines() if line.startswith("{")]


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline().decode()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""


class RedisServer:
    """A private ``redis-server`` on a free port (never the machine's shared 6379)."""

    def __init__(self, appendonly: bool = True):
        self.dir = Path(tempfile.mkdtemp(prefix="igsp-redis-"))
        self.port = free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (bash .ci/run installs it)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always", "--save", "",
             "--daemonize", "no", "--logfile", str(self.dir / "redis.log")],
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
        raise RuntimeError("redis-server did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def restart(self) -> RedisServer:
        """Stop (SIGTERM: the append-only file is flushed) and start again on the same dir and port."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
