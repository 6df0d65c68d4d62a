"""Running the app: uvloop, reload on SIGHUP, graceful drain on SIGTERM, pre-forked workers.

Two listeners: the public port (``server.port``: the iGSP API, the legacy callbacks) and
the internal port (``server.internal_port``: ``/metrics``, ``/admin/``); both answer
``/healthz`` and ``/readyz`` (gateway/app.py). Once both listen the process prints
``READY http://host:port internal=http://host:internal_port``.

SIGTERM, so that a rolling update or a node drain drops nothing:

1. grace (``server.shutdown_grace_seconds``): ``/readyz`` answers 503 ``draining``, every
   answer closes its connection, the delivery worker claims nothing new — and requests are
   served as before, while load balancers (the Kubernetes endpoints, a proxy's health
   check) take the process out of rotation;
2. drain (``server.drain_seconds``): the listening sockets close (new connections are
   refused), idle keep-alive connections close, in-flight requests and the current queue
   delivery finish; then the process exits 0.

A second SIGTERM during the grace, or SIGINT (Ctrl-C), skips what is left of the grace.

SIGHUP (or a changed file with ``--watch``): reload config and mappings; a broken one is
refused and the running one keeps serving (gateway/runtime.py).

With ``--workers N`` each process binds the same ports with SO_REUSEPORT and the kernel
spreads connections. The parent forwards signals (each worker goes through grace and
drain itself), replaces a worker that dies, and owns the Prometheus multiprocess
directory: set before any metric exists, cleared of a previous run's files, a dead
worker's live gauges dropped, removed at exit if it made it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from gateway.config import Config
from gateway.ops.logs import setup_logging

log = logging.getLogger("igsp.server")

#: The youngest GC generation's threshold while serving (CPython's default: 700). A collection
#: of it runs whenever the objects allocated and not yet freed pass the threshold, and 32
#: requests in flight hold more than 700 between them: at the default the gateway ran a
#: collection every ~20 requests, ~140 us each, finding nothing (a request's objects are freed
#: by reference counting), ~9 us of CPU per request. At 10 000 it runs a few times a minute
#: under the same load. Reference cycles (an exception's traceback) are still collected, after
#: 10 000 allocations instead of 700.
GC_YOUNG_THRESHOLD = 10_000


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


#: The two listening sockets: public (the API) and internal (/metrics, /admin/).
Sockets = tuple[socket.socket, socket.socket]


def _sockets(config: Config, port: int, internal_port: int, reuse_port: bool) -> Sockets:
    if port and port == internal_port:
        raise ValueError(f"server.port and server.internal_port are both {port}: they must differ")
    public = _socket(config.host, port, reuse_port)
    try:
        return public, _socket(config.host, internal_port, reuse_port)
    except BaseException:
        public.close()
        raise


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def print_ready(url: str, internal_url: str) -> None:
    print(f"READY {url} internal={internal_url}", flush=True)


async def serve_async(config: Config, socks: Sockets, on_ready: Callable[[str, str], None] = print_ready,
                      hup_pending: threading.Event | None = None) -> None:
    # Here, not at the top: the app imports the metrics, which must come after the
    # Prometheus multiprocess directory is set (see _serve_workers).
    from gateway.app import create_app, stop_taking_work
    from gateway.context import INFLIGHT, LIFECYCLE, RUNTIME
    from gateway.runtime import watch

    public, internal = socks
    app = create_app(config)
    app[LIFECYCLE].internal_port = internal.getsockname()[1]
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=config.drain_seconds)
    await runner.setup()
    front = None
    if config.early_shedding:
        from gateway.shed_front import serve_public  # here, after the metrics directory, as create_app

        front = await serve_public(runner, public, backlog=1024)
    for sock in (public, internal) if front is None else (internal,):
        await web.SockSite(runner, sock, backlog=1024).start()
    # What start-up built lives as long as the process: move it out of every future
    # collection, so a full GC pass under load walks only request-time objects.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    runtime = app[RUNTIME]
    term = asyncio.Event()  # SIGTERM: the grace begins
    stop = asyncio.Event()  # the grace is over (or skipped): stop accepting and drain
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    def background(coro, name: str) -> None:
        task = loop.create_task(coro, name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_sigterm() -> None:
        if term.is_set() or config.shutdown_grace <= 0:
            stop.set()  # a second SIGTERM: no more grace
        term.set()

    def on_sigint() -> None:
        term.set()
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, on_sigint)
    loop.add_signal_handler(signal.SIGHUP, lambda: background(runtime.reload("SIGHUP"), "reload"))
    if hup_pending is not None and hup_pending.is_set():
        background(runtime.reload("SIGHUP"), "reload")  # one that came while starting
    if config.watch_seconds > 0:
        background(watch(runtime, config.watch_seconds), "watch-config")
    log.info("listening", extra={"url": _url(public), "internal_url": _url(internal),
                                 "partners": [p.id for p in config.partners], "store": config.store_url.split("://")[0]})
    on_ready(_url(public), _url(internal))
    await term.wait()
    stop_taking_work(app)
    grace = 0.0 if stop.is_set() else config.shutdown_grace
    log.info("draining", extra={"inflight": app[INFLIGHT]["n"], "shutdown_grace_seconds": grace,
                                "drain_seconds": config.drain_seconds})
    if not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), grace)
        except TimeoutError:
            pass
    log.info("stopping", extra={"inflight": app[INFLIGHT]["n"]})
    for task in list(tasks):
        task.cancel()
    # AppRunner.cleanup closes the listening sockets (new connections are refused), closes
    # idle keep-alive connections, waits up to shutdown_timeout for in-flight handlers,
    # then runs the app's cleanup (the delivery worker gets what is left of the same
    # budget, see gateway/app.py).
    if front is not None:
        front.close()  # as AppRunner.cleanup does for its sites: no new connections
    await runner.cleanup()
    log.info("stopped")


def _run_one(config: Config, socks: Sockets, on_ready: Callable[[str, str], None]) -> None:
    # A SIGHUP that arrives while starting is kept and acted on once the loop is up.
    hup_pending = threading.Event()
    signal.signal(signal.SIGHUP, lambda signum, frame: hup_pending.set())
    setup_logging(config.log_level, config.secrets)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_async(config, socks, on_ready, hup_pending))
    else:
        uvloop.run(serve_async(config, socks, on_ready, hup_pending))


def serve(config: Config) -> int:
    if config.workers <= 1:
        setup_logging(config.log_level, config.secrets)
        try:
            _run_one(config, _sockets(config, config.port, config.internal_port, False), print_ready)
        except Exception:  # noqa: BLE001 - e.g. the store cannot be opened: one log line, exit 1
            log.exception("failed to start")
            return 1
        return 0
    return _serve_workers(config)


def _serve_workers(config: Config) -> int:
    if "gateway.ops.metrics" in sys.modules:
        # prometheus_client picks its value store when the first metric is created.
        raise RuntimeError("gateway.ops.metrics was imported before the multiprocess directory was set")
    owned = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if owned:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="igsp-metrics-")
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(metrics_dir, exist_ok=True)
    # A previous run's files would be added to this run's counters.
    for stale in Path(metrics_dir).glob("*.db"):
        stale.unlink(missing_ok=True)
    from gateway.ops import metrics

    setup_logging(config.log_level, config.secrets)
    # Bind once to learn the ports (0 = pick one), then every worker binds them too.
    probe = _sockets(config, config.port, config.internal_port, True)
    port, internal_port = (sock.getsockname()[1] for sock in probe)
    urls = (_url(probe[0]), _url(probe[1]))
    ready_r, ready_w = os.pipe()  # a worker writes one byte here once it serves
    stopping = False

    def spawn(index: int, socks: Sockets | None = None) -> int:
        pid = os.fork()
        if pid == 0:
            code = 0
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)  # not the parent's forwarder
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            os.close(ready_r)
            try:
                _run_one(config, socks or _sockets(config, port, internal_port, True),
                         lambda url, internal_url: os.write(ready_w, b"."))
            except BaseException:  # noqa: BLE001 - a worker reports and exits, never returns to the parent's loop
                log.exception("worker failed")
                code = 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        return pid

    def forward(signum, frame):
        nonlocal stopping
        stopping = stopping or signum in (signal.SIGTERM, signal.SIGINT)
        for child in list(children):
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    children: dict[int, int] = {}
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    children[spawn(0, probe)] = 0
    for sock in probe:
        sock.close()
    for index in range(1, config.workers):
        children[spawn(index)] = index
    log.info("workers started", extra={"workers": sorted(children), "metrics_dir": metrics_dir, "port": port,
                                       "internal_port": internal_port})
    status = 0
    try:
        failed = _wait_ready(ready_r, config.workers, lambda: stopping)
        if failed is not None:
            children.pop(failed, None)
            metrics.mark_process_dead(failed)
            forward(signal.SIGTERM, None)
            status = 1
        elif not stopping:
            print_ready(*urls)
        while children:
            try:
                pid, code = os.wait()
            except ChildProcessError:
                break
            index = children.pop(pid, None)
            metrics.mark_process_dead(pid)
            exit_code = os.waitstatus_to_exitcode(code)
            if index is None:
                continue
            if stopping:
                status = status or exit_code
                continue
            log.error("worker exited unexpectedly; starting a new one",
                      extra={"worker_pid": pid, "exit_code": exit_code, "worker": index})
            time.sleep(0.5)  # a worker that cannot start must not become a fork loop
            if not stopping:
                children[spawn(index)] = index
    finally:
        sys.stdout.flush()
        if owned:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def _wait_ready(ready_r: int, workers: int, stopping: Callable[[], bool]) -> int | None:
    """Until every worker serves (None), or one dies while starting (its pid)."""
    started = 0
    while started < workers and not stopping():
        readable, _, _ = select.select([ready_r], [], [], 0.2)
        if readable:
            started += len(os.read(ready_r, 64))
        pid, code = os.waitpid(-1, os.WNOHANG)
        if pid:
            log.error("a worker failed to start", extra={"worker_pid": pid,
                                                         "exit_code": os.waitstatus_to_exitcode(code)})
            return pid
    return None
