"""What the demo prints: one plain-text table per act, a row per step, and verdict lines.

     #  step                                     answer                            iGSP    legacy  ok
     2  bet 10.00 (tx b-1)                       200 balance 90.00                90.00     90.00  ok
     3  the same bet again (a retry)             200 the same answer, byte for…   90.00     90.00  ok

A wrong step prints FAIL and, under it, what was expected. Colour only on a terminal.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TextIO

COLUMNS = (("#", 3, ">"), ("step", 42, "<"), ("answer", 36, "<"), ("iGSP", 9, ">"), ("legacy", 9, ">"))
_GREEN, _RED, _BOLD, _RESET = "\033[32m", "\033[31;1m", "\033[1m", "\033[0m"


def colour_on(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def money(value: Decimal | None) -> str:
    return "" if value is None else f"{value:.2f}" if value == value.quantize(Decimal("0.01")) else str(value)


def _fit(text: str, width: int, align: str) -> str:
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.rjust(width) if align == ">" else text.ljust(width)


@dataclass
class Report:
    """Counts right and wrong steps across acts and prints their rows as they happen."""

    stream: TextIO = field(default_factory=lambda: sys.stdout)
    right: int = 0
    wrong: int = 0
    problems: list[str] = field(default_factory=list)
    _n: int = 0

    @property
    def colour(self) -> bool:
        return colour_on(self.stream)

    def say(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def title(self, text: str, legend: str = "") -> None:
        self.say()
        self.say(f"{_BOLD}{text}{_RESET}" if self.colour else text)
        if legend:
            self.say(f"({legend})")
        self.say()
        self.say("  ".join(_fit(name, width, align) for name, width, align in COLUMNS) + "  ok")
        self.say("  ".join("-" * width for _, width, _ in COLUMNS) + "  ----")

    def step(self, label: str, answer: str, igsp: Decimal | None, legacy: Decimal | None,
             problems: list[str]) -> bool:
        self._n += 1
        ok = not problems
        verdict = "ok" if ok else "FAIL"
        if self.colour:
            verdict = f"{_GREEN if ok else _RED}{verdict}{_RESET}"
        cells = (str(self._n), label, answer, money(igsp), money(legacy))
        self.say("  ".join(_fit(c, w, a) for c, (_, w, a) in zip(cells, COLUMNS, strict=True)) + "  " + verdict)
        for problem in problems:
            self.say(f"{'':5}-> {problem}")
        if ok:
            self.right += 1
        else:
            self.wrong += 1
            self.problems.append(f"step {self._n} ({label}): {'; '.join(problems)}")
        return ok

    def verdict(self, ok: bool, text: str) -> None:
        mark = "OK" if ok else "MISMATCH"
        if self.colour:
            mark = f"{_GREEN if ok else _RED}{mark}{_RESET}"
        self.say(f"{text} — {mark}")
        if not ok:
            self.wrong += 1
            self.problems.append(text)
