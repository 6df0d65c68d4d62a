"""The provider-face sections of a mapping (``catalogue``, ``launch``, ``callbacks``), compiled.

Called by ``gateway.engine.mapping.compile_mapping`` for ``face: provider``; every JMESPath,
template and adapter is compiled here once and every problem is reported with file,
line and field path through the mapping's compiler. The result is frozen data that
``catalogue.py``, ``sessions.py`` and ``callbacks.py`` only run.

A *field* is how one value is read from legacy data (a catalogue item, or the decoded
body of a legacy callback)::

    name: gameName                                   # JMESPath
    rtp: {template: "{{ item.rtp | from_percent }}"}  # Jinja2 (a tree of templates works too)
    min_age: {value: 18}                             # a constant
    status: {path: technology, map: {html5: active}, default: inactive}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.adapter_api import Adapter, implements
from gateway.engine.inputs import CALLBACK_CONTEXT, CATALOGUE_ITEM_CONTEXT, ERROR_REPLY_CONTEXT, REPLY_CONTEXT

HOOK_TYPES = {"balance": None, "bet": "bet", "win": "win", "refund": "bet"}
#: Hook fields each callback hook must be told how to read (the session gives the rest).
HOOK_FIELDS = {"balance": (), "bet": ("transaction_id", "amount"), "win": ("transaction_id", "amount"),
               "refund": ("transaction_id", "bet_transaction_id")}
GAME_FIELDS = ("name", "status", "updated_at", "provider_id")
PROVIDER_FIELDS = ("name", "currencies")


def plain(value: Any) -> Any:
    """A copy without the loader's line-tracking subclasses (safe to cache and encode)."""
    return json.loads(json.dumps(value))


@dataclass(frozen=True)
class Field:
    """One value read from legacy data: JMESPath, template or constant, then ``map``/``default``."""

    path: Any = None  # compiled JMESPath
    template: Callable[[dict], Any] | None = None
    value: Any = None
    table: dict | None = None  # str(legacy value) -> iGSP value
    default: Any = None
    options: Any = None  # JMESPath options (adapter functions)

    def read(self, subject: Any, context: dict) -> Any:
        if self.path is not None:
            found = self.path.search(subject, options=self.options)
        elif self.template is not None:
            found = self.template(context)
        else:
            found = self.value
        if self.table is not None:
            found = self.table.get(str(found).lower() if isinstance(found, bool) else str(found))
        return self.default if found is None else found


@dataclass(frozen=True)
class Paging:
    style: str = "none"
    size: int = 100
    start: int = 1
    next: Any = None  # JMESPath to the next legacy cursor
    has_more: Any = None  # JMESPath, truthy while more pages follow
    max_pages: int = 1000


@dataclass(frozen=True)
class Source:
    """Where one catalogue (games or providers) comes from and how to read its items."""

    kind: str
    operation: str | None
    static: list | None
    items: Any  # JMESPath to the list in an answer
    paging: Paging
    id: Field
    fields: dict  # iGSP field -> Field


@dataclass(frozen=True)
class CatalogueSpec:
    cache_ttl: float
    id_scope: str
    games: Source
    providers: Source


@dataclass(frozen=True)
class LaunchSpec:
    steps: tuple
    url: Callable[[dict], Any]
    token: Callable[[dict], Any] | None
    session_ttl: float
    check_currency: bool


@dataclass(frozen=True)
class LegacyCode:
    code: Any
    message: str = ""


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    method: str
    hook: str
    type: str | None
    fields: dict  # hook field -> Field
    reply: Callable[[dict], Any]
    succeed_on: frozenset
    queued: bool = False


@dataclass(frozen=True)
class CallbacksSpec:
    codec: Adapter
    reply_codec: Adapter
    verify: Adapter | None
    token: Any
    player: Any
    hook_timeout: float
    reply_status: int
    error_reply: Callable[[dict], Any]
    errors: dict  # iGSP error code -> LegacyCode
    default_error: LegacyCode
    retriable_error: LegacyCode
    endpoints: dict  # path (without the mount) -> Endpoint
    options: Any = None

    def search(self, expression: Any, data: Any) -> Any:
        return expression.search(data, options=self.options) if expression is not None else None


@dataclass(frozen=True)
class ProviderSpec:
    catalogue: CatalogueSpec
    launch: LaunchSpec
    callbacks: CallbacksSpec | None = None


# -- compiling ---------------------------------------------------------------------------


