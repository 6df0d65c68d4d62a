"""OpenTelemetry traces: off unless configured, and then one trace per transaction's path.

Off (the default) nothing of OpenTelemetry is imported: ``span()`` returns one shared
no-op object and every other call here is a check of ``ENABLED``. On, each process
(each worker of ``serve --workers N``, after the fork) builds its own tracer provider and
exporter when its application starts (gateway/app.py) and flushes it when it stops.

What a trace holds (names, never amounts, secrets, signatures, keys or request bodies):

    SERVER    "{METHOD} {route}"           an iGSP request or a legacy callback; an incoming
                                           W3C ``traceparent`` is continued
    INTERNAL  "igsp.authenticate"          the credential, address and signature check
    INTERNAL  "ledger tx_begin", …         each ledger, queue and store step of a traced request
    CLIENT    "legacy {operation}"         each legacy call attempt (mapping, operation, legacy
                                           HTTP status, outcome kind)
    CLIENT    "igsp.hook {action}"         each signed iGSP hook sent to a platform
    CONSUMER  "queue deliver {route}"      a queued delivery: a trace of its own, linked to the
                                           trace of the request that queued it (its
                                           ``traceparent`` travels in the queue entry)

``traceparent`` goes out with legacy calls and hooks unless the mapping says
``upstream.propagate_trace: false``; the JSON log lines written inside a span carry its
``trace_id`` and ``span_id``.

Settings come from the config's ``tracing:`` section and, for whatever it leaves unset,
the standard ``OTEL_*`` environment variables (``resolve``).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("igsp.tracing")

#: True once a tracer provider is installed in this process; read on every traced step.
ENABLED = False

SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
            "parentbased_traceidratio")
EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("http/protobuf", "grpc")
DEFAULT_SERVICE_NAME = "igsp-gateway"

# Span kinds by name: the SDK's enum is only imported once tracing is on.
INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER = "internal", "server", "client", "producer", "consumer"


# -- settings (no OpenTelemetry import) ------------------------------------------------------
@dataclass(frozen=True)
class TracingSettings:
    enabled: bool = False
    exporters: tuple[str, ...] = ("otlp",)
    protocol: str = "http/protobuf"
    #: The traces URL given in the config (``/v1/traces`` appended for HTTP); None: the
    #: exporter reads ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``.
    endpoint: str | None = None
    #: From the config; None: ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``, else igsp-gateway.
    service_name: str | None = None
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may hold a collector token


class SettingError(ValueError):
    """A tracing setting that cannot be used: ``where`` is a config field or an env variable."""

    def __init__(self, where: str, message: str, from_env: bool):
        super().__init__(message)
        self.where, self.from_env = where, from_env


def _truthy(value: str) -> bool:
    return value.strip().lower() == "true"


def resolve(section: Mapping | None, environ: Mapping[str, str]) -> tuple[TracingSettings, list[SettingError]]:
    """The settings the config section and the ``OTEL_*`` variables give; problems listed.

    A setting in the config wins; one it leaves unset comes from the environment:

        tracing.enabled       OTEL_TRACES_EXPORTER set and not "none" (OTEL_SDK_DISABLED=true: always off)
        tracing.exporter      OTEL_TRACES_EXPORTER (otlp, console, none; a comma-separated list)
        tracing.protocol      OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL
        tracing.endpoint      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT
        tracing.service_name  OTEL_SERVICE_NAME, service.name in OTEL_RESOURCE_ATTRIBUTES
        tracing.sampler       OTEL_TRACES_SAMPLER, with OTEL_TRACES_SAMPLER_ARG
        tracing.headers       OTEL_EXPORTER_OTLP_TRACES_HEADERS, OTEL_EXPORTER_OTLP_HEADERS
    """
    section = dict(section or {})
    problems: list[SettingError] = []

    def env(*names: str) -> tuple[str, str] | None:
        for name in names:
            value = environ.get(name, "").strip()
            if value:
                return name, value
        return None

    if "exporter" in section:
        exporters, exporter_from = (section["exporter"],), ("tracing.exporter", False)
    elif (found := env("OTEL_TRACES_EXPORTER")) is not None:
        exporters = tuple(e.strip().lower() for e in found[1].split(",") if e.strip())
        exporter_from = (found[0], True)
    else:
        exporters, exporter_from = ("otlp",), ("", False)
    for name in exporters:
        if name not in EXPORTERS:
            problems.append(SettingError(exporter_from[0], f"unknown traces exporter {name!r} "
                                         f"(one of: {', '.join(EXPORTERS)})", exporter_from[1]))
    exporters = tuple(e for e in exporters if e in EXPORTERS and e != "none")

    if _truthy(environ.get("OTEL_SDK_DISABLED", "")):
        enabled = False
    elif "enabled" in section:
        enabled = bool(section["enabled"])
    else:
        enabled = "exporter" in section or env("OTEL_TRACES_EXPORTER") is not None
    enabled = enabled and bool(exporters)

    protocol = section.get("protocol")
    if protocol is None and (found := env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")):
        protocol = found[1]
        if protocol not in PROTOCOLS:
            hint = " (the Python exporter has no http/json)" if protocol == "http/json" else ""
            problems.append(SettingError(found[0], f"unsupported OTLP protocol {protocol!r}{hint}; use "
                                         f"{' or '.join(PROTOCOLS)}", True))
            protocol = None
    protocol = protocol or "http/protobuf"

    endpoint = section.get("endpoint")
    if endpoint is not None and protocol == "http/protobuf":
        endpoint = endpoint.rstrip("/") + "/v1/traces"

    sampler = section.get("sampler")
    if sampler is None and (found := env("OTEL_TRACES_SAMPLER")):
        sampler = found[1].lower()
        if sampler not in SAMPLERS:
            problems.append(SettingError(found[0], f"unsupported sampler {sampler!r} (one of: {', '.join(SAMPLERS)})",
                                         True))
            sampler = None
    sampler = sampler or "parentbased_always_on"
    arg = section.get("sampler_arg")
    if arg is None and (found := env("OTEL_TRACES_SAMPLER_ARG")) and sampler.endswith("traceidratio"):
        try:
            arg = float(found[1])
        except ValueError:
            arg = -1.0
        if not 0.0 <= arg <= 1.0:
            problems.append(SettingError(found[0], f"{found[1]!r} is not a ratio from 0 to 1", True))
            arg = None

    headers = tuple((str(k), str(v)) for k, v in (section.get("headers") or {}).items())
    settings = TracingSettings(enabled=enabled, exporters=exporters or ("otlp",), protocol=protocol,
                               endpoint=endpoint, service_name=section.get("service_name"), sampler=sampler,
                               sampler_arg=1.0 if arg is None else float(arg), headers=headers)
    # Looked for only when on (finding a module imports its parent packages).
    if enabled and (not _available("opentelemetry.sdk.trace") or (
            "otlp" in exporters and protocol == "http/protobuf"
            and not _available("opentelemetry.exporter.otlp.proto.http"))):
        where = "tracing.enabled" if "enabled" in section else "OTEL_TRACES_EXPORTER"
        problems.append(SettingError(where, "tracing needs the OpenTelemetry SDK and OTLP exporter: "
                                     "pip install 'igsp-gateway[tracing]'", where.startswith("OTEL")))
    if enabled and protocol == "grpc" and "otlp" in exporters and not _available(
            "opentelemetry.exporter.otlp.proto.grpc"):
        problems.append(SettingError("tracing.protocol" if "protocol" in section else "OTEL_EXPORTER_OTLP_PROTOCOL",
                                     "OTLP over gRPC needs the opentelemetry-exporter-otlp-proto-grpc package; "
                                     "install it or use http/protobuf", "protocol" not in section))
    return settings, problems


def _available(module: str) -> bool:
    """Whether ``module`` can be imported (found without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


# -- the no-op span (tracing off, or a step with nothing to attach to) -----------------------
class _NoopSpan:
    """What ``span()`` gives when tracing is off: a context manager that is also a span."""

    __slots__ = ()

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Mapping) -> None:
        pass

    def is_recording(self) -> bool:
        return False


