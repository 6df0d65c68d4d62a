"""``igsp-gateway chaos``: prove a wallet mapping money-safe against the integrator's sandbox.

The conformance kit shows that a gateway answers by the protocol when the legacy side
behaves; it cannot show what happens to money when the legacy side applied a call and the
answer went wrong — only a fault between the two can. So chaos starts its own gateway
(``stack``) on the given config, with the partner's legacy API reached through a
fault-injecting proxy (``proxy``), and for each fault and each money operation plays a
round as the game provider, then reconciles the legacy balance with what iGSP was told
(``scenario``). Exit 0 only when every case passed: nothing lost, nothing paid twice.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from gateway.tools.chaos.proxy import FAULTS
    from gateway.tools.chaos.scenario import OPERATIONS

    p = sub.add_parser(
        "chaos", help="prove a wallet mapping money-safe: faults between the gateway and the legacy wallet",
        description="Start a gateway on --config with the partner's legacy wallet behind a fault-injecting proxy, "
                    "play bet/win/refund rounds as the game provider while one fault at a time hits one legacy "
                    "call, and reconcile the legacy balance (read through the mapping's balance operation) with "
                    "what iGSP was told. Moves the test player's money: run it against a sandbox wallet. "
                    "Faults: " + "; ".join(f"{k}: {v}" for k, v in FAULTS.items()) + ".")
    p.add_argument("--config", required=True, help="the gateway config (YAML) naming the partner and its mapping")
    p.add_argument("--partner", required=True, help="a platform-face partner id of the config")
    p.add_argument("--player-id", required=True, help="a test player of the legacy wallet, with some money")
    p.add_argument("--currency", required=True, help="the player's currency (ISO 4217)")
    p.add_argument("--session-id", default="chaos-session", help="session_id sent with every hook")
    p.add_argument("--game-id", default="vs20olympgate", help="game_id sent with bets and wins")
    p.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated subset of: {', '.join(FAULTS)}")
    p.add_argument("--operations", default=",".join(OPERATIONS),
                   help=f"the operations to inject into, comma-separated subset of: {', '.join(OPERATIONS)}")
    p.add_argument("--deadline", type=float, default=60.0, metavar="SECONDS",
                   help="how long one case may take to settle (retries, queue, rollbacks)")
    p.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML")
    p.set_defaults(func=cmd_chaos)


def _subset(text: str, known, what: str) -> list[str]:
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [c for c in chosen if c not in known]
    if unknown or not chosen:
        raise ValueError(f"--{what}: unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
                         f"choose from {', '.join(known)}")
    return list(dict.fromkeys(chosen))


def cmd_chaos(args: argparse.Namespace) -> int:
    import aiohttp

    from gateway.errors import ConfigError
    from gateway.tools.chaos.proxy import FAULTS
    from gateway.tools.chaos.scenario import OPERATIONS
    from gateway.tools.chaos.stack import ChaosSetupError, load_target

    try:
        faults = _subset(args.faults, FAULTS, "faults")
        operations = _subset(args.operations, OPERATIONS, "operations")
        currency = args.currency
        if not (len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()):
            raise ValueError(f"--currency: {currency!r} is not an ISO 4217 code such as EUR")
        if not args.deadline > 0:
            raise ValueError("--deadline must be a positive number of seconds")
        if args.junit and not Path(args.junit).resolve().parent.is_dir():
            raise ValueError(f"--junit: no directory {str(Path(args.junit).resolve().parent)!r} to write it in")
        target = load_target(args.config, args.partner)
    except ConfigError as exc:
        print(f"chaos: the config does not load:\n{exc}", file=sys.stderr)
        return 2
    except (ValueError, ChaosSetupError) as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="igsp-chaos-") as workdir:
        try:
            return asyncio.run(_run(args, target, faults, operations, Path(workdir)))
        except (OSError, RuntimeError, aiohttp.ClientError) as exc:
            print(f"chaos: stopped: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2


async def _run(args, target, faults: list[str], operations: list[str], workdir: Path) -> int:
    from gateway.tools.chaos import report
    from gateway.tools.chaos.proxy import FaultProxy
    from gateway.tools.chaos.scenario import FAIL, OPERATION_OF, SKIP, TARGETS, ChaosError, Driver, Player
    from gateway.tools.chaos.stack import ChaosGateway, ChaosSetupError

    started = time.monotonic()
    proxy = FaultProxy(target.origin, target.timeout, tls_verify=target.mapping.tls_verify)
    await proxy.start()
    gateway = None
    results = []
    try:
        gateway = ChaosGateway(target, proxy.url, workdir)
        await asyncio.to_thread(gateway.check)
        await asyncio.to_thread(gateway.start)
        print(f"chaos: partner {target.partner.id!r}, mapping {target.mapping.name!r} ({target.mapping.file})")
        print(f"       legacy API {target.origin} behind the fault proxy {proxy.url}; "
              f"legacy timeout {target.timeout:g} s; player {args.player_id} ({args.currency})")
        player = Player(args.player_id, args.currency, args.session_id, args.game_id)
        raw = target.raw_config
        async with Driver(gateway, proxy, player, api_key=target.partner.api_key,
                          secret=target.partner.secrets[0].decode(), hooks_path=target.hooks_path,
                          currencies=raw.get("currencies") if isinstance(raw, dict) else None,
                          deadline=args.deadline) as driver:
            start_balance = await driver.balance()
            if proxy.forwarded == 0:
                raise ChaosError("the balance read did not reach the legacy API through the proxy")
            print(f"       balance at the start: {start_balance} {args.currency}")
            cases = len(faults) * sum(driver.calls.get(op, 1) * len(TARGETS[op]) for op in operations)
            need = driver.cost(cases)
            if start_balance < need:
                raise ChaosError(f"player {args.player_id!r} has {start_balance} {args.currency}; {cases} case(s) "
                                 f"need {need} {args.currency} in the legacy wallet (each leaves the player "
                                 f"{driver.cost(1) - driver.cost(0)} down: a bet larger than its win)")
            index = 0
            for fault in faults:
                for hit in (t for op in operations for t in TARGETS[op]):
                    for call in range(1, driver.calls.get(OPERATION_OF[hit], 1) + 1):
                        index += 1
                        result = await driver.run_case(fault, hit, index, call)
                        results.append(result)
                        print(report.line(result, args.currency), flush=True)
    except (ChaosError, ChaosSetupError) as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    finally:
        if gateway is not None:
            await asyncio.to_thread(gateway.stop)
        await proxy.stop()
    failed = [r for r in results if r.verdict == FAIL]
    skipped = sum(r.verdict == SKIP for r in results)
    if args.junit:
        try:
            report.write_junit(args.junit, results, args.currency, {"partner": target.partner.id,
                                                                    "mapping": target.mapping.name,
                                                                    "currency": args.currency})
        except OSError as exc:
            print(f"chaos: cannot write --junit {args.junit}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    off = sum((abs(r.difference) for r in failed if r.difference), start=Decimal(0))
    if failed:
        print(f"RESULT: {len(failed)} of {len(results)} cases FAILED (money off by {off} {args.currency} in all) "
              f"({time.monotonic() - started:.0f} s)")
        return 1
    passed = f"all {len(results)} cases passed" if not skipped else \
        f"{len(results) - skipped} cases passed, {skipped} skipped (each for the reason under it)"
    print(f"RESULT: {passed}: nothing lost, nothing paid twice ({time.monotonic() - started:.0f} s)")
    return 0
