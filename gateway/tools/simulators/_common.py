"""Plumbing shared by every simulator: state, money, faults, the ``/_control/`` API, the runner.

Tests drive a simulator only over HTTP (``/_control/...``) so the same test works whether
the simulator runs in-process (``start_in_thread``) or as a subprocess (``spawn``).
Money is ``Decimal`` from the wire to the ledger; a float is refused, never rounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import MISSING, dataclass, field, fields
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

FAULT_KINDS = ("delay", "http_500_html", "garbage", "reset", "apply_then_hang", "down")
HTML_500 = (
    "<html><head><title>500 Internal Server Error</title></head><body><h1>Internal Server Error</h1></body></html>"
)

EndpointOf = Callable[[web.Request], Awaitable[tuple[str, ...]]]


def to_decimal(value: Any) -> Decimal:
    """An exact, finite Decimal from a str, int or Decimal (a float or bool raises ValueError)."""
    if isinstance(value, (bool, float)) or not isinstance(value, (str, int, Decimal)):
        raise ValueError(f"not an exact amount: {value!r}")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return amount


def fmt(amount: Decimal) -> str:
    """Plain decimal notation (``97.50``, never ``9.75E+1``)."""
    return format(amount, "f")


def jsonable(value: Any) -> Any:
    """A copy safe for ``json.dumps``: Decimals become exact strings, Counters plain dicts."""
    if isinstance(value, Decimal):
        return fmt(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    return value


def loads_exact(raw: bytes | str) -> Any:
    """``json.loads`` that keeps fractional numbers as Decimal."""
    return json.loads(raw, parse_float=Decimal)


@dataclass
class BaseState:
    """What every simulator keeps. Subclasses add fields; ``reset`` restores all defaults.

    ``ledger`` holds every applied money movement; ``amount`` is signed (debits negative),
    so the sum of a player's entries is the change of their balance.
    """

    players: dict[str, dict[str, Any]] = field(default_factory=dict)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    calls: Counter = field(default_factory=Counter)
    faults: list[dict[str, Any]] = field(default_factory=list)
    #: ``{"workers": N, "seconds": S}``: the wallet serves N calls at a time, S seconds each,
    #: the rest wait their turn (a fixed thread pool: its latency grows with the calls in
    #: flight). None: every call at once, at full speed.
    workers: dict[str, Any] | None = None

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default_factory() if f.default_factory is not MISSING else f.default)

    def snapshot(self) -> dict[str, Any]:
        return {f.name: jsonable(getattr(self, f.name)) for f in fields(self)}

    def upsert_player(self, data: dict[str, Any]) -> dict[str, Any]:
        """Create or update a player; unknown keys (``token``, ``nickname``, ``sessions``…) are kept."""
        player_id = data.get("player_id")
        if not isinstance(player_id, str) or not player_id:
            raise ValueError("player_id must be a non-empty string")
        player = self.players.setdefault(player_id, {"balance": Decimal("0"), "currency": "EUR", "disabled": False})
        for key, value in data.items():
            if key == "balance":
                player["balance"] = to_decimal(value)
            elif key == "currency":
                player["currency"] = str(value).upper()
            elif key == "disabled":
                player["disabled"] = bool(value)
            elif key != "player_id":
                player[key] = value
        return player

    def move(self, kind: str, txid: str, player_id: str, delta: Decimal) -> Decimal:
        """Apply a signed money movement to a player and record it; returns the new balance."""
        player = self.players[player_id]
        player["balance"] += delta
        self.ledger.append(
            {"kind": kind, "txid": txid, "player": player_id, "amount": delta, "balance_after": player["balance"]}
        )
        return player["balance"]

    def take_fault(self, names: tuple[str, ...]) -> dict[str, Any] | None:
        """Consume the first pending fault matching this request (FIFO); ``down`` lasts ``count`` requests."""
        wanted = {n.lower() for n in names}
        for index, fault in enumerate(self.faults):
            endpoint = fault.get("endpoint")
            if endpoint is not None and endpoint.lower() not in wanted:
                continue
            if fault["kind"] == "down" and fault["count"] > 1:
                fault["count"] -= 1
                return dict(fault)
            return self.faults.pop(index)
        return None


STATE: web.AppKey[BaseState] = web.AppKey("simulator_state", BaseState)


def parse_fault(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("kind") not in FAULT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}")
    fault: dict[str, Any] = {"kind": data["kind"], "endpoint": data.get("endpoint")}
    if fault["endpoint"] is not None and not isinstance(fault["endpoint"], str):
        raise ValueError("endpoint must be a string")
    if fault["kind"] in ("delay", "apply_then_hang"):
        seconds = data.get("seconds", 1 if fault["kind"] == "delay" else 10)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float, Decimal)) or seconds < 0:
            raise ValueError("seconds must be a number >= 0")
        fault["seconds"] = float(seconds)  # a duration, not money
    if fault["kind"] == "down":
        count = data.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("count must be an integer >= 1")
        fault["count"] = count
    return fault


def abort_with_reset(request: web.Request) -> None:
    """Drop the connection with a TCP RST, as a crashing legacy server or a proxy would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def fault_middleware(
    state: BaseState, endpoint_of: EndpointOf, content_type: str, down_response: Callable[[], web.Response]
) -> Any:
    pools: dict[tuple, asyncio.Semaphore] = {}  # (workers, seconds) -> the pool's free workers

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/_control/"):
            return await handler(request)
        names = await endpoint_of(request)
        state.calls[names[0]] += 1
        if state.workers is not None:
            shape = (state.workers["workers"], state.workers["seconds"])
            pool = pools.get(shape) or pools.setdefault(shape, asyncio.Semaphore(shape[0]))
            async with pool:
                await asyncio.sleep(shape[1])
        fault = state.take_fault(names)
        kind = fault["kind"] if fault else None
        if kind == "delay":
            await asyncio.sleep(fault["seconds"])
        elif kind == "http_500_html":
            return web.Response(status=500, text=HTML_500, content_type="text/html")
        elif kind == "garbage":
            return web.Response(status=200, body=b"<<not json>>", content_type=content_type)
        elif kind == "reset":
            abort_with_reset(request)
            raise asyncio.CancelledError  # nothing may be written to the dead connection
        elif kind == "down":
            return down_response()
        response = await handler(request)
        if kind == "apply_then_hang":
            await asyncio.sleep(fault["seconds"])
        return response

    return middleware


