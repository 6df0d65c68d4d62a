"""Pre-signed traffic: unique signed ``bet`` hooks and the matching direct wallet calls.

Every hook carries its own transaction id (and so its own signature): each is a new
transaction through the whole path, never a retry the ledger answers from its record. Requests are written as complete HTTP/1.1 messages,
length-prefixed, for ``wrk.lua`` to replay without any work on the client side.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import orjson

from gateway import signing

API_KEY = "bench-key-0001"
SECRET = "bench-secret-0123456789abcdef"
PARTNER = "bench-games"
HOOKS_PATH = "/platforms/game-provider/hooks"
STAKE = orjson.Fragment(b"1.25")


def timestamp() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def bet_hook(run: str, index: int) -> bytes:
    """One iGSP ``bet`` hook with a unique transaction id (exact decimal amount)."""
    return orjson.dumps({
        "action": "bet", "player_id": f"player-{index % 1000}", "amount": STAKE, "currency": "EUR",
        "game_id": "vs20olympgate", "transaction_id": f"{run}-{index}", "session_id": f"session-{index % 1000}",
        "type": "bet", "round_id": f"round-{index}",
    })


def wallet_bet(run: str, index: int) -> bytes:
    """What the gateway sends the Hub88-shaped wallet for the same bet (the direct call)."""
    txid = f"{run}-{index}"
    return orjson.dumps({
        "user": f"player-{index % 1000}", "token": f"session-{index % 1000}", "request_uuid": uuid.uuid4().hex,
        "game_code": "vs20olympgate", "transaction_uuid": txid, "supplier_transaction_id": txid,
        "round": f"round-{index}", "round_closed": False, "currency": "EUR", "amount": 125000,
        "is_free": False, "bet": "bet",
    })


def http_post(host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def signed_hook_request(host: str, run: str, index: int, when: str | None = None) -> bytes:
    body = bet_hook(run, index)
    return http_post(host, HOOKS_PATH, body, signing.signed_headers(API_KEY, SECRET, body, when or timestamp()))


def direct_request(host: str, run: str, index: int) -> bytes:
    return http_post(host, "/transaction/bet", wallet_bet(run, index), {"Content-Type": "application/json"})


def hook_requests(host: str, run: str, count: int) -> Iterator[bytes]:
    when = timestamp()  # one timestamp for all: each body (transaction id) makes each signature unique
    return (signed_hook_request(host, run, i, when) for i in range(count))


def direct_requests(host: str, run: str, count: int) -> Iterator[bytes]:
    return (direct_request(host, run, i) for i in range(count))


def write_requests(path: Path, requests: Iterator[bytes]) -> int:
    """``<length>\\n<bytes>`` records, the format ``wrk.lua`` reads; returns how many."""
    count = 0
    with open(path, "wb") as out:
        for raw in requests:
            out.write(b"%d\n" % len(raw))
            out.write(raw)
            count += 1
    return count


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]
