"""The JSON log lines: written at once, redacted, timestamps and redaction prefilter exact."""

from __future__ import annotations

import io
import logging
import os
import time

import orjson
import pytest

from gateway.ops import logs
from gateway.ops.logs import REQUEST_ID, JsonFormatter, setup_logging, timestamp

SECRET = "partner-secret-0123456789"


@pytest.fixture
def stream():
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logs._handler
    out = io.StringIO()
    setup_logging("info", [SECRET], stream=out)
    yield out
    root.handlers[:], _, logs._handler = saved[0], None, saved[2]
    root.setLevel(saved[1])


def lines(stream) -> list[dict]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_the_access_line_is_in_the_stream_when_logging_returns(stream):
    """Written synchronously: a line logged before a response is sent is readable before the
    client has the response (a deferred write made tests reading the log file flaky)."""
    fields = {"request_id": "r-1", "partner": "acme", "status": 200, "latency_ms": 1.234, "transaction_id": None}
    logging.getLogger("igsp.access").info("request", extra=dict(fields))
    [entry] = lines(stream)
    assert entry.pop("ts").endswith("Z")
    assert entry == {"level": "info", "logger": "igsp.access", "pid": os.getpid(), "msg": "request", **fields}


def test_the_access_line_is_redacted_and_carries_the_request_id(stream):
    token = REQUEST_ID.set("req-42")
    try:
        logging.getLogger("igsp.access").info("request", extra={"path": f"/x?k={SECRET}",
                                                                "error": "X-Signature: deadbeef"})
    finally:
        REQUEST_ID.reset(token)
    text = stream.getvalue()
    assert SECRET not in text and "deadbeef" not in text
    [entry] = lines(stream)
    assert entry["request_id"] == "req-42" and entry["path"] == "/x?k=[REDACTED]"


def test_level_above_info_writes_no_access_line(stream):
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("igsp.access").info("request", extra={"status": 200})
    assert stream.getvalue() == ""


def test_timestamp_matches_strftime_across_seconds():
    for when in (1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.0005, time.time()):
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int((when % 1) * 1000):03d}Z"
        assert timestamp(when) == expected


def test_redaction_prefilter_changes_nothing_it_should_catch():
    fmt = JsonFormatter([SECRET, "line\nbreak-secret"])
    assert fmt.redact(f'"a {SECRET} b"') == '"a [REDACTED] b"'
    assert fmt.redact('"k": "line\\nbreak-secret"') == '"k": "[REDACTED]"'
    assert fmt.redact('"Authorization": "Bearer abc"') == '"Authorization": "[REDACTED]"'
    assert fmt.redact('"x-hub88-signature": "abc"') == '"x-hub88-signature": "[REDACTED]"'
    assert fmt.redact('{"msg": "plain line"}') == '{"msg": "plain line"}'
