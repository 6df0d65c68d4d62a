"""Finding adapters by key: the ``igsp_gateway.adapters`` entry-point group.

Built-ins are listed in this project's own ``pyproject.toml`` under that group, exactly
as a third-party package would list its own. ``BUILTINS`` mirrors them so a source
checkout that was never pip-installed still works.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.metadata import entry_points

from gateway.adapter_api import Adapter

ENTRY_POINT_GROUP = "igsp_gateway.adapters"

BUILTINS: dict[str, str] = {
    "json": "adapters.codecs:JsonCodec",
    "form": "adapters.codecs:FormCodec",
    "query": "adapters.codecs:QueryCodec",
    "xml": "adapters.xml:XmlCodec",
    "soap": "adapters.xml:SoapCodec",
    "md5_params": "adapters.signing:Md5ParamsSigner",
    "hmac_header": "adapters.signing:HmacHeaderSigner",
    "rsa_sha256_header": "adapters.signing:RsaSha256HeaderSigner",
}


@lru_cache(maxsize=1)
def available() -> dict[str, str]:
    """Adapter key -> ``module:Class`` for every installed adapter."""
    found = dict(BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.value
    return found


def adapter_class(name: str) -> type[Adapter]:
    """Import an adapter class; an unknown or broken one raises ValueError naming the choices."""
    registry = available()
    if name not in registry:
        raise ValueError(f"unknown adapter {name!r}; installed adapters: {', '.join(sorted(registry))}")
    target = registry[name]
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
        raise ValueError(f"adapter {name!r} ({target}) failed to load: {type(exc).__name__}: {exc}; "
                         f"installed adapters: {', '.join(sorted(registry))}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise ValueError(f"adapter {name!r} ({target}) is not a gateway.adapter_api.Adapter subclass")
    return cls


def make_adapter(spec: str | dict) -> Adapter:
    """``"json"`` or ``{"adapter": "md5_params", ...options}`` -> an Adapter instance.

    Every failure is a ValueError naming the adapter, so the loader can report it with
    the mapping's file and line: a bad option, or any exception of a third-party
    constructor (a bug there must not become a traceback at start-up).
    """
    name = spec if isinstance(spec, str) else spec["adapter"]
    options = {} if isinstance(spec, str) else {k: v for k, v in spec.items() if k != "adapter"}
    cls = adapter_class(name)
    try:
        adapter = cls(options)
        # Collected at load: a broken hook fails here, not on the first request.
        adapter.filters(), adapter.jmespath_functions()
    except ValueError as exc:
        raise ValueError(f"adapter {name!r}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - third-party code: report, never crash the loader
        raise ValueError(f"adapter {name!r} failed to start: {type(exc).__name__}: {exc}") from exc
    return adapter


def describe() -> list[tuple[str, str, str]]:
    """``(key, module:Class, description or load error)`` of every installed adapter."""
    rows = []
    for name, target in sorted(available().items()):
        try:
            text = adapter_class(name).description or "(no description)"
        except ValueError as exc:
            text = f"BROKEN: {str(exc).split('; installed adapters')[0]}"
        rows.append((name, target, text))
    return rows
