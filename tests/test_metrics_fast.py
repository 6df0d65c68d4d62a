"""The metrics' rules, without a process: which outcome each iGSP error code counts as (and
that the README says the same)."""

from __future__ import annotations

import re

import pytest

from gateway.errors import ERROR_CODES
from gateway.ops import metrics
from tests.support import ROOT


def readme_outcomes() -> dict[str, str]:
    """code -> outcome, from the README's outcome table."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| outcome | error codes |"):]
    found: dict[str, str] = {}
    for line in table.splitlines()[2:]:
        if not line.strip().startswith("|"):
            break
        outcome_cell, codes_cell = line.strip().strip("|").split("|")
        outcome = re.match(r"\s*`(\w+)`", outcome_cell).group(1)
        for code in re.findall(r"`(\w+)`", codes_cell):
            assert code not in found, f"{code} is listed twice"
            found[code] = outcome
    return found


def test_every_error_code_has_an_outcome_and_the_readme_agrees():
    assert set(metrics.OUTCOME_OF_CODE) == set(ERROR_CODES)
    assert readme_outcomes() == metrics.OUTCOME_OF_CODE
    assert set(metrics.OUTCOME_OF_CODE.values()) == set(metrics.OUTCOMES) - {"ok"}


@pytest.mark.parametrize("code", sorted(metrics.DECLINES))
def test_business_declines_are_never_failures(code):
    assert metrics.outcome(ERROR_CODES[code], code) == "declined"


@pytest.mark.parametrize(("status", "code", "upstream", "expected"), [
    (200, None, False, "ok"),
    (402, "insufficient_funds", False, "declined"),
    (200, "insufficient_funds", False, "declined"),  # a legacy-format refusal answered 200
    (200, "upstream_timeout", False, "upstream_error"),
    (400, "invalid_request", False, "caller_error"),
    (429, "rate_limited", False, "caller_error"),
    (401, "unauthorized", False, "auth_failure"),
    (403, "invalid_signature", False, "auth_failure"),
    (503, "upstream_unavailable", False, "upstream_error"),
    (504, "upstream_timeout", False, "upstream_error"),
    (503, "transaction_in_progress", False, "upstream_error"),
    (500, "internal_error", False, "internal_error"),
    (503, "service_unavailable", False, "internal_error"),
    (500, "internal_error", True, "upstream_error"),  # an UpstreamError says so whatever its code
    # No known code: the status decides.
    (404, None, False, "caller_error"),
    (403, None, False, "auth_failure"),
    (502, "not-a-code", False, "upstream_error"),
    (500, None, False, "internal_error"),
])
def test_outcome(status, code, upstream, expected):
    assert metrics.outcome(status, code, upstream) == expected
