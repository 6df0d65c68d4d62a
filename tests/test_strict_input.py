"""Strict input: a pattern matches the whole string, an amount fits the legacy unit, one
status per error code.

- every ``pattern`` the gateway checks (``spec/``, config and mapping schemas) is a full
  match: ``"JPY\\n"``, ``"EUR "``, ``"eur"`` are a 400 before anything is recorded or sent;
- an amount the legacy unit cannot hold is a 400 ``invalid_amount`` naming the limit,
  with the ledger and the wallet untouched; an amount exactly at the limit goes through;
- ``insufficient_funds`` (and every other code) has one status: the spec's examples, the
  README and ``gateway/errors.py`` agree.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
import yaml

from gateway.config import load_config
from gateway.errors import ConfigError, IgspError
from gateway.spec import HOOKS_SPEC, PROVIDER_SPEC, SpecValidators, hook_validators, provider_validators
from tests.support import ROOT

BET = {"action": "bet", "player_id": "p1", "amount": Decimal("1.50"), "currency": "EUR", "game_id": "g",
       "transaction_id": "t", "session_id": "s", "type": "bet"}
LAUNCH = {"game_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "player_id": "p1", "player_name": "n",
          "currency": "EUR", "session_id": "s", "balance": 1, "language": "en"}
NOT_WHOLE = ["JPY\n", "EUR ", " EUR", "eur", "\nEUR", "EUR\r\n", "EURO", "EU"]


# -- patterns: the whole string ----------------------------------------------------------------------

@pytest.mark.parametrize("currency", NOT_WHOLE)
def test_a_currency_must_be_the_whole_string(currency):
    spec = hook_validators()
    spec.check("BetRequest", BET)
    with pytest.raises(IgspError) as refused:
        spec.check("BetRequest", {**BET, "currency": currency})
    assert (refused.value.code, refused.value.status) == ("invalid_request", 400)
    assert refused.value.message == "currency: must match ^[A-Z]{3}$"  # the pattern as the spec writes it
    # Neither validator alone lets it through: the compiled fast path and jsonschema agree.
    assert not spec.validator("BetRequest").is_valid({**BET, "currency": currency})
    with pytest.raises(Exception):  # noqa: B017 - fastjsonschema's own exception type
        spec._fast["BetRequest"]({**BET, "currency": currency})


@pytest.mark.parametrize(("field", "value"), [("currency", "JPY\n"), ("language", "en\n"), ("language", "EN"),
                                              ("game_id", "3fa85f64-5717-4562-b3fc-2c963f66afa6\n")])
def test_launch_patterns_and_formats_are_whole_string(field, value):
    spec = provider_validators()
    spec.check("SessionRequest", LAUNCH)
    with pytest.raises(IgspError, match=f"{field}: must"):
        spec.check("SessionRequest", {**LAUNCH, field: value})


def test_a_date_time_ending_in_a_newline_is_no_date_time():
    spec = SpecValidators(PROVIDER_SPEC)
    provider = {"id": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "name": "Acme", "currencies": ["EUR"],
                "updated_at": "2025-10-17T12:03:41Z"}
    assert spec.validator("Provider").is_valid(provider)
    assert not spec.validator("Provider").is_valid({**provider, "updated_at": "2025-10-17T12:03:41Z\n"})


def _patterns(node, found: list) -> list:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                found.append(value)
            else:
                _patterns(value, found)
    elif isinstance(node, list):
        for item in node:
            _patterns(item, found)
    return found


@pytest.mark.parametrize("name", [HOOKS_SPEC, PROVIDER_SPEC])
def test_every_spec_pattern_is_written_anchored(name):
    """The rule is a full match either way; writing ``^…$`` keeps the files meaning the same to
    tools that apply JSON Schema's ``search``."""
    patterns = _patterns(SpecValidators(name).document, [])
    assert patterns
    assert all(p.startswith("^") and p.endswith("$") for p in patterns), patterns


def _config(tmp_path, **extra) -> dict:
    document = {"version": 1, "store": {"url": f"sqlite:///{tmp_path}/gw.db"}, "partners": [], **extra}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize(("extra", "where"), [
    ({"currencies": {"BTC\n": 8}}, "currencies"),
    ({"currencies": {"btc": 8}}, "currencies"),
    ({"currencies": {"USDT": 6}}, "currencies"),
    ({"store": {"url": "sqlite:///gw.db", "namespace": "igsp\n"}}, "store.namespace"),
    ({"store": {"url": "redis://127.0.0.1:1/0\n"}}, "store.url"),
    ({"platform_face": {"hooks_path": "/hooks\n"}}, "platform_face.hooks_path"),
    ({"partners": [{"id": "acme\n", "face": "platform", "mapping": "m.yaml", "api_key": "acme-key-0001",
                    "secrets": ["s" * 32]}]}, "partners[0].id"),
])
def test_config_patterns_are_whole_string(tmp_path, extra, where):
    with pytest.raises(ConfigError) as refused:
        load_config(_config(tmp_path, **extra))
    assert any(p.path == where and "does not match" in p.message for p in refused.value.problems), \
        [str(p) for p in refused.value.problems]


def test_configured_currencies_still_load(tmp_path):
    assert load_config(_config(tmp_path, currencies={"BTC": 8, "XBT": 8})).currencies == {"BTC": 8, "XBT": 8}


def test_mapping_patterns_are_whole_string(tmp_path):
    from gateway.engine.mapping import load_mapping

    shipped = yaml.safe_load((ROOT / "mappings" / "soap-wallet.yaml").read_text())
    env = {"SOAP_WALLET_URL": "http://127.0.0.1:1/\n", "SOAP_WALLET_PASSWORD": "pw"}
    path = tmp_path / "soap.yaml"
    path.write_text(yaml.safe_dump({**shipped, "name": "soap-wallet\n"}))
    with pytest.raises(ConfigError) as refused:
        load_mapping(path, env)
    assert {p.path for p in refused.value.problems} == {"name", "upstream.base_url"}
