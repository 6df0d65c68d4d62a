"""``igsp-gateway dlq``: list, show, replay, resolve and purge dead letters straight in the store.

Works beside running gateways (SQLite file or Redis): a replayed entry goes back to the
queue and the next worker poll delivers it. Only the config's ``store`` section is read,
so the mappings' secrets need not be in the environment — except for ``resolve --applied``
of a win or refund, which reads the player's balance from the legacy wallet and so loads
the whole config as ``serve`` does.

    igsp-gateway dlq list  --config gateway.yaml [--json] [--limit N]
    igsp-gateway dlq show ID | replay ID | purge ID | purge --all
    igsp-gateway dlq resolve ID --applied | --not-applied
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from gateway.config import load_store_settings
from gateway.errors import ConfigError, IgspError
from gateway.store import Store, open_store
from gateway.store.sqlite import sqlite_path

DESCRIPTION = """\
Dead letters are deliveries the queue gave up on, or would not resend because resending
could pay twice (a win or refund whose outcome is unknown on a wallet that does not
dedupe). Until one is closed, the provider's retries of its transaction get
503 transaction_in_progress.

  list, show ID      what is there (--json for scripts)
  replay ID          back to the queue, attempts reset: send it again
  resolve ID --applied
                     you checked the legacy wallet and the money moved: a win or refund
                     answers 200 with the player's balance (read from the wallet now; if it
                     cannot be read nothing changes); a rollback just closes
  resolve ID --not-applied
                     the money did not move: a win or refund answers
                     409 transaction_not_applied for good, and a refund's bet may be refunded
                     by a new refund. Refused for a rollback: the player would stay debited;
                     replay it instead
  purge ID | --all   forget dead letters dealt with otherwise. Only those whose transaction
                     already has its final answer go (a rollback: its bet answers 409; a
                     queued hook to a platform); a win or refund still open is kept and
                     named: resolve it instead. Exits 1 when it kept any.

