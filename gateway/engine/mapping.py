"""Loading a mapping file into a frozen, ready-to-run object.

Everything that can be checked is checked here, once: the structure (JSON Schema in
``mapping_schema``), ``${ENV}`` references, adapters, every Jinja2 template and every
JMESPath expression. All problems are reported together, each with file, line and
field path. The request path then only renders and searches.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.functions
import jmespath.lexer

from gateway import money
from gateway.adapter_api import Adapter
from gateway.engine import jmespath_fast, ledger_names
from gateway.engine.adapters import make_adapter
from gateway.engine.echo import Echo
from gateway.engine.inputs import provider_inputs, wallet_inputs
from gateway.engine.mapping_schema import MAPPING_SCHEMA, PLATFORM_OPERATIONS
from gateway.engine.provider_mapping import compile_provider
from gateway.engine.templating import TemplateError, Templates, diagnose
from gateway.engine.yamlload import dotted, env_and_schema_problems, line_of, load_yaml
from gateway.errors import ERROR_CODES, ConfigError, IgspError, Problem
from gateway.ops.redaction import scrub, secret_values

#: What a mapped legacy error says about the money: nothing was applied (the default), or
#: the legacy side does not know (``outcome: unknown``: retriable, and the rollback path).
OUTCOMES = ("not_applied", "unknown")

#: An adapter's ValueError naming one of its options (``Adapter.option``'s wording).
_OPTION_NAMED = re.compile(r"option '([^']+)'")


@dataclass(frozen=True)
class ErrorRule:
    code: str
    message: str | None = None
    status: int | None = None
    outcome: str = "not_applied"

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
    #: str(success code) -> the echoes that prove an "already done" answer is this
    #: transaction's (``success_codes: [{code, proves}]``); a code without is taken as is.
    proofs: dict = field(default_factory=dict)


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
    #: ``(field, line, renderer)`` of every request template leaf, to name the one that
    #: needs a variable a call lacks (``templating.diagnose``, on the error path only).
    leaves: tuple = ()
    #: A multi-step operation's calls, in order (each an Operation named ``<op>.<step>``);
    #: empty for one call.
    steps: tuple = ()
    #: This call's name as a step (``steps.NAME`` in later steps' templates), else None.
    step: str | None = None
    #: False: this step changes nothing on the legacy side (a token, a lookup).
    moves_money: bool = True
    #: ``keep:`` name -> compiled JMESPath: a bet's answer values the ledger keeps for later
    #: operations (``ledger.bet.NAME``); a multi-step operation's are all its steps'.
    keep: dict = field(default_factory=dict)
    #: ``ledger:`` name -> None (``optional``: an empty read is none) or the ErrorRule the
    #: operation fails with when the read is empty (gateway/engine/ledger_names.py).
    ledger: dict = field(default_factory=dict)
    #: A step's ``when``: rendered before the call, a falsy value skips the step.
    when: Callable[[dict], Any] | None = None

    def missing(self, context: dict) -> tuple[str, int | None, str] | None:
        """``(field, line, "'x' is undefined")`` when this operation's request (or an echo)
        needs a variable ``context`` lacks; None otherwise."""
        proofs = [echo.leaves for echoes in self.result.proofs.values() for echo in echoes]
        for leaves in (self.leaves, *(echo.leaves for echo in self.echo), *proofs):
            found = diagnose([((field, line), render) for field, line, render in leaves], context)
            if found is not None:
                (field, line), why = found
                return field, line, why
        return None


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
    #: Whether a connection to this API serves more than one call (``upstream.reuse_connections``).
    reuse_connections: bool = True

    def search(self, expression: Any, data: Any) -> Any:
        return jmespath_fast.search(expression, data, self.jmespath_options)


def _reuse_connections(upstream: dict, operations: dict) -> bool:
    """Over a keep-alive connection an answer belongs to a call only by its place there: an
    answer written twice (a retry in the API's own stack, a replaying proxy) would be read by
    the next call on that connection as its own. ``echo`` lets the gateway see that; an API
    whose answers echo nothing can only be kept safe by never reusing a connection. So the
    default is to reuse connections only when every call (every step) declares an echo;
    ``upstream.reuse_connections`` says otherwise explicitly."""
    if "reuse_connections" in upstream:
        return bool(upstream["reuse_connections"])
    calls = [step for op in operations.values() for step in (op.steps or (op,))]
    return bool(calls) and all(call.echo for call in calls)


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


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: An unquoted key with a dash, or starting with a digit, outside quotes and backticks.
_BARE_KEY = re.compile(r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`(?:[^`\\]|\\.)*`)"""
                       r"|(?<![\w\-])((?:[A-Za-z_][\w]*-[\w\-]*\w)|(?:\d+[A-Za-z_][\w\-]*))")