def compile_provider(c: Any, data: dict, templates: Any, operations: dict, options: Any,
                     codec: Adapter | None, signer: Adapter | None,
                     launch_inputs: frozenset[str] | None = None) -> ProviderSpec | None:
    """Compile the three sections; ``c`` is the mapping's problem-collecting compiler.
    ``launch_inputs``: the variables of ``launch.url`` and ``launch.token``
    (gateway/engine/inputs.py); every other template's are fixed by its section."""
    for section in ("catalogue", "launch"):
        if section not in data:
            c.problem((), f"a provider mapping needs a '{section}' section")
    if "catalogue" not in data or "launch" not in data:
        return None
    catalogue = _catalogue(c, data["catalogue"], templates, operations, options, data["name"])
    launch = _launch(c, data["launch"], templates, operations, launch_inputs)
    callbacks = None
    if "callbacks" in data:
        callbacks = _callbacks(c, data["callbacks"], templates, options, codec, signer)
    return ProviderSpec(catalogue, launch, callbacks)


def _field(c: Any, spec: Any, path: tuple, templates: Any, options: Any,
           inputs: tuple[frozenset[str], str] = (CATALOGUE_ITEM_CONTEXT, "a catalogue field")) -> Field:
    if isinstance(spec, str):
        return Field(path=c.jmes(spec, path), options=options)
    given = [key for key in ("path", "template", "value") if key in spec]
    if len(given) != 1:
        c.problem(path, f"give exactly one of path, template or value (got {', '.join(given) or 'none'})")
        return Field()
    table = {str(k).lower() if isinstance(k, bool) else str(k): plain(v) for k, v in spec["map"].items()} \
        if "map" in spec else None
    default = plain(spec.get("default"))
    if "path" in spec:
        return Field(path=c.jmes(spec["path"], path + ("path",)), table=table, default=default, options=options)
    if "template" in spec:
        return Field(template=c.template_tree(templates, spec["template"], path + ("template",), *inputs),
                     table=table, default=default, options=options)
    return Field(value=plain(spec["value"]), table=table, default=default, options=options)


def _source(c: Any, spec: dict, kind: str, path: tuple, templates: Any, operations: dict, options: Any) -> Source:
    if ("operation" in spec) == ("static" in spec):
        c.problem(path, "give exactly one of 'operation' (a legacy call) or 'static' (items in the mapping)")
    operation = spec.get("operation")
    if operation is not None and operation not in operations:
        c.problem(path + ("operation",), f"unknown operation {operation!r}; defined: {', '.join(operations)}")
    paging_spec = spec.get("paging") or {}
    style = paging_spec.get("style", "none")
    if style == "cursor" and "next" not in paging_spec:
        c.problem(path + ("paging",), "paging style 'cursor' needs 'next': JMESPath to the next legacy cursor")
    if style != "none" and "static" in spec:
        c.problem(path + ("paging", "style"), "static items are not paged; remove paging")
    paging = Paging(
        style=style,
        size=paging_spec.get("size", 100),
        start=paging_spec.get("start", 1),
        next=c.jmes(paging_spec["next"], path + ("paging", "next")) if "next" in paging_spec else None,
        has_more=c.jmes(paging_spec["has_more"], path + ("paging", "has_more")) if "has_more" in paging_spec else None,
        max_pages=paging_spec.get("max_pages", 1000),
    )
    needed = GAME_FIELDS if kind == "games" else PROVIDER_FIELDS
    missing = [name for name in needed if name not in spec["fields"]]
    if missing:
        c.problem(path + ("fields",), f"missing {', '.join(missing)}: every {kind[:-1]} needs {', '.join(needed)}")
    if "id" in spec["fields"]:
        c.problem(path + ("fields", "id"), "'id' is made by the gateway from the source's 'id'; remove it here")
    return Source(
        kind=kind,
        operation=operation,
        static=plain(spec["static"]) if "static" in spec else None,
        items=c.jmes(spec.get("items", "@"), path + ("items",)),
        paging=paging,
        id=_field(c, spec["id"], path + ("id",), templates, options),
        fields={name: _field(c, f, path + ("fields", name), templates, options) for name, f in spec["fields"].items()},
    )


def _catalogue(c: Any, spec: dict, templates: Any, operations: dict, options: Any, name: str) -> CatalogueSpec:
    where = ("catalogue",)
    return CatalogueSpec(
        cache_ttl=float(spec.get("cache_ttl", 300)),
        id_scope=spec.get("id_scope", name),
        games=_source(c, spec["games"], "games", where + ("games",), templates, operations, options),
        providers=_source(c, spec["providers"], "providers", where + ("providers",), templates, operations, options),
    )


