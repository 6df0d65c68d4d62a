"""``igsp-gateway demo``: see both faces work, end to end, in one command.

Starts the bundled simulators and the gateway (``stack``), plays a scripted story —
act 1 on the platform face (``platform_story``), act 2 on the provider face
(``provider_story``) — printing every step with the balances on both sides, and checks
that the legacy ledger and the iGSP ledger agree. Exit status 0 only when every step's
outcome was right. ``--serve`` keeps it all running (``serve``); ``--info FILE`` writes
what is running as JSON for scripts. ``--store URL`` plays it on any store the gateway
takes (``stack.check_store_url``), so one command shows a Redis, Sentinel or Cluster
set-up doing the same money moves as the embedded SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run simulators + gateway and play a scripted story (no Redis, no config)",
                       description="See both faces work end to end: simulators and the gateway on loopback play "
                                   "a scripted story, then the legacy and iGSP ledgers are reconciled.")
    p.add_argument("--serve", action="store_true", help="keep everything running and print signed curl commands")
    p.add_argument("--info", metavar="FILE", help="write what is running (URLs, keys, demo player) as JSON")
    p.add_argument("--store", metavar="URL",
                   help="the gateway's store (default: embedded SQLite in a temp dir): redis://host:port/db, "
                        "rediss://…, redis+sentinel://host:port[,host:port…]/service or "
                        "redis+cluster://host:port[,host:port…]/ (rediss+sentinel://, rediss+cluster:// with TLS, "
                        "?ssl_ca_certs=/path/ca.pem for a private CA); the demo writes under a fresh namespace")
    p.set_defaults(func=cmd_demo)


async def play(stack, report) -> None:
    import aiohttp

    from gateway.tools.demo import serve
    from gateway.tools.demo.platform_story import PlatformAct

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        await PlatformAct(stack, http, report).play()
        if stack.provider_face:
            from gateway.tools.demo.provider_story import ProviderAct

            await ProviderAct(stack, http, report).play()
        else:
            report.say()
            report.say("Act 2 — provider face: not part of this build (no mappings/pragmatic-provider.yaml).")
        await serve.fund_demo_player(stack, http)


def cmd_demo(args: argparse.Namespace) -> int:
    import aiohttp

    from gateway.tools.demo import serve
    from gateway.tools.demo.output import Report
    from gateway.tools.demo.stack import DemoStack, check_store_url, shown_url

    started = time.monotonic()
    if args.store is not None:
        try:
            check_store_url(args.store)
        except ValueError as exc:
            print(f"demo: --store: {exc}", file=sys.stderr)
            return 2
    report = Report()
    stack = DemoStack(store_url=args.store)
    faces = "platform face + provider face" if stack.provider_face else "platform face"
    if args.store is None:
        report.say(f"iGSP Gateway demo — everything on 127.0.0.1, embedded SQLite in {stack.dir}, no Redis")
    else:
        report.say(f"iGSP Gateway demo — everything on 127.0.0.1, store {shown_url(args.store)} "
                   f"(namespace {stack.namespace}), files in {stack.dir}")
    try:
        stack.start()
    except (RuntimeError, OSError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        stack.stop(keep_dir=True)
        return 1
    report.say(f"  gateway             {stack.gateway_url}  ({faces})")
    report.say(f"  legacy wallet       {stack.wallet.url}  Hub88-style: JSON + RSA signatures, not idempotent")
    if stack.provider_face:
        report.say(f"  legacy game server  {stack.game_server.url}  Pragmatic-style: form + md5, retries wins")
        report.say(f"  iGSP platform       {stack.platform.url}  an iGSP casino platform (wallet hooks)")
    try:
        try:
            asyncio.run(play(stack, report))
        except (aiohttp.ClientError, TimeoutError, RuntimeError, KeyError) as exc:
            report.wrong += 1
            report.say(f"\nthe story stopped: {type(exc).__name__}: {exc}\n{stack.log_tail()}")
        report.say()
        total = report.right + report.wrong
        if report.wrong == 0:
            report.say(f"RESULT: all {total} steps right, legacy ledger == iGSP ledger "
                       f"({time.monotonic() - started:.1f} s)")
        else:
            report.say(f"RESULT: {report.wrong} of {total} checks wrong — gateway log kept in {stack.log_path}")
        if args.info:
            serve.write_info(stack, args.info)
        if args.serve:
            serve.print_running(stack, report, args.info)
            serve.wait_until_stopped(stack, report)
    except KeyboardInterrupt:
        report.say("interrupted")
        report.wrong += 1
    finally:
        stack.stop(keep_dir=report.wrong > 0)
    return 0 if report.wrong == 0 else 1
