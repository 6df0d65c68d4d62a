"""The access log's direct writer: the same line as ``logging`` would write, for less."""

from __future__ import annotations

import asyncio
import io
import logging
import time

import orjson
import pytest

from gateway import logs
from gateway.logs import REQUEST_ID, AccessLog, JsonFormatter, setup_logging, timestamp

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


def only_ours() -> None:
    """pytest's log capture adds handlers to the root logger during each test (so the
    direct path steps aside); take them off to see what a served gateway writes."""
    logging.getLogger().handlers[:] = [logs._handler]


def lines(stream) -> list[dict]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_direct_line_equals_the_logging_line(stream):
    fields = {"request_id": "r-1", "partner": "acme", "status": 200, "latency_ms": 1.234, "transaction_id": None}
    only_ours()
    AccessLog("igsp.access").info("request", dict(fields))  # no event loop here: written at once
    logging.getLogger("igsp.access").info("request", extra=dict(fields))
    direct, via_logging = lines(stream)
    ts_direct, ts_logging = direct.pop("ts"), via_logging.pop("ts")
    assert len(ts_direct) == len(ts_logging) == 24 and ts_direct.endswith("Z") and ts_direct[10] == "T"
    assert direct == via_logging
    assert list(direct) == list(via_logging)  # same key order too


def test_direct_line_is_redacted_and_carries_the_request_id(stream):
    only_ours()
    token = REQUEST_ID.set("req-42")
    try:
        AccessLog().info("request", {"path": f"/x?k={SECRET}", "error": "X-Signature: deadbeef"})
    finally:
        REQUEST_ID.reset(token)
    text = stream.getvalue()
    assert SECRET not in text and "deadbeef" not in text
    [entry] = lines(stream)
    assert entry["request_id"] == "req-42" and entry["path"] == "/x?k=[REDACTED]"


async def test_lines_of_one_loop_turn_are_written_together_at_its_end(stream):
    only_ours()
    access = AccessLog()
    for i in range(5):
        access.info("request", {"status": 200, "n": i})
    assert stream.getvalue() == ""  # still this turn
    await asyncio.sleep(0)
    assert [entry["n"] for entry in lines(stream)] == [0, 1, 2, 3, 4]
    access.info("request", {"status": 200, "n": 5})
    access.flush()  # as at exit
    assert [entry["n"] for entry in lines(stream)] == [0, 1, 2, 3, 4, 5]


def test_level_above_info_writes_nothing(stream):
    logging.getLogger().setLevel(logging.WARNING)
    AccessLog().info("request", {"status": 200})
    assert stream.getvalue() == ""


def test_other_logging_setups_get_the_record_through_logging(stream, caplog):
    with caplog.at_level(logging.INFO, logger="igsp.access"):
        AccessLog().info("request", {"status": 201})  # caplog added a handler: the direct path steps aside
    assert [r.status for r in caplog.records if r.name == "igsp.access"] == [201]


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
