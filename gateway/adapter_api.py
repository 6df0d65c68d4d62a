"""The adapter contract: what Python may add where a YAML mapping cannot say it.

An adapter is a class registered under a key in the ``igsp_gateway.adapters``
entry-point group (the built-ins in ``adapters/`` register exactly that way). A mapping
names it — as its ``codec``, its ``signer`` or in ``extensions`` — with options:

    codec: {adapter: soap, namespace: "urn:wallet"}
    signer: {adapter: md5_params, secret: "${PP_SECRET}", field: hash}

Override only what you need; every hook has a do-nothing default:

* ``filters()`` / ``jmespath_functions()``: extra Jinja2 filters and JMESPath functions;
* ``prepare(req)``: before encoding — e.g. add an md5 ``hash`` field over the parameters;
* ``encode(req)`` / ``decode(raw, content_type)``: a body codec (JSON, form, XML/SOAP);
* ``sign(req)``: after encoding — e.g. a header with an HMAC or RSA signature of the bytes
  (set ``sign_in_batches = True`` when it costs as much as a public-key signature);
* ``verify(inbound)``: check a legacy caller's signature on an inbound callback;
* ``run(operation, context, call)``: a multi-step flow replacing one operation.

A small one, a filter for templates and a function for JMESPath::

    class MinorUnits(Adapter):
        description = "minor_units filter and from_minor() function"

        def filters(self):
            return {"minor_units": lambda amount, exp=2: int(amount.scaleb(exp))}

        def jmespath_functions(self):
            return {"from_minor": lambda units, exp=2: Decimal(units).scaleb(-exp)}

registered by its package as ``[project.entry-points."igsp_gateway.adapters"]
minor_units = "my_pkg:MinorUnits"`` and named in a mapping as ``extensions: [minor_units]``.

Constructor options that are wrong must raise ``ValueError`` with a clear message: the
loader reports it with the mapping's file, line and field.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


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


class Adapter:
    """Base class of every adapter; see the module docstring for the hooks."""

    #: Human description shown by ``igsp-gateway validate --list-adapters``.
    description = ""
    #: A signer whose ``sign`` is costly (public-key signatures): the requests of one
    #: event-loop turn are then signed back to back, which keeps the CPU caches of the
    #: request path and of the signature code warm (gateway/upstream.py, ``_signed``).
    sign_in_batches = False

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

    def prepare(self, req: LegacyRequest) -> None:
        """Before encoding: adjust fields/params (field-level signatures)."""

    def encode(self, req: LegacyRequest) -> None:
        """Codec: turn ``req.fields`` into ``req.body`` and set Content-Type."""
        raise NotImplementedError(f"{type(self).__name__} is not a codec")

    def decode(self, raw: bytes, content_type: str) -> Any:
        """Codec: parse a legacy body (request or response) into plain data."""
        raise NotImplementedError(f"{type(self).__name__} is not a codec")

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
