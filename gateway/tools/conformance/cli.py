"""``igsp-gateway conformance platform|provider``: options, the money warning, exit status.

Exit status: 0 when no check failed (skips allowed), 1 when one did, 2 for bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

MONEY_FLAG = "--i-understand-this-moves-money"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("conformance", help="certify an iGSP platform or provider endpoint (pass/fail + JUnit)",
                            description="Check an iGSP endpoint against the protocol's laws.")
    kinds = parser.add_subparsers(dest="target", required=True)
    platform = kinds.add_parser("platform", help="a casino platform's wallet hooks (--url is the full hook URL)")
    provider = kinds.add_parser("provider", help="a game provider's API (--url is the base URL, e.g. …/igsp/v1)")
    for p in (platform, provider):
        p.add_argument("--url", help="platform: the hooks URL; provider: the base URL")
        p.add_argument("--api-key")
        p.add_argument("--secret")
        p.add_argument("--info", metavar="FILE", help="read url, keys and test player from `igsp-gateway demo --info`")
        p.add_argument("--player-id", help="a test player (platform: funded in its wallet)")
        p.add_argument("--currency", help="the test player's currency (default EUR)")
        p.add_argument("--game-id", help="platform: game_id sent in hooks; provider: the game to launch "
                                         "(default: its first active game)")
        p.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML")
        p.add_argument("--only", action="append", default=[], metavar="PATTERN",
                       help="run only checks whose id matches (fnmatch, repeatable), e.g. 'signature.*'")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
        p.add_argument(MONEY_FLAG, dest="moves_money", action="store_true",
                       help="run the wallet checks that move the test player's money")
        p.add_argument("--demo", action="store_true", help="the target is a demo/test system: money checks run")
        p.set_defaults(func=cmd_conformance)
    platform.add_argument("--session-id", help="session_id sent in hooks")
    platform.add_argument("--other-player-id", help="a second test player of the wallet, same currency "
                                                    "(wallet.refund_other_player is skipped without it)")
    platform.add_argument("--amount", default="1.00", help="stake of the test bets (default 1.00)")
    provider.add_argument("--page-limit", type=int, default=5, help="page size of the paging walk (default 5)")


def _from_info(args: argparse.Namespace) -> dict:
    info = json.loads(Path(args.info).read_text())
    section = info.get(args.target) or {}
    found = {"url": section.get("hooks_url") or section.get("base_url")}
    for key in ("api_key", "secret", "player_id", "other_player_id", "currency", "session_id", "game_id"):
        found[key] = section.get(key)
    return {k: v for k, v in found.items() if v}


def _settings(args: argparse.Namespace) -> dict:
    settings = _from_info(args) if args.info else {}
    for key in ("url", "api_key", "secret", "player_id", "other_player_id", "currency", "game_id", "session_id"):
        value = getattr(args, key, None)
        if value:
            settings[key] = value
    return settings


def cmd_conformance(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except (OSError, ValueError) as exc:
        print(f"cannot read --info {args.info}: {exc}", file=sys.stderr)
        return 2
    missing = [k for k in ("url", "api_key", "secret") + (("player_id",) if args.target == "platform" else ())
               if not settings.get(k)]
    if missing:
        print(f"missing: {', '.join('--' + k.replace('_', '-') for k in missing)} (or give --info FILE)",
              file=sys.stderr)
        return 2
    if args.target == "platform":
        try:
            settings["amount"] = Decimal(args.amount)
        except InvalidOperation:
            print(f"--amount {args.amount!r} is not a number", file=sys.stderr)
            return 2
    else:
        settings["page_limit"] = max(1, args.page_limit)
    allow_money = args.moves_money or args.demo
    return asyncio.run(_run(args, settings, allow_money))


async def _run(args: argparse.Namespace, settings: dict, allow_money: bool) -> int:
    from gateway.spec import HOOKS_SPEC, PROVIDER_SPEC, SpecValidators
    from gateway.tools.conformance import checks_platform, checks_provider, junit, report
    from gateway.tools.conformance.client import SignedClient
    from gateway.tools.conformance.runner import FAIL, RunOptions, run_checks

    platform = args.target == "platform"
    module = checks_platform if platform else checks_provider
    spec = SpecValidators(HOOKS_SPEC if platform else PROVIDER_SPEC)
    target_type = checks_platform.PlatformTarget if platform else checks_provider.ProviderTarget
    target = target_type(**{k: v for k, v in settings.items() if k in target_type.__dataclass_fields__})
    print(f"iGSP conformance: {args.target} at {target.url}")
    if platform and allow_money:
        print(f"This run MOVES MONEY on player {target.player_id!r}: bets, a win and refunds of "
              f"{target.amount} {target.currency} (a conforming wallet ends where it started).")
        if target.other_player_id:
            print(f"Player {target.other_player_id!r} is sent a refund of another player's bet "
                  "(a conforming wallet refuses it).")
    elif platform:
        print(f"Wallet checks that move money are SKIPPED: add {MONEY_FLAG} (or --demo for a demo target).")
    print()
    async with SignedClient(target.url, target.api_key, target.secret, spec, timeout=args.timeout) as client:
        context = (checks_platform.PlatformContext if platform else checks_provider.ProviderContext)(target, client)
        results = await run_checks(module.CHECKS, context, RunOptions(allow_money=allow_money, select=tuple(args.only),
                                                                       check_timeout=max(60.0, 6 * args.timeout)))
    report.print_report(results, f"{args.target} {target.url}")
    if platform and context.start_balance is not None and context.final_balance is not None:
        net = sum((delta for _, delta in context.moves), Decimal(0))
        print(f"money: player {target.player_id!r} went from {context.start_balance} to {context.final_balance} "
              f"{target.currency} during this run (a conforming wallet: {net:+})")
    if args.junit:
        junit.write(args.junit, results, f"igsp-conformance.{args.target}",
                    {"url": target.url, "moves_money": str(allow_money).lower()})
        print(f"JUnit XML written to {args.junit}")
    return 1 if any(r.outcome == FAIL for r in results) else 0
