"""The provider face: a legacy game provider served as an iGSP provider.

    GET  {mount}/games | /providers   catalogue pages (catalogue.py), HMAC-verified
    POST {mount}/sessions             launch (sessions.py), HMAC-verified
    *    /legacy/<mapping>/<endpoint> the legacy game server's wallet callbacks (callbacks.py)

``setup_provider_face(app, config)`` adds the routes, the pooled hook client (closed by a
``cleanup_ctx``) and a builder of the per-mapping objects: they are part of each config
generation (gateway/runtime.py), so a reload rebuilds them and a request uses those of
the generation it started in. The iGSP routes share one route name (``provider``) and
the callbacks another (``legacy``), which is what the access log and metrics middleware
counts by.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from adapters.codecs import dumps
from gateway import metrics
from gateway.auth import Verifier
from gateway.callbacks import Callbacks
from gateway.catalogue import Catalogue, parse_instant
from gateway.config import Config
from gateway.errors import IgspError
from gateway.hook_client import HookClient
from gateway.jsonio import igsp_object
from gateway.sessions import Launcher
from gateway.spec import HOOKS_SPEC, PROVIDER_SPEC, SpecValidators

LEGACY_PREFIX = "/legacy"
DEFAULT_LIMIT, MAX_LIMIT = 50, 200


@dataclass
class ProviderFace:
    """Everything the provider-face handlers need, built once at start-up."""

    catalogues: dict = field(default_factory=dict)  # mapping name -> Catalogue
    launchers: dict = field(default_factory=dict)  # mapping name -> Launcher
    callbacks: dict = field(default_factory=dict)  # mapping name -> Callbacks
    read_verifier: Verifier | None = None
    write_verifier: Verifier | None = None
    spec: SpecValidators | None = None
    hooks: HookClient | None = None


HOOK_CLIENT = web.AppKey("hook_client", HookClient)


def setup_provider_face(app: web.Application, config: Config) -> None:
    """Add the provider-face routes when at least one partner is on that face."""
    from gateway.app import BUILDERS

    if not any(p.face == "provider" for p in config.partners):
        return
    app.router.add_route("*", config.provider_mount + "/{resource}", handle_igsp, name="provider")
    app.router.add_route("*", LEGACY_PREFIX + "/{mapping}/{endpoint:.+}", handle_legacy, name="legacy")
    hooks = HookClient(observer=lambda partner, action, kind, seconds: metrics.observe_upstream(
        "platform-hooks", action, kind, seconds))
    app[HOOK_CLIENT] = hooks
    app[BUILDERS]["provider"] = lambda gen, store: build_provider_face(gen, store, hooks)
    app.cleanup_ctx.append(_provider_ctx)


async def _provider_ctx(app: web.Application):
    yield
    await app[HOOK_CLIENT].close()


def build_provider_face(gen, store, hooks: HookClient) -> ProviderFace:
    """The provider-face objects of one config generation (gateway/runtime.py): its config,
    legacy clients and rate limiter."""
    config, clients = gen.config, gen.clients
    partners = [p for p in config.partners if p.face == "provider"]
    on_failure = lambda reason: metrics.SIGNATURE_FAILURES.labels(reason).inc()  # noqa: E731
    by_key = {p.api_key: p for p in partners}
    face = ProviderFace(
        # Catalogue reads are idempotent and their query is unsigned anyway, so a GET
        # signature may be used more than once (a platform pages fast, timestamps in seconds).
        read_verifier=Verifier(by_key, config.signature_window, store, False, on_failure=on_failure,
                               limiter=gen.limiter),
        write_verifier=Verifier(by_key, config.signature_window, store, config.replay_protection,
                                on_failure=on_failure, limiter=gen.limiter),
        spec=SpecValidators(PROVIDER_SPEC),
        hooks=hooks,
    )
    face.spec.validator("SessionRequest")  # compile at start-up, not on the first request
    hook_spec = SpecValidators(HOOKS_SPEC)
    for partner in partners:
        mapping = partner.mapping
        if mapping.name in face.catalogues:
            continue
        client = clients[mapping.name]
        catalogue = Catalogue(mapping, client, store, face.spec,
                              on_cache=lambda result: metrics.CATALOGUE_CACHE.labels(result).inc())
        face.catalogues[mapping.name] = catalogue
        face.launchers[mapping.name] = Launcher(mapping, client, catalogue, store, retention=config.retention_seconds)
        if mapping.provider.callbacks is not None:
            users = {p.id: p for p in partners if p.mapping.name == mapping.name}
            face.callbacks[mapping.name] = Callbacks(mapping, store, face.hooks, users, hook_spec, config.currencies)
    return face


def _face(request: web.Request) -> ProviderFace:
    from gateway.app import generation

    return generation(request).faces["provider"]


# -- iGSP side -----------------------------------------------------------------------------


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise IgspError("invalid_request", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(value)


def _updated_after(value: str | None) -> int | None:
    if value is None:
        return None
    if "T" not in value.upper():
        raise IgspError("invalid_request", "updated_after must be an ISO-8601 date-time, e.g. 2025-10-17T12:03:41Z")
    try:
        return parse_instant(value)
    except (ValueError, OverflowError):
        raise IgspError("invalid_request",
                        "updated_after must be an ISO-8601 date-time, e.g. 2025-10-17T12:03:41Z") from None


async def handle_igsp(request: web.Request) -> web.Response:
    face = _face(request)
    resource = request.match_info["resource"]
    allowed = {"games": "GET", "providers": "GET", "sessions": "POST"}
    if resource not in allowed:
        raise IgspError("not_found", f"no such resource {request.path}")
    request["operation"] = resource  # a metric label: only ever one of the known names
    if request.method != allowed[resource]:
        raise IgspError("method_not_allowed", f"{request.path} takes {allowed[resource]}")
    body = await request.read()
    verifier = face.read_verifier if request.method == "GET" else face.write_verifier
    partner = await verifier.verify(request.headers, body, "provider")
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
