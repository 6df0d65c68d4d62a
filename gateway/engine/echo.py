"""Answer correlation: the fields of a legacy answer that must echo the request.

Why: over HTTP/1.1 keep-alive, an answer belongs to a request only by its place on the
connection. A legacy server that writes one answer twice (a retry in its own stack, a
proxy replaying a response) leaves a stale answer on a pooled connection, and the next
request sent on it — another player's bet — reads that answer as its own: a bet the
wallet refused is recorded as accepted, and the other player's balance is answered. The
bytes are well-formed; only the fields a legacy API copies from the request into its
answer (Hub88: ``request_uuid`` and ``user``) can tell. A mapping declares them::

    echo:
      request_uuid: "{{ request_id }}"     # JMESPath on the answer: template of the expected value
      user: "{{ player_id }}"

and an answer whose echoes are missing or differ is not this request's answer. Its
outcome is unknown (``UpstreamError`` kind ``uncorrelated``, ``applied=None``: the real
answer is somewhere else, and money may have moved), it is never stored as the answer,
and the connection that carried it is closed (its framing is off; gateway/outbound/legacy.py).
An error answer is checked too: an uncorrelated refusal may be another request's.

Comparison rule (``same``): a missing value (absent or null) never matches. Text is
compared with text exactly (case and spaces count). A number (a JSON number in the
answer, or a number a single-expression template renders) matches a number, or a text
that reads as a number, of the same value: ``1000000`` = ``1000000.00`` = ``"1000000"``
and ``7`` = ``"007"``. ``true``/``false`` match the texts ``true``/``false``. Objects and
lists never match. An expected value that renders null (``{{ x | default(none) }}``) is
not checked on that call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from jinja2 import Undefined


@dataclass(frozen=True)
class Echo:
    """One declared echo: ``path`` (JMESPath text, for messages) read by ``expression``
    must equal what ``expected`` renders from the request's template context."""

    path: str
    expression: Any  # compiled JMESPath
    expected: Callable[[dict], Any]  # compiled template
    #: ``(field, line, renderer)`` of the template's leaves, to name a missing variable.
    leaves: tuple = ()


def expect(echoes: tuple[Echo, ...], context: dict) -> dict[str, Any]:
    """The expected value of each echo for this call (rendered before it is sent);
    echoes whose value renders null are left out. A variable the context lacks raises
    ``UndefinedError`` (the request cannot be built), never an echo that cannot match."""
    values = {}
    for echo in echoes:
        value = echo.expected(context)
        if value is not None:
            if isinstance(value, Undefined):
                value._fail_with_undefined_error()
            values[echo.path] = value
    return values


def compare(echoes: tuple[Echo, ...], expected: dict[str, Any], search: Callable[[Any, Any], Any],
            data: Any) -> list[tuple[str, Any, Any, bool]]:
    """``(path, expected, actual, matches)`` for each echo expected on this call.

    A path that cannot be read from this answer (a JMESPath type error on a body of
    another shape) reads as missing.
    """
    rows = []
    for echo in echoes:
        if echo.path not in expected:
            continue
        try:
            actual = search(echo.expression, data)
        except Exception:  # noqa: BLE001 - an answer of another shape: the echo is missing
            actual = None
        rows.append((echo.path, expected[echo.path], actual, same(actual, expected[echo.path])))
    return rows


def mismatch(echoes: tuple[Echo, ...], expected: dict[str, Any], search: Callable[[Any, Any], Any],
             data: Any) -> str | None:
    """Why the answer ``data`` is not this request's (``"user differs"``), or None.

    Names fields only, never values: the text reaches the iGSP caller, and a stale
    answer's values are another request's (another player's id).
    """
    for path, _, actual, ok in compare(echoes, expected, search, data):
        if not ok:
            return f"{path} {'is missing' if actual is None else 'differs'}"
    return None


def same(actual: Any, expected: Any) -> bool:
    """Whether an echoed value matches the expected one (the rule in the module docstring)."""
    if actual is None or expected is None:
        return False
    a, e = _scalar(actual), _scalar(expected)
    if a is None or e is None:
        return False
    if isinstance(a, Decimal) or isinstance(e, Decimal):
        a, e = _number(a), _number(e)
        return a is not None and e is not None and a == e
    return a == e


def _scalar(value: Any) -> str | Decimal | None:
    """Text, a number (Decimal), or None for what cannot be an echo (objects, lists)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, Decimal)):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    return None


def _number(value: str | Decimal) -> Decimal | None:
    """The finite number ``value`` is or reads as (text with spaces around it does not), else None."""
    if isinstance(value, str):
        if value != value.strip():
            return None
        try:
            value = Decimal(value)
        except InvalidOperation:
            return None
    return value if value.is_finite() else None


__all__ = ["Echo", "compare", "expect", "mismatch", "same"]
