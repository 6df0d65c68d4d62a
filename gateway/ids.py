"""Unique ids without a system call each: a random per-process prefix and a counter.

``os.urandom`` (and ``uuid4``) is a ``getrandom`` system call, several microseconds on
a virtual machine, and the hot path wants two ids a request (request id, ledger owner
token). These ids are unique — 64 random bits per process, re-drawn in every forked
worker, then a counter — but predictable within a process: use them for correlation
and ownership, never as a secret (session tokens use ``secrets``).
"""

from __future__ import annotations

import itertools
import os


class _Ids:
    def __init__(self):
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def new(self) -> str:
        """32 lowercase hex characters, like ``uuid4().hex``."""
        return f"{self._prefix}{next(self._counter):016x}"


new_id = _Ids().new
