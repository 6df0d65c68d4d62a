"""``demo --serve`` and ``--info``: keep the stack running, show how to talk to it.

The printed ``curl`` commands carry real signatures, valid within the 5-minute window;
pasted again, a command is a retry and gets the first answer (the ledger moves the money
once). ``igsp-gateway sign`` makes more.
"""

from __future__ import annotations

import json
import shlex
import signal
import threading
import uuid
from decimal import Decimal
from pathlib import Path

import aiohttp

from gateway import signing
from gateway.tools.conformance.client import Clock, dumps
from gateway.tools.demo.output import Report
from gateway.tools.demo.platform_story import control
from gateway.tools.demo.stack import DemoStack

PLAYER, CURRENCY, BALANCE = "igsp-demo-player", "EUR", "1000.00"
#: a second player in the same wallet, for the conformance check of a refund naming another player's bet
OTHER_PLAYER = "igsp-demo-player-b"
SESSION, GAME = "demo-session-serve", "vs20olympgate"


async def fund_demo_player(stack: DemoStack, http: aiohttp.ClientSession) -> None:
    """The players of ``--info`` and of the curl commands, untouched by the story."""
    for player in (PLAYER, OTHER_PLAYER):
        await control(http, stack.wallet.url, "players", {"player_id": player, "balance": BALANCE,
                                                          "currency": CURRENCY})


def info(stack: DemoStack) -> dict:
    p, c = stack.provider_partner, stack.platform_partner
    return {
        "platform": {"hooks_url": stack.hooks_url, "api_key": p.api_key, "secret": p.secret, "player_id": PLAYER,
                     "other_player_id": OTHER_PLAYER, "currency": CURRENCY, "session_id": SESSION, "game_id": GAME,
                     # for `igsp-gateway chaos --config … --partner …`: the config the demo runs
                     "config": str(stack.config_path), "partner": p.partner},
        "provider": ({"base_url": stack.provider_base_url, "api_key": c.api_key, "secret": c.secret}
                     if stack.provider_face else None),
    }


def write_info(stack: DemoStack, path: str) -> None:
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(info(stack), indent=2) + "\n")
    partial.chmod(0o600)
    partial.replace(target)  # a script polling for the file never reads half of it


def curl(url: str, api_key: str, secret: str, body: bytes = b"", clock: Clock | None = None) -> str:
    headers = signing.signed_headers(api_key, secret, body, (clock or Clock()).now())
    parts = [f"curl -sS -X {'POST' if body else 'GET'} {shlex.quote(url)}"]
    parts += [f"-H {shlex.quote(f'{k}: {v}')}" for k, v in headers.items()]
    if body:
        parts.append(f"--data-raw {shlex.quote(body.decode())}")
    return " \\\n  ".join(parts)


def print_running(stack: DemoStack, report: Report, info_path: str | None) -> None:
    p, c, clock = stack.provider_partner, stack.platform_partner, Clock()
    say = report.say
    say()
    say("Everything keeps running (Ctrl-C stops it):")
    say(f"  gateway             {stack.gateway_url}   log: {stack.log_path}")
    say(f"  metrics             {stack.internal_url}/metrics   (the internal port, with /admin/)")
    say(f"  platform face       POST {stack.hooks_url}")
    say(f"                      api_key {p.api_key}  secret {p.secret}")
    if stack.provider_face:
        say(f"  provider face       {stack.provider_base_url}  (GET /games, GET /providers, POST /sessions)")
        say(f"                      api_key {c.api_key}  secret {c.secret}")
        say(f"  iGSP platform       {stack.platform.url}   state: GET /_control/state")
        say(f"  legacy game server  {stack.game_server.url}")
    say(f"  legacy wallet       {stack.wallet.url}   state: GET /_control/state")
    say(f"  demo player         {PLAYER} with {BALANCE} {CURRENCY} in the legacy wallet")
    say(f"  second player       {OTHER_PLAYER} with {BALANCE} {CURRENCY} (the conformance kit's --other-player-id)")
    say()
    say("Signed requests to paste (valid for 5 minutes):")
    say()
    say("# the demo player's balance, through the platform face")
    balance = {"action": "balance", "player_id": PLAYER, "currency": CURRENCY, "session_id": SESSION}
    say(curl(stack.hooks_url, p.api_key, p.secret, dumps(balance), clock))
    say()
    say("# a bet of 1.00 (pasted twice, the copy is a retry: the same answer, debited once)")
    bet = {**balance, "action": "bet", "amount": Decimal("1.00"), "game_id": GAME, "transaction_id": f"curl-{uuid.uuid4().hex[:8]}",
           "type": "bet"}
    say(curl(stack.hooks_url, p.api_key, p.secret, dumps(bet), clock))
    if stack.provider_face:
        say()
        say("# the first games of the catalogue, through the provider face")
        say(curl(stack.provider_base_url + "/games?limit=3", c.api_key, c.secret, b"", clock))
    say()
    say(f"# more: igsp-gateway sign --api-key {p.api_key} --secret {p.secret} --url {stack.hooks_url} --body '…'")
    if info_path:
        say(f"# certify it: igsp-gateway conformance platform --info {info_path} --demo")
        if stack.provider_face:
            say(f"#             igsp-gateway conformance provider --info {info_path}")
    say(f"# prove the wallet mapping money-safe: igsp-gateway chaos --config {stack.config_path} "
        f"--partner {p.partner} --player-id {PLAYER} --currency {CURRENCY}")


def wait_until_stopped(stack: DemoStack, report: Report) -> None:
    """Block until Ctrl-C or SIGTERM (or the gateway process dies)."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        while not stop.wait(0.5):
            if not stack.gateway_running():
                report.say(f"the gateway process stopped; its log: {stack.log_path}")
                return
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    report.say("stopping…")
