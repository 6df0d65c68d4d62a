"""A legacy game provider in the style of Pragmatic Play's Seamless Wallet integration (section A).

Two roles:

1. It SERVES the casino-facing catalogue/launch API (form-encoded POST, md5 ``hash``):
   ``/IntegrationService/v3/http/CasinoGameAPI/getCasinoGames/`` (``secureLogin``, ``hash``)
   returns every game in ONE list, no paging, ``rtp`` as a percentage string; and
   ``/IntegrationService/v3/http/CasinoGameAPI/game/url/`` (``secureLogin``, ``symbol``,
   ``language``, ``token``, ``currency``, ``lobbyUrl``, ``hash``) returns a ``gameURL``
   and counts launches per token. Errors (HTTP 200): ``"5"`` invalid hash, ``"4"`` wrong
   ``secureLogin`` (docs silent; section A's "authentication failed"), ``"7"`` missing
   ``symbol``/``token``, ``"8"`` game not found.

2. It PLAYS rounds by calling the casino's seamless wallet (the gateway) at
   ``{wallet_url}/authenticate|balance|bet|result|refund``, driven by ``POST /_control/play``.
   Habits: ``result`` and ``refund`` are retried with the SAME params (same ``reference``)
   until ``error`` is 0, up to ``retry.attempts``; a timeout, a transport error, a non-JSON
   body or any other code is retried too, except ``120`` ("internal error, no retry").
   ``bet``/``balance``/``authenticate`` are never retried. Every call carries the launch
   ``token`` (the gateway needs it to find the iGSP session) and ``refund`` carries the
   bet's ``amount``/``gameId``/``roundId`` when this provider placed that bet.

``hash`` (both directions): params except ``hash``, sorted by name, joined ``k=v&k=v``
with raw (not URL-encoded) values, the secret appended directly, md5, lowercase hex.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from gateway.tools.simulators._common import (
    BaseState,
    fmt,
    jsonable,
    loads_exact,
    new_app,
    path_endpoints,
    run_main,
    to_decimal,
)

__all__ = ["GAMES", "State", "hash_params", "make_app"]

CATALOGUE_PATH = "/IntegrationService/v3/http/CasinoGameAPI/getCasinoGames/"
LAUNCH_PATH = "/IntegrationService/v3/http/CasinoGameAPI/game/url/"
OPS = ("balance", "bet", "result", "refund")
RETRIED = ("result", "refund")
NO_RETRY = {0, 120}


def _game(
    code: str,
    name: str,
    kind: str = "Video Slots",
    rtp: str = "96.50",
    when: str = "2025-01-02T10:00:00Z",
    technology: str = "html5",
    demo: bool = True,
) -> dict[str, Any]:
    return {
        "gameID": code,
        "gameName": name,
        "typeDescription": kind,
        "technology": technology,
        "platform": "WEB,MOBILE",
        "demoGameAvailable": demo,
        "rtp": rtp,
        "lastModified": when,
    }


GAMES: list[dict[str, Any]] = [
    _game("vs20olympgate", "Gates of Olympus"),
    _game("vs20fruitsw", "Sweet Bonanza", rtp="96.48"),
    _game("vs20sbxmas", "Sweet Bonanza Xmas", rtp="96.48", when="2024-12-01T09:00:00Z"),
    _game("vs10bbbonanza", "Big Bass Bonanza", rtp="96.71"),
    _game("vs20doghouse", "The Dog House", rtp="96.51"),
    _game("vs25wolfgold", "Wolf Gold", rtp="96.01", when="2023-06-12T08:30:00Z"),
    _game("vs243lions", "5 Lions", rtp="96.50"),
    _game("vs20starlight", "Starlight Princess", rtp="96.50"),
    _game("vs20fruitparty", "Fruit Party", rtp="96.47"),
    _game("vs20sugarrush", "Sugar Rush", rtp="96.50", when="2025-02-14T12:00:00Z"),
    _game("vs40wildwest", "Wild West Gold", rtp="96.51"),
    _game("vs25mustang", "Mustang Gold", rtp="96.53"),
    _game("vs20mvwild", "Madame Destiny Megaways", rtp="96.56"),
    _game("vs10txbigbass", "Big Bass Splash", rtp="96.71", when="2025-03-01T07:15:00Z"),
    _game("vs5joker", "Joker's Jewels", rtp="96.50", when="2022-11-20T10:00:00Z"),
    _game("vs9chen", "Master Chen's Fortune", rtp="96.50"),
    _game("vs20bonzgold", "Bonanza Gold", rtp="96.52"),
    _game("vs1024buffalo", "Buffalo King", rtp="96.06"),
    _game("vs7fire88", "Fire 88", kind="Classic Slots", rtp="96.52"),
    _game("vs1dragon8", "888 Dragons", kind="Classic Slots", rtp="96.84"),
    _game("vs3train", "Gold Train", kind="Classic Slots", rtp="96.52", technology="flash", demo=False),
    _game("sc7piggiesai", "7 Piggies Scratchcard", kind="Scratch card", rtp="95.00"),
    _game("bjma", "Multihand Blackjack", kind="Blackjack", rtp="99.50"),
    _game("rla", "Roulette", kind="Roulette", rtp="97.30"),
    _game("bca", "Baccarat", kind="Baccarat", rtp="98.94"),
    _game("101", "Mega Wheel", kind="Live games", rtp="96.51", demo=False),
]


def hash_params(params: Mapping[str, Any], secret: str) -> str:
    """md5 of ``k1=v1&k2=v2…`` (sorted, without ``hash``) with ``secret`` appended directly."""
    payload = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "hash")
    return hashlib.md5((payload + secret).encode("utf-8")).hexdigest()  # noqa: S324 - the vendor's algorithm


@dataclass
class State(BaseState):
    #: launch token -> {"userId", "currency"} from ``authenticate`` (done once per token)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: launch token -> number of game/url calls
    launches: dict[str, int] = field(default_factory=dict)
    #: bet reference -> {"amount", "gameId", "roundId"} (to fill in refunds)
    bets: dict[str, dict[str, str]] = field(default_factory=dict)
    rounds: int = 0


def _error_code(answer: Any) -> int | None:
    if not isinstance(answer, dict):
        return None
    try:
        return int(str(answer.get("error")))
    except ValueError:
        return None


def make_app(
    state: State | None = None,
    *,
    secret_key: str = "testKey",  # noqa: S107 - a simulator's test credential
    secure_login: str = "casino_login",
    provider_id: str = "PragmaticPlay",
    wallet_url: str | None = None,
    game_base_url: str = "https://games.pragmatic.example/gs2c",
    games: list[dict[str, Any]] | None = None,
    call_timeout: float = 5.0,
) -> web.Application:
    state = state if state is not None else State()
    catalogue = games if games is not None else GAMES
    config = {"secret_key": secret_key, "provider_id": provider_id, "wallet_url": wallet_url}
    app = new_app(
        state, path_endpoints({CATALOGUE_PATH: "games", LAUNCH_PATH: "launch"}), content_type="application/json"
    )

    def check(form: dict[str, str]) -> web.Response | None:
        if not hmac.compare_digest(form.get("hash", ""), hash_params(form, config["secret_key"])):
            return web.json_response({"error": "5", "description": "Invalid hash"})
        if form.get("secureLogin") != secure_login:
            return web.json_response({"error": "4", "description": "Authentication failed"})
        return None

    async def get_games(request: web.Request) -> web.Response:
        form = dict(await request.post())
        return check(form) or web.json_response({"error": "0", "description": "OK", "gameList": catalogue})

    async def launch(request: web.Request) -> web.Response:
        form = dict(await request.post())
        if (failure := check(form)) is not None:
            return failure
        if not form.get("symbol") or not form.get("token"):
            return web.json_response({"error": "7", "description": "Bad parameters"})
        if not any(game["gameID"] == form["symbol"] for game in catalogue):
            return web.json_response({"error": "8", "description": "Game not found"})
        state.launches[form["token"]] = state.launches.get(form["token"], 0) + 1
        query = {k: form.get(k, "") for k in ("token", "symbol", "language", "currency", "lobbyUrl")}
        url = f"{game_base_url}/play?{urlencode(query)}"
        return web.json_response({"error": "0", "description": "OK", "gameURL": url})

    async def call(http: aiohttp.ClientSession, op: str, params: dict[str, str], attempt: int) -> dict[str, Any]:
        # A step may force a (wrong) hash through its "params" to test the casino's check.
        signed = params if "hash" in params else dict(params, hash=hash_params(params, config["secret_key"]))
        entry: dict[str, Any] = {"op": op, "attempt": attempt, "params": signed, "status": None, "answer": None}
        try:
            async with http.post(f"{config['wallet_url'].rstrip('/')}/{op}", data=signed) as response:
                entry["status"] = response.status
                text = await response.text()
        except (TimeoutError, aiohttp.ClientError) as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
            return entry
        try:
            entry["answer"] = loads_exact(text)
        except ValueError:
            entry["raw"] = text[:500]
        return entry

    def step_params(
        step: dict[str, Any], token: str, session: dict[str, Any], game: str, round_id: str
    ) -> tuple[str, dict[str, str]]:
        op = step.get("op")
        if op not in OPS:
            raise ValueError(f"op must be one of {OPS}")
        params = {"providerId": config["provider_id"], "userId": session["userId"], "token": token}
        if op != "balance":
            reference = step.get("reference")
            if not isinstance(reference, str) or not reference:
                raise ValueError(f"{op} needs a reference")
            bet = state.bets.get(reference, {}) if op == "refund" else {}
            params.update(
                reference=reference,
                gameId=bet.get("gameId", game),
                roundId=str(step.get("round", bet.get("roundId", round_id))),
                timestamp=str(time.time_ns() // 1_000_000),
            )
            if "amount" in step:
                params["amount"] = fmt(to_decimal(step["amount"]))
            elif op != "refund":
                raise ValueError(f"{op} needs an amount")
            elif bet:
                params["amount"] = bet["amount"]
            if op in ("bet", "result"):
                params["roundDetails"] = "spin"
        params.update({str(k): str(v) for k, v in step.get("params", {}).items()})
        return op, params

    def record(op: str, params: dict[str, str], answer: dict[str, Any]) -> None:
        """The provider's own view of what the casino accepted, once per op+reference."""
        if op == "bet":
            state.bets.setdefault(params["reference"], {k: params[k] for k in ("amount", "gameId", "roundId")})
        if op == "balance" or any(e["kind"] == op and e["txid"] == params["reference"] for e in state.ledger):
            return
        amount = to_decimal(params.get("amount", "0"))
        cash = answer.get("cash")
        state.ledger.append(
            {
                "kind": op,
                "txid": params["reference"],
                "player": params["userId"],
                "amount": -amount if op == "bet" else amount,
                "balance_after": cash if isinstance(cash, (int, Decimal)) else None,
            }
        )

    async def play(request: web.Request) -> web.Response:
        try:
            body = loads_exact(await request.read())
            token, game, steps = body["token"], body.get("game", "vs20olympgate"), body.get("steps", [])
            retry = body.get("retry", {})
            attempts, delay = int(retry.get("attempts", 3)), float(retry.get("delay", 0.2))
            if not config["wallet_url"]:
                raise ValueError("wallet_url is not configured (POST /_control/config)")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return web.json_response({"error": f"bad play request: {exc}"}, status=400)
        calls: list[dict[str, Any]] = []
        timeout = aiohttp.ClientTimeout(total=float(body.get("timeout", call_timeout)))
        async with aiohttp.ClientSession(timeout=timeout) as http:
            session = state.sessions.get(token)
            if session is None:
                params = {"token": token, "providerId": config["provider_id"], "gameId": game, "ipAddress": "127.0.0.1"}
                calls.append(await call(http, "authenticate", params, 1))
                answer = calls[-1]["answer"]
                if _error_code(answer) != 0:
                    return web.json_response({"ok": False, "calls": jsonable(calls)})
                session = state.sessions[token] = {"userId": str(answer["userId"]), "currency": answer.get("currency")}
            state.rounds += 1
            round_id = str(5_100_000_000 + state.rounds)
            ok = True
            for step in steps:
                try:
                    op, params = step_params(step, token, session, game, round_id)
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    error = {"error": f"bad step {step!r}: {exc}", "calls": jsonable(calls)}
                    return web.json_response(error, status=400)
                for attempt in range(1, (attempts if op in RETRIED else 1) + 1):
                    calls.append(await call(http, op, params, attempt))
                    code = _error_code(calls[-1]["answer"])
                    if code in NO_RETRY:
                        break
                    if attempt < attempts and op in RETRIED:
                        await asyncio.sleep(delay)
                if code == 0:
                    record(op, params, calls[-1]["answer"])
                ok = ok and code == 0
        return web.json_response(
            jsonable(
                {
                    "ok": ok,
                    "user_id": session["userId"],
                    "currency": session["currency"],
                    "round_id": round_id,
                    "calls": calls,
                }
            )
        )

    async def set_config(request: web.Request) -> web.Response:
        try:
            data = dict(loads_exact(await request.read()))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": f"bad config: {exc}"}, status=400)
        config.update({k: v for k, v in data.items() if k in config})
        return web.json_response({k: v for k, v in config.items() if k != "secret_key"})

    app.router.add_post(CATALOGUE_PATH, get_games)
    app.router.add_post(LAUNCH_PATH, launch)
    app.router.add_post("/_control/play", play)
    app.router.add_post("/_control/config", set_config)
    return app


def main(argv: list[str] | None = None) -> None:
    def options(parser: Any) -> None:
        parser.add_argument("--secret-key", default="testKey")
        parser.add_argument("--secure-login", default="casino_login")
        parser.add_argument("--provider-id", default="PragmaticPlay")
        parser.add_argument("--wallet-url", help="base URL of the casino's seamless wallet (the gateway)")

    def build(args: Any) -> web.Application:
        return make_app(
            State(),
            secret_key=args.secret_key,
            secure_login=args.secure_login,
            provider_id=args.provider_id,
            wallet_url=args.wallet_url,
        )

    run_main("Pragmatic-style game provider simulator", build, argv, options)


if __name__ == "__main__":
    main()
