"""Answer correlation (gateway/engine/echo.py): the ``echo:`` section compiled at load, the
comparison rule, and what LegacyClient makes of an answer that is not its request's —
an unknown outcome, and the connection it came on closed."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import jmespath
import pytest
import yaml

from gateway.engine import echo
from gateway.engine.mapping import load_mapping
from gateway.errors import ConfigError, IgspError, UpstreamError
from gateway.outbound.legacy import LegacyClient

MAPPING = """\
version: 1
name: echo-test
face: platform
upstream:
  base_url: {url}
  timeout: 2
result:
  success: "status == 'OK'"
  code: status
  errors:
    NO_MONEY: insufficient_funds
    RETRY: upstream_unavailable
echo:
  request_uuid: "{{{{ request_id }}}}"
  user: "{{{{ player_id }}}}"
operations:
  balance:
    path: /balance
    body: {{user: "{{{{ player_id }}}}", request_uuid: "{{{{ request_id }}}}"}}
    response: {{balance: balance}}
  bet:
    path: /bet
    body: {{user: "{{{{ player_id }}}}", request_uuid: "{{{{ request_id }}}}", tx: "{{{{ transaction_id }}}}"}}
    response: {{balance: balance}}
    echo:
      tx: "{{{{ transaction_id }}}}"
  win:
    path: /win
    body: {{user: "{{{{ player_id }}}}"}}
    response: {{balance: balance}}
    echo:
      request_uuid: null
  refund:
    path: /refund
    body: {{user: "{{{{ player_id }}}}"}}
    response: {{balance: balance}}
    echo:
      user: "{{{{ player_id | upper }}}}"
      session: "{{{{ session_id | default(none) }}}}"
