"""``igsp-gateway`` under yappi (CPU clock), its stats saved at exit (bench/prof.py yappi)."""

import atexit
import os
import sys

import yappi

yappi.set_clock_type("cpu")
yappi.start(builtins=False)


def _dump() -> None:
    yappi.stop()
    out = os.environ.get("PROF_OUT", "/tmp/igsp-prof")
    yappi.get_func_stats().save(os.path.join(out, "yappi.pstat"), type="pstat")


atexit.register(_dump)

from gateway.cli import main  # noqa: E402 - after the profiler starts

sys.argv = ["igsp-gateway", *sys.argv[1:]]
main()
