"""``igsp-gateway dlq``: list, show, replay and purge dead letters straight in the store.

Works beside running gateways (SQLite file or Redis): a replayed entry goes back to the
queue and the next worker poll delivers it. Only the config's ``store`` section is read,
so the mappings' secrets need not be in the environment.

    igsp-gateway dlq list  --config gateway.yaml [--json] [--limit N]
    igsp-gateway dlq show ID | replay ID | purge ID | purge --all
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from gateway.config import load_store_settings
from gateway.store import Store, open_store
from gateway.store.sqlite import sqlite_path


def add_parser(sub) -> None:
    p = sub.add_parser("dlq", help="list, show, replay or purge dead-lettered deliveries")
    p.add_argument("action", choices=("list", "show", "replay", "purge"))
    p.add_argument("id", nargs="?", help="dead letter id (show, replay, purge)")
    p.add_argument("--all", action="store_true", help="purge: every dead letter")
    p.add_argument("--config", default="gateway.yaml", help="gateway config file (its store section)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=100, help="list: at most this many")
    p.set_defaults(func=cmd_dlq)


def cmd_dlq(args: argparse.Namespace) -> int:
    if args.action in ("show", "replay") and not args.id:
        print(f"dlq {args.action} needs an entry id", file=sys.stderr)
        return 2
    if args.action == "purge" and bool(args.id) == args.all:
        print("dlq purge needs an entry id or --all (not both)", file=sys.stderr)
        return 2
    url, namespace = load_store_settings(args.config)
    if url.startswith("sqlite:") and not Path(sqlite_path(url)).exists():
        print(f"no store at {sqlite_path(url)} (store.url in {args.config})", file=sys.stderr)
        return 1
    return asyncio.run(_run(open_store(url, namespace=namespace), args))


async def _run(store: Store, args: argparse.Namespace) -> int:
    await store.open()
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
        count = await store.dlq_purge(None if args.all else args.id)
        if not args.all and count == 0:
            return _missing(args.id)
        _print(args, {"purged": count}, table=lambda r: f"purged {count} dead letter(s)")
        return 0
    finally:
        await store.close()


def _missing(entry_id: str) -> int:
    print(f"no dead letter {entry_id!r}", file=sys.stderr)
    return 1


def _print(args: argparse.Namespace, data, *, table) -> None:
    print(json.dumps(data, sort_keys=True) if args.json else table(data))


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
