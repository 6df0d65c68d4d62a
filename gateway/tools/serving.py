"""``igsp-gateway serve`` as a child process, for the tools that run a gateway of their own
(``demo``, ``chaos``): started on a config file, ready once it prints its ``READY`` line,
stopped the way an orchestrator stops it (SIGTERM, then SIGKILL after a grace period)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path


class GatewayDidNotStart(RuntimeError):
    """No ``READY`` line within the timeout: the gateway exited or hung (see its log)."""


def child_env(extra: dict | None = None) -> dict:
    """This environment, with the ``gateway`` package this process runs importable in the child
    (a checkout not installed, or site-packages), plus ``extra``."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


class ServeProcess:
    """One ``igsp-gateway serve`` child. ``url`` and ``internal_url`` are known once started."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.url = self.internal_url = ""
        self._proc: subprocess.Popen | None = None
        self._log = None

    def start(self, config_file: Path, env: dict, *, cwd: Path | None = None, timeout: float = 30.0) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config_file)],
                                      stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=cwd)
        # The READY line is read on a thread, so a gateway that never prints it cannot hang us.
        lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=lambda: lines.put(self._proc.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=timeout).decode().strip()
        except queue.Empty:
            line = ""
        if not line.startswith("READY "):
            raise GatewayDidNotStart(f"the gateway did not start; its log ({self.log_path}):\n{self.log_tail()}")
        fields = line.split()  # READY <public url> internal=<internal url>
        self.url = fields[1]
        self.internal_url = next((f.split("=", 1)[1] for f in fields if f.startswith("internal=")), "")

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