NOOP = _NoopSpan()

# Filled by install(): the tracer, the propagator and the few API objects used per span.
_provider: Any = None
_tracer: Any = None
_propagator: Any = None
_api: Any = None  # the opentelemetry.trace module
_kinds: dict = {}


def span(name: str, kind: str = INTERNAL, attributes: Mapping | None = None, links: Iterable | None = None,
         root: bool = False):
    """A span around a block, current inside it: ``with tracing.span("x") as s: ...``; a
    child of the current span, and only if that one is recorded (else NOOP).

    An escaping IgspError of status 5xx (and any other exception) marks it failed; a 4xx
    IgspError is an answer, recorded as ``igsp.error`` only. ``root``: a new trace.
    """
    if not ENABLED or (not root and not _api.get_current_span().is_recording()):
        # Nothing to attach to (a step of an unsampled trace, or outside any request): every
        # standard sampler would drop it too, and the SDK's span costs tens of microseconds.
        return NOOP
    return _Span(name, kind, attributes, links, root)


class _Span:
    __slots__ = ("_cm", "span")

    def __init__(self, name: str, kind: str, attributes, links, root: bool, context=None):
        if root:
            from opentelemetry.context import Context

            context = Context()
        self._cm = _tracer.start_as_current_span(name, context=context, kind=_kinds[kind], attributes=attributes,
                                                 links=list(links or ()), record_exception=False,
                                                 set_status_on_exception=False)

    def __enter__(self):
        self.span = self._cm.__enter__()
        return self.span

    def __exit__(self, exc_type, exc, tb):
        if exc is not None and self.span.is_recording():
            failed(self.span, exc)
        return self._cm.__exit__(exc_type, exc, tb)


