"""Jinja2 request templates, sandboxed and compiled once at load.

A mapping writes a legacy request as a YAML tree whose string leaves are templates.
A leaf that is a single expression keeps its native type (a Decimal amount stays a
number for JSON); any other leaf renders to a string. Encoding (JSON, form, XML) is
the codec's job afterwards, so a player name such as ``Tom & "Jerry" <3`` can never
break the legacy request, and the sandbox stops it from executing anything.

    compile_tree({"amount": "{{ amount | scaled(100000) }}", "memo": "bet {{ round_id }}"})
    -> renderer; renderer({"amount": Decimal("1.5"), "round_id": "r1"})
    -> {"amount": 150000, "memo": "bet r1"}

The simplest single expressions — a name, a constant, a plain filter or one comparison
of those, which is what most legacy bodies are made of — run as small Python closures
with exactly Jinja's meaning (same lookup order, same Undefined objects, same filter
functions), skipping Jinja's per-call context set-up; everything else runs in Jinja.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import hmac
import operator
import re
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined, UndefinedError, meta, nodes
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway import money
from gateway.engine import ledger_names

_SINGLE_EXPR = re.compile(r"^\{\{(?P<expr>(?:(?!\}\}).)*)\}\}$", re.S)

#: Namespace for UUIDv5 ids of legacy objects (stable across restarts and replicas).
IGSP_NAMESPACE = uuid.UUID("5b0c3a9e-7f1d-5e57-9a8b-1c2d3e4f5a6b")


def _decimal(value: Any, places: int | None = None) -> str:
    amount = Decimal(value) if not isinstance(value, Decimal) else value
    if places is not None:
        amount = amount.quantize(Decimal(1).scaleb(-places))
    return format(amount, "f")


def _from_percent(value: Any) -> Decimal:
    """``"96.50"`` (a percentage, as text or number) -> ``Decimal("0.965")``, exactly."""
    if isinstance(value, (bool, float)):
        raise ValueError(f"not an exact percentage: {value!r}")
    fraction = (Decimal(str(value).strip().rstrip("%")) / 100).normalize()
    return fraction.quantize(Decimal(1)) if fraction.as_tuple().exponent > 0 else fraction


def _timestamp_ms(value: datetime | None = None) -> int:
    value = value or datetime.now(timezone.utc)
    return int(value.timestamp() * 1000)


def _strftime(value: datetime, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> str:
    return value.astimezone(timezone.utc).strftime(fmt)


BUILTIN_FILTERS: dict[str, Callable] = {
    "minor": lambda amount, currency: money.to_minor(Decimal(amount), currency),
    "from_minor": lambda units, currency: money.from_minor(units, currency),
    "scaled": lambda amount, scale: money.to_scaled(Decimal(amount), int(scale)),
    "decimal": _decimal,
    "from_percent": _from_percent,
    "md5": lambda text: hashlib.md5(str(text).encode()).hexdigest(),  # noqa: S324 - legacy APIs ask for it
    "sha256": lambda text: hashlib.sha256(str(text).encode()).hexdigest(),
    "hmac_sha256": lambda text, key: hmac.new(str(key).encode(), str(text).encode(), hashlib.sha256).hexdigest(),
    "b64encode": lambda text: base64.b64encode(text if isinstance(text, bytes) else str(text).encode()).decode(),
    "uuid5": lambda text: str(uuid.uuid5(IGSP_NAMESPACE, str(text))),
    "timestamp_ms": _timestamp_ms,
    "strftime": _strftime,
}


_COMPARE = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "gt": operator.gt,
            "lteq": operator.le, "gteq": operator.ge}
#: Names Jinja gives a meaning of its own inside templates: always rendered by Jinja.
_SPECIAL_NAMES = frozenset({"self", "loop", "caller", "varargs", "kwargs", "super"})


class Templates:
    """One sandboxed Jinja2 environment per mapping (filters differ by adapter)."""

    def __init__(self, filters: dict[str, Callable] | None = None):
        self.env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        self.env.filters.update(BUILTIN_FILTERS)
        self.env.filters.update(filters or {})

    def compile_value(self, value: Any) -> Callable[[dict], Any]:
        """Compile one leaf; raise TemplateError (the caller adds file/line/path)."""
        if not isinstance(value, str) or "{" not in value:
            return lambda ctx, _v=value: _v
        match = _SINGLE_EXPR.match(value.strip())
        if match and "{%" not in value:
            source = match.group("expr").strip()
            expr = self.env.compile_expression(source, undefined_to_none=False)
            return self._plain(Parser(self.env, source, state="variable").parse_expression()) or expr
        template = self.env.from_string(value)
        return self._concat(self.env.parse(value)) or template.render

    def _concat(self, tree: nodes.Template) -> Callable[[dict], str] | None:
        """Text around simple expressions (``"{{ partner }}:{{ transaction_id }}"``) as a
        closure that joins the parts the way Jinja's rendering does (``str`` of each value;
        a missing name raises, StrictUndefined), or None to let Jinja render it."""
        if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
            return None
        parts: list = []
        for node in tree.body[0].nodes:
            if isinstance(node, nodes.TemplateData):
                parts.append(node.data)
                continue
            closure = self._plain(node)
            if closure is None:
                return None
            parts.append(closure)
        return lambda ctx: "".join([part if part.__class__ is str else str(part(ctx)) for part in parts])

    def _plain(self, node: nodes.Node) -> Callable[[dict], Any] | None:
        """A closure for ``node`` with Jinja's exact semantics, or None to let Jinja run it."""
        env = self.env
        if isinstance(node, nodes.Const):
            return lambda ctx, _v=node.value: _v
        if isinstance(node, nodes.Name) and node.ctx == "load" and node.name not in _SPECIAL_NAMES:
            name, env_globals = node.name, env.globals

            def lookup(ctx: dict) -> Any:
                # Jinja's order: the render variables, then the globals, else Undefined.
                if name in ctx:
                    return ctx[name]
                if name in env_globals:
                    return env_globals[name]
                return env.undefined(name=name)

            return lookup
        if (isinstance(node, nodes.Filter) and node.node is not None and not node.kwargs
                and node.dyn_args is None and node.dyn_kwargs is None):
            func = env.filters.get(node.name)
            if func is None or getattr(func, "jinja_pass_arg", None) is not None:
                return None  # filters that take the context or environment stay in Jinja
            value, args = self._plain(node.node), [self._plain(arg) for arg in node.args]
            if value is None or any(arg is None for arg in args):
                return None
            # The usual arities without building an argument list on every call
            # (``default(x)``, ``scaled(100000)``, ``minor(currency)``).
            if not args:
                return lambda ctx: func(value(ctx))
            if len(args) == 1:
                arg = args[0]
                return lambda ctx: func(value(ctx), arg(ctx))
            return lambda ctx: func(value(ctx), *[arg(ctx) for arg in args])
        if isinstance(node, nodes.Compare) and len(node.ops) == 1 and node.ops[0].op in _COMPARE:
            left, right, op = self._plain(node.expr), self._plain(node.ops[0].expr), _COMPARE[node.ops[0].op]
            if left is None or right is None:
                return None
            return lambda ctx: op(left(ctx), right(ctx))
        return None

    def variables(self, tree: Any) -> frozenset[str]:
        """The context names the templates of ``tree`` read (what a request sends of its inputs).
        A leaf that does not parse reads nothing here: compile_tree reports it."""
        if isinstance(tree, dict):
            return frozenset().union(*(self.variables(v) for v in tree.values()))
        if isinstance(tree, list):
            return frozenset().union(*(self.variables(v) for v in tree))
        if not isinstance(tree, str) or "{" not in tree:
            return frozenset()
        try:
            return frozenset(meta.find_undeclared_variables(self.env.parse(tree)))
        except TemplateError:
            return frozenset()

    def ledger_fields(self, value: Any) -> frozenset[tuple[str, str]]:
        """The ``(NAME, FIELD)`` of every ``ledger.NAME.FIELD`` template ``value`` reads."""
        if not isinstance(value, str) or "{" not in value:
            return frozenset()
        try:
            ast = self.env.parse(value)
        except TemplateError:
            return frozenset()
        return frozenset((node.node.attr, node.attr) for node in ast.find_all(nodes.Getattr)
                         if isinstance(node.node, nodes.Getattr) and isinstance(node.node.node, nodes.Name)
                         and node.node.node.name == "ledger")

    def compile_tree(self, tree: Any, on_error: Callable[[tuple, Exception], None], path: tuple = (),
                     leaves: list | None = None) -> Callable[[dict], Any]:
        """Compile every leaf of a dict/list tree; report each broken one through ``on_error``.
        ``leaves``, when given, receives ``(path, renderer)`` of every leaf (for ``diagnose``)."""
        if isinstance(tree, dict):
            parts = [(key, self.compile_tree(value, on_error, path + (key,), leaves)) for key, value in tree.items()]

            def render_dict(ctx: dict) -> dict:
                # A loop, not a dict comprehension: no function frame of its own per call.
                out = {}
                for key, render in parts:
                    out[key] = render(ctx)
                return out

            return render_dict
        if isinstance(tree, list):
            items = [self.compile_tree(value, on_error, path + (i,), leaves) for i, value in enumerate(tree)]
            return lambda ctx: [render(ctx) for render in items]
        try:
            render = self.compile_value(tree)
        except TemplateError as exc:
            on_error(path, exc)
            render = lambda ctx: None  # noqa: E731
        if leaves is not None:
            leaves.append((path, render))
        return render

    # -- static checks (at load: gateway/engine/mapping.py) ---------------------------------------
    def check(self, value: Any, inputs: frozenset[str] | None = None, secrets: frozenset[str] | None = None,
              scope: str = "", *, names: bool = True, steps: dict | None = None,
              ledger: tuple | None = None) -> list[tuple[str, str | None]]:
        """What is wrong in template ``value`` that Jinja would only say when it runs:
        ``[(message, hint)]`` for each unknown filter or test, each variable not among
        ``inputs`` (None: not checked) and each ``secrets.NAME`` not among ``secrets``, in any
        form (``{{ x }}``, ``{% if x %}``, a filter's arguments). ``scope`` names what the
        inputs are (for hints); ``names=False`` reports variables only. ``steps`` (a step of a
        multi-step operation: earlier step -> its response fields) checks ``steps.NAME.FIELD``;
        ``ledger`` (``(declared name -> its fields, names the operation may declare, operation)``)
        checks ``ledger.NAME.FIELD``. A leaf that does not parse is left to ``compile_value``."""
        if not isinstance(value, str) or "{" not in value:
            return []
        try:
            ast = self.env.parse(value)
        except TemplateError:
            return []
        found: list[tuple[str, str | None]] = []
        stubs = self.env.overlay()
        stubs.filters, stubs.tests = dict(self.env.filters), dict(self.env.tests)  # an overlay shares them
        for kind, node_type, table, stub_table in (("filter", nodes.Filter, self.env.filters, stubs.filters),
                                                   ("test", nodes.Test, self.env.tests, stubs.tests)):
            for node in ast.find_all(node_type):
                if node.name in table or node.name in stub_table:
                    continue
                stub_table[node.name] = _stub
                if names:
                    found.append((f"unknown {kind} {node.name!r}", self._available(kind, node.name, table)))
        if inputs is not None:
            # Unknown filters and tests stubbed: Jinja's own analysis refuses them, scoping
            # (``{% set %}``, ``{% for %}``) is its to judge.
            undeclared = meta.find_undeclared_variables(stubs.parse(value)) - inputs - set(self.env.globals)
            for name in sorted(undeclared):
                found.append((f"{name!r} is undefined", _did_you_mean(name, inputs, scope)))
        if steps is not None:
            found += _step_problems(ast, steps)
        if ledger is not None:
            found += _ledger_problems(ast, *ledger[:3])
        if secrets is not None and (inputs is None or "secrets" in inputs):
            for name in sorted(_secret_names(ast) - secrets):
                known = ", ".join(sorted(secrets)) or "none"
                close = difflib.get_close_matches(name, sorted(secrets), n=1, cutoff=0.75)
                found.append((f"'secrets.{name}' is undefined",
                              (f"did you mean 'secrets.{close[0]}'? " if close else "")
                              + f"the file's secrets: {known}"))
        return found

    def _available(self, kind: str, name: str, table: dict) -> str:
        ours = sorted(set(table) - set(_JINJA_DEFAULTS[kind]))
        # The gateway's own first, and more leniently (md6 -> md5), then Jinja2's.
        close = (difflib.get_close_matches(name, ours, n=1, cutoff=0.6)
                 or difflib.get_close_matches(name, sorted(table), n=1, cutoff=0.75))
        text = f"did you mean {close[0]!r}? " if close else ""
        if kind == "filter":
            text += (f"filters available here: {', '.join(ours)} (the gateway's and its adapters'), and Jinja2's: "
                     f"{', '.join(sorted(_JINJA_DEFAULTS[kind]))}; an adapter's filters need it in 'extensions'")
        else:
            text += f"tests available here: {', '.join(sorted(table))}"
        return text


