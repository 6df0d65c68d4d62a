"""iGSP request signing: ``X-Signature = hex(HMAC-SHA256(secret, raw_body + X-Timestamp))``.

The MAC always covers the exact bytes on the wire, never re-serialised JSON.
Verification is constant-time and accepts any of a partner's active secrets, so a
key can be rotated without downtime (old and new valid at once). The MAC is the
standard library's ``hmac`` and nothing else: a hand-rolled HMAC saves about a
microsecond per request and is one more piece of cryptography to get wrong.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timezone

__all__ = ["format_timestamp", "parse_timestamp", "sign", "signed_headers", "verify"]


def format_timestamp(when: datetime | None = None) -> str:
    """ISO-8601 UTC with a ``Z`` suffix, second precision: ``2025-10-17T12:03:41Z``."""
    when = when or datetime.now(timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: str) -> float | None:
    """Epoch seconds of an ISO-8601 timestamp, or None when it is not one.

    A timestamp without a zone is read as UTC (the protocol says UTC).
    """
    if not value or len(value) > 40:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def sign(secret: str | bytes, body: bytes, timestamp: str) -> str:
    """Lowercase hex HMAC-SHA256 of ``body + timestamp``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, body + timestamp.encode(), hashlib.sha256).hexdigest()


def verify(secrets: tuple[bytes, ...] | list[bytes], body: bytes, timestamp: str, signature: str) -> bool:
    """True when ``signature`` matches under any of ``secrets`` (constant-time per secret)."""
    message = body + timestamp.encode()
    given = signature.strip().lower().encode()
    ok = False
    for secret in secrets:
        expected = hmac.new(secret, message, hashlib.sha256).hexdigest().encode()
        # Compare against every secret so timing does not reveal which one matched.
        ok |= hmac.compare_digest(expected, given)
    return ok


def signed_headers(api_key: str, secret: str | bytes, body: bytes, timestamp: str | None = None) -> dict[str, str]:
    """The three iGSP auth headers for ``body`` (plus a JSON content type)."""
    timestamp = timestamp or format_timestamp()
    return {
        "Authorization": f"Bearer {api_key}",
        "X-Timestamp": timestamp,
        "X-Signature": sign(secret, body, timestamp),
        "Content-Type": "application/json",
    }
