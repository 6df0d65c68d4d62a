"""Simulators of legacy iGaming APIs (and of an iGSP platform) for tests and ``igsp-gateway demo``.

They reproduce the documented behaviour of each API *including its bad habits* (no
idempotency, HTML 500s, resets, slow answers), keep real state, and are driven over HTTP
through ``/_control/`` so a test does not care whether one runs in a thread or a process:

- ``start_in_thread(app)``: serve an app on 127.0.0.1 (ephemeral port) from a background
  thread with its own event loop; usable from synchronous tests and CLI code.
- ``spawn("hub88_wallet", *args)``: run ``python -m gateway.tools.simulators.hub88_wallet`` and
  wait for its ``READY <url>`` line.
"""

from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from gateway.tools.simulators._common import STATE

__all__ = ["RunningServer", "spawn", "start_in_thread"]


class RunningServer:
    """An aiohttp app served from a daemon thread; ``url`` is ``http://127.0.0.1:<port>``."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.url = ""
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="simulator", daemon=True)

    @property
    def state(self) -> Any:
        """The simulator's State object (read it only while no request is in flight)."""
        return self.app[STATE]

    def start(self, timeout: float = 10.0) -> RunningServer:
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("simulator did not start in time")
        if self._error is not None:
            raise RuntimeError("simulator failed to start") from self._error
        return self

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start())
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread, which raises it
            self._error = exc
            self._started.set()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        self.url = f"http://{self._host}:{self._runner.addresses[0][1]}"

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive() and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(app: web.Application) -> RunningServer:
    """Serve ``app`` on 127.0.0.1 with an ephemeral port; call ``.stop()`` when done."""
    return RunningServer(app).start()


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    # Keep draining stdout for the child's whole life so it can never block on a full pipe.
    for line in stream:
        lines.put(line)
    lines.put(None)


def spawn(module_name: str, *args: str, timeout: float = 20.0) -> tuple[subprocess.Popen[str], str]:
    """Start a simulator runner as a subprocess; returns ``(process, url)`` once it is READY.

    ``module_name`` is ``hub88_wallet`` or a full dotted name. The caller terminates the
    process (``proc.terminate(); proc.wait()``).
    """
    module = module_name if "." in module_name else f"{__name__}.{module_name}"
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", "0", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                raise RuntimeError(f"{module} exited with status {proc.wait()} before READY")
            if line.startswith("READY "):
                return proc, line.split()[1]
    except BaseException:  # queue.Empty (no READY in time) included
        proc.kill()
        proc.wait()
        raise
