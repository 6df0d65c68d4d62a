"""Jinja2 request templates, sandboxed and compiled once at load.

A mapping writes a legacy request as a YAML tree whose string leaves are templates.
A leaf that is a single expression keeps its native type (a Decimal amount stays a
number for JSON); any other leaf renders to a string. Encoding (JSON, form, XML) is
the codec's job afterwards, so a player name such as ``Tom & "Jerry" <3`` can never
break the legacy request, and the sandbox stops it from executing anything.

    compile_tree({"amount": "{{ amount | scaled(100000) }}", "memo": "bet {{ round_id }}"})
    -> renderer; renderer({"amount": Decimal("1.5"), "round_id": "r1"})
    -> {"amount": 150000, "memo": "bet r1"}
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway import money

_SINGLE_EXPR = re.compile(r"^\{\{(?P<expr>(?:(?!\}\}).)*)\}\}$", re.S)

#: Namespace for UUIDv5 ids of legacy objects (stable across restarts and replicas).
IGSP_NAMESPACE = uuid.UUID("5b0c3a9e-7f1d-5e57-9a8b-1c2d3e4f5a6b")


def _decimal(value: Any, places: int | None = None) -> str:
    amount = Decimal(value) if not isinstance(value, Decimal) else value
    if places is not None:
        amount = amount.quantize(Decimal(1).scaleb(-places))
    return format(amount, "f")


def _from_percent(value: Any) -> Decimal:
    """``"96.50"`` (a percentage, as text or number) -> ``Decimal("0.965")``, exactly."""
    if isinstance(value, (bool, float)):
        raise ValueError(f"not an exact percentage: {value!r}")
    fraction = (Decimal(str(value).strip().rstrip("%")) / 100).normalize()
    return fraction.quantize(Decimal(1)) if fraction.as_tuple().exponent > 0 else fraction


def _timestamp_ms(value: datetime | None = None) -> int:
    value = value or datetime.now(timezone.utc)
    return int(value.timestamp() * 1000)


def _strftime(value: datetime, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> str:
    return value.astimezone(timezone.utc).strftime(fmt)


BUILTIN_FILTERS: dict[str, Callable] = {
    "minor": lambda amount, currency: money.to_minor(Decimal(amount), currency),
    "from_minor": lambda units, currency: money.from_minor(units, currency),
    "scaled": lambda amount, scale: money.to_scaled(Decimal(amount), int(scale)),
    "decimal": _decimal,
    "from_percent": _from_percent,
    "md5": lambda text: hashlib.md5(str(text).encode()).hexdigest(),  # noqa: S324 - legacy APIs ask for it
    "sha256": lambda text: hashlib.sha256(str(text).encode()).hexdigest(),
    "hmac_sha256": lambda text, key: hmac.new(str(key).encode(), str(text).encode(), hashlib.sha256).hexdigest(),
    "b64encode": lambda text: base64.b64encode(text if isinstance(text, bytes) else str(text).encode()).decode(),
    "uuid5": lambda text: str(uuid.uuid5(IGSP_NAMESPACE, str(text))),
    "timestamp_ms": _timestamp_ms,
    "strftime": _strftime,
}


class Templates:
    """One sandboxed Jinja2 environment per mapping (filters differ by adapter)."""

    def __init__(self, filters: dict[str, Callable] | None = None):
        self.env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        self.env.filters.update(BUILTIN_FILTERS)
        self.env.filters.update(filters or {})

    def compile_value(self, value: Any) -> Callable[[dict], Any]:
        """Compile one leaf; raise TemplateError (the caller adds file/line/path)."""
        if not isinstance(value, str) or "{" not in value:
            return lambda ctx, _v=value: _v
        match = _SINGLE_EXPR.match(value.strip())
        if match and "{%" not in value:
            expr = self.env.compile_expression(match.group("expr").strip(), undefined_to_none=False)
            return expr
        template = self.env.from_string(value)
        return template.render

    def compile_tree(self, tree: Any, on_error: Callable[[tuple, Exception], None], path: tuple = ()) -> Callable[[dict], Any]:
        """Compile every leaf of a dict/list tree; report each broken one through ``on_error``."""
        if isinstance(tree, dict):
            parts = [(key, self.compile_tree(value, on_error, path + (key,))) for key, value in tree.items()]
            return lambda ctx: {key: render(ctx) for key, render in parts}
        if isinstance(tree, list):
            items = [self.compile_tree(value, on_error, path + (i,)) for i, value in enumerate(tree)]
            return lambda ctx: [render(ctx) for render in items]
        try:
            return self.compile_value(tree)
        except TemplateError as exc:
            on_error(path, exc)
            return lambda ctx: None


__all__ = ["BUILTIN_FILTERS", "IGSP_NAMESPACE", "Templates", "TemplateError"]
