"""Small assertions shared by the checks; each failure says what was sent, got and wanted.

    expect_error(answer, 403, "a signature with one hex digit changed")
    -> CheckFailed("a signature with one hex digit changed: got HTTP 200 {"balance":100.00}, want HTTP 403")
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

from gateway.tools.conformance.client import Answer, SignedClient
from gateway.tools.conformance.runner import CheckFailed


def _want(status: int | str) -> str:
    return f"HTTP {status}"


def _matches(got: int, want: int | str) -> bool:
    if isinstance(want, str):  # "4xx"
        return str(got)[0] == want[0] and len(str(got)) == 3
    return got == want


def expect_ok(answer: Answer, status: int, doing: str) -> None:
    if answer.status != status:
        raise CheckFailed(f"{doing}: got {answer.brief()}, want {_want(status)}")
    if not isinstance(answer.data, dict):
        raise CheckFailed(f"{doing}: got {answer.brief()}, want a JSON object")


def expect_error(answer: Answer, status: int | str, doing: str, code: str | None = None) -> None:
    """``answer`` refused the request with ``status`` (an int or ``"4xx"``), and with the error
    ``code`` when one is given."""
    want = _want(status) + (f" {code}" if code else "")
    if not _matches(answer.status, status):
        verdict = "was accepted" if answer.status < 300 else "got the wrong status"
        raise CheckFailed(f"{doing} {verdict}: got {answer.brief(80)}, want {want}")
    if not isinstance(answer.data, dict) or not answer.data.get("error"):
        raise CheckFailed(f"{doing}: got {answer.brief()}, want an ErrorResponse {{error, message}} body")
    if code is not None and answer.data["error"] != code:
        raise CheckFailed(f"{doing}: got {answer.brief(80)}, want {want}")


@contextmanager
def because(why: str) -> Iterator[None]:
    """A failure inside says which law broke and why it matters: ``reason — why``."""
    try:
        yield
    except CheckFailed as exc:
        raise CheckFailed(f"{exc} — {why}") from None


def decimal_field(answer: Answer, name: str, doing: str) -> Decimal:
    value = answer.field(name)
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise CheckFailed(f"{doing}: {name!r} is {value!r}, want a JSON number (got {answer.brief()})")
    return Decimal(value)


def expect_same_outcome(first: Answer, again: Answer, doing: str) -> None:
    """A retry gets the first answer: same status, same balance, same platform transaction_id."""
    if again.status != first.status:
        raise CheckFailed(f"{doing}: got {again.brief()}, the first answer was {first.brief()}")
    for name in ("balance", "transaction_id"):
        if again.field(name) != first.field(name):
            raise CheckFailed(f"{doing} got another {name}: {_show(again.field(name))}, the first answer had "
                              f"{_show(first.field(name))} (a retry must get the original outcome)")


def _show(value) -> str:
    return str(value) if isinstance(value, (int, Decimal)) and not isinstance(value, bool) else repr(value)


def flip_byte(body: bytes, marker: bytes) -> bytes:
    """``body`` with one bit of the byte just after ``marker`` flipped (it stays valid JSON)."""
    index = body.index(marker) + len(marker)
    flipped = bytearray(body)
    flipped[index] ^= 0x01
    return bytes(flipped)


def flipped_signature(headers: dict[str, str]) -> dict[str, str]:
    """The same headers with the first hex digit of ``X-Signature`` changed."""
    signature = headers["X-Signature"]
    return dict(headers, **{"X-Signature": ("1" if signature[0] == "0" else "0") + signature[1:]})


def raise_violations(client: SignedClient) -> None:
    """Fail with the answers (of the whole run) that did not match the spec."""
    if client.violations:
        shown = "; ".join(client.violations[:4])
        more = f" (and {len(client.violations) - 4} more)" if len(client.violations) > 4 else ""
        raise CheckFailed(f"{len(client.violations)} of {client.answers} answers break the spec: {shown}{more}")