def _step_problems(ast: nodes.Template, steps: dict) -> list[tuple[str, str | None]]:
    """``steps.NAME`` must be an earlier step, ``steps.NAME.FIELD`` one of its response fields."""
    found = []
    earlier = "; ".join(f"{name} ({', '.join(sorted(fields)) or 'no response fields'})"
                        for name, fields in steps.items()) or "none: this is the first step"
    seen = set()
    for node in ast.find_all(nodes.Getattr):
        if not (isinstance(node.node, nodes.Name) and node.node.name == "steps") or node.attr in seen:
            continue
        seen.add(node.attr)
        if node.attr not in steps:
            close = difflib.get_close_matches(node.attr, list(steps), n=1, cutoff=0.75)
            found.append((f"'steps.{node.attr}' is undefined",
                          (f"did you mean 'steps.{close[0]}'? " if close else "")
                          + f"the steps before this one: {earlier}"))
    for node in ast.find_all(nodes.Getattr):
        inner = node.node
        if (isinstance(inner, nodes.Getattr) and isinstance(inner.node, nodes.Name) and inner.node.name == "steps"
                and inner.attr in steps and node.attr not in steps[inner.attr]):
            fields = sorted(steps[inner.attr])
            close = difflib.get_close_matches(node.attr, fields, n=1, cutoff=0.75)
            found.append((f"'steps.{inner.attr}.{node.attr}' is undefined",
                          (f"did you mean 'steps.{inner.attr}.{close[0]}'? " if close else "")
                          + f"step {inner.attr!r} reads: {', '.join(fields) or 'nothing (no response)'}"))
    return found


