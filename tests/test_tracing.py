"""OpenTelemetry traces: what a transaction's trace holds, and what it never holds.

In process first: the gateway application (aiohttp test server) with the SDK's in-memory
exporter installed, against the Hub88-style wallet simulator on loopback, asserting span
names, kinds, parent/child links, attributes, the ``traceparent`` the legacy API receives
and the trace ids of the JSON log lines. Then the settings (config section and ``OTEL_*``
variables), tracing off importing nothing of OpenTelemetry, and a real gateway process (two
workers) exporting OTLP/HTTP to a receiver started here that decodes the protobuf.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import threading
from decimal import Decimal

import pytest
import requests
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from adapters.codecs import dumps
from gateway import signing
from gateway.app import create_app
from gateway.config import Partner, load_config
from gateway.errors import ConfigError
from gateway.ops import tracing
from gateway.ops.logs import JsonFormatter
from gateway.outbound.hooks import HookClient
from gateway.tools.simulators import start_in_thread
from tests.conftest import ACME, BETA, platform_config
from tests.ops_support import RecordingHub88, write_mapping
from tests.support import ROOT, GatewayProcess, unique_timestamp

# The gateway keeps per-request values under string keys (aiohttp recommends RequestKey
# objects and warns; the warnings are errors in this suite, and only in-process apps meet them).
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

HOOKS = "/platforms/game-provider/hooks"
INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{INCOMING_TRACE}-{INCOMING_PARENT}-01"


@pytest.fixture
def hub88(hub88_keys):
    server = RecordingHub88(hub88_keys[1])
    yield server
    server.server.stop()


@pytest.fixture
def spans():
    """The SDK's in-memory exporter, installed as this process's tracing for one test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.uninstall()
    provider.shutdown()