A resolution is final: resolving again prints the same result, the other answer is refused.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("dlq", help="list, show, replay, resolve or purge dead-lettered deliveries",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("list", "show", "replay", "resolve", "purge"))
    p.add_argument("id", nargs="?", help="dead letter id (show, replay, resolve, purge)")
    answer = p.add_mutually_exclusive_group()
    answer.add_argument("--applied", dest="applied", action="store_const", const=True,
                        help="resolve: the legacy wallet applied it (the money moved)")
    answer.add_argument("--not-applied", dest="applied", action="store_const", const=False,
                        help="resolve: the legacy wallet did not apply it (no money moved)")
    p.add_argument("--all", action="store_true", help="purge: every dead letter whose transaction is final")
    p.add_argument("--config", default="gateway.yaml", help="gateway config file (its store section; resolve --applied loads it all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=100, help="list: at most this many")
    p.set_defaults(func=cmd_dlq)


def cmd_dlq(args: argparse.Namespace) -> int:
    if args.action in ("show", "replay", "resolve") and not args.id:
        print(f"dlq {args.action} needs an entry id", file=sys.stderr)
        return 2
    if args.action == "purge" and bool(args.id) == args.all:
        print("dlq purge needs an entry id or --all (not both)", file=sys.stderr)
        return 2
    if (args.action == "resolve") != (args.applied is not None):
        print("dlq resolve needs --applied or --not-applied (and only resolve takes them)", file=sys.stderr)
        return 2
    settings = load_store_settings(args.config)
    if settings.url.startswith("sqlite:") and not Path(sqlite_path(settings.url)).exists():
        print(f"no store at {sqlite_path(settings.url)} (store.url in {args.config})", file=sys.stderr)
        return 1
    return asyncio.run(_run(open_store(settings.url, namespace=settings.namespace), args,
                            settings.retention_seconds))


async def _run(store: Store, args: argparse.Namespace, retention: float) -> int:
    from gateway.ops import dead_letters  # the wallet's code: only for the commands that close entries

    await store.open()
    wallets = _Wallets(args.config, store)
    try:
        if args.action == "list":
            entries = await store.dlq_list(args.limit)
            _print(args, [e.describe() for e in entries], table=_table)
            return 0
        if args.action == "show":
            entry = await store.dlq_get(args.id)
            if entry is None:
                return _missing(args.id)
            _print(args, entry.describe(), table=lambda e: json.dumps(e, indent=2, sort_keys=True))
            return 0
        if args.action == "replay":
            if not await store.dlq_replay(args.id):
                return _missing(args.id)
            _print(args, {"replayed": args.id}, table=lambda r: f"replayed {args.id}: back in the queue")
            return 0
        if args.action == "resolve":
            rep = await dead_letters.resolve(store, args.id, args.applied, wallet_for=wallets, retention=retention)
            _print(args, rep, table=dead_letters.describe)
            return 0
        if args.all:
            result = await dead_letters.purge_all(store)
            _print(args, result, table=_purged)
            return 1 if result["kept"] else 0
        if not await dead_letters.purge(store, args.id):
            return _missing(args.id)
        _print(args, {"purged": 1}, table=lambda r: "purged 1 dead letter(s)")
        return 0
    except IgspError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    finally:
        await wallets.close()
        await store.close()


class _Wallets:
    """The legacy wallet of a partner, for ``resolve --applied`` (loads the whole config once)."""

    def __init__(self, config_path: str, store: Store):
        self.config_path, self.store = config_path, store
        self.config, self.clients = None, {}

    def __call__(self, partner_id: str):
        from gateway.config import load_config
        from gateway.faces.wallet import Wallet
        from gateway.outbound.legacy import LegacyClient

        if self.config is None:
            try:
                self.config = load_config(self.config_path)
            except ConfigError as exc:
                raise IgspError("invalid_request", (
                    "resolve --applied reads the player's balance from the legacy wallet, so it loads the whole "
                    f"config and its mappings, with their environment (as serve does); nothing was changed:\n{exc}"
                )) from exc
        partner = next((p for p in self.config.partners if p.id == partner_id and p.face == "platform"), None)
        if partner is None:
            raise IgspError("invalid_request", f"partner {partner_id!r} is not a platform partner in "
                                               f"{self.config_path}: its wallet cannot be read; nothing was changed")
        if partner.mapping.name not in self.clients:
            self.clients[partner.mapping.name] = LegacyClient(partner.mapping)
        return Wallet(partner.id, self.clients[partner.mapping.name], self.store,
                      retention=self.config.retention_seconds, currencies=self.config.currencies)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


def _missing(entry_id: str) -> int:
    print(f"no dead letter {entry_id!r}", file=sys.stderr)
    return 1


def _print(args: argparse.Namespace, data, *, table) -> None:
    print(json.dumps(data, sort_keys=True) if args.json else table(data))


def _purged(result: dict) -> str:
    text = f"purged {result['purged']} dead letter(s)"
    if result["kept"]:
        text += (f"\nkept {len(result['kept'])} whose transaction is still open (its retries get 503); resolve each "
                 "with: igsp-gateway dlq resolve ID --applied|--not-applied\n" + "\n".join(result["kept"]))
    return text


def _table(entries: list[dict]) -> str:
    if not entries:
        return "no dead letters"
    rows = [("ID", "CREATED", "ATTEMPTS", "OPERATION", "TRANSACTION", "LAST ERROR")]
    for e in entries:
        payload = e["payload"]
        hook = payload.get("hook") or {}
        created = datetime.fromtimestamp(e["created_at"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        rows.append((e["id"], created, f"{e['attempts']}/{e['max_attempts']}",
                     f"{payload.get('partner', '')} {payload.get('op', e['route'])}".strip(),
                     str(hook.get("transaction_id", "")), (e["last_error"] or "")[:60]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)
