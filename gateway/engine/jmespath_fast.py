"""Compiled closures for the simplest JMESPath expressions, with jmespath's exact meaning.

Legacy answers are read with expressions such as ``balance``, ``data.balance`` or
``status == 'RS_OK'``. jmespath walks its AST with a fresh interpreter on every search
(~2–5 µs each, four or more per legacy call); these shapes become plain closures built
from the same AST and the same comparison functions. Anything else (functions,
projections, filters, ordering comparisons) runs in jmespath as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jmespath.visitor import TreeInterpreter

_COMPARE = {op: TreeInterpreter.COMPARATOR_FUNC[op] for op in ("eq", "ne")}
_MISSING = object()


def _closure(node: dict) -> Callable[[Any], Any] | None:
    kind = node.get("type")
    if kind == "field":
        name = node["value"]

        def field(value: Any) -> Any:
            try:
                return value.get(name)
            except AttributeError:
                return None

        return field
    if kind == "subexpression":
        steps = [_closure(child) for child in node["children"]]
        if any(step is None for step in steps):
            return None

        def chain(value: Any) -> Any:
            for step in steps:
                value = step(value)
            return value

        return chain
    if kind == "literal":
        literal = node["value"]
        return lambda value: literal
    if kind == "comparator" and node["value"] in _COMPARE:
        left, right = _closure(node["children"][0]), _closure(node["children"][1])
        if left is None or right is None:
            return None
        compare = _COMPARE[node["value"]]
        return lambda value: compare(left(value), right(value))
    return None


def search(expression: Any, data: Any, options: Any = None) -> Any:
    """``expression.search(data, options)``, through a closure when the shape allows."""
    fast = getattr(expression, "_igsp_closure", _MISSING)
    if fast is _MISSING:
        parsed = getattr(expression, "parsed", None)
        fast = _closure(parsed) if isinstance(parsed, dict) else None
        try:
            expression._igsp_closure = fast
        except AttributeError:
            pass  # an object without a __dict__: search it the slow way every time
    if fast is not None:
        return fast(data)
    return expression.search(data, options=options)