@pytest.fixture
def access_lines():
    """The JSON lines the access logger writes, formatted as the gateway formats them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter([ACME["secret"]]))
    logger = logging.getLogger("igsp.access")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(level)


def _config(tmp_path, hub88, hub88_keys, edit=None, **overrides):
    config = platform_config(f"sqlite:///{tmp_path}/g.db", **overrides)
    if edit:
        edit(config)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(path, env={"HUB88_WALLET_URL": hub88.url, "HUB88_PRIVATE_KEY": hub88_keys[0]})


class Gateway:
    """The gateway application in this process, on an aiohttp test server."""

    def __init__(self, config):
        self.client = TestClient(TestServer(create_app(config)))

    async def __aenter__(self) -> Gateway:
        await self.client.start_server()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.close()

    async def hook(self, payload: dict, partner: dict = ACME, headers: dict | None = None):
        body = dumps(payload)
        sent = signing.signed_headers(partner["api_key"], partner["secret"], body, unique_timestamp())
        sent.update(headers or {})
        response = await self.client.post(HOOKS, data=body, headers=sent)
        return response.status, sent


def bet(txid: str, amount: str = "7.77") -> dict:
    return {"action": "bet", "player_id": "p1", "amount": Decimal(amount), "currency": "EUR", "game_id": "g-1",
            "transaction_id": txid, "session_id": "s-1", "type": "bet", "round_id": "r-1"}


def by_name(finished) -> dict:
    found: dict = {}
    for span in finished:
        found.setdefault(span.name, []).append(span)
    return found


def hex_id(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def every_value(finished) -> list[str]:
    """Every span name, attribute key and value, event and link attribute, as text."""
    texts = []
    for span in finished:
        texts.append(span.name)
        for key, value in span.attributes.items():
            texts += [key, str(value)]
        if span.status.description:
            texts.append(span.status.description)
    return texts


# -- one request, traced end to end (in process) --------------------------------------------
async def test_a_bet_continues_the_callers_trace_through_auth_ledger_and_legacy_call(
        tmp_path, hub88, hub88_keys, spans, access_lines):
    hub88.player("p1", "100.00")
    async with Gateway(_config(tmp_path, hub88, hub88_keys)) as gw:
        status, sent = await gw.hook(bet("tx-trace-1"), headers={"traceparent": TRACEPARENT,
                                                                   "X-Request-ID": "req-trace-1"})
    assert status == 200
    finished = spans.get_finished_spans()
    named = by_name(finished)
    (server,) = named["POST /platforms/game-provider/hooks"]
    assert server.kind == SpanKind.SERVER
    assert hex_id(server.context.trace_id, 32) == INCOMING_TRACE  # the caller's trace, continued
    assert hex_id(server.parent.span_id, 16) == INCOMING_PARENT and server.parent.is_remote
    assert {k: server.attributes[k] for k in ("http.request.method", "http.route", "http.response.status_code",
                                              "igsp.face", "igsp.operation", "igsp.partner", "igsp.request_id",
                                              "igsp.transaction_id")} == {
        "http.request.method": "POST", "http.route": HOOKS, "http.response.status_code": 200,
        "igsp.face": "platform", "igsp.operation": "bet", "igsp.partner": "acme-games",
        "igsp.request_id": "req-trace-1", "igsp.transaction_id": "tx-trace-1"}
    assert server.status.status_code == StatusCode.UNSET

    def child_of_server(name: str):
        (span,) = named[name]
        assert span.parent is not None and span.parent.span_id == server.context.span_id, name
        assert span.context.trace_id == server.context.trace_id, name
        return span

    auth = child_of_server("igsp.authenticate")
    assert auth.attributes["igsp.partner"] == "acme-games"
    begin = child_of_server("ledger tx_begin")
    assert begin.attributes["igsp.ledger.result"] == "new" and begin.attributes["db.system"] == "sqlite"
    assert begin.attributes["igsp.transaction_id"] == "tx-trace-1"
    finish = child_of_server("ledger tx_finish")
    assert (finish.attributes["igsp.ledger.state"], finish.attributes["igsp.ledger.status"]) == ("done", 200)
    legacy = child_of_server("legacy bet")
    assert legacy.kind == SpanKind.CLIENT
    assert {k: legacy.attributes[k] for k in ("igsp.mapping", "igsp.operation", "http.response.status_code",
                                              "igsp.upstream.outcome", "server.address")} == {
        "igsp.mapping": "hub88-wallet", "igsp.operation": "bet", "http.response.status_code": 200,
        "igsp.upstream.outcome": "ok", "server.address": "127.0.0.1"}
    # In order: authenticated, recorded, called, settled.
    assert auth.end_time <= begin.start_time and begin.end_time <= legacy.start_time <= legacy.end_time
    assert legacy.end_time <= finish.start_time

    # The legacy API got the trace: the legacy span is its parent.
    (received,) = hub88.headers("/transaction/bet")
    assert received["traceparent"] == f"00-{INCOMING_TRACE}-{hex_id(legacy.context.span_id, 16)}-01"

    # Never amounts, secrets, signatures or keys; no body field at all.
    texts = every_value(finished)
    for forbidden in (ACME["secret"], sent["X-Signature"], hub88_keys[0], "7.77", "777"):
        assert not any(forbidden in text for text in texts), forbidden
    assert not any(word in key for span in finished for key in span.attributes
                   for word in ("amount", "balance", "player", "signature", "secret"))

    # The access line carries the trace and the server span's id.
    (line,) = [entry for entry in access_lines() if entry.get("request_id") == "req-trace-1"]
    assert (line["trace_id"], line["span_id"]) == (INCOMING_TRACE, hex_id(server.context.span_id, 16))


async def test_an_unsampled_callers_trace_records_nothing_but_travels_on(
        tmp_path, hub88, hub88_keys, spans, access_lines):
    """The default sampler follows the caller: not sampled upstream, nothing recorded here,
    and the legacy API still gets the trace id, marked not sampled."""
    hub88.player("p1", "100.00")
    async with Gateway(_config(tmp_path, hub88, hub88_keys)) as gw:
        status, _ = await gw.hook(bet("tx-unsampled"), headers={
            "traceparent": f"00-{INCOMING_TRACE}-{INCOMING_PARENT}-00", "X-Request-ID": "req-unsampled"})
    assert status == 200
    assert len(spans.get_finished_spans()) == 0
    (received,) = hub88.headers("/transaction/bet")
    _, trace_id, _, flags = received["traceparent"].split("-")
    assert (trace_id, flags) == (INCOMING_TRACE, "00")
    (line,) = [entry for entry in access_lines() if entry.get("request_id") == "req-unsampled"]
    assert line["trace_id"] == INCOMING_TRACE


async def test_refusals_and_failures_on_their_spans(tmp_path, hub88, hub88_keys, spans):
    hub88.player("p1", "100.00")
    async with Gateway(_config(tmp_path, hub88, hub88_keys)) as gw:
        forged = {**ACME, "secret": "not-the-secret-0123456789abcdef"}
        assert (await gw.hook(bet("tx-forged"), partner=forged))[0] == 403
        hub88.fault("garbage", endpoint="bet")
        assert (await gw.hook(bet("tx-garbage")))[0] == 502
    named = by_name(spans.get_finished_spans())
    servers = {s.attributes["igsp.request_id"]: s for s in named["POST /platforms/game-provider/hooks"]}
    refused, failed = sorted(servers.values(), key=lambda s: s.start_time)
    # A refused signature: a 4xx answer, not a failure of the gateway.
    assert refused.attributes["igsp.auth_failure"] == "bad_signature"
    assert refused.attributes["http.response.status_code"] == 403
    assert refused.status.status_code == StatusCode.UNSET
    (auth_refused,) = [s for s in named["igsp.authenticate"] if s.parent.span_id == refused.context.span_id]
    assert auth_refused.attributes["igsp.error"] == "invalid_signature"
    assert auth_refused.attributes["igsp.auth_failure"] == "bad_signature"
    # A legacy answer that cannot be read: the legacy span and the server span are errors.
    assert failed.status.status_code == StatusCode.ERROR and failed.attributes["igsp.error"] == "upstream_bad_response"
    (legacy,) = named["legacy bet"]
    assert legacy.parent.span_id == failed.context.span_id
    assert legacy.attributes["igsp.upstream.outcome"] == "bad_body"
    assert legacy.status.status_code == StatusCode.ERROR


async def test_propagate_trace_false_keeps_traceparent_from_the_legacy_api(tmp_path, hub88, hub88_keys, spans):
    quiet = write_mapping(tmp_path / "quiet.yaml", name="quiet-wallet",
                          edit=lambda m: m["upstream"].update(propagate_trace=False))
    hub88.player("p1", "100.00")
    config = _config(tmp_path, hub88, hub88_keys, edit=lambda c: c["partners"][1].update(mapping=str(quiet)))
    async with Gateway(config) as gw:
        assert (await gw.hook({"action": "balance", "player_id": "p1", "currency": "EUR"}))[0] == 200
        assert (await gw.hook({"action": "balance", "player_id": "p1", "currency": "EUR"}, partner=BETA))[0] == 200
    first, second = hub88.headers("/user/balance")
    assert "traceparent" in first and "traceparent" not in second and "tracestate" not in second
    legacy = {s.attributes["igsp.mapping"]: s for s in by_name(spans.get_finished_spans())["legacy balance"]}
    assert set(legacy) == {"hub88-wallet", "quiet-wallet"}  # traced all the same


async def test_a_queued_delivery_is_a_trace_of_its_own_linked_to_the_request(tmp_path, hub88, hub88_keys, spans):
    """A win the wallet could not take (503: not applied) is queued with its traceparent;
    its delivery is a new trace whose CONSUMER span links back to the request's."""
    fast = write_mapping(tmp_path / "fast.yaml", name="fast-wallet", timeout=0.2,
                         edit=lambda m: m.setdefault("queue", {}).update(backoff_initial=0.1))
    hub88.player("p1", "100.00")
    config = _config(tmp_path, hub88, hub88_keys, queue={"poll_seconds": 0.05},
                     edit=lambda c: c["partners"][0].update(mapping=str(fast)))
    hub88.fault("down", endpoint="win", count=1)
    win = {**bet("w-queued", "5.00"), "action": "win", "type": "win"}
    async with Gateway(config) as gw:
        status, _ = await gw.hook(win, headers={"traceparent": TRACEPARENT})
        assert status == 503  # accepted for delivery

        async def delivered():
            while not any(s.name == "queue deliver wallet" for s in spans.get_finished_spans()):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(delivered(), timeout=10)
    named = by_name(spans.get_finished_spans())
    (delivery,) = named["queue deliver wallet"]
    assert delivery.kind == SpanKind.CONSUMER and delivery.parent is None  # a root
    assert hex_id(delivery.context.trace_id, 32) != INCOMING_TRACE
    (link,) = delivery.links
    first_legacy = next(s for s in named["legacy win"] if hex_id(s.context.trace_id, 32) == INCOMING_TRACE)
    assert hex_id(link.context.trace_id, 32) == INCOMING_TRACE
    assert link.context.span_id == first_legacy.parent.span_id  # the request's span that queued it
    assert {k: delivery.attributes[k] for k in ("igsp.queue.route", "igsp.queue.op", "igsp.partner",
                                                "igsp.transaction_id", "igsp.queue.attempt",
                                                "igsp.origin_trace_id")} == {
        "igsp.queue.route": "wallet", "igsp.queue.op": "win", "igsp.partner": "acme-games",
        "igsp.transaction_id": "w-queued", "igsp.queue.attempt": 1, "igsp.origin_trace_id": INCOMING_TRACE}
    retried = [s for s in named["legacy win"] if s.parent is not None and s.parent.span_id == delivery.context.span_id]
    assert [s.attributes["igsp.upstream.outcome"] for s in retried] == ["ok"]
    assert first_legacy.attributes["igsp.upstream.outcome"] == "5xx"
    # The wallet saw both attempts, each with its own trace.
    first, second = hub88.headers("/transaction/win")
    assert first["traceparent"].split("-")[1] == INCOMING_TRACE
    assert second["traceparent"].split("-")[1] == hex_id(delivery.context.trace_id, 32)
    ledger_steps = [s for s in named.get("ledger tx_finish", []) if s.parent.span_id == delivery.context.span_id]
    assert ledger_steps and ledger_steps[0].attributes["igsp.transaction_id"] == "w-queued"


