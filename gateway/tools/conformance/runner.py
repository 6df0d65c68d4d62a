"""Checks, their results, and running them in order.

A check is an async function of a context that returns when the law holds and raises
``CheckFailed("reason")`` when it does not. Checks run one after the other, in the
order they were registered, because the wallet laws build on each other (a duplicate
of a bet needs the bet). A check whose ``needs`` did not pass is skipped, not failed,
so one broken law shows up as one failure and not as a cascade.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

PASS, FAIL, SKIP = "pass", "fail", "skip"

MONEY_SKIP_REASON = "moves money: not run without --i-understand-this-moves-money (or --demo)"


class CheckFailed(Exception):
    """The target broke a law; the message is the reason printed in the report."""


class CheckSkipped(Exception):
    """The check cannot say anything about this target (e.g. an empty catalogue)."""


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    run: Callable[[Any], Awaitable[None]]
    moves_money: bool = False
    needs: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        return self.id.split(".", 1)[0]


@dataclass
class Result:
    check: Check
    outcome: str
    reason: str = ""
    seconds: float = 0.0


class Registry(list):
    """A plain, ordered list of checks with a decorator to add one."""

    def check(self, check_id: str, title: str, *, moves_money: bool = False, needs: Iterable[str] = ()):
        def register(func: Callable[[Any], Awaitable[None]]):
            self.append(Check(check_id, title, func, moves_money, tuple(needs)))
            return func

        return register


@dataclass
class RunOptions:
    allow_money: bool = False
    select: tuple[str, ...] = ()  # fnmatch patterns of check ids; empty = all
    check_timeout: float = 60.0
    on_result: Callable[[Result], None] | None = None


def selected(checks: Iterable[Check], patterns: Iterable[str]) -> list[Check]:
    patterns = tuple(patterns)
    if not patterns:
        return list(checks)
    return [c for c in checks if any(fnmatch.fnmatchcase(c.id, p) for p in patterns)]


async def run_checks(checks: Iterable[Check], context: Any, options: RunOptions | None = None) -> list[Result]:
    """Run ``checks`` in order against ``context``; never raises for a target's misbehaviour."""
    options = options or RunOptions()
    results: list[Result] = []
    passed: set[str] = set()
    for check in selected(checks, options.select):
        started = time.perf_counter()
        missing = [need for need in check.needs if need not in passed]
        if check.moves_money and not options.allow_money:
            result = Result(check, SKIP, MONEY_SKIP_REASON)
        elif missing:
            result = Result(check, SKIP, f"needs {', '.join(missing)}, which did not pass")
        else:
            result = await _run_one(check, context, options.check_timeout)
        result.seconds = time.perf_counter() - started
        if result.outcome == PASS:
            passed.add(check.id)
        results.append(result)
        if options.on_result is not None:
            options.on_result(result)
    return results


async def _run_one(check: Check, context: Any, timeout: float) -> Result:
    try:
        await asyncio.wait_for(check.run(context), timeout)
    except CheckFailed as exc:
        return Result(check, FAIL, str(exc))
    except CheckSkipped as exc:
        return Result(check, SKIP, str(exc))
    except TimeoutError:
        return Result(check, FAIL, f"no verdict within {timeout:g} s (the target hangs?)")
    except Exception as exc:  # noqa: BLE001 - an answer the kit did not foresee is still a verdict
        return Result(check, FAIL, f"unexpected answer shape ({type(exc).__name__}: {exc})")
    return Result(check, PASS)


def counts(results: Iterable[Result]) -> dict[str, int]:
    found = {PASS: 0, FAIL: 0, SKIP: 0}
    for result in results:
        found[result.outcome] += 1
    return found