def _plain_503() -> web.Response:
    return web.Response(status=503, text="Service Unavailable", content_type="text/plain")


def new_app(
    state: BaseState,
    endpoint_of: EndpointOf,
    *,
    content_type: str,
    down_response: Callable[[], web.Response] = _plain_503,
) -> web.Application:
    """An application with the fault middleware and the control routes already in place."""
    app = web.Application(middlewares=[fault_middleware(state, endpoint_of, content_type, down_response)])
    app[STATE] = state

    async def bad(message: str) -> web.Response:
        return web.json_response({"error": message}, status=400)

    async def players(request: web.Request) -> web.Response:
        try:
            player = state.upsert_player(loads_exact(await request.read()))
        except (ValueError, AttributeError, TypeError) as exc:
            return await bad(str(exc))
        return web.json_response(jsonable(player))

    async def get_state(request: web.Request) -> web.Response:
        return web.json_response(state.snapshot())

    async def faults(request: web.Request) -> web.Response:
        try:
            fault = parse_fault(json.loads(await request.read()))
        except ValueError as exc:
            return await bad(str(exc))
        state.faults.append(fault)
        return web.json_response({"faults": jsonable(state.faults)})

    async def reset(request: web.Request) -> web.Response:
        state.reset()
        return web.json_response({"ok": True})

    async def workers(request: web.Request) -> web.Response:
        try:
            data = json.loads(await request.read())
            count, seconds = data["workers"], data["seconds"]
            if not isinstance(count, int) or count < 1 or not isinstance(seconds, (int, float)) or seconds < 0:
                raise ValueError("workers must be an integer >= 1 and seconds a number >= 0")
        except (ValueError, KeyError, TypeError) as exc:
            return await bad(f"want {{\"workers\": N, \"seconds\": S}}: {exc}")
        state.workers = {"workers": count, "seconds": float(seconds)}
        return web.json_response(state.workers)

    app.router.add_post("/_control/players", players)
    app.router.add_get("/_control/state", get_state)
    app.router.add_post("/_control/faults", faults)
    app.router.add_post("/_control/reset", reset)
    app.router.add_post("/_control/workers", workers)
    return app


def path_endpoints(paths: dict[str, str]) -> EndpointOf:
    """Endpoint names by request path (unknown paths are counted under the path itself)."""

    async def endpoint_of(request: web.Request) -> tuple[str, ...]:
        return (paths.get(request.path, request.path),)

    return endpoint_of


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT, printing ``READY <url>`` once listening."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"READY http://{host}:{runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_main(
    description: str,
    build: Callable[[argparse.Namespace], web.Application],
    argv: list[str] | None = None,
    add_options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Command line of every ``python -m gateway.tools.simulators.<name>`` runner."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--player", action="append", default=[], metavar="ID:BALANCE:CURRENCY", help="seed a player (repeatable)"
    )
    if add_options:
        add_options(parser)
    args = parser.parse_args(argv)
    app = build(args)
    for spec in args.player:
        player_id, balance, currency = spec.split(":")
        app[STATE].upsert_player({"player_id": player_id, "balance": balance, "currency": currency})
    try:
        asyncio.run(serve(app, args.host, args.port))
    except KeyboardInterrupt:
        pass