async def test_signed_hooks_out_are_client_spans_with_traceparent(spans):
    """The provider face's outbound hooks: a CLIENT span each, traceparent unless turned off."""
    received: list[dict] = []

    async def platform(request: web.Request) -> web.Response:
        received.append(dict(request.headers))
        if request.headers.get("X-Fail"):
            return web.json_response({"error": "internal_error", "message": "down", "status": 500}, status=500)
        return web.json_response({"balance": 12.5})

    app = web.Application()
    app.router.add_post("/hooks", platform)
    server = start_in_thread(app)
    hooks = HookClient()
    partner = Partner("casino-one", "provider", "casino-key-0001", (b"casino-secret-0123456789",), None,
                      hooks_url=server.url + "/hooks")
    try:
        with tracing.span("parent", root=True) as parent:
            answer = await hooks.send(partner, {"action": "balance", "player_id": "p1", "currency": "EUR"},
                                      timeout=5, request_id="rq-1")
            await hooks.send(partner, {"action": "balance", "player_id": "p1", "currency": "EUR"}, timeout=5,
                             propagate_trace=False)
    finally:
        await hooks.close()
        server.stop()
    assert answer == {"balance": Decimal("12.5")}
    hook_spans = by_name(spans.get_finished_spans())["igsp.hook balance"]
    assert [s.kind for s in hook_spans] == [SpanKind.CLIENT, SpanKind.CLIENT]
    assert all(s.parent.span_id == parent.get_span_context().span_id for s in hook_spans)
    assert {k: hook_spans[0].attributes[k] for k in ("igsp.partner", "igsp.hook.action", "http.response.status_code",
                                                     "igsp.upstream.outcome")} == {
        "igsp.partner": "casino-one", "igsp.hook.action": "balance", "http.response.status_code": 200,
        "igsp.upstream.outcome": "ok"}
    assert received[0]["traceparent"].split("-")[2] == hex_id(hook_spans[0].context.span_id, 16)
    assert "traceparent" not in received[1]
    texts = every_value(spans.get_finished_spans())
    assert not any("casino-secret" in t or received[0]["X-Signature"] in t for t in texts)