def _ledger_problems(ast: nodes.Template, declared: dict, allowed: tuple, operation: str) -> list:
    """``ledger.NAME`` must be declared in the operation's ``ledger:``, ``ledger.NAME.FIELD`` one
    of that read's fields (gateway/engine/ledger_names.py)."""
    found, seen = [], set()
    for node in ast.find_all(nodes.Getattr):
        if not (isinstance(node.node, nodes.Name) and node.node.name == "ledger") or node.attr in seen:
            continue
        seen.add(node.attr)
        if node.attr in declared:
            continue
        if node.attr in allowed:
            found.append((f"'ledger.{node.attr}' is read but not declared",
                          f"it is empty {ledger_names.EMPTY[node.attr]}; declare what {operation!r} does then: "
                          f"ledger: {{{node.attr}: optional}} (the templates handle an empty read: a step's when, "
                          f"default) or ledger: {{{node.attr}: {{missing: ERROR}}}} (fail with that error, nothing sent)"))
            continue
        close = difflib.get_close_matches(node.attr, list(allowed), n=1, cutoff=0.6)
        found.append((f"'ledger.{node.attr}' is undefined",
                      (f"did you mean 'ledger.{close[0]}'? " if close else "")
                      + f"operation {operation!r} can read: {', '.join('ledger.' + n for n in allowed) or 'nothing'}"))
    for node in ast.find_all(nodes.Getattr):
        inner = node.node
        if (isinstance(inner, nodes.Getattr) and isinstance(inner.node, nodes.Name) and inner.node.name == "ledger"
                and inner.attr in declared and node.attr not in declared[inner.attr]):
            fields = sorted(declared[inner.attr])
            close = difflib.get_close_matches(node.attr, fields, n=1, cutoff=0.6)
            found.append((f"'ledger.{inner.attr}.{node.attr}' is undefined",
                          (f"did you mean 'ledger.{inner.attr}.{close[0]}'? " if close else "")
                          + f"ledger.{inner.attr} has: {', '.join(fields)} (a value of the bet's answer is kept "
                            "by the bet operation's keep:)"))
    return found


