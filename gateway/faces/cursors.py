"""Opaque, signed iGSP paging cursors.

A cursor is a keyset position — "after (or before) the item with this sort key" — plus
the filter it was made for, bound to one partner and one list. It is signed with a key
derived from the partner's secret, so a client cannot forge or edit one: anything that
does not verify is a 400 ``invalid_cursor``, never a crash. Keyset positions (not page
numbers) keep paging free of gaps and duplicates while the catalogue stays put, and
valid across gateway restarts and replicas (nothing is stored server-side).

    token = encode(keys, {"p": "casino-1", "k": "games", "u": None, "d": "n", "t": 1735812000000000, "i": "3f…"})
    decode(keys, token)  # -> the same dict, or IgspError("invalid_cursor")
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson

from gateway.errors import IgspError

MAX_LENGTH = 1024
_CONTEXT = b"igsp-gateway/cursor/v1"


def cursor_keys(secrets: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """One signing key per partner secret (the first signs; any verifies, for rotation)."""
    return tuple(hmac.new(secret, _CONTEXT, hashlib.sha256).digest() for secret in secrets)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest()[:16])


def encode(keys: tuple[bytes, ...], position: dict) -> str:
    payload = _b64(orjson.dumps(position, option=orjson.OPT_SORT_KEYS))
    return f"{payload}.{_mac(keys[0], payload)}"


def decode(keys: tuple[bytes, ...], token: str) -> dict:
    """The position inside a cursor this gateway signed; ``invalid_cursor`` otherwise."""
    bad = IgspError("invalid_cursor", "cursor is not valid; start again without one")
    # Cursors this gateway issues are base64url: anything else (non-ASCII included, which
    # hmac.compare_digest cannot even compare) is refused before any work.
    if not token or len(token) > MAX_LENGTH or not token.isascii() or token.count(".") != 1:
        raise bad
    payload, mac = token.split(".")
    if not any(hmac.compare_digest(_mac(key, payload), mac) for key in keys):
        raise bad
    try:
        position = orjson.loads(_unb64(payload))
    except (ValueError, orjson.JSONDecodeError):
        raise bad from None
    if not isinstance(position, dict):
        raise bad
    return position
