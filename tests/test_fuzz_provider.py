"""The provider face fuzzed from ``spec/igsp-provider.yaml``: catalogue and launch.

Same rules as the hooks (tests/test_fuzz_hooks.py): requests generated from the spec,
signed over the exact bytes sent, posted to a real gateway in front of the
Pragmatic-style provider simulator; no 5xx, no trace, every refusal an ErrorResponse,
every answer conforming to the spec.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.errors import ERROR_CODES
from tests.support import ROOT
from tests.test_fuzz_hooks import PLACEHOLDERS, SigningSession, _as_requests
from tests.test_provider_face import PARTNER, SPEC, world  # noqa: F401 - world is a fixture

#: In CI the examples are the same every run (no flakes); locally they explore.
CI = bool(os.environ.get("CI"))
SCHEMA = schemathesis.openapi.from_path(ROOT / "spec" / "igsp-provider.yaml")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("path", "method"), [("/games", "GET"), ("/providers", "GET"), ("/sessions", "POST")])
def test_fuzzed_provider_requests_never_fail_and_always_conform(world, path, method, mode):  # noqa: F811
    session = SigningSession(PARTNER["api_key"], PARTNER["secret"])
    checks = CHECKS + ([negative_data_rejection] if mode == schemathesis.GenerationMode.NEGATIVE else [])
    seen: dict[int, int] = {}

    @settings(derandomize=CI, max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(case=SCHEMA[path][method].as_strategy(generation_mode=mode, headers=dict(PLACEHOLDERS)))
    def run(case):
        response = case.call(base_url=world.gateway.url + "/igsp/v1", session=session, timeout=10)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        plain = _as_requests(response)
        assert response.status_code < 500 and response.status_code != 403, response.text
        assert "Traceback" not in plain.text and plain.headers["Content-Type"].startswith("application/json")
        if response.status_code >= 400:
            body = plain.json()
            assert SPEC.errors("ErrorResponse", body) == []
            assert ERROR_CODES[body["error"]] == response.status_code == body["status"]
        case.validate_response(response, checks=checks)

    run()
    assert seen, "nothing was sent"
    assert "Traceback" not in world.gateway.log_text()
