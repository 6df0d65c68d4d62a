"""JSON in with exact money: numbers with a fraction become ``Decimal``, never floats.

The decoders are built once: ``json.loads(..., parse_float=Decimal)`` would build a new
decoder (and its scanner) on every call, on the hot path of every hook.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

from gateway.errors import IgspError


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


_DECIMAL = json.JSONDecoder(parse_float=Decimal)
_STRICT = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


def _text(raw: bytes | str) -> str:
    # As json.loads reads bytes: UTF-8, -16 or -32, detected from the first bytes.
    return raw if isinstance(raw, str) else raw.decode(json.detect_encoding(raw), "surrogatepass")


def loads_decimal(raw: bytes | str) -> Any:
    """Any JSON document, non-integer numbers as Decimal (NaN and Infinity allowed)."""
    return _DECIMAL.decode(_text(raw))


def igsp_object(body: bytes) -> dict:
    """An iGSP request body: one JSON object, numbers exact, or a 400 saying what is wrong.

    NaN/Infinity are refused, and so is an escaped lone surrogate (``"\\ud800"``), which
    is not text: no id, ledger key or legacy request can carry it (json accepts it,
    orjson does not).
    """
    try:
        payload = _STRICT.decode(_text(body))
        if b"\\u" in body:
            orjson.loads(body)
    except (ValueError, RecursionError):
        raise IgspError("invalid_json", "body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise IgspError("invalid_request", "body must be a JSON object")
    return payload
