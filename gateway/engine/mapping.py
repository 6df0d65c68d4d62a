"""Loading a mapping file into a frozen, ready-to-run object.

Everything that can be checked is checked here, once: the structure (JSON Schema in
``mapping_schema``), ``${ENV}`` references, adapters, every Jinja2 template and every
JMESPath expression. All problems are reported together, each with file, line and
field path. The request path then only renders and searches.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.functions

from gateway import money
from gateway.adapter_api import Adapter
from gateway.engine import jmespath_fast
from gateway.engine.adapters import make_adapter
from gateway.engine.echo import Echo
from gateway.engine.mapping_schema import MAPPING_SCHEMA, PLATFORM_OPERATIONS
from gateway.engine.provider_mapping import compile_provider
from gateway.engine.templating import TemplateError, Templates
from gateway.engine.yamlload import dotted, env_and_schema_problems, line_of, load_yaml
from gateway.errors import ConfigError, IgspError, Problem
from gateway.ops.redaction import scrub, secret_values


@dataclass(frozen=True)
class ErrorRule:
    code: str
    message: str | None = None
    status: int | None = None

    def error(self, legacy_code: Any, legacy_message: Any) -> IgspError:
        detail = f": {legacy_message}" if legacy_message and str(legacy_message) != str(legacy_code) else ""
        text = self.message or f"legacy error {legacy_code}{detail}"
        return IgspError(self.code, text, self.status)


@dataclass(frozen=True)
class ResultRules:
    """How to tell success from failure in a decoded legacy answer."""

    success: Any = None  # compiled JMESPath or None (None: HTTP 2xx is success)
    code: Any = None
    message: Any = None
    success_codes: frozenset = frozenset()
    errors: dict = field(default_factory=dict)  # str(legacy code) -> ErrorRule
    default_error: ErrorRule = ErrorRule("upstream_error")


@dataclass(frozen=True)
class Operation:
    name: str
    method: str
    path: Callable[[dict], str]
    query: Callable[[dict], Any] | None
    headers: Callable[[dict], Any] | None
    body: Callable[[dict], Any] | None
    response: dict  # field -> compiled JMESPath
    result: ResultRules
    timeout: float | None
    #: The inputs its request templates read (e.g. whether a refund sends ``amount`` at all).
    inputs: frozenset[str] = frozenset()
    #: Fields of the answer that must echo the request (gateway/engine/echo.py).
    echo: tuple[Echo, ...] = ()


@dataclass(frozen=True)
class Amounts:
    """How the legacy side writes money: decimal, minor units, or 1/scale units.

    ``max`` is the mapping's ``amounts.max``, the largest value the legacy side takes in its
    own unit; the unit's own limit otherwise (``gateway.money.largest``). ``overrides`` are
    the gateway config's ``currencies`` exponents (``{"BTC": 8}``).
    """

    unit: str = "decimal"
    scale: int | None = None
    max: int | Decimal | None = None
    _limits: dict = field(default_factory=dict, compare=False, repr=False)  # (currency, exponent) -> limit

    def largest(self, currency: str, overrides: dict[str, int] | None = None) -> Decimal:
        """The largest amount of ``currency`` this legacy unit holds."""
        key = (currency, money.exponent(currency, overrides))
        found = self._limits.get(key)
        if found is None:
            found = self._limits[key] = money.largest(currency, overrides, unit=self.unit, scale=self.scale or 1,
                                                      legacy_max=self.max)
        return found

    def check(self, amount: Decimal, currency: str, overrides: dict[str, int] | None = None) -> Decimal:
        """An amount coming in, before anything is recorded or sent: 400 ``invalid_amount`` when
        the currency or this unit cannot carry it (the message names the limit)."""
        return money.check_amount(amount, currency, overrides, limit=self.largest(currency, overrides))

    def to_legacy(self, amount: Decimal, currency: str, overrides: dict[str, int] | None = None) -> Decimal | int:
        if self.unit == "minor":
            return money.to_minor(amount, currency, overrides)
        if self.unit == "scaled":
            return money.to_scaled(amount, self.scale or 1)
        return money.trimmed(amount, money.exponent(currency, overrides))

    def from_legacy(self, value: Any, currency: str, overrides: dict[str, int] | None = None) -> Decimal:
        if value is None or isinstance(value, bool):
            raise IgspError("upstream_bad_response", "legacy answer has no amount where one was expected")
        try:
            if self.unit == "minor":
                return money.from_minor(value, currency, overrides)
            if self.unit == "scaled":
                return money.from_scaled(value, self.scale or 1)
            return Decimal(str(value)) if not isinstance(value, Decimal) else value
        except (ArithmeticError, ValueError, TypeError):
            raise IgspError("upstream_bad_response", f"legacy amount {value!r} is not a number") from None


@dataclass(frozen=True)
class Mapping:
    name: str
    file: str
    face: str
    base_url: str
    timeout: float
    connect_timeout: float
    max_connections: int
    tls_verify: bool
    idempotent: bool
    static_headers: dict
    codec: Adapter
    signer: Adapter | None
    extensions: tuple
    amounts: Amounts
    secrets: dict
    operations: dict  # name -> Operation
    max_attempts: int
    backoff_initial: float
    backoff_max: float
    jmespath_options: Any
    raw: dict  # the interpolated document, for face-specific sections
    templates: Templates
    provider: Any = None  # provider face: a compiled gateway.engine.provider_mapping.ProviderSpec
    max_response_bytes: int = 1 << 20  # the largest decompressed legacy answer read (gateway/outbound/http.py)
    propagate_trace: bool = True  # send traceparent with legacy calls and hooks (tracing on)

    def search(self, expression: Any, data: Any) -> Any:
        return jmespath_fast.search(expression, data, self.jmespath_options)


def _jmespath_signature(func: Callable) -> tuple:
    """JMESPath arity from the Python signature (``def f(a, b=1)`` takes 1 or more arguments).

    A function may set its own ``signature`` attribute in jmespath's format, e.g.
    ``({"types": ["string"]},)``, to have argument types checked too.
    """
    explicit = getattr(func, "signature", None)
    if explicit is not None:
        return tuple(explicit)
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: any arguments, at least one
        return ({"types": [], "variadic": True},)
    required = [p for p in params if p.kind in positional and p.default is p.empty]
    more = any(p.kind == p.VAR_POSITIONAL or (p.kind in positional and p.default is not p.empty) for p in params)
    signature = [{"types": []} for _ in required] or ([{"types": []}] if more else [])
    if more:
        signature[-1] = {"types": [], "variadic": True}
    return tuple(signature)


def _jmespath_options(functions: dict[str, Callable]) -> jmespath.Options:
    """JMESPath options carrying adapter-provided functions (``name(args…)``)."""
    if not functions:
        return jmespath.Options()
    namespace = {}
    for name, func in functions.items():
        def method(self, *args, _func=func):
            return _func(*args)
        method.signature = _jmespath_signature(func)
        namespace[f"_func_{name}"] = method
    custom = type("AdapterFunctions", (jmespath.functions.Functions,), namespace)
    return jmespath.Options(custom_functions=custom())


_BUILTIN_JMESPATH = frozenset(jmespath.functions.Functions.FUNCTION_TABLE)


def _function_names(node: Any) -> set[str]:
    """Names of every function called in a parsed JMESPath AST."""
    found: set[str] = set()
    if isinstance(node, dict):
        if node.get("type") == "function_expression":
            found.add(node["value"])
        for child in node.get("children", ()):
            found |= _function_names(child)
    return found


class _Compiler:
    """Collects every problem of one file while compiling it."""

    def __init__(self, file: str, data: Any):
        self.file, self.data, self.problems = file, data, []
        self.functions: frozenset = _BUILTIN_JMESPATH

    def problem(self, path: tuple, message: str, hint: str | None = None) -> None:
        self.problems.append(Problem(self.file, line_of(self.data, path), dotted(path), message, hint))

    def jmes(self, expression: Any, path: tuple) -> Any:
        try:
            compiled = jmespath.compile(str(expression))
        except jmespath.exceptions.JMESPathError as exc:
            column = getattr(exc, "lex_position", None)
            near = getattr(exc, "token_value", None)
            where = f" at column {column}" if column is not None else ""
            self.problem(path, f"JMESPath parse error{where}" + (f" near {near!r}" if near else "") + f": {expression!r}",
                         hint="quote keys that contain '-' or start with a digit, e.g. \"game-id\"")
            return None
        unknown = sorted(_function_names(compiled.parsed) - self.functions)
        if unknown:
            extra = sorted(self.functions - _BUILTIN_JMESPATH)
            self.problem(path, f"unknown JMESPath function {', '.join(unknown)}() in {expression!r}",
                         hint="adapter functions available here: " + (", ".join(extra) if extra else "none")
                         + "; add the adapter that provides it to 'extensions'")
        return compiled

    def adapter(self, spec: Any, path: tuple, slot: str) -> Adapter | None:
        """The adapter ``spec`` names at ``path``, which must fit ``slot`` (gateway.engine.adapters.SLOTS)."""
        try:
            return make_adapter(spec, slot)
        except (ValueError, TypeError) as exc:
            self.problem(path, str(exc))
            return None

    def template_tree(self, templates: Templates, tree: Any, path: tuple) -> Callable | None:
        if tree is None:
            return None

        def on_error(sub: tuple, exc: Exception) -> None:
            line = getattr(exc, "lineno", None)
            extra = f" (template line {line})" if line and line > 1 else ""
            self.problem(path + sub, f"template error{extra}: {getattr(exc, 'message', None) or exc}")

        return templates.compile_tree(tree, on_error)

    def echo(self, templates: Templates, spec: Any, path: tuple, base: tuple[Echo, ...] = ()) -> tuple[Echo, ...]:
        """``echo:`` (answer JMESPath -> template of the expected value), merged over ``base``:
        an entry replaces the inherited one of the same expression, ``null`` removes it."""
        entries = {echo.path: echo for echo in base}
        for key, template in (spec or {}).items():
            where, text = path + (key,), str(key)
            if template is None:
                entries.pop(text, None)
                continue
            expression = self.jmes(text, where)
            expected = self.template_tree(templates, template, where)
            if expression is not None:
                entries[text] = Echo(text, expression, expected)
        return tuple(entries.values())

    def rule(self, spec: Any) -> ErrorRule:
        if isinstance(spec, str):
            return ErrorRule(spec)
        return ErrorRule(spec["error"], spec.get("message"), spec.get("status"))

    def result(self, spec: dict, path: tuple, base: ResultRules | None = None) -> ResultRules:
        base = base or ResultRules()
        spec = spec or {}
        return ResultRules(
            success=self.jmes(spec["success"], path + ("success",)) if "success" in spec else base.success,
            code=self.jmes(spec["code"], path + ("code",)) if "code" in spec else base.code,
            message=self.jmes(spec["message"], path + ("message",)) if "message" in spec else base.message,
            success_codes=frozenset(map(str, spec["success_codes"])) if "success_codes" in spec else base.success_codes,
            errors={**base.errors, **{str(k): self.rule(v) for k, v in (spec.get("errors") or {}).items()}},
            default_error=self.rule(spec["default_error"]) if "default_error" in spec else base.default_error,
        )


def _legacy_max(c: _Compiler, spec: dict) -> int | Decimal | None:
    """``amounts.max``: a whole number of legacy units for ``minor``/``scaled``, a decimal otherwise."""
    value = spec.get("max")
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # absent, or already reported by the schema
    if spec.get("unit", "decimal") == "decimal":
        return Decimal(str(value))
    if value != int(value):
        c.problem(("amounts", "max"), f"got {value}: with unit {spec.get('unit')!r} the legacy side counts "
                  "whole units, so max is a whole number")
        return None
    return int(value)


def load_mapping(path: str | Path, env: dict | None = None) -> Mapping:
    """Load, validate and compile one mapping file; raise ConfigError listing every problem."""
    file = str(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError([Problem(file, 1, "", "a mapping file must be a YAML mapping (key: value)")])
    problems = env_and_schema_problems(data, MAPPING_SCHEMA, file, env)
    try:
        mapping = compile_mapping(data, file)
    except ConfigError as exc:
        problems += [p for p in exc.problems if p not in problems]
    except Exception:
        if not problems:
            raise
        # The structure is wrong in a way already reported; compiling what is there
        # found nothing more to add.
    if problems:
        raise scrub(ConfigError(problems), secret_values(data))
    return mapping


def compile_mapping(data: dict, file: str) -> Mapping:
    c = _Compiler(file, data)
    codec = c.adapter(data.get("codec", "json"), ("codec",), "codec")
    signer = c.adapter(data["signer"], ("signer",), "signer") if "signer" in data else None
    extensions = tuple(
        a for i, spec in enumerate(data.get("extensions") or [])
        if (a := c.adapter(spec, ("extensions", i), "extensions"))
    )
    filters: dict = {}
    functions: dict = {}
    for adapter in (codec, signer, *extensions):
        if adapter is not None:
            filters.update(adapter.filters())
            functions.update(adapter.jmespath_functions())
    templates = Templates(filters)
    c.functions = _BUILTIN_JMESPATH | frozenset(functions)

    amounts_spec = data.get("amounts") or {}
    amounts = Amounts(amounts_spec.get("unit", "decimal"), amounts_spec.get("scale"), _legacy_max(c, amounts_spec))
    if amounts.unit == "scaled" and not amounts.scale:
        c.problem(("amounts", "unit"), "unit 'scaled' needs amounts.scale (e.g. 100000 for 1/100000 units)")

    result = c.result(data.get("result"), ("result",))
    echo = c.echo(templates, data.get("echo"), ("echo",))
    operations = {}
    for name, spec in data["operations"].items():
        where = ("operations", name)
        operations[name] = Operation(
            name=name,
            method=spec.get("method", "POST"),
            path=c.template_tree(templates, spec["path"], where + ("path",)),
            query=c.template_tree(templates, spec.get("query"), where + ("query",)),
            headers=c.template_tree(templates, spec.get("headers"), where + ("headers",)),
            body=c.template_tree(templates, spec.get("body"), where + ("body",)),
            response={k: c.jmes(v, where + ("response", k)) for k, v in (spec.get("response") or {}).items()},
            result=c.result(spec.get("result"), where + ("result",), result),
            timeout=spec.get("timeout"),
            inputs=templates.variables([spec["path"], spec.get("query"), spec.get("headers"), spec.get("body")]),
            echo=c.echo(templates, spec.get("echo"), where + ("echo",), echo),
        )
    if data["face"] == "platform":
        for name in PLATFORM_OPERATIONS:
            if name not in operations:
                c.problem(("operations",), f"missing operation {name!r}; a platform wallet mapping needs "
                          f"{', '.join(PLATFORM_OPERATIONS)}")
            elif name != "refund" and name in operations and "balance" not in operations[name].response:
                c.problem(("operations", name, "response"), "missing 'balance': JMESPath to the balance after the call")
    provider = None
    if data["face"] == "provider":
        provider = compile_provider(c, data, templates, operations, _jmespath_options(functions), codec, signer)
    if c.problems:
        raise ConfigError(c.problems)

    upstream = data["upstream"]
    queue = data.get("queue") or {}
    return Mapping(
        name=data["name"],
        file=file,
        face=data["face"],
        base_url=upstream["base_url"].rstrip("/"),
        timeout=float(upstream.get("timeout", 2.0)),
        connect_timeout=float(upstream.get("connect_timeout", 1.0)),
        max_connections=int(upstream.get("max_connections", 100)),
        tls_verify=bool(upstream.get("tls_verify", True)),
        idempotent=bool(upstream.get("idempotent", False)),
        static_headers=dict(upstream.get("headers") or {}),
        max_response_bytes=int(upstream.get("max_response_bytes", 1 << 20)),
        propagate_trace=bool(upstream.get("propagate_trace", True)),
        codec=codec,
        signer=signer,
        extensions=extensions,
        amounts=amounts,
        secrets=dict(data.get("secrets") or {}),
        operations=operations,
        max_attempts=int(queue.get("max_attempts", 10)),
        backoff_initial=float(queue.get("backoff_initial", 1.0)),
        backoff_max=float(queue.get("backoff_max", 300.0)),
        jmespath_options=_jmespath_options(functions),
        raw=data,
        templates=templates,
        provider=provider,
    )


__all__ = ["Amounts", "ErrorRule", "Mapping", "Operation", "ResultRules", "TemplateError", "load_mapping"]
