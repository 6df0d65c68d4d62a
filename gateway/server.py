"""Running the app: uvloop, graceful drain on SIGTERM, optional pre-forked workers.

With ``--workers N`` each process binds the same port with SO_REUSEPORT and the kernel
spreads connections; metrics are aggregated across processes on scrape.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import tempfile

from aiohttp import web

from gateway.app import INFLIGHT, create_app
from gateway.config import Config
from gateway.logs import setup_logging

log = logging.getLogger("igsp.server")


def _socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve_async(config: Config, sock: socket.socket, ready_line: bool = True) -> None:
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=config.drain_seconds)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    host, port = sock.getsockname()[:2]
    log.info("listening", extra={"url": f"http://{host}:{port}", "pid": os.getpid(),
                                 "partners": [p.id for p in config.partners], "store": config.store_url.split("://")[0]})
    if ready_line:
        print(f"READY http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining", extra={"inflight": app[INFLIGHT]["n"], "grace_seconds": config.drain_seconds})
    # Stop accepting, let in-flight requests finish (bounded by drain_seconds), then
    # close resources (the delivery worker finishes its current entry).
    await site.stop()
    deadline = loop.time() + config.drain_seconds
    while app[INFLIGHT]["n"] > 0 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    await runner.cleanup()
    log.info("stopped")


def _run_one(config: Config, sock: socket.socket, ready_line: bool) -> None:
    setup_logging(config.log_level, config.secrets)
    try:
        import uvloop

        uvloop.run(serve_async(config, sock, ready_line))
    except ImportError:
        asyncio.run(serve_async(config, sock, ready_line))


def serve(config: Config) -> int:
    workers = config.workers
    if workers <= 1:
        _run_one(config, _socket(config.host, config.port, False), True)
        return 0
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="igsp-metrics-")
    # Bind once to learn the port (port 0 = pick one), then every worker binds it too.
    probe = _socket(config.host, config.port, True)
    port = probe.getsockname()[1]
    children = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:
            sock = probe if index == 0 else _socket(config.host, port, True)
            if index != 0:
                probe.close()
            _run_one(config, sock, ready_line=index == 0)
            os._exit(0)
        children.append(pid)
    probe.close()

    def forward(signum, frame):
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    sys.stdout.flush()
    return status
