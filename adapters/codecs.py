"""Generic body codecs: JSON, form-encoded and query-string transports."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from gateway.adapter_api import Codec, LegacyRequest
from gateway.jsonio import loads_decimal


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # Exact decimal text as a JSON number: never through a float.
        return orjson.Fragment(format(value, "f"))
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """JSON bytes with Decimals written exactly."""
    return orjson.dumps(value, default=_json_default)


def loads(raw: bytes | str) -> Any:
    """JSON with every non-integer number parsed as Decimal (money stays exact)."""
    return loads_decimal(raw)


def form_value(value: Any) -> str:
    """How a value is written in a form or query string (shared by signers)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def flat_pairs(fields: Any) -> list[tuple[str, str]]:
    if fields is None:
        return []
    if not isinstance(fields, dict):
        raise ValueError("a form or query body must be a mapping of names to values")
    return [(str(k), form_value(v)) for k, v in fields.items() if v is not None]


class JsonCodec(Codec):
    description = "JSON request and response bodies (the default)"

    def encode(self, req: LegacyRequest) -> None:
        if req.fields is not None:
            try:
                req.body = dumps(req.fields)
            except orjson.JSONEncodeError as exc:
                if "64-bit" not in str(exc):
                    raise
                # This request, not the codec: refused (a final 400), as an adapter refuses.
                raise ValueError("an integer in the request is beyond the 64-bit range JSON wallets read") from None
            req.headers.setdefault("Content-Type", "application/json")

    def decode(self, raw: bytes, content_type: str) -> Any:
        return loads(raw)


class FormCodec(Codec):
    description = "application/x-www-form-urlencoded requests, JSON responses"

    def encode(self, req: LegacyRequest) -> None:
        req.body = urlencode(flat_pairs(req.fields)).encode()
        req.headers.setdefault("Content-Type", "application/x-www-form-urlencoded")

    def decode(self, raw: bytes, content_type: str) -> Any:
        if "x-www-form-urlencoded" in content_type:
            return dict(parse_qsl(raw.decode(), keep_blank_values=True))
        return loads(raw)


class QueryCodec(Codec):
    description = "parameters in the query string (no body), JSON responses"

    def encode(self, req: LegacyRequest) -> None:
        if req.fields:
            req.params.update(dict(flat_pairs(req.fields)))
        req.fields = None
        req.body = b""

    def decode(self, raw: bytes, content_type: str) -> Any:
        if "x-www-form-urlencoded" in content_type:
            return dict(parse_qsl(raw.decode(), keep_blank_values=True))
        return loads(raw)
