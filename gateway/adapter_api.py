"""The adapter contract: what Python may add where a YAML mapping cannot say it.

An adapter is a class registered under a key in the ``igsp_gateway.adapters``
entry-point group (the built-ins in ``adapters/`` register exactly that way). A mapping
names it — as its ``codec``, its ``signer``, a callback ``verify`` or in ``extensions`` —
with options:

    codec: {adapter: soap, namespace: "urn:wallet"}
    signer: {adapter: md5_params, secret: "${PP_SECRET}", field: hash}

Each adapter has one or more roles, and each place in a mapping takes one role; a
mapping that puts an adapter where its role does not fit (``codec: md5_params``) fails
the load naming the file, line and field, so ``validate`` reports it and ``serve`` does
not start — rather than every request failing. Declare roles by subclassing:

* ``Codec``: ``encode(req)`` / ``decode(raw, content_type)``, both required — a body
  format (JSON, form, XML/SOAP); for ``codec``, ``callbacks.codec`` and ``reply_codec``;
* ``Signer``: ``prepare(req)`` before encoding (e.g. an md5 ``hash`` field over the
  parameters), ``sign(req)`` after it (e.g. a header with an HMAC or RSA signature of the
  bytes; set ``sign_in_batches = True`` when it costs as much as a public-key signature),
  ``verify(inbound)`` for a legacy caller's signature on an inbound callback — for
  ``signer``, and ``callbacks.verify`` if it implements ``verify``;
* ``Flow``: ``run(operation, context, call)``, a multi-step flow replacing one operation;
* ``Extension``: ``filters()`` / ``jmespath_functions()``, extra Jinja2 filters and
  JMESPath functions. ``Flow`` and ``Extension`` go in ``extensions``.

One class may take several (``class Soap(Codec, Flow)``). A class that declares no role
(a plain ``Adapter`` subclass, written before roles existed) has the roles of the hooks
it overrides. Override only what you need; hooks not overridden do nothing.

A small one, a filter for templates and a function for JMESPath::

    class MinorUnits(Extension):
        description = "minor_units filter and from_minor() function"

        def filters(self):
            return {"minor_units": lambda amount, exp=2: int(amount.scaleb(exp))}

        def jmespath_functions(self):
            return {"from_minor": lambda units, exp=2: Decimal(units).scaleb(-exp)}

registered by its package as ``[project.entry-points."igsp_gateway.adapters"]
minor_units = "my_pkg:MinorUnits"`` and named in a mapping as ``extensions: [minor_units]``.

Constructor options that are wrong must raise ``ValueError`` with a clear message: the
loader reports it with the mapping's file, line and field.

At request time, ``prepare``, ``encode`` and ``sign`` raise ``ValueError`` to refuse a
request they cannot express (a character XML cannot carry): the caller gets a final
400 ``invalid_request``, stored as the transaction's answer. Any other exception is a bug
of the adapter, not of the request, so it must not become that final answer: it is
raised as ``upstream_error`` (502) known to have sent nothing, so a bet is answered
retriable and a win or refund is delivered again later.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import IgspError, UpstreamError


@dataclass
class LegacyRequest:
    """An outbound legacy call while it is being built, encoded and signed."""

    operation: str
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # query string
    fields: Any = None  # body before encoding (rendered template tree)
    body: bytes = b""


@dataclass
class InboundRequest:
    """A legacy callback received by the gateway, for ``verify``."""

    method: str
    path: str
    headers: dict[str, str]
    params: dict[str, Any]
    fields: Any
    body: bytes


#: Each role and the hooks that make it: a codec needs all of its hooks, the other roles
#: at least one (a signer may only prepare, only sign or only verify).
ROLE_HOOKS: dict[str, tuple[str, ...]] = {
    "codec": ("encode", "decode"),
    "signer": ("prepare", "sign", "verify"),
    "flow": ("run",),
    "extension": ("filters", "jmespath_functions"),
}

#: The hooks run while a legacy request is built, whose failures ``_request_hook`` sorts.
_BUILD_HOOKS = ("prepare", "encode", "sign")


def _request_hook(hook: Callable) -> Callable:
    """Wrap a build hook so that an adapter bug cannot become a final 400.

    The request path answers any exception while building a request as a final
    ``invalid_request`` — right for a template or a ValueError refusing the input, wrong
    for a ``NotImplementedError`` or a ``KeyError`` of the adapter's own, which the same
    request would not meet tomorrow. Those become an ``upstream_error`` that sent nothing.
    """
    if getattr(hook, "_request_hook", False):
        return hook

    @functools.wraps(hook)
    def guarded(self: Adapter, req: LegacyRequest) -> None:
        try:
            return hook(self, req)
        except (ValueError, IgspError):
            raise
        except Exception as exc:  # noqa: BLE001 - adapter code: a bug is reported, never a final answer
            raise UpstreamError("upstream_error", f"adapter {type(self).__name__}.{hook.__name__} failed: "
                                f"{type(exc).__name__}", kind="adapter", applied=False) from exc

    guarded._request_hook = True  # type: ignore[attr-defined]
    return guarded


class Adapter:
    """Base class of every adapter; see the module docstring for roles and hooks."""

    #: Human description shown by ``igsp-gateway validate --list-adapters``.
    description = ""
    #: Roles this class declares (the role base classes below set it; see ``roles_of``).
    roles: frozenset[str] = frozenset()
    #: A signer whose ``sign`` is costly (public-key signatures): the requests of one
    #: event-loop turn are then signed back to back, which keeps the CPU caches of the
    #: request path and of the signature code warm (gateway/outbound/legacy.py, ``_signed``).
    sign_in_batches = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(vars(cls).get("roles", ())) - ROLE_HOOKS.keys()
        if unknown:
            raise TypeError(f"{cls.__name__}.roles names unknown role(s) {', '.join(sorted(unknown))}; "
                            f"roles are {', '.join(ROLE_HOOKS)}")
        for name in _BUILD_HOOKS:
            if name in vars(cls):
                setattr(cls, name, _request_hook(vars(cls)[name]))

    def __init__(self, options: dict[str, Any]):
        self.options = dict(options)

    def option(self, name: str, default: Any = ..., kind: type | tuple = object) -> Any:
        """Read an option, raising ValueError (reported with file/line) when missing or mistyped."""
        if name not in self.options:
            if default is ...:
                raise ValueError(f"option {name!r} is required")
            return default
        value = self.options[name]
        if not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ValueError(f"option {name!r} must be {want}, got {type(value).__name__}")
        return value

    def filters(self) -> dict[str, Callable]:
        return {}

    def jmespath_functions(self) -> dict[str, Callable]:
        return {}

    @_request_hook
    def prepare(self, req: LegacyRequest) -> None:
        """Before encoding: adjust fields/params (field-level signatures)."""

    @_request_hook
    def encode(self, req: LegacyRequest) -> None:
        """Codec: turn ``req.fields`` into ``req.body`` and set Content-Type."""
        raise NotImplementedError(f"{type(self).__name__} is not a codec")

    def decode(self, raw: bytes, content_type: str) -> Any:
        """Codec: parse a legacy body (request or response) into plain data."""
        raise NotImplementedError(f"{type(self).__name__} is not a codec")

    @_request_hook
    def sign(self, req: LegacyRequest) -> None:
        """After encoding: add signature headers/params over the final bytes."""

    def verify(self, inbound: InboundRequest) -> bool:
        """True when an inbound legacy callback carries a valid signature."""
        return True

    async def run(self, operation: str, context: dict, call: Callable[[str, dict], Awaitable[dict]]) -> dict | None:
        """Multi-step flow for ``operation``; return None to let the mapping's own step run.

        ``await call(op, ctx)`` sends the mapping's operation ``op`` (its own request and
        result rules, no ``run`` again) and returns its read ``response`` fields; a legacy
        error raises as usual. Return the fields of the whole flow, e.g. ``{"balance": …}``:

            async def run(self, operation, context, call):
                if operation != "bet":
                    return None
                session = await call("authenticate", context)
                return await call("bet", {**context, "legacy_token": session["token"]})
        """
        return None


class Codec(Adapter):
    """A body format: implement both ``encode`` and ``decode``."""

    roles = frozenset({"codec"})


class Signer(Adapter):
    """A signature scheme: implement ``prepare`` and/or ``sign`` (outbound), ``verify`` (inbound)."""

    roles = frozenset({"signer"})


class Flow(Adapter):
    """A multi-step flow: implement ``run``."""

    roles = frozenset({"flow"})


class Extension(Adapter):
    """Extra template filters and/or JMESPath functions: implement ``filters``/``jmespath_functions``."""

    roles = frozenset({"extension"})


def implements(cls: type[Adapter], hook: str) -> bool:
    """Whether ``cls`` overrides ``hook`` (the base's default does nothing, or refuses)."""
    return getattr(cls, hook) is not getattr(Adapter, hook)


def roles_of(cls: type[Adapter]) -> frozenset[str]:
    """The roles ``cls`` declares (on itself or any base), or, declaring none, those of
    the hooks it overrides — so an adapter written before roles existed keeps working,
    and one that overrides only ``prepare`` still cannot be a codec."""
    declared = frozenset().union(*(vars(k).get("roles", ()) for k in cls.__mro__))
    if declared:
        return declared
    return frozenset(role for role, hooks in ROLE_HOOKS.items()
                     if (all if role == "codec" else any)(implements(cls, h) for h in hooks))


def missing_hooks(cls: type[Adapter]) -> dict[str, list[str]]:
    """Role -> the hooks ``cls`` lacks to play it (a codec needs both, the others one)."""
    missing = {}
    for role in sorted(roles_of(cls)):
        hooks = ROLE_HOOKS[role]
        lacking = [h for h in hooks if not implements(cls, h)]
        if lacking and (role == "codec" or len(lacking) == len(hooks)):
            missing[role] = lacking
    return missing