async def test_tracing_off_sends_no_traceparent(tmp_path, hub88, hub88_keys):
    assert not tracing.ENABLED
    hub88.player("p1", "100.00")
    async with Gateway(_config(tmp_path, hub88, hub88_keys)) as gw:
        assert (await gw.hook(bet("tx-off"), headers={"traceparent": TRACEPARENT}))[0] == 200
    (received,) = hub88.headers("/transaction/bet")
    assert "traceparent" not in received  # not even the caller's: nothing is forwarded blindly


# -- settings -----------------------------------------------------------------------------
ENV = {"HUB88_WALLET_URL": "http://127.0.0.1:1"}


def _load(tmp_path, hub88_keys, tracing_section=None, environ=None):
    config = platform_config(f"sqlite:///{tmp_path}/g.db")
    if tracing_section is not None:
        config["tracing"] = tracing_section
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return load_config(path, env={**ENV, "HUB88_PRIVATE_KEY": hub88_keys[0], **(environ or {})}), path


def test_off_by_default_and_on_from_the_otel_variables(tmp_path, hub88_keys):
    assert _load(tmp_path, hub88_keys)[0].tracing.enabled is False
    settings = _load(tmp_path, hub88_keys, environ={
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"})[0].tracing
    assert (settings.enabled, settings.exporters, settings.protocol, settings.sampler, settings.sampler_arg) == (
        True, ("otlp",), "http/protobuf", "parentbased_traceidratio", 0.25)
    assert settings.endpoint is None  # the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT itself
    # The config wins over the environment; OTEL_SDK_DISABLED wins over everything.
    settings = _load(tmp_path, hub88_keys, {"enabled": True, "endpoint": "http://collector:4318/",
                                            "sampler": "always_on", "service_name": "gw-eu",
                                            "headers": {"Authorization": "Bearer collector-token-0123"}},
                     environ={"OTEL_TRACES_SAMPLER": "always_off"})[0]
    assert (settings.tracing.endpoint, settings.tracing.sampler, settings.tracing.service_name) == (
        "http://collector:4318/v1/traces", "always_on", "gw-eu")
    assert "Bearer collector-token-0123" in settings.secrets  # redacted from every log line
    assert _load(tmp_path, hub88_keys, {"enabled": True},
                 environ={"OTEL_SDK_DISABLED": "true"})[0].tracing.enabled is False
    assert _load(tmp_path, hub88_keys, environ={"OTEL_TRACES_EXPORTER": "none"})[0].tracing.enabled is False


@pytest.mark.parametrize("section, environ, field, message", [
    ({"sampler": "sometimes"}, {}, "tracing.sampler", "got 'sometimes', want one of always_on"),
    ({"sampler_arg": 2}, {}, "tracing.sampler_arg", "2"),
    ({"endpoint": "collector:4318"}, {}, "tracing.endpoint", "collector:4318"),
    (None, {"OTEL_TRACES_EXPORTER": "jaeger"}, "tracing", "environment variable OTEL_TRACES_EXPORTER: unknown"),
    (None, {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "sometimes"}, "tracing",
     "environment variable OTEL_TRACES_SAMPLER: unsupported sampler 'sometimes'"),
    (None, {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "tracing",
     "has no http/json"),
    (None, {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "lots"}, "tracing",
     "OTEL_TRACES_SAMPLER_ARG: 'lots' is not a ratio"),
])
def test_bad_tracing_settings_are_config_errors(tmp_path, hub88_keys, section, environ, field, message):
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, hub88_keys, section, environ)
    problems = [p for p in caught.value.problems if p.path == field]
    assert problems and message in str(problems[0]), caught.value.problems
    if section is not None:
        assert problems[0].line is not None


def test_tracing_off_imports_nothing_of_opentelemetry(tmp_path, hub88_keys):
    """Off, a started gateway (app, store, a served request) never imports OpenTelemetry."""
    _, path = _load(tmp_path, hub88_keys)
    script = f"""
import asyncio, sys
from aiohttp.test_utils import TestClient, TestServer
from gateway.app import create_app
from gateway.config import load_config

async def main():
    client = TestClient(TestServer(create_app(load_config({str(path)!r}))))
    await client.start_server()
    assert (await client.post("/platforms/game-provider/hooks", data=b"{{}}")).status == 401
    await client.close()

asyncio.run(main())
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={**env, **ENV, "HUB88_PRIVATE_KEY": hub88_keys[0], "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


# -- a real process exporting OTLP/HTTP --------------------------------------------------------
class OtlpReceiver:
    """A tiny OTLP/HTTP traces endpoint: decodes each ExportTraceServiceRequest it is sent."""

    def __init__(self):
        self.spans: list[dict] = []
        self.lock = threading.Lock()
        app = web.Application()
        app.router.add_post("/v1/traces", self.export)
        self.server = start_in_thread(app)
        self.url = self.server.url

    async def export(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest.FromString(await request.read())
        with self.lock:
            for resource_spans in message.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append({
                            "name": span.name, "kind": span.kind, "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(), "parent_span_id": span.parent_span_id.hex(),
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                            "resource": resource, "scope": scope_spans.scope.name})
        return web.Response(body=b"", content_type="application/x-protobuf")

    def found(self) -> list[dict]:
        with self.lock:
            return list(self.spans)

    def stop(self) -> None:
        self.server.stop()


def _value(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture
def receiver():
    server = OtlpReceiver()
    yield server
    server.stop()


def test_two_workers_export_otlp_http_each_its_own_and_flush_at_shutdown(receiver, hub88, hub88_keys, tmp_path):
    """``serve --workers 2`` with only OTEL_* variables: each worker exports its own spans
    (process.pid), the sampler from OTEL_TRACES_SAMPLER(_ARG) keeps only the sampled callers'
    traces, and SIGTERM flushes what the batch processor still held (its delay is a minute)."""
    hub88.player("p1", "100.00")
    config = platform_config(f"sqlite:///{tmp_path}/g.db", server={"workers": 2})
    gw = GatewayProcess(config, tmp_path, env={
        "HUB88_WALLET_URL": hub88.url, "HUB88_PRIVATE_KEY": hub88_keys[0],
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_SERVICE_NAME": "igsp-e2e",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0",
        "OTEL_BSP_SCHEDULE_DELAY": "60000"}).start()
    traced, untraced = [], []
    try:
        for i in range(24):  # a new connection each: the kernel spreads them over both workers
            trace_id = f"{i + 1:032x}"
            body = dumps({"action": "balance", "player_id": "p1", "currency": "EUR"})
            headers = signing.signed_headers(ACME["api_key"], ACME["secret"], body, unique_timestamp())
            headers.update({"traceparent": f"00-{trace_id}-{INCOMING_PARENT}-01", "X-Request-ID": f"traced-{i}",
                            "Connection": "close"})
            assert requests.post(gw.url + HOOKS, data=body, headers=headers, timeout=10).status_code == 200
            traced.append(trace_id)
        for i in range(3):  # no traceparent: a new root, sampled at ratio 0
            headers = signing.signed_headers(ACME["api_key"], ACME["secret"], body, unique_timestamp())
            headers.update({"X-Request-ID": f"untraced-{i}", "Connection": "close"})
            assert requests.post(gw.url + HOOKS, data=body, headers=headers, timeout=10).status_code == 200
            untraced.append(f"untraced-{i}")
        assert receiver.found() == []  # still batched: nothing exported before the flush
    finally:
        assert gw.stop() == 0
    found = receiver.found()
    servers = [s for s in found if s["name"] == "POST /platforms/game-provider/hooks"]
    assert sorted(s["trace_id"] for s in servers) == sorted(traced)
    assert all(s["parent_span_id"] == INCOMING_PARENT and s["kind"] == 2 for s in servers)  # SPAN_KIND_SERVER
    assert not {s["attributes"].get("igsp.request_id") for s in found} & set(untraced)
    pids = {s["resource"]["process.pid"] for s in found}
    assert len(pids) == 2 and gw.proc.pid not in pids  # one exporter per worker, none in the parent
    assert {s["resource"]["service.name"] for s in found} == {"igsp-e2e"}
    assert {s["scope"] for s in found} == {"igsp-gateway"}
    for server in servers:
        children = {s["name"] for s in found if s["parent_span_id"] == server["span_id"]}
        assert children == {"igsp.authenticate", "legacy balance"}, children
        (legacy,) = [s for s in found if s["parent_span_id"] == server["span_id"] and s["name"] == "legacy balance"]
        assert legacy["kind"] == 3 and legacy["attributes"]["igsp.upstream.outcome"] == "ok"  # SPAN_KIND_CLIENT
    # Each access line carries its trace; the unsampled ones carry theirs too (for correlation).
    lines = {line["request_id"]: line for line in gw.log_lines() if line["msg"] == "request"}
    assert all(lines[f"traced-{i}"]["trace_id"] == trace_id for i, trace_id in enumerate(traced))
    assert all(len(lines[rid]["trace_id"]) == 32 for rid in untraced)


def test_provider_face_launch_and_a_played_round_exported_end_to_end(receiver, tmp_path, monkeypatch):
    """The provider face in a real process: a launch (its legacy steps as CLIENT spans), then
    a legacy game server's bet callback (a SERVER span) whose signed iGSP hook to the platform
    is a CLIENT span with the callback's trace."""
    from tests import test_provider_face as provider_face

    otel = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "60000"}
    monkeypatch.setattr(provider_face, "GatewayProcess",
                        lambda config, path, env: GatewayProcess(config, path, env={**env, **otel}))
    world = provider_face.World(tmp_path)
    try:
        world.player("tina", "50.00", sessions=["sess-tina"])
        launch = world.launch("sess-tina", "tina")
        assert launch.status_code == 201, launch.text
        token = provider_face.parse_qs(provider_face.urlparse(launch.json()["url"]).query)["token"][0]
        played = world.play(token, [{"op": "bet", "amount": "3.00", "reference": "t-bet-1"}])
        assert played["ok"] is True, played
    finally:
        world.stop()  # SIGTERM: the gateway flushes its spans
    found = receiver.found()
    named = by_name_dicts(found)
    (launch_span,) = [s for s in named["POST /igsp/v1/{resource}"] if s["attributes"]["igsp.operation"] == "sessions"]
    assert launch_span["attributes"]["igsp.partner"] == provider_face.PARTNER["id"]
    launch_children = {s["name"] for s in found if s["parent_span_id"] == launch_span["span_id"]}
    assert "igsp.authenticate" in launch_children and any(n.startswith("legacy ") for n in launch_children)
    assert "ledger tx_begin" in launch_children and "store kv_put" in launch_children
    callbacks = [s for s in named["POST /legacy/{mapping}/{endpoint}"] if s["attributes"].get("igsp.operation") == "bet"]
    (callback,) = callbacks
    assert callback["kind"] == 2 and callback["attributes"]["igsp.face"] == "legacy"
    (hook,) = [s for s in found if s["name"] == "igsp.hook bet"]
    assert hook["parent_span_id"] == callback["span_id"] and hook["trace_id"] == callback["trace_id"]
    assert hook["kind"] == 3 and hook["attributes"]["http.response.status_code"] == 200
    assert hook["attributes"]["igsp.partner"] == provider_face.PARTNER["id"]
    texts = [str(v) for s in found for v in (s["name"], *s["attributes"].keys(), *s["attributes"].values())]
    assert not any(token in t or provider_face.PARTNER["secret"] in t or "3.00" in t for t in texts)


def by_name_dicts(found: list[dict]) -> dict:
    named: dict = {}
    for span in found:
        named.setdefault(span["name"], []).append(span)
    return named