def _stub(*args: Any, **kwargs: Any) -> None:
    return None


def _secret_names(ast: nodes.Template) -> set[str]:
    """``NAME`` of every ``secrets.NAME`` / ``secrets['NAME']`` in a parsed template."""
    names = set()
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if not (isinstance(node.node, nodes.Name) and node.node.name == "secrets"):
            continue
        if isinstance(node, nodes.Getattr):
            names.add(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            names.add(node.arg.value)
    return names


#: Where a mapping declares variables beyond the gateway's (gateway/engine/inputs.py).
EXTRA_INPUTS_HINT = "fields callers send beyond iGSP's, or that a run flow adds, are declared in extra_inputs"


def _did_you_mean(name: str, inputs: frozenset[str], scope: str) -> str:
    close = difflib.get_close_matches(name, sorted(inputs), n=1, cutoff=0.75)
    text = f"did you mean {close[0]!r}? " if close else ""
    text += f"{scope or 'these templates'} can read: {', '.join(sorted(inputs))}"
    return text + ("; " + EXTRA_INPUTS_HINT if scope.startswith(("operation", "launch")) else "")


def diagnose(leaves: list | tuple, context: dict) -> tuple[Any, str] | None:
    """``(where, "'x' is undefined")`` of the first of ``leaves`` (``(where, renderer)`` pairs)
    that needs a variable ``context`` lacks, or None. For error paths only: it renders again."""
    for where, render in leaves:
        try:
            value = render(context)
        except UndefinedError as exc:
            return where, str(exc.message or exc)
        except Exception:  # noqa: BLE001, S112 - another failure: not a missing variable
            continue
        if isinstance(value, Undefined):  # a single expression hands the Undefined itself on
            return where, value._undefined_message
    return None


_JINJA_DEFAULTS = {"filter": ImmutableSandboxedEnvironment().filters, "test": ImmutableSandboxedEnvironment().tests}


__all__ = ["BUILTIN_FILTERS", "IGSP_NAMESPACE", "Templates", "TemplateError", "diagnose"]
