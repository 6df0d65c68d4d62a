"""The compiled fast path of ``gateway.spec`` never accepts what jsonschema refuses.

``SpecValidators.check`` first asks a fastjsonschema function built from the same spec;
only its "valid" is trusted, every refusal goes to jsonschema. So one property must hold
for every component of both spec files: fast-valid implies jsonschema-valid. Instances
are the spec's own examples with fields replaced, removed or added by hypothesis, with
values chosen to sit on the edges (decimals, bools as numbers, patterns with a newline).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import fastjsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import IgspError
from gateway.spec import HOOKS_SPEC, PROVIDER_SPEC, SpecValidators

EDGE_VALUES = [
    None, True, False, 0, 1, -1, 1.0, 2.5, Decimal("-0.01"), Decimal("0"), Decimal("1.50"), Decimal("1E+2"),
    "", "x", "EUR", "eur", "EUR\n", "EURO", "x" * 255, "x" * 256, "bet", "win", "refund", "balance", "tip",
    "2025-10-17T12:03:41Z", "2025-10-17 12:03:41", "not a date", "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    "https://example.com/x.png", "slot", [], ["x"], {}, {"x": 1},
]
json_values = st.recursive(
    st.one_of(st.sampled_from(EDGE_VALUES), st.integers(), st.text(max_size=8),
              st.decimals(allow_nan=False, allow_infinity=False, places=3)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)


def _examples(node: Any, found: list) -> list:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("example", "value") and isinstance(value, dict):
                found.append(value)
            elif key == "examples" and isinstance(value, list):
                found.extend(v for v in value if isinstance(v, dict))
            _examples(value, found)
    elif isinstance(node, list):
        for item in node:
            _examples(item, found)
    return found


SPECS = {name: SpecValidators(name) for name in (HOOKS_SPEC, PROVIDER_SPEC)}
CASES = [(name, component) for name, spec in SPECS.items() for component in spec.document["components"]["schemas"]]


def _properties(spec: SpecValidators, component: str) -> list[str]:
    schema = spec.document["components"]["schemas"][component]
    names = set(schema.get("properties", {}))
    for branch in schema.get("oneOf", []) + schema.get("allOf", []):
        target = branch.get("$ref", "").rsplit("/", 1)[-1]
        names |= set(spec.document["components"]["schemas"].get(target, {}).get("properties", {}))
    return sorted(names) or ["x"]


@pytest.mark.parametrize(("spec_name", "component"), CASES)
def test_every_component_has_a_fast_validator(spec_name, component):
    spec = SPECS[spec_name]
    spec.validator(component)
    assert spec._fast[component] is not None


@pytest.mark.parametrize(("spec_name", "component"), CASES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_valid_implies_jsonschema_valid(spec_name, component, data):
    spec = SPECS[spec_name]
    slow = spec.validator(component)
    fast = spec._fast[component]
    bases = _examples(spec.document, []) + [{}]
    instance = dict(data.draw(st.sampled_from(bases)))
    names = _properties(spec, component) + ["extra"]
    for _ in range(data.draw(st.integers(0, 3))):
        key = data.draw(st.sampled_from(names))
        if data.draw(st.booleans()) and key in instance:
            del instance[key]
        else:
            instance[key] = data.draw(json_values)
    try:
        fast(instance)
    except fastjsonschema.JsonSchemaValueException:
        fast_ok = False
    else:
        fast_ok = True
    slow_ok = slow.is_valid(instance)
    if fast_ok:
        assert slow_ok, f"fast path accepted what jsonschema refuses: {instance!r}"
    # And check() answers exactly what jsonschema alone would.
    try:
        spec.check(component, instance)
    except IgspError as exc:
        assert not slow_ok and exc.code == "invalid_request"
    else:
        assert slow_ok


def test_bet_hook_edges_still_refused_with_the_field_named():
    spec = SPECS[HOOKS_SPEC]
    bet = {"action": "bet", "player_id": "p1", "amount": Decimal("1.5"), "currency": "EUR", "game_id": "g",
           "transaction_id": "t", "session_id": "s", "type": "bet"}
    spec.check("BetRequest", bet)
    for change, message in [({"amount": Decimal("-1")}, "amount: must be >= 0"),
                            ({"amount": True}, "amount: must be of type number"),
                            ({"currency": "eur"}, "currency: must match ^[A-Z]{3}$"),
                            ({"player_id": ""}, "player_id: must have at least 1 characters")]:
        with pytest.raises(IgspError) as caught:
            spec.check("BetRequest", {**bet, **change})
        assert caught.value.message == message