"""


def write(tmp_path: Path, url: str = "http://wallet.test", text: str | None = None) -> Path:
    path = tmp_path / "echo.yaml"
    path.write_text(text if text is not None else MAPPING.format(url=url))
    return path


CONTEXT = {"request_id": "rq-1", "player_id": "p1", "transaction_id": "tx-1"}


# -- the comparison rule ------------------------------------------------------------------------------
@pytest.mark.parametrize(("actual", "expected", "same"), [
    ("rq-1", "rq-1", True),
    ("RQ-1", "rq-1", False),  # case counts
    ("rq-1 ", "rq-1", False),  # spaces count
    ("", "", True),
    (None, "p1", False),  # missing never matches
    (None, None, False),
    (7, "7", True),
    (7, "007", True),  # a number matches a text of the same value
    ("007", "7", False),  # text against text is exact
    (1000000, Decimal("1000000.00"), True),
    (Decimal("10.50"), "10.5", True),
    (10.5, "10.50", True),
    (1000000, "1000000", True),
    (7, " 7", False),
    (7, "seven", False),
    (7, 8, False),
    (True, "true", True),
    (True, True, True),
    (False, "False", False),
    (True, "1", False),
    ({"user": "p1"}, "p1", False),  # objects and lists are never an echo
    (["p1"], "p1", False),
    (Decimal("NaN"), "NaN", False),
])
def test_comparison_rule(actual, expected, same):
    assert echo.same(actual, expected) is same


# -- compiled at load ----------------------------------------------------------------------------------
def test_file_echo_is_inherited_and_merged_per_operation(tmp_path):
    ops = load_mapping(write(tmp_path)).operations
    assert [e.path for e in ops["balance"].echo] == ["request_uuid", "user"]
    assert [e.path for e in ops["bet"].echo] == ["request_uuid", "user", "tx"]
    assert [e.path for e in ops["win"].echo] == ["user"]  # null removes an inherited entry
    refund = {e.path: e for e in ops["refund"].echo}
    assert refund["user"].expected(CONTEXT) == "P1"  # replaced, not added twice
    # A template rendering null is not checked on that call.
    assert echo.expect(ops["refund"].echo, CONTEXT) == {"request_uuid": "rq-1", "user": "P1"}
    assert echo.expect(ops["refund"].echo, {**CONTEXT, "session_id": "s-1"})["session"] == "s-1"


def test_broken_echo_entries_name_file_line_and_field(tmp_path):
    text = MAPPING.format(url="http://wallet.test")
    text = text.replace('  user: "{{ player_id }}"\noperations:', '  "user.]": "{{ player_id }}"\noperations:')
    text = text.replace('      tx: "{{ transaction_id }}"', '      tx: "{{ transaction_id | nosuchfilter }}"')
    path = write(tmp_path, text=text)
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    lines = text.splitlines()
    key_line = lines.index('  "user.]": "{{ player_id }}"') + 1
    tx_line = lines.index('      tx: "{{ transaction_id | nosuchfilter }}"') + 1
    problems = {p.path: p for p in caught.value.problems}
    assert sorted(problems) == ["echo.user.]", "operations.bet.echo.tx"]
    assert problems["echo.user.]"].line == key_line and "JMESPath parse error" in problems["echo.user.]"].message
    assert problems["operations.bet.echo.tx"].message == "unknown filter 'nosuchfilter'"
    assert str(problems["operations.bet.echo.tx"]).startswith(f"{path}:{tx_line}: operations.bet.echo.tx: ")


def test_echo_values_must_be_templates(tmp_path):
    data = yaml.safe_load(MAPPING.format(url="http://wallet.test"))
    data["echo"]["user"] = {"template": "{{ player_id }}"}
    path = write(tmp_path, text=yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    assert [p.path for p in caught.value.problems] == ["echo.user"]


# -- reading an answer -----------------------------------------------------------------------------------
def read(tmp_path, operation: str, answer: dict | bytes, status: int = 200, context: dict = CONTEXT):
    client = LegacyClient(load_mapping(write(tmp_path)))
    raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
    return client.read(operation, status, "application/json", raw, client.expect(operation, context))


OK = {"status": "OK", "request_uuid": "rq-1", "user": "p1", "tx": "tx-1", "balance": 90}


def test_an_answer_that_echoes_is_read(tmp_path):
    fields, _ = read(tmp_path, "bet", OK)
    assert fields == {"balance": 90}


@pytest.mark.parametrize(("change", "why"), [
    ({"user": "p2"}, "user differs"),
    ({"request_uuid": "rq-0"}, "request_uuid differs"),
    ({"user": None}, "user is missing"),
    ({"tx": "tx-0"}, "tx differs"),
    ({"user": {"id": "p1"}}, "user differs"),
])
def test_an_answer_that_does_not_echo_is_an_unknown_outcome(tmp_path, change, why):
    with pytest.raises(UpstreamError) as caught:
        read(tmp_path, "bet", {**OK, **change})
    error = caught.value
    assert (error.code, error.kind, error.applied, error.status) == ("upstream_bad_response", "uncorrelated", None, 502)
    assert why in error.message
    assert "p2" not in error.message and "rq-0" not in error.message  # never another request's values


def test_an_error_answer_that_does_not_echo_is_an_unknown_outcome_too(tmp_path):
    refused = {"status": "NO_MONEY", "request_uuid": "rq-1", "user": "p1", "tx": "tx-1"}
    with pytest.raises(IgspError) as caught:
        read(tmp_path, "bet", refused)
    assert caught.value.code == "insufficient_funds" and not isinstance(caught.value, UpstreamError)
    for answer in ({**refused, "user": "p2"}, {**refused, "status": "RETRY", "user": "p2"}):
        with pytest.raises(UpstreamError) as caught:
            read(tmp_path, "bet", answer)
        assert (caught.value.kind, caught.value.applied) == ("uncorrelated", None)


def test_failures_judged_before_correlation_keep_their_judgment(tmp_path):
    # An HTTP 503 without a mapped code, an unreadable body: not the wallet's answer at all.
    with pytest.raises(UpstreamError) as caught:
        read(tmp_path, "bet", {"status": "MAINTENANCE"}, status=503)
    assert (caught.value.kind, caught.value.applied) == ("5xx", False)
    with pytest.raises(UpstreamError) as caught:
        read(tmp_path, "bet", b"<html>oops</html>", status=500)
    assert caught.value.kind == "5xx"


def test_an_answer_of_another_shape_reads_as_missing(tmp_path):
    mapping = load_mapping(write(tmp_path))
    checks = (echo.Echo("length(user)", jmespath.compile("length(user)"), lambda ctx: 2),)
    # length() of a number is a JMESPath type error: the echo cannot be read, so it is missing.
    assert echo.compare(checks, {"length(user)": 2}, mapping.search, {"user": 5}) == [("length(user)", 2, None, False)]
    assert echo.mismatch(checks, {"length(user)": 2}, mapping.search, {"user": 5}) == "length(user) is missing"
    assert echo.mismatch(checks, {"length(user)": 2}, mapping.search, {"user": "p1"}) is None


def test_numbers_echoed_as_numbers_match(tmp_path):
    fields, _ = read(tmp_path, "balance", {"status": "OK", "request_uuid": 12345, "user": 7, "balance": 1},
                     context={"request_id": "12345", "player_id": "7"})
    assert fields == {"balance": 1}


# -- a stale answer on a pooled connection ------------------------------------------------------------------
class StaleServer:
    """A loopback HTTP/1.1 server answering each request with its own echo, keep-alive; on
    ``repeat()`` it writes its last answer again on the same connection, unasked."""

    def __init__(self):
        self.connections = 0
        self.last: tuple[asyncio.StreamWriter, bytes] | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                request = json.loads(await reader.readexactly(length))
                body = json.dumps({"status": "OK", "request_uuid": request["request_uuid"], "user": request["user"],
                                   "balance": 100 + self.connections}).encode()
                answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
                    len(body), body)
                self.last = (writer, answer)
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def repeat(self) -> None:
        writer, answer = self.last
        writer.write(answer)
        await writer.drain()


async def test_a_stale_answer_is_refused_and_its_connection_closed(tmp_path):
    server = StaleServer()
    client = LegacyClient(load_mapping(write(tmp_path, await server.start())))
    try:
        first = await client.step("balance", {"request_id": "rq-1", "player_id": "p1"})
        assert first.fields == {"balance": 101}
        # The answer to rq-1, again, on the idle pooled connection. Whether it has arrived when
        # rq-2 is sent or not, TCP delivers it first: rq-2 reads it.
        await server.repeat()
        with pytest.raises(UpstreamError) as caught:
            await client.step("balance", {"request_id": "rq-2", "player_id": "p2"})
        assert (caught.value.kind, caught.value.applied) == ("uncorrelated", None)
        # rq-2's own answer was on its way on that connection; closed, it is never read as rq-3's.
        third = await client.step("balance", {"request_id": "rq-3", "player_id": "p3"})
        assert third.fields == {"balance": 102} and server.connections == 2
    finally:
        await client.close()
        server.server.close()
