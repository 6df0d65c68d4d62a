"""Closure-compiled JMESPath must answer exactly what jmespath answers.

Every expression of the shipped mappings plus edge shapes is searched both ways over
hypothesis-made documents (nested dicts and lists, numbers next to booleans, None).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import jmespath
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.engine import jmespath_fast

ROOT = Path(__file__).resolve().parent.parent


def _expressions(mapping: dict) -> set:
    """JMESPath strings of a mapping: its result rules and every operation's response."""
    found = set()
    operations = [op for op in (mapping.get("operations") or {}).values() if isinstance(op, dict)]
    for rules in [mapping.get("result") or {}] + [op.get("result") or {} for op in operations]:
        found.update(rules[k] for k in ("success", "code", "message") if isinstance(rules.get(k), str))
    for op in operations:
        found.update(v for v in (op.get("response") or {}).values() if isinstance(v, str))
    return found


def _mapping_expressions(path: Path) -> set:
    return _expressions(yaml.safe_load(path.read_text()))


MAPPING_EXPRESSIONS = sorted({e for path in (ROOT / "mappings").glob("*.yaml") for e in _mapping_expressions(path)})
#: The benchmarked mapping: every one of its result rules must get a closure.
HUB88_EXPRESSIONS = sorted(_mapping_expressions(ROOT / "mappings" / "hub88-wallet.yaml"))
EDGE_EXPRESSIONS = ["status", "data.balance", "data.wallet.amount", "status == 'RS_OK'", "code != `0`",
                    "ok == `true`", "code == `1`", "a == b", "`null`", "'lit'", "data.items[0]", "length(data)",
                    "status == 'OK' && code == `0`", "a < `1`", "[status, code]"]
KEYS = ["status", "code", "ok", "a", "b", "data", "balance", "wallet", "amount", "items", "request_uuid"]
scalars = st.one_of(st.none(), st.booleans(), st.sampled_from([0, 1, 2, 0.0, 1.0, Decimal("1"), "", "RS_OK", "OK", "0"]),
                    st.integers(-3, 3), st.text(max_size=4))
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
                         max_leaves=10)


def _outcome(fn):
    try:
        value = fn()
    except Exception as exc:  # noqa: BLE001 - the error type is the outcome compared
        return ("raised", type(exc).__name__)
    return ("value", type(value).__name__, value)


@pytest.mark.parametrize("source", MAPPING_EXPRESSIONS + EDGE_EXPRESSIONS)
@settings(max_examples=80, deadline=None)
@given(data=documents)
def test_closure_answers_what_jmespath_answers(source, data):
    compiled = jmespath.compile(source)
    fresh = jmespath.compile(source)  # a separate object, so the slow one never gets a closure
    assert _outcome(lambda: jmespath_fast.search(compiled, data)) == _outcome(lambda: fresh.search(data))


def test_simple_shapes_get_a_closure_and_others_do_not():
    for source in ("status", "data.balance", "status == 'RS_OK'", "code != `0`"):
        expression = jmespath.compile(source)
        jmespath_fast.search(expression, {})
        assert expression._igsp_closure is not None, source
    for source in ("length(data)", "data[0]", "a < `1`", "status == 'OK' && code == `0`"):
        expression = jmespath.compile(source)
        jmespath_fast.search(expression, {"data": [1]})
        assert expression._igsp_closure is None, source


def test_hub88_result_rules_are_compiled():
    assert HUB88_EXPRESSIONS
    for source in HUB88_EXPRESSIONS:
        expression = jmespath.compile(source)
        jmespath_fast.search(expression, {})
        assert expression._igsp_closure is not None, source
