"""``igsp-gateway conformance``: certify any iGSP endpoint — the gateway's or anyone's.

    igsp-gateway conformance platform --url <hooks URL> …   a casino platform's wallet hooks
    igsp-gateway conformance provider --url <base URL> …    a game provider's catalogue and launch API

Each law of the protocol is one named check (``signature.stale_timestamp``,
``wallet.bet_duplicate``, ``wallet.refund_before_bet``, ``pagination.games_walk`` …) that
passes, fails with the precise reason and why the law matters, or is skipped with the
reason why. Checks that could move money are skipped unless the caller says so
(``--i-understand-this-moves-money`` or ``--demo``).

Modules: ``client`` (signed HTTP, every answer validated against ``spec/``), ``runner``
(checks and results), ``checks_platform`` / ``checks_provider`` (the laws), ``report``
(text table), ``junit`` (XML for CI) and ``cli``.
"""

from gateway.tools.conformance.runner import FAIL, PASS, SKIP, Check, CheckFailed, Result, run_checks

__all__ = ["FAIL", "PASS", "SKIP", "Check", "CheckFailed", "Result", "run_checks"]
