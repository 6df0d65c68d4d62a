"""Simple template expressions run as closures; they must mean exactly what Jinja means.

Every expression of the shipped mappings, and edge-case expressions, is rendered both
ways over contexts with values present, None, Decimal, and missing (StrictUndefined);
results, Undefined names and raised error types must agree.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import Undefined, nodes

from gateway.engine.templating import _SINGLE_EXPR, Templates
from gateway.engine.templating import TemplateError as JinjaTemplateError

ROOT = Path(__file__).resolve().parent.parent


def _leaves(node, found: list) -> list:
    if isinstance(node, dict):
        for value in node.values():
            _leaves(value, found)
    elif isinstance(node, list):
        for value in node:
            _leaves(value, found)
    elif isinstance(node, str) and (m := _SINGLE_EXPR.match(node.strip())) and "{%" not in node:
        found.append(m.group("expr").strip())
    return found


MAPPING_EXPRESSIONS = sorted({expr for path in (ROOT / "mappings").glob("*.yaml")
                              for expr in _leaves(yaml.safe_load(path.read_text()).get("operations") or {}, [])})
#: The benchmarked mapping: every one of its expressions must take the fast path.
HUB88_EXPRESSIONS = sorted(set(_leaves(yaml.safe_load((ROOT / "mappings" / "hub88-wallet.yaml").read_text())
                                       ["operations"], [])))
EDGE_EXPRESSIONS = [
    "x", "x | default(y)", "x | default(false)", "x | d('z', true)", "x == 'a'", "x != 1", "x < 2", "x >= y",
    "x | scaled(100000)", "x | decimal(2)", "x | uuid5", "x | md5", "'const'", "42", "none", "true",
    "range", "x | default(range)", "x.y", "x | string", "x ~ y", "-x", "x | default(y) | default('z')",
]
VALUES = st.sampled_from([None, "", "a", "EUR", 0, 1, 2, Decimal("1.50"), Decimal("-2"), True, False, [1], {"y": 1}])
NAMES = ["x", "y", "player_id", "session_id", "amount", "legacy_amount", "type", "finished", "round_id",
         "transaction_id", "bet_transaction_id", "request_id", "game_id", "currency", "partner", "now_ms"]


def _templates(expr: str) -> Templates:
    """Builtin filters, plus a pure stand-in for any adapter filter a mapping uses."""
    templates = Templates()
    for node in templates.env.parse("{{ " + expr + " }}").find_all(nodes.Filter):
        templates.env.filters.setdefault(node.name, lambda value, *args: (value, args))
    return templates


def _outcome(render, ctx):
    try:
        value = render(ctx)
    except Exception as exc:  # noqa: BLE001 - the error type is the outcome compared
        return ("raised", type(exc).__name__)
    if isinstance(value, Undefined):
        return ("undefined", type(value).__name__, value._undefined_name)
    return ("value", type(value).__name__, value)


@pytest.mark.parametrize("expr", MAPPING_EXPRESSIONS + EDGE_EXPRESSIONS)
@settings(max_examples=60, deadline=None)
@given(ctx=st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=8))
def test_closure_means_what_jinja_means(expr, ctx):
    templates = _templates(expr)
    jinja = templates.env.compile_expression(expr, undefined_to_none=False)
    fast = templates.compile_value("{{ " + expr + " }}")
    assert _outcome(fast, dict(ctx)) == _outcome(jinja, dict(ctx))


TEXT_TEMPLATES = ["{{ x }}:{{ y }}", "bet {{ x }}", "{{ x | default('n') }}-{{ y == 1 }}!", "a{{ 'b' }}c{{ 3 }}",
                  "{{ x }}\n{{ y }}\n", "{{ x }} {{ y }}\n\n", "  {{ x }} {{ y }}  ", "{{ x.y }} {{ y }}", "{% if x %}a{% endif %}{{ y }}",
                  "{{ x ~ y }}:{{ y }}"]


@pytest.mark.parametrize("source", TEXT_TEMPLATES)
@settings(max_examples=60, deadline=None)
@given(ctx=st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=8))
def test_text_templates_render_as_jinja_renders_them(source, ctx):
    templates = Templates()
    fast = templates.compile_value(source)
    assert _outcome(fast, dict(ctx)) == _outcome(templates.env.from_string(source).render, dict(ctx))


def test_text_templates_of_simple_parts_skip_jinja():
    templates = Templates()
    assert templates.compile_value("{{ partner }}:{{ transaction_id }}").__name__ == "<lambda>"
    assert templates.compile_value("{% if x %}a{% endif %}").__name__ == "render"  # Jinja's own


def test_hub88_expressions_take_the_fast_path():
    assert HUB88_EXPRESSIONS
    for expr in HUB88_EXPRESSIONS:
        compiled = _templates(expr).compile_value("{{ " + expr + " }}")
        assert not hasattr(compiled, "_template"), f"{expr!r} still renders through Jinja"


def test_attribute_access_stays_in_the_sandbox():
    compiled = Templates().compile_value("{{ x.__class__ }}")
    assert hasattr(compiled, "_template")
    with pytest.raises(JinjaTemplateError):
        Templates().compile_value("{{ x | no_such_filter }}")
