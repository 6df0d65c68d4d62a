"""The pass/fail table a person reads: one line per check, the reason beside each failure.

    result  check                          detail
    ------  -----------------------------  ------------------------------------------------
    PASS    signature.valid                a correctly signed request is accepted
    FAIL    signature.stale_timestamp      a correctly signed request whose X-Timestamp …
    SKIP    wallet.bet                     moves money: run again with …

Plain text; colour only on a terminal (and never with ``NO_COLOR`` set).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TextIO

from gateway.tools.conformance.runner import FAIL, PASS, SKIP, Result, counts

_COLOURS = {PASS: "\033[32m", FAIL: "\033[31;1m", SKIP: "\033[33m"}
_RESET = "\033[0m"


def use_colour(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def line(result: Result, width: int, colour: bool = False) -> str:
    label = result.outcome.upper()
    if colour:
        label = f"{_COLOURS[result.outcome]}{label}{_RESET}"
    detail = result.check.title if result.outcome == PASS else result.reason
    return f"{label}    {result.check.id.ljust(width)}  {detail}"


def render(results: Iterable[Result], *, colour: bool = False) -> str:
    results = list(results)
    width = max([len("check"), *(len(r.check.id) for r in results)])
    rows = [f"result  {'check'.ljust(width)}  detail", f"------  {'-' * width}  {'-' * 48}"]
    rows += [line(r, width, colour) for r in results]
    return "\n".join(rows)


def summary(results: Iterable[Result], what: str) -> str:
    found = counts(results)
    verdict = "CONFORMS" if found[FAIL] == 0 else "DOES NOT CONFORM"
    return f"{what}: {verdict} — {found[PASS]} passed, {found[FAIL]} failed, {found[SKIP]} skipped"


def print_report(results: list[Result], what: str, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    print(render(results, colour=use_colour(stream)), file=stream)
    print(file=stream)
    print(summary(results, what), file=stream)