def failed(span: Any, exc: BaseException) -> None:
    """Record how ``exc`` ended ``span``: its iGSP code, and an error status unless a 4xx answer."""
    from gateway.errors import IgspError

    status = _api.Status
    if isinstance(exc, IgspError):
        span.set_attribute("igsp.error", exc.code)
        if exc.status >= 500:
            span.set_status(status(_api.StatusCode.ERROR, exc.code))
        return
    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(status(_api.StatusCode.ERROR, type(exc).__name__))


def mark_error(span: Any, description: str) -> None:
    """Set ``span``'s status to error (a 5xx answer)."""
    span.set_status(_api.Status(_api.StatusCode.ERROR, description))


def delivery_span(entry: Any):
    """The CONSUMER span of one queued delivery: a trace of its own, linked to the trace of the
    request that queued it (the ``traceparent`` its payload keeps)."""
    if not ENABLED:
        return NOOP
    payload = entry.payload
    origin = payload.get("traceparent")
    hook = payload.get("hook") if isinstance(payload.get("hook"), dict) else {}
    attributes = {"igsp.queue.route": entry.route, "igsp.queue.entry_id": entry.id,
                  "igsp.queue.attempt": entry.attempts + 1}
    for key, value in (("igsp.partner", payload.get("partner")), ("igsp.queue.op", payload.get("op")),
                       ("igsp.mapping", payload.get("mapping")), ("igsp.request_id", payload.get("request_id")),
                       ("igsp.transaction_id", hook.get("transaction_id")),
                       ("igsp.origin_trace_id", trace_id_of(origin))):
        if value:
            attributes[key] = str(value)
    return _Span(f"queue deliver {entry.route}", CONSUMER, attributes, links_to(origin), True)


def current() -> Any:
    """The current span (NOOP when off): to add attributes to a span started elsewhere."""
    return _api.get_current_span() if ENABLED else NOOP


def server_span(request: Any, route: str):
    """The SERVER span of an inbound request, continuing its ``traceparent`` if it has one."""
    if not ENABLED:
        return NOOP
    parent = _propagator.extract(request.headers)
    return _Span(f"{request.method} {route}", SERVER, {"http.request.method": request.method, "http.route": route,
                                                       "url.path": request.path}, None, False, context=parent)