def _launch(c: Any, spec: dict, templates: Any, operations: dict, inputs: frozenset[str] | None) -> LaunchSpec:
    where = ("launch",)
    steps = tuple(spec.get("steps") or ())
    for index, step in enumerate(steps):
        if step not in operations:
            c.problem(where + ("steps", index), f"unknown operation {step!r}; defined: {', '.join(operations)}")
    return LaunchSpec(
        steps=steps,
        # The default URL is checked only when steps are there to give it its ``url``
        # (a mapping whose launch has no steps serves the catalogue alone).
        url=c.template_tree(templates, spec.get("url", "{{ url }}"), where + ("url",),
                            inputs if "url" in spec or steps else None,
                            "launch.url" if "url" in spec else "launch.url (default '{{ url }}': a step's response "
                            "field url)"),
        token=c.template_tree(templates, spec["token"], where + ("token",), inputs, "launch.token")
        if "token" in spec else None,
        session_ttl=float(spec.get("session_ttl", 86400)),
        check_currency=bool(spec.get("check_currency", True)),
    )


def _legacy_code(spec: dict) -> LegacyCode:
    return LegacyCode(spec["code"], spec.get("message", ""))


def _callbacks(c: Any, spec: dict, templates: Any, options: Any, codec: Adapter | None,
               signer: Adapter | None) -> CallbacksSpec:
    where = ("callbacks",)
    default_reply = spec.get("reply")
    # Compiled (and checked) once, where it is written, not again for each endpoint using it.
    default_reply_tree = c.template_tree(templates, default_reply, where + ("reply",), REPLY_CONTEXT,
                                         "a callback reply")
    endpoints: dict = {}
    for name, ep in spec["endpoints"].items():
        at = where + ("endpoints", name)
        hook = ep["hook"]
        fields = ep.get("fields") or {}
        missing = [f for f in HOOK_FIELDS[hook] if f not in fields]
        if missing:
            c.problem(at + ("fields",), f"a {hook} hook needs {', '.join(missing)} read from the legacy request")
        if "reply" not in ep and default_reply is None:
            c.problem(at, "no success reply: give 'reply' here or a default 'callbacks.reply'")
        path = ep.get("path", f"/{name}")
        if path in endpoints:
            c.problem(at + ("path",), f"path {path!r} is already used by endpoint {endpoints[path].name!r}")
        endpoints[path] = Endpoint(
            name=name,
            path=path,
            method=ep.get("method", "POST"),
            hook=hook,
            type=ep.get("type", HOOK_TYPES[hook]),
            fields={k: _field(c, f, at + ("fields", k), templates, options, (CALLBACK_CONTEXT, "a callback field"))
                    for k, f in fields.items()},
            reply=c.template_tree(templates, ep["reply"], at + ("reply",), REPLY_CONTEXT, "a callback reply")
            if "reply" in ep else default_reply_tree,
            succeed_on=frozenset(ep.get("succeed_on") or ()),
            queued=bool(ep.get("queued", False)),
        )
        if ep.get("queued") and hook not in ("win", "refund"):
            c.problem(at + ("queued",), f"only win and refund hooks can be queued, this endpoint sends {hook}")
    verify = c.adapter(spec["verify"], where + ("verify",), "verify") if "verify" in spec else signer
    if "verify" not in spec and signer is None:
        c.problem(where, "nothing checks the legacy caller: give 'verify' (an adapter such as md5_params) "
                  "or a mapping 'signer'")
    elif "verify" not in spec and not implements(type(signer), "verify"):
        # The default verify accepts everything: a signer that only signs must not guard callbacks.
        c.problem(where, f"the mapping's signer ({type(signer).__name__}) does not implement verify, so it "
                  "cannot check the legacy caller: give 'verify' (an adapter such as md5_params)")
    return CallbacksSpec(
        codec=c.adapter(spec["codec"], where + ("codec",), "codec") if "codec" in spec else codec,
        reply_codec=c.adapter(spec.get("reply_codec", "json"), where + ("reply_codec",), "codec"),
        verify=verify,
        token=c.jmes(spec["token"], where + ("token",)),
        player=c.jmes(spec["player"], where + ("player",)) if "player" in spec else None,
        hook_timeout=float(spec.get("hook_timeout", 3.0)),
        reply_status=int(spec.get("reply_status", 200)),
        error_reply=c.template_tree(templates, spec["error_reply"], where + ("error_reply",), ERROR_REPLY_CONTEXT,
                                    "callbacks.error_reply"),
        errors={str(k): _legacy_code(v) for k, v in (spec.get("errors") or {}).items()},
        default_error=_legacy_code(spec["default_error"]),
        retriable_error=_legacy_code(spec["retriable_error"]),
        endpoints=endpoints,
        options=options,
    )
