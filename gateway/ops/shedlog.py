"""Access-log lines for shed requests, thinned: the first of each partner in a second, the rest counted.

Why: a request shed for overload (``503`` from the concurrency limits, gateway/ratelimit.py)
is answered in a fraction of a bet's work, and one JSON access-log line is about a quarter of
that fraction (measured with ``python -m bench --only overload`` and a closed loop against a
gateway with ``per_partner: 1``: ~115 µs of CPU per shed request with its line, ~85 µs
without). At three times the gateway's capacity most requests are shed, so logging each one
spends the CPU the admitted ones need. Every shed request is still counted in the metrics
(``igsp_requests_total`` with its outcome); the log keeps one line per partner a second, which
says how many were left out since the previous one (``shed_not_logged``).
"""

from __future__ import annotations

import time


class ShedLines:
    """Per process: which shed requests get an access-log line."""

    def __init__(self, every: float = 1.0):
        self.every = every
        self._next: dict[str, float] = {}  # partner -> when its next shed line is due
        self._skipped: dict[str, int] = {}  # partner -> shed requests not logged since its last line

    def admit(self, partner: str, now: float | None = None) -> int | None:
        """None: leave this shed request's line out. Else log it, saying how many of the
        partner's shed requests were left out since its previous line (the returned count)."""
        now = time.monotonic() if now is None else now
        if now < self._next.get(partner, 0.0):
            self._skipped[partner] = self._skipped.get(partner, 0) + 1
            return None
        self._next[partner] = now + self.every
        return self._skipped.pop(partner, 0)