def inject(headers: dict) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to outgoing ``headers``."""
    if ENABLED:
        _propagator.inject(headers)


def carrier() -> dict:
    """``{"traceparent": …}`` of the current span, to store with work done later; {} when off."""
    if not ENABLED:
        return {}
    found: dict = {}
    _propagator.inject(found)
    return {"traceparent": found["traceparent"]} if "traceparent" in found else {}


def links_to(traceparent: str | None) -> list:
    """A link to the span a stored ``traceparent`` names (none if it names nothing usable)."""
    if not ENABLED or not traceparent:
        return []
    context = _api.get_current_span(_propagator.extract({"traceparent": traceparent})).get_span_context()
    return [_api.Link(context)] if context.is_valid else []


def log_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` in hex of the current span, for a log line; None outside one."""
    if not ENABLED:
        return None
    context = _api.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id a ``traceparent`` value carries (hex), or None."""
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def host_of(url: str) -> str:
    """The host of a URL, for ``server.address`` (never its path or query: they may hold ids)."""
    return urlsplit(url).hostname or ""


# -- switching on and off ------------------------------------------------------------------------
def install(provider: Any) -> None:
    """Trace through ``provider`` (an SDK TracerProvider) in this process from now on."""
    global ENABLED, _provider, _tracer, _propagator, _api
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from gateway import __version__

    _api = trace
    _kinds.update({INTERNAL: trace.SpanKind.INTERNAL, SERVER: trace.SpanKind.SERVER,
                   CLIENT: trace.SpanKind.CLIENT, PRODUCER: trace.SpanKind.PRODUCER,
                   CONSUMER: trace.SpanKind.CONSUMER})
    _provider = provider
    _tracer = provider.get_tracer("igsp-gateway", __version__)
    _propagator = TraceContextTextMapPropagator()
    ENABLED = True


def uninstall() -> Any:
    """Stop tracing in this process; returns the provider that was installed (not shut down)."""
    global ENABLED, _provider, _tracer
    provider, ENABLED, _provider, _tracer = _provider, False, None, None
    return provider


def start(settings: TracingSettings) -> bool:
    """Build the tracer provider and exporters ``settings`` describe and install it; False when off.

    Called once per process when the application starts (each worker after the fork).
    """
    if not settings.enabled or ENABLED:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from gateway import __version__

    attributes: dict[str, Any] = {"service.version": __version__, "process.pid": os.getpid(),
                                  "service.instance.id": f"{socket.gethostname()}-{os.getpid()}"}
    if settings.service_name:
        attributes["service.name"] = settings.service_name
    elif not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in os.environ.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create(attributes), sampler=_sampler(settings),
                              shutdown_on_exit=False)  # stop() flushes it, bounded, when the app stops
    for name in settings.exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, settings)))
    install(provider)
    log.info("tracing on", extra={"exporters": list(settings.exporters), "protocol": settings.protocol,
                                  "sampler": settings.sampler, "sampler_arg": settings.sampler_arg})
    return True


def _sampler(settings: TracingSettings) -> Any:
    from opentelemetry.sdk.trace import sampling

    ratio = sampling.TraceIdRatioBased(settings.sampler_arg)
    return {"always_on": sampling.ALWAYS_ON, "always_off": sampling.ALWAYS_OFF, "traceidratio": ratio,
            "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
            "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
            "parentbased_traceidratio": sampling.ParentBased(ratio)}[settings.sampler]


def _exporter(name: str, settings: TracingSettings) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr)  # stdout carries the READY line
    options: dict[str, Any] = {}
    if settings.endpoint:
        options["endpoint"] = settings.endpoint
    if settings.headers:
        options["headers"] = dict(settings.headers)
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(**options)


def shutdown() -> None:
    """Stop tracing and export what is buffered. Blocking, for as long as the exporter takes
    (``OTEL_EXPORTER_OTLP_TIMEOUT``): ``stop()`` runs it off the event loop, bounded."""
    provider = uninstall()
    if provider is not None:
        provider.shutdown()


async def stop(timeout: float) -> None:
    """``shutdown()`` in a daemon thread, waited for at most ``timeout`` seconds: an unreachable
    collector must not hold the process past its drain."""
    import asyncio
    import threading

    if not ENABLED:
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def run() -> None:
        try:
            shutdown()
        except Exception:  # noqa: BLE001 - an exporter failing at exit loses spans, nothing else
            log.exception("tracing shutdown failed")
        finally:
            try:
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))
            except RuntimeError:
                pass  # the loop is gone: nobody waits any more

    threading.Thread(target=run, name="tracing-shutdown", daemon=True).start()
    try:
        await asyncio.wait_for(done, timeout)
    except TimeoutError:
        log.warning("tracing: spans not exported within the shutdown budget were dropped",
                    extra={"timeout_seconds": timeout})


# -- ledger, queue and store steps ---------------------------------------------------------------
def _entry(entry, *rest, **kw) -> dict:
    return {"igsp.queue.route": entry.route, "igsp.queue.entry_id": entry.id}


def _tx(partner, txid, *rest, **kw) -> dict:
    return {"igsp.partner": partner, "igsp.transaction_id": txid}


#: Store methods traced as steps of a request or delivery: span name prefix, and what of the
#: arguments may be recorded (ids only: never a key, a value, a body or a signature).
_STORE_STEPS: dict[str, tuple[str, Any]] = {
    "tx_begin": ("ledger", lambda rec, *rest, **kw: {"igsp.partner": rec.partner, "igsp.transaction_id": rec.txid,
                                                       "igsp.ledger.action": rec.action}),
    "tx_get": ("ledger", _tx),
    "tx_finish": ("ledger", lambda partner, txid, state, status, *rest, **kw: {
        "igsp.partner": partner, "igsp.transaction_id": txid, "igsp.ledger.state": state,
        "igsp.ledger.status": status}),
    "tx_forget": ("ledger", _tx),
    "tx_void": ("ledger", _tx),
    "tx_unvoid": ("ledger", _tx),
    "claim": ("store", lambda once, *rest, **kw: {"igsp.store.namespace": once.ns}),
    "kv_get": ("store", lambda ns, *rest, **kw: {"igsp.store.namespace": ns}),
    "kv_put": ("store", lambda ns, *rest, **kw: {"igsp.store.namespace": ns}),
    "q_put": ("queue", lambda entry, *rest, dead=False, **kw: {**_entry(entry), "igsp.queue.dead": bool(dead)}),
    "q_ack": ("queue", _entry),
    "q_retry": ("queue", _entry),
    "q_dead": ("queue", _entry),
}


def _result(method: str, result: Any) -> dict:
    if method == "tx_begin":
        return {"igsp.ledger.result": "new" if result is None else f"existing:{result.state}"}
    if method == "tx_get":
        return {"igsp.ledger.result": "missing" if result is None else result.state}
    if method == "tx_void":
        return {"igsp.ledger.result": "claimed" if result is None else "already_claimed"}
    if method in ("claim", "kv_put"):
        return {"igsp.store.result": bool(result)}
    if method == "kv_get":
        return {"igsp.store.result": "hit" if result is not None else "miss"}
    return {}


class TracedStore:
    """A store whose steps become spans of the request or delivery they serve.

    Used only while tracing is on (gateway/app.py wraps the store then). A step outside any
    span (the queue worker polling, the sweeper's scan) is not traced: it would be a trace of
    its own every half second. Everything else is the wrapped store's.
    """

    def __init__(self, store: Any, system: str):
        self._store = store
        self._system = system

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @property
    def wrapped(self) -> Any:
        return self._store


def _traced_step(method: str, prefix: str, describe) -> Any:
    async def step(self, *args, **kwargs):
        call = getattr(self._store, method)
        if not ENABLED or not _api.get_current_span().is_recording():
            return await call(*args, **kwargs)
        attributes = {"db.system": self._system, **describe(*args, **kwargs)}
        with _Span(f"{prefix} {method}", INTERNAL, attributes, None, False) as current_span:
            result = await call(*args, **kwargs)
            current_span.set_attributes(_result(method, result))
            return result

    step.__name__ = method
    return step


for _method, (_prefix, _describe) in _STORE_STEPS.items():
    setattr(TracedStore, _method, _traced_step(_method, _prefix, _describe))


def traced_store(store: Any, url: str) -> Any:
    """``store`` with its steps traced while tracing is on; ``store`` itself when off."""
    return TracedStore(store, url.split("://", 1)[0]) if ENABLED else store