_SYNTAX = "JMESPath: keys plain (data.balance) or double-quoted (data.\"game-id\"), texts single-quoted ('RS_OK'), " \
          "numbers in backticks (`0`); see https://jmespath.org/specification.html"


def _quote_bare_keys(expression: str) -> str:
    """``data.game-id`` -> ``data."game-id"`` (quoted parts left alone)."""
    return _BARE_KEY.sub(lambda m: m.group(1) or f'"{m.group(2)}"', expression)


def jmespath_hint(expression: str, exc: Exception) -> str:
    """A hint for a JMESPath parse error, specific to the usual mistakes."""
    near, kind = getattr(exc, "token_value", None), str(getattr(exc, "token_type", "") or "")
    stripped = expression.strip()
    if stripped.startswith("$"):
        if ".." in stripped:
            return ("JMESPath has no '$' root and no '..' (a JSONPath habit): name the whole path from the "
                    "top of the answer, e.g. data.wallet.balance, or project with data.*.balance")
        fixed = stripped[1:].lstrip(".") or "@"
        return f"JMESPath has no '$' root (a JSONPath habit): write {fixed!r} for {stripped!r}"
    quoted = _quote_bare_keys(expression)
    if quoted != expression and (near == "-" or kind == "NUMBER"):
        return f"a key with '-' or starting with a digit is double-quoted in JMESPath: {quoted}"
    if kind == "LITERAL":
        fixed = re.sub(r"(?:\.|\[)\s*'((?:[^'\\]|\\.)*)'\s*\]?", r'."\1"', expression)
        return (f"'{near}' (single quotes) is a text in JMESPath, not a key: write "
                + (fixed if fixed != expression else f'a key plain or in double quotes, e.g. "{near}"'))
    if kind == "QUOTED_IDENTIFIER" and "[" in expression:
        fixed = re.sub(r'\[\s*("(?:[^"\\]|\\.)*")\s*\]', r".\1", expression)
        return f"brackets take an index ([0]), a filter ([?…]) or a slice, not a key: write {fixed}"
    if near == "=":
        return "compare with == (and !=), not ="
    if kind == "UNQUOTED_IDENTIFIER" and str(near).lower() in ("and", "or", "not"):
        return "JMESPath writes and / or / not as && / || / !"
    if exc.__class__.__name__ == "IncompleteExpressionError":
        return "the expression ends too early: a bracket, a quote or an operator is not closed"
    return _SYNTAX


def jmespath_smells(expression: str, parsed: dict, reads: bool) -> list[tuple[str, str]]:
    """Expressions that parse but cannot mean what was written: ``status == "RS_OK"``
    compares with a *key* named RS_OK (double quotes name keys), and a ``response`` field
    ``'balance'`` is the text "balance"."""
    found = []
    if reads and parsed.get("type") == "literal":
        value = parsed.get("value")
        found.append((f"{expression!r} is a constant ({value!r}), not a read of the answer",
                      f"a key is written plain or in double quotes: {value}" if isinstance(value, str)
                      and _IDENTIFIER.fullmatch(value) else _SYNTAX))
    try:
        tokens = list(jmespath.lexer.Lexer().tokenize(expression))
    except jmespath.exceptions.JMESPathError:
        return found
    comparators = {"eq", "ne", "lt", "gt", "lte", "gte"}
    for i, token in enumerate(tokens):
        value = str(token["value"])
        if token["type"] != "quoted_identifier" or not (_IDENTIFIER.fullmatch(value) or value.isdigit()):
            continue  # "game-id" == x: a key that needs its quotes
        def kind(at: int) -> str | None:
            return tokens[at]["type"] if 0 <= at < len(tokens) else None

        # The other operand of the comparison: a literal there means the key is meant.
        other = kind(i - 2) if kind(i - 1) in comparators else kind(i + 2) if kind(i + 1) in comparators else None
        if other is not None and other != "literal":
            found.append((f'compares with "{value}", which in JMESPath is the key {value} (double quotes name '
                          f"a key), not the text {value!r}",
                          f"write the text in single quotes: '{value}'" + (f" (the number: `{value}`)"
                                                                            if value.isdigit() else "")))
    return found


