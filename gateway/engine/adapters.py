"""Finding adapters by key: the ``igsp_gateway.adapters`` entry-point group, only.

Built-ins are listed in this project's own ``pyproject.toml`` under that group, exactly
as a third-party package lists its own, so the contract is exercised every day; a
checkout must be installed (``pip install -e .``) for them to be found.

Two distributions registering the same key is an error naming both targets, never a
silent replacement: whichever one the import system happened to list last would
otherwise encode (or sign) the money calls of every mapping that names the key.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points

from gateway.adapter_api import Adapter, implements, missing_hooks, roles_of

ENTRY_POINT_GROUP = "igsp_gateway.adapters"

#: Each place a mapping names an adapter -> the roles that fit there (any one of them),
#: and where an adapter of each role belongs instead.
SLOTS: dict[str, tuple[str, ...]] = {
    "codec": ("codec",),
    "signer": ("signer",),
    "verify": ("signer",),  # and it must implement verify
    "extensions": ("extension", "flow"),
}
_HOME = {"codec": "'codec'", "signer": "'signer'", "flow": "'extensions'", "extension": "'extensions'"}
_ARTICLE = {"codec": "a codec", "signer": "a signer", "flow": "a flow", "extension": "an extension"}


def _entry_points() -> list[EntryPoint]:
    """Every entry point of the group (tests replace this to install fake adapters)."""
    return list(entry_points(group=ENTRY_POINT_GROUP))


def _origin(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{ep.value} (from {dist.name} {dist.version})" if dist is not None else ep.value


@lru_cache(maxsize=1)
def installed() -> tuple[dict[str, str], dict[str, str]]:
    """``(key -> module:Class, key -> why it cannot be used)``, read once per process
    (``installed.cache_clear()`` after changing what is installed)."""
    claims: dict[str, dict[tuple, EntryPoint]] = {}
    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        # The same distribution seen twice on sys.path is one claim, not a clash.
        claims.setdefault(ep.name, {})[(ep.value, dist.name if dist is not None else None)] = ep
    found, clashes = {}, {}
    for name, eps in claims.items():
        first, *others = eps.values()
        found[name] = first.value
        if others:
            clashes[name] = (f"adapter {name!r} is registered by more than one package: "
                             + " and ".join(_origin(ep) for ep in eps.values())
                             + "; uninstall one of them")
    return found, clashes


def available() -> dict[str, str]:
    """Adapter key -> ``module:Class`` for every installed adapter."""
    return installed()[0]


def adapter_class(name: str) -> type[Adapter]:
    """Import an adapter class; an unknown or broken one raises ValueError naming the choices."""
    registry, clashes = installed()
    if not registry:
        raise ValueError(f"unknown adapter {name!r}: no adapters are installed, not even the built-ins; "
                         "install the gateway as a package (pip install -e . in a checkout)")
    if name not in registry:
        raise ValueError(f"unknown adapter {name!r}; installed adapters: {', '.join(sorted(registry))}")
    if name in clashes:
        raise ValueError(clashes[name])
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


def make_adapter(spec: str | dict, slot: str | None = None) -> Adapter:
    """``"json"`` or ``{"adapter": "md5_params", ...options}`` -> an Adapter instance.

    ``slot`` (a key of ``SLOTS``) is where the mapping names it: an adapter whose roles do
    not fit there is refused now, at load, instead of failing every request later (an
    md5 signer as the codec answered each call ``NotImplementedError``). Every failure is
    a ValueError naming the adapter, so the loader can report it with the mapping's file
    and line: a misplaced adapter, a bad option, or any exception of a third-party
    constructor (a bug there must not become a traceback at start-up).
    """
    name = spec if isinstance(spec, str) else spec["adapter"]
    options = {} if isinstance(spec, str) else {k: v for k, v in spec.items() if k != "adapter"}
    cls = adapter_class(name)
    check_roles(name, cls, slot)
    try:
        adapter = cls(options)
        # Collected at load: a broken hook fails here, not on the first request.
        adapter.filters(), adapter.jmespath_functions()
    except ValueError as exc:
        raise ValueError(f"adapter {name!r}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - third-party code: report, never crash the loader
        raise ValueError(f"adapter {name!r} failed to start: {type(exc).__name__}: {exc}") from exc
    return adapter


def check_roles(name: str, cls: type[Adapter], slot: str | None) -> None:
    """Raise ValueError when ``cls`` lacks a hook of a role it declares, or fits not in ``slot``."""
    if missing := missing_hooks(cls):
        role, lacking = next(iter(missing.items()))
        raise ValueError(f"adapter {name!r} is declared {_ARTICLE[role]} but does not implement "
                         f"{' and '.join(lacking) if role == 'codec' else ' or '.join(lacking)}")
    if slot is None:
        return
    roles = roles_of(cls)
    if not roles:
        raise ValueError(f"adapter {name!r} has no role (it overrides no hook); declare one by subclassing "
                         "Codec, Signer, Flow or Extension (gateway.adapter_api)")
    wanted = SLOTS[slot]
    if not roles & set(wanted):
        is_ = " and ".join(_ARTICLE[r] for r in sorted(roles))
        homes = " or ".join(sorted({_HOME[r] for r in roles}))
        raise ValueError(f"adapter {name!r} is {is_}, not {' or '.join(_ARTICLE[r] for r in wanted)}; "
                         f"{is_} belongs under {homes}")
    if slot == "verify" and not implements(cls, "verify"):
        raise ValueError(f"adapter {name!r} cannot check a legacy caller: it does not implement verify")


def describe() -> list[tuple[str, str, str]]:
    """``(key, module:Class, "roles: description" or load error)`` of every installed adapter."""
    rows = []
    for name, target in sorted(available().items()):
        try:
            cls = adapter_class(name)
            check_roles(name, cls, None)
            roles = roles_of(cls)
            text = f"{', '.join(sorted(roles)) or 'no role'}: {cls.description or '(no description)'}"
        except ValueError as exc:
            text = f"BROKEN: {str(exc).split('; installed adapters')[0]}"
        rows.append((name, target, text))
    return rows
