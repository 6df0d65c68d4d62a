"""The provider face: a legacy game provider served as an iGSP provider.

    GET  {mount}/games | /providers   catalogue pages (catalogue.py), HMAC-verified
    POST {mount}/sessions             launch (sessions.py), HMAC-verified
    *    /legacy/<mapping>/<endpoint> the legacy game server's wallet callbacks (callbacks.py)

Plugged into the app like the platform face (gateway/faces/base.py): ``ProviderFace`` adds the
routes and the pooled hook client once; ``build`` makes the per-mapping objects for each
config generation (gateway/runtime.py), so a reload rebuilds them and a request uses
those of the generation it started in. The iGSP routes share one route name (``provider``) and
the callbacks another (``legacy``), which is what the access log and metrics middleware
counts by.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from adapters.codecs import dumps
from gateway.auth import Verifier, client_address
from gateway.config import Config
from gateway.context import generation
from gateway.errors import IgspError
from gateway.faces.base import Face
from gateway.faces.callbacks import HOOK_ROUTE, Callbacks
from gateway.faces.catalogue import Catalogue, parse_instant
from gateway.faces.sessions import Launcher
from gateway.jsonio import igsp_object
from gateway.ops import metrics
from gateway.outbound.hooks import HookClient
from gateway.runtime import Generation, Runtime
from gateway.spec import SpecValidators, hook_validators, provider_validators
from gateway.store import QueueEntry, TxRecord

LEGACY_PREFIX = "/legacy"
DEFAULT_LIMIT, MAX_LIMIT = 50, 200


@dataclass
class ProviderObjects:
    """What the provider-face handlers use under one config generation."""

    catalogues: dict = field(default_factory=dict)  # mapping name -> Catalogue
    launchers: dict = field(default_factory=dict)  # mapping name -> Launcher
    callbacks: dict = field(default_factory=dict)  # mapping name -> Callbacks
    read_verifier: Verifier | None = None
    write_verifier: Verifier | None = None
    spec: SpecValidators | None = None
    launcher_of: dict = field(default_factory=dict)  # partner id -> its mapping's Launcher


class ProviderFace(Face):
    name = "provider"

    def __init__(self, app: web.Application, config: Config):
        super().__init__(app, config)
        app.router.add_route("*", config.provider_mount + "/{resource}", handle_igsp, name=self.name)
        app.router.add_route("*", LEGACY_PREFIX + "/{mapping}/{endpoint:.+}", handle_legacy, name="legacy")
        # One pooled client for the signed hooks of every generation (closed with the app).
        self.hooks = HookClient(observer=lambda partner, action, kind, seconds: metrics.observe_upstream(
            "platform-hooks", action, kind, seconds))
        app.cleanup_ctx.append(self._hooks_ctx)
        self.deliveries[HOOK_ROUTE] = deliver

    async def _hooks_ctx(self, app: web.Application):
        yield
        await self.hooks.close()

    def build(self, gen: Generation, runtime: Runtime) -> ProviderObjects:
        """Its config, legacy clients and rate limiter made into catalogues, launchers and callbacks."""
        config, clients, store = gen.config, gen.clients, runtime.store
        partners = [p for p in config.partners if p.face == "provider"]
        on_failure = lambda reason: metrics.SIGNATURE_FAILURES.labels(reason).inc()  # noqa: E731
        by_key = {p.api_key: p for p in partners}
        addresses, on_refused = client_address(config), metrics.ip_refusals(partners)
        face = ProviderObjects(
            # Catalogue reads are idempotent and their query is unsigned anyway, so a GET
            # signature may be used more than once (a platform pages fast, timestamps in seconds).
            read_verifier=Verifier(by_key, config.signature_window, None, on_failure=on_failure,
                                   limiter=gen.limiter, client_address=addresses, on_refused=on_refused),
            write_verifier=Verifier(by_key, config.signature_window, store, on_failure=on_failure,
                                    limiter=gen.limiter, client_address=addresses, on_refused=on_refused),
            spec=provider_validators(),
        )
        for partner in partners:
            mapping = partner.mapping
            if mapping.name in face.catalogues:
                continue
            client = clients[mapping.name]
            catalogue = Catalogue(mapping, client, store, face.spec,
                                  on_cache=lambda result: metrics.CATALOGUE_CACHE.labels(result).inc())
            face.catalogues[mapping.name] = catalogue
            face.launchers[mapping.name] = Launcher(mapping, client, catalogue, store,
                                                    retention=config.retention_seconds)
            if mapping.provider.callbacks is not None:
                users = {p.id: p for p in partners if p.mapping.name == mapping.name}
                face.callbacks[mapping.name] = Callbacks(mapping, store, self.hooks, users, hook_validators(),
                                                         config.currencies)
        face.launcher_of = {p.id: face.launchers[p.mapping.name] for p in partners if p.mapping.name in face.launchers}
        return face

    async def settle(self, built: ProviderObjects, record: TxRecord) -> bool:
        launcher = built.launcher_of.get(record.partner)
        return launcher is not None and await launcher.settle_orphan(record)


def _face(request: web.Request) -> ProviderObjects:
    return generation(request).faces[ProviderFace.name]


async def deliver(face: ProviderObjects, entry: QueueEntry) -> None:
    """One queued signed hook, by the callbacks of the mapping it was queued for."""
    payload = entry.payload
    callbacks = face.callbacks.get(payload["mapping"])
    if callbacks is None:
        raise IgspError("internal_error", f"mapping {payload['mapping']!r} is no longer configured")
    await callbacks.deliver(payload["partner"], payload["hook"], payload.get("request_id", ""))


# -- iGSP side -----------------------------------------------------------------------------


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    # ASCII digits only: str.isdigit() also says yes to "²" (which int() refuses) and "٥".
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LIMIT:
        raise IgspError("invalid_request", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(value)


def _updated_after(value: str | None) -> int | None:
    if value is None:
        return None
    if "T" not in value.upper() or value != value.strip():  # the whole value is the date-time
        raise IgspError("invalid_request", "updated_after must be an ISO-8601 date-time, e.g. 2025-10-17T12:03:41Z")
    try:
        return parse_instant(value)
    except (ValueError, OverflowError):
        raise IgspError("invalid_request",
                        "updated_after must be an ISO-8601 date-time, e.g. 2025-10-17T12:03:41Z") from None


#: The iGSP provider API's resources and the method each takes (also read by gateway/shed_front.py).
RESOURCE_METHODS = {"games": "GET", "providers": "GET", "sessions": "POST"}


async def handle_igsp(request: web.Request) -> web.Response:
    face = _face(request)
    resource = request.match_info["resource"]
    allowed = RESOURCE_METHODS
    if resource not in allowed:
        raise IgspError("not_found", f"no such resource {request.path}")
    request["operation"] = resource  # a metric label: only ever one of the known names
    if request.method != allowed[resource]:
        raise IgspError("method_not_allowed", f"{request.path} takes {allowed[resource]}")
    body = await request.read()
    verifier = face.read_verifier if request.method == "GET" else face.write_verifier
    partner = await verifier.verify(request.headers, body, "provider", request.remote)
    request["partner"] = partner.id
    name = partner.mapping.name
    if resource == "sessions":
        payload = _session_request(body, face.spec)
        request["transaction_id"] = payload["session_id"]
        status, out = await face.launchers[name].launch(partner, payload, request["request_id"])
        return web.Response(status=status, body=out, content_type="application/json")
    query = request.query
    cursor = query.get("cursor")
    page = await face.catalogues[name].page(
        resource, partner, cursor=cursor if cursor != "" else None, limit=_limit(query.get("limit")),
        updated_after=_updated_after(query.get("updated_after")), request_id=request["request_id"])
    return web.Response(status=200, body=dumps(page), content_type="application/json")


def _session_request(body: bytes, spec: SpecValidators) -> dict:
    payload = igsp_object(body)
    spec.check("SessionRequest", payload)
    return payload


# -- legacy side ---------------------------------------------------------------------------


async def handle_legacy(request: web.Request) -> web.Response:
    face = _face(request)
    callbacks = face.callbacks.get(request.match_info["mapping"])
    endpoint = callbacks.spec.endpoints.get("/" + request.match_info["endpoint"]) if callbacks else None
    if endpoint is None or request.method != endpoint.method:
        # Not a legacy endpoint we know: there is no legacy format to answer in.
        return web.Response(status=404, text="not found", content_type="text/plain")
    return await callbacks.handle(request, endpoint)