def _leaves(tree: Any, path: tuple = ()):
    """``(path, leaf)`` of every leaf of a YAML tree of templates."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, path + (key,))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _leaves(value, path + (index,))
    elif tree is not None:
        yield path, tree


class _Compiler:
    """Collects every problem of one file while compiling it."""

    def __init__(self, file: str, data: Any):
        self.file, self.data, self.problems = file, data, []
        self.functions: frozenset = _BUILTIN_JMESPATH
        secrets = data.get("secrets") if isinstance(data, dict) else None
        self.secrets: frozenset[str] = frozenset(map(str, secrets)) if isinstance(secrets, dict) else frozenset()

    def problem(self, path: tuple, message: str, hint: str | None = None) -> None:
        self.problems.append(Problem(self.file, line_of(self.data, path), dotted(path), message, hint))

    def jmes(self, expression: Any, path: tuple, *, reads: bool = False) -> Any:
        """Compile a JMESPath expression at ``path``, with a hint specific to each mistake
        (``jmespath_hint``). ``reads``: the expression must read the answer (a ``response``
        field, an echo): a constant there, such as ``'balance'``, is a mistake."""
        text = str(expression)
        try:
            compiled = jmespath.compile(text)
        except jmespath.exceptions.JMESPathError as exc:
            column = getattr(exc, "lex_position", None)
            near = getattr(exc, "token_value", None)
            where = f" at column {column}" if column is not None else ""
            self.problem(path, f"JMESPath parse error{where}" + (f" near {near!r}" if near else "") + f": {expression!r}",
                         hint=jmespath_hint(text, exc))
            return None
        for message, hint in jmespath_smells(text, compiled.parsed, reads):
            self.problem(path, message, hint)
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
            # "option 'algorithm' must be …": point at that option's own line and field.
            named = _OPTION_NAMED.search(str(exc))
            if named and isinstance(spec, dict) and named.group(1) in spec:
                path = path + (named.group(1),)
            self.problem(path, str(exc))
            return None

    def template_tree(self, templates: Templates, tree: Any, path: tuple, inputs: frozenset[str] | None = None,
                      scope: str = "", leaves: list | None = None, steps: dict | None = None,
                      ledger: tuple | None = None) -> Callable | None:
        """Compile a tree of templates at ``path``, checking each leaf (``Templates.check``): its
        filters and tests, its variables against ``inputs`` (None: not checked; ``scope`` says
        whose they are), its ``secrets.NAME``. ``leaves`` receives ``(field, line, renderer)``
        of each leaf, for naming the one that fails at run time (``templating.diagnose``)."""
        if tree is None:
            return None
        flagged: set[tuple] = set()
        for sub, leaf in _leaves(tree):
            for message, hint in templates.check(leaf, inputs, self.secrets, scope, steps=steps, ledger=ledger):
                self.problem(path + sub, message, hint)
                flagged.add(sub)

        def on_error(sub: tuple, exc: Exception) -> None:
            if sub in flagged:
                return  # already explained (Jinja would say "No filter named …" again)
            line = getattr(exc, "lineno", None)
            extra = f" (template line {line})" if line and line > 1 else ""
            self.problem(path + sub, f"template error{extra}: {getattr(exc, 'message', None) or exc}")

        found: list = []
        render = templates.compile_tree(tree, on_error, leaves=found)
        if leaves is not None:
            leaves.extend((dotted(path + sub), line_of(self.data, path + sub), leaf) for sub, leaf in found)
        return render

    def echo(self, templates: Templates, spec: Any, path: tuple, base: tuple[Echo, ...] = (),
             inputs: frozenset[str] | None = None, scope: str = "") -> tuple[Echo, ...]:
        """``echo:`` (answer JMESPath -> template of the expected value), merged over ``base``:
        an entry replaces the inherited one of the same expression, ``null`` removes it."""
        entries = {echo.path: echo for echo in base}
        for key, template in (spec or {}).items():
            where, text = path + (key,), str(key)
            if template is None:
                entries.pop(text, None)
                continue
            expression = self.jmes(text, where, reads=True)
            leaves: list = []
            expected = self.template_tree(templates, template, where, inputs, scope, leaves)
            if expression is not None:
                entries[text] = Echo(text, expression, expected, tuple(leaves))
        return tuple(entries.values())

    def inherited_echo(self, templates: Templates, echoes: tuple[Echo, ...], inputs: frozenset[str] | None,
                       scope: str, own: Any) -> None:
        """Check the file-level echoes an operation inherits against that operation's inputs
        (reported at the file's ``echo`` entry, once per entry and variable)."""
        if inputs is None:
            return
        for echo in echoes:
            if isinstance(own, dict) and echo.path in own:
                continue  # replaced or removed by the operation's own entry
            template = (self.data.get("echo") or {}).get(echo.path)
            self.inherited_leaves(templates, template, ("echo", echo.path), inputs, scope)

    def rule(self, spec: Any, path: tuple) -> ErrorRule:
        if isinstance(spec, str):
            return ErrorRule(spec)
        rule = ErrorRule(spec["error"], spec.get("message"), spec.get("status"), spec.get("outcome", "not_applied"))
        if rule.outcome == "unknown" and (rule.status or ERROR_CODES.get(rule.code, 500)) < 500:
            self.problem(path + ("outcome",), f"an unknown outcome is retriable, but {rule.code!r} is a "
                         f"{rule.status or ERROR_CODES.get(rule.code)}",
                         hint="name a 5xx code (upstream_error, upstream_timeout, upstream_unavailable) or give "
                              "a status of 500 or more")
        return rule

    def result(self, spec: dict, path: tuple, base: ResultRules | None = None, templates: Templates | None = None,
               inputs: frozenset[str] | None = None, scope: str = "") -> ResultRules:
        base = base or ResultRules()
        spec = spec or {}
        codes, proofs = base.success_codes, base.proofs
        if "success_codes" in spec:
            codes, proofs = set(), {}
            for index, entry in enumerate(spec["success_codes"] or ()):
                if not isinstance(entry, dict):
                    codes.add(str(entry))
                    continue
                code = str(entry.get("code"))
                codes.add(code)
                if entry.get("proves") and templates is not None:
                    proofs[code] = self.echo(templates, entry["proves"], path + ("success_codes", index, "proves"),
                                             (), inputs, scope)
            codes = frozenset(codes)
        return ResultRules(
            success=self.jmes(spec["success"], path + ("success",)) if "success" in spec else base.success,
            code=self.jmes(spec["code"], path + ("code",)) if "code" in spec else base.code,
            message=self.jmes(spec["message"], path + ("message",)) if "message" in spec else base.message,
            success_codes=codes,
            errors={**base.errors, **{str(k): self.rule(v, path + ("errors", k))
                                      for k, v in (spec.get("errors") or {}).items()}},
            default_error=self.rule(spec["default_error"], path + ("default_error",)) if "default_error" in spec
            else base.default_error,
            proofs=proofs,
        )

    def inherited_proofs(self, templates: Templates, inputs: frozenset[str] | None, scope: str, own: Any) -> None:
        """Check the file-level ``success_codes`` proofs an operation inherits against its inputs."""
        if inputs is None or (isinstance(own, dict) and "success_codes" in own):
            return
        for index, entry in enumerate((self.data.get("result") or {}).get("success_codes") or ()):
            if not isinstance(entry, dict) or not isinstance(entry.get("proves"), dict):
                continue
            for key, template in entry["proves"].items():
                where = ("result", "success_codes", index, "proves", key)
                self.inherited_leaves(templates, template, where, inputs, scope)

    def inherited_leaves(self, templates: Templates, template: Any, where: tuple, inputs: frozenset[str],
                         scope: str) -> None:
        """Report the variables of file-level ``template`` (at ``where``) that ``scope`` lacks."""
        for sub, leaf in _leaves(template):
            for message, hint in templates.check(leaf, inputs, None, scope, names=False):
                problem = Problem(self.file, line_of(self.data, where + sub), dotted(where + sub),
                                  f"{message} in {scope}", hint)
                if problem not in self.problems:
                    self.problems.append(problem)


#: What a multi-step operation may say for all its steps (each step merges over it), besides
#: its ``ledger`` reads, which every step sees.
_STEP_DEFAULTS = ("result", "echo", "ledger")
#: Variables whose value differs on every run: an id built from one changes on a rerun.
_VOLATILE = frozenset({"now", "now_ms"})
#: Variables whose value is the run's, not the transaction's: a rerun after a crash (the
#: sweeper's settlement, a provider's retry taking an orphan over) has another request_id.
_PER_RUN = frozenset({"request_id"})
#: Operations whose steps may move money, and the ids a wallet can dedupe them by.
_MONEY_IDS = {"bet": ("transaction_id",), "win": ("transaction_id",), "refund": ("transaction_id",
                                                                                  "bet_transaction_id"),
              "rollback": ("transaction_id", "bet_transaction_id")}


def _call(c: _Compiler, templates: Templates, name: str, spec: dict, where: tuple, inputs: frozenset[str] | None,
          scope: str, result: ResultRules, echo: tuple[Echo, ...], step: str | None = None,
          earlier: dict | None = None, ledger: tuple | None = None) -> Operation:
    """One legacy call (an operation's, or one step's of a multi-step operation)."""
    leaves: list = []

    def tree(key: str) -> Callable | None:
        return c.template_tree(templates, spec.get(key), where + (key,), inputs, scope, leaves, steps=earlier,
                               ledger=ledger)

    # Its leaf joins the request's: a condition that needs a variable the call lacks is the
    # mapping's problem (upstream_error, nothing sent), named like a body field's.
    when = tree("when") if spec.get("when") is not None else None
    return Operation(
        name=name,
        method=spec.get("method", "POST"),
        path=tree("path"),
        query=tree("query"),
        headers=tree("headers"),
        body=tree("body"),
        response={k: c.jmes(v, where + ("response", k), reads=True) for k, v in (spec.get("response") or {}).items()},
        result=c.result(spec.get("result"), where + ("result",), result, templates, inputs, scope),
        timeout=spec.get("timeout"),
        inputs=templates.variables([spec.get("path"), spec.get("query"), spec.get("headers"), spec.get("body")]),
        echo=c.echo(templates, spec.get("echo"), where + ("echo",), echo, inputs, scope),
        leaves=tuple(leaves),
        step=step,
        moves_money=bool(spec.get("moves_money", True)),
        keep={k: c.jmes(v, where + ("keep", k), reads=True) for k, v in (spec.get("keep") or {}).items()},
        ledger=ledger[3] if ledger else {},
        when=when,
    )


def _stepped(c: _Compiler, templates: Templates, name: str, spec: dict, where: tuple, inputs: frozenset[str] | None,
             scope: str, result: ResultRules, echo: tuple[Echo, ...], default_timeout: float,
             ledger: tuple | None = None) -> Operation:
    """A multi-step operation: its ``steps`` run in order, each reading the fields of the steps
    before it as ``steps.NAME.FIELD``; its answer is the last step's."""
    for key in spec:
        if key not in ("steps", *_STEP_DEFAULTS) and not str(key).startswith("x-"):
            c.problem(where + (key,), f"an operation with steps says {key!r} in each step; at its own level only "
                      f"{', '.join(_STEP_DEFAULTS)} (defaults for every step)")
    base_result = c.result(spec.get("result"), where + ("result",), result, templates, inputs, scope)
    base_echo = c.echo(templates, spec.get("echo"), where + ("echo",), echo, inputs, scope)
    steps: list[Operation] = []
    earlier: dict[str, frozenset[str]] = {}
    for index, step_spec in enumerate(spec["steps"]):
        at = where + ("steps", index)
        label = str(step_spec.get("name"))
        if label in earlier:
            c.problem(at + ("name",), f"step name {label!r} is already used by an earlier step")
        step_inputs = inputs | {"steps"} if inputs is not None else None
        step = _call(c, templates, f"{name}.{label}", step_spec, at, step_inputs, f"step {label!r} of {scope}",
                     base_result, base_echo, label, dict(earlier), ledger)
        _rerun_problems(c, templates, name, step, step_spec, at)
        if step.when is not None and index == len(spec["steps"]) - 1:
            c.problem(at + ("when",), "the last step cannot be skipped: its answer is the operation's",
                      "put the condition on an earlier step, and let the last one read steps.NAME (none when skipped)")
        if step.when is not None and templates.variables(step_spec.get("when")) & _VOLATILE:
            c.problem(at + ("when",), f"step {label!r} of {name} is not safe to rerun: whether it runs depends on "
                      "the time (now/now_ms), so a rerun may take another path than the first run")
        elif step.when is not None and templates.variables(step_spec.get("when")) & _PER_RUN:
            c.problem(at + ("when",), f"step {label!r} of {name} is not safe to rerun: whether it runs depends on "
                      "request_id, which a rerun after a crash does not share, so it may take another path")
        steps.append(step)
        earlier[label] = frozenset(map(str, step_spec.get("response") or {}))
    last = steps[-1]
    return Operation(
        name=name, method=last.method, path=None, query=None, headers=None, body=None,
        response=last.response, result=base_result,
        # The longest a run can take, for whoever waits for one (a concurrent copy, the queue's lease).
        timeout=sum(step.timeout or default_timeout for step in steps),
        inputs=frozenset().union(*(step.inputs for step in steps)), echo=(), steps=tuple(steps),
        keep={k: v for step in steps for k, v in step.keep.items()}, ledger=ledger[3] if ledger else {},
    )


def _rerun_problems(c: _Compiler, templates: Templates, operation: str, step: Operation, spec: dict,
                    where: tuple) -> None:
    """A redelivery reruns every step from the first: a step that may move money must send an
    id its wallet can dedupe by, the same on every run, and may take "already done" as its
    success only with proof that it is this transaction's."""
    ids = _MONEY_IDS.get(operation)
    if ids is None or not step.moves_money:
        return
    hint = ("a redelivery, a retry after a timeout or a queued delivery reruns every step from the first; "
            "send an id built from the transaction (e.g. \"{{ partner }}:{{ transaction_id }}:" + str(step.step)
            + "\") that the wallet dedupes by, or say moves_money: false for a call that changes nothing")
    problem = _dedupe_problem(templates, ids, spec)
    if problem is not None:
        c.problem(where, f"step {step.step!r} of {operation} is not safe to rerun: {problem}", hint)
    plain = sorted(step.result.success_codes - set(step.result.proofs))
    if plain and operation in ("bet", "win"):
        c.problem(where + ("result", "success_codes"),
                  f"step {step.step!r} of {operation} takes {', '.join(plain)} as success without proof: on a rerun "
                  "that answer may be an earlier attempt's or another transaction's",
                  "list it as {code: …, proves: {…}} with the fields of the answer that prove it is this transaction")


def _dedupe_problem(templates: Templates, ids: tuple[str, ...], spec: dict) -> str | None:
    """Why a legacy call that moves money cannot be deduped by its wallet when sent again
    (its id changes on every run, or it sends none), or None."""
    reads = [templates.variables(leaf) for _, leaf in _leaves([spec.get("path"), spec.get("query"),
                                                              spec.get("headers"), spec.get("body")])]
    with_ids = [names for names in reads if set(ids) & names]
    if any(names & _VOLATILE for names in with_ids):
        return "its transaction id changes on every run (it reads now/now_ms)"
    if any(names & _PER_RUN for names in with_ids):
        return ("its transaction id changes between runs (it reads request_id, which a rerun after a crash, by "
                "the sweeper or a provider's retry, does not share)")
    if not with_ids:
        return f"it sends nothing the wallet can dedupe it by ({' or '.join(ids)})"
    return None


def _resend_problems(c: _Compiler, templates: Templates, operation: str, spec: dict, where: tuple) -> None:
    """``upstream.idempotent: true`` lets the gateway send a win, refund or rollback again when
    its answer was lost (a queued redelivery), and a bet's rollback names the bet by what it
    sent: safe only if the wallet can tell a resend from a new transaction, by an id built
    from the transaction, the same on every run."""
    ids = _MONEY_IDS.get(operation)
    if ids is None or not spec.get("moves_money", True):
        return
    problem = _dedupe_problem(templates, ids, spec)
    if problem is not None:
        c.problem(where, f"operation {operation!r} is not safe to send again: {problem}, but upstream.idempotent "
                  "says a call whose answer was lost may be sent again",
                  "send an id built from the transaction (e.g. \"{{ partner }}:{{ transaction_id }}\") that the "
                  "wallet dedupes by, or say upstream.idempotent: false (a lost answer is then dead-lettered "
                  "for an operator, never sent again)")


def _refund_as_rollback_problems(c: _Compiler, templates: Templates, spec: dict, kept: frozenset[str]) -> None:
    """Without a ``rollback`` operation, ``refund`` is also the gateway's compensating rollback
    of a bet whose outcome was unknown; there, what the bet's answer gave (its
    ``legacy_transaction_id``, its kept values) is none. A call that names the bet only by
    those would tell the wallet no bet to undo, while the provider is told the bet was
    rolled back: the debit stays. It must also send the bet's own id (``bet_transaction_id``)."""
    answer_fields = kept | {"legacy_transaction_id"}
    calls = [(("operations", "refund"), spec)] + [
        (("operations", "refund", "steps", i), step) for i, step in enumerate(spec.get("steps") or ())
        if isinstance(step, dict)]
    for where, call in calls:
        leaves = list(_leaves({k: call.get(k) for k in ("path", "query", "headers", "body")}))
        if any("bet_transaction_id" in templates.variables(leaf) for _, leaf in leaves):
            continue
        for path, leaf in leaves:
            for name, field_name in sorted(templates.ledger_fields(leaf)):
                if name == "bet" and field_name in answer_fields:
                    c.problem(where + path,
                              f"'ledger.bet.{field_name}' is none when refund runs as the gateway's compensating "
                              "rollback of a bet whose outcome was unknown (this mapping has no rollback "
                              "operation): that call would name no bet to undo",
                              "add a rollback operation that names the bet by what the bet sent "
                              "(\"{{ partner }}:{{ bet_transaction_id }}\"), as mappings/betref-wallet.yaml does, "
                              "or send bet_transaction_id in this call too")


def _kept_proof_problems(c: _Compiler, op: Operation, spec: dict, where: tuple) -> None:
    """A one-call bet that keeps values of its answer may take an "already done" code as its
    success only with proof: unproven, the answer may be another transaction's, and its kept
    values (that bet's wallet id) would be what a later win credits or a refund cancels.
    (A bet's steps are held to proof for every success code: ``_rerun_problems``.)"""
    plain = sorted(op.result.success_codes - set(op.result.proofs))
    if not op.keep or not plain:
        return
    own = isinstance(spec.get("result"), dict) and "success_codes" in spec["result"]
    c.problem(where + ("result", "success_codes") if own else ("result", "success_codes"),
              f"operation {op.name!r} keeps values of its answer (keep: {', '.join(sorted(op.keep))}) but takes "
              f"{', '.join(plain)} as success without proof: that answer may be another transaction's, and a later "
              "win or refund would use its values",
              "list it as {code: …, proves: {…}} with the fields of the answer that prove it is this bet")


def _kept_names(c: _Compiler, data: dict) -> frozenset[str]:
    """The names the ``bet`` operation keeps (``keep:``, its own or its steps'). ``keep`` is a
    bet's only: the ledger keeps no other operation's answer for later reads."""
    names: set[str] = set()
    for op_name, spec in (data.get("operations") or {}).items():
        if not isinstance(spec, dict):
            continue
        calls = [(("operations", op_name), spec)] + [
            (("operations", op_name, "steps", i), step) for i, step in enumerate(spec.get("steps") or ())
            if isinstance(step, dict)]
        for where, call in calls:
            for key in call.get("keep") or {}:
                if op_name != "bet":
                    c.problem(where + ("keep", key), f"only the bet operation keeps values ({op_name!r} does not)",
                              "a win or refund reads what its bet kept: ledger.bet.NAME, ledger.round_bet.NAME")
                elif key in ledger_names.reserved():
                    c.problem(where + ("keep", key), f"{key!r} is a ledger field already",
                              f"choose another name; every ledger read has: {', '.join(sorted(ledger_names.reserved()))}")
                else:
                    names.add(str(key))
    return frozenset(names)


def _ledger_reads(c: _Compiler, name: str, spec: dict, where: tuple, kept: frozenset[str]) -> tuple | None:
    """An operation's ``ledger:`` declaration, checked, as the ``ledger`` argument of
    ``Templates.check``: ``(declared name -> fields, names it may declare, operation, name ->
    ErrorRule or None)``; None for an operation that can read nothing of the ledger."""
    allowed = tuple(n for n, ops in ledger_names.READS.items() if name in ops)
    declared = spec.get("ledger") if isinstance(spec, dict) else None
    if not allowed:
        if declared:
            c.problem(where + ("ledger",), f"operation {name!r} reads nothing of the ledger",
                      "ledger.bet is for refund and rollback, ledger.round_bet for win")
        return None
    fields, rules = {}, {}
    for key, value in (declared or {}).items():
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            c.problem(where + ("ledger", key), f"operation {name!r} cannot read ledger.{key}",
                      (f"did you mean {close[0]!r}? " if close else "") + f"it can read: {', '.join(allowed)}")
            continue
        fields[key] = ledger_names.fields_of(key, kept)
        rules[key] = c.rule(value["missing"], where + ("ledger", key, "missing")) if isinstance(value, dict) else None
    return fields, allowed, name, rules


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

    result = c.result(data.get("result"), ("result",), None, templates)  # proofs: checked per operation below
    echo = c.echo(templates, data.get("echo"), ("echo",))  # its variables: checked per operation below
    extra = frozenset(map(str, data.get("extra_inputs") or ()))
    launch_inputs: frozenset | None = None
    if data["face"] == "platform":
        known = {name: wallet_inputs(name, extra) for name in data["operations"]}
    else:
        known, launch_inputs = provider_inputs(data, extra)
    operations: dict[str, Operation] = {}
    broken: set[str] = set()  # reported already: not "missing" too
    kept = _kept_names(c, data) if data["face"] == "platform" else frozenset()
    for name, spec in data["operations"].items():
        where = ("operations", name)
        inputs, scope = known.get(name), f"operation {name!r}"
        ledger = _ledger_reads(c, name, spec, where, kept) if data["face"] == "platform" else None
        if ledger is not None and inputs is not None:
            inputs = inputs | {"ledger"}
        if "steps" in spec:
            operations[name] = _stepped(c, templates, name, spec, where, inputs, scope, result, echo,
                                        float(data["upstream"].get("timeout", 2.0)), ledger)
        elif "path" not in spec:
            c.problem(where, "give 'path' (one legacy call) or 'steps' (several, in order)")
            broken.add(name)
            continue
        else:
            operations[name] = _call(c, templates, name, spec, where, inputs, scope, result, echo, ledger=ledger)
            if data["face"] == "platform" and (data.get("upstream") or {}).get("idempotent") is True:
                _resend_problems(c, templates, name, spec, where)
            _kept_proof_problems(c, operations[name], spec, where)
        c.inherited_echo(templates, echo, inputs, scope, spec.get("echo"))
        c.inherited_proofs(templates, inputs, scope, spec.get("result"))
    if data["face"] == "platform" and "rollback" not in data["operations"] \
            and isinstance(data["operations"].get("refund"), dict):
        _refund_as_rollback_problems(c, templates, data["operations"]["refund"], kept)
    if data["face"] == "platform":
        for name in PLATFORM_OPERATIONS:
            if name in broken:
                continue
            if name not in operations:
                c.problem(("operations",), f"missing operation {name!r}; a platform wallet mapping needs "
                          f"{', '.join(PLATFORM_OPERATIONS)}")
            elif name != "refund" and name in operations and "balance" not in operations[name].response:
                c.problem(("operations", name, "response"), "missing 'balance': JMESPath to the balance after the call")
    provider = None
    if data["face"] == "provider":
        provider = compile_provider(c, data, templates, operations, _jmespath_options(functions), codec, signer,
                                    launch_inputs)
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
        reuse_connections=_reuse_connections(upstream, operations),
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
