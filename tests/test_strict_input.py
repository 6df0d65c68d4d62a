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

import json
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


# -- on the wire: refused before the ledger and the wallet -------------------------------------------

class RecordingWallet:
    """A legacy JSON wallet that answers every call with a zero balance and keeps what it got."""

    def __init__(self):
        from aiohttp import web

        from gateway.tools.simulators import start_in_thread

        self.calls: list[tuple[str, dict]] = []

        async def any_call(request):
            self.calls.append((request.path, json.loads(await request.read(), parse_float=Decimal)))
            return web.json_response({"balance": 0})

        app = web.Application()
        app.router.add_post("/{operation}", any_call)
        self.server = start_in_thread(app)
        self.url = self.server.url


STRICT_MAPPING = """\
version: 1
name: strict-{name}
face: platform
upstream: {{base_url: "${{STRICT_WALLET_URL}}", timeout: 1}}
amounts: {amounts}
operations:
  balance: {{path: /balance, body: {{user: "{{{{ player_id }}}}"}}, response: {{balance: balance}}}}
  bet: {{path: /bet, body: &move {{user: "{{{{ player_id }}}}", tx: "{{{{ transaction_id }}}}",
                                 amount: "{{{{ legacy_amount }}}}"}}, response: {{balance: balance}}}}
  win: {{path: /win, body: *move, response: {{balance: balance}}}}
  refund: {{path: /refund, body: {{user: "{{{{ player_id }}}}", tx: "{{{{ transaction_id }}}}"}},
           response: {{balance: balance}}}}
"""
#: partner -> the amounts section of its mapping, and the largest EUR amount it holds
UNITS = {
    "decimal": ("{unit: decimal}", "9999999999999999.99"),
    "minor": ("{unit: minor}", "92233720368547758.07"),
    "scaled": ("{unit: scaled, scale: 100000}", "92233720368547.75"),
    "minor32": ("{unit: minor, max: 2147483647}", "21474836.47"),
}


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """One gateway, one partner per legacy unit, all in front of one recording wallet."""
    from tests.support import GatewayProcess, IgspClient

    workdir = tmp_path_factory.mktemp("strict")
    wallet = RecordingWallet()
    partners = []
    for name, (amounts, _) in UNITS.items():
        (workdir / f"{name}.yaml").write_text(STRICT_MAPPING.format(name=name, amounts=amounts))
        partners.append({"id": name, "face": "platform", "mapping": f"{name}.yaml", "api_key": f"{name}-key-0001",
                         "secrets": [f"{name}-secret-0123456789abcdef"]})
    db = workdir / "gateway.db"
    config = {"version": 1, "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_seconds": 0, "drain_seconds": 2},
              "store": {"url": f"sqlite:///{db}"}, "currencies": {"BTC": 8}, "partners": partners}
    gateway = GatewayProcess(config, workdir, env={"STRICT_WALLET_URL": wallet.url}).start()
    clients = {name: IgspClient(gateway.url, f"{name}-key-0001", f"{name}-secret-0123456789abcdef")
               for name in UNITS}
    yield clients, wallet, db
    gateway.stop()
    wallet.server.stop()


def _hook(action: str, txid: str, amount, currency: str = "EUR", **extra) -> dict:
    hook = {"action": action, "player_id": "p1", "amount": Decimal(amount), "currency": currency,
            "game_id": "g-1", "transaction_id": txid, "session_id": "s-1", "type": "win" if action == "win" else "bet"}
    return {**hook, **extra}


def _recorded(db, partner: str, txid: str) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        ledger = conn.execute("SELECT COUNT(*) FROM ledger WHERE partner = ? AND txid = ?", (partner, txid))
        queued = conn.execute("SELECT COUNT(*) FROM queue WHERE payload LIKE ?", (f"%{txid}%",))
        return ledger.fetchone()[0] + queued.fetchone()[0]


def _refused(response, code: str) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == code and body["status"] == 400
    return body["message"]


@pytest.mark.parametrize(("field", "value"), [("currency", "JPY\n"), ("currency", "EUR "), ("currency", "eur"),
                                              ("amount", Decimal("1.5")), ("amount", Decimal("-1"))])
@pytest.mark.parametrize("action", ["bet", "win"])
def test_a_hook_that_is_not_strictly_valid_moves_nothing(strict, field, value, action):
    clients, wallet, db = strict
    txid = f"bad-{action}-{field}-{value!r}"
    hook = {**_hook(action, txid, "1", "JPY"), field: value}
    before = len(wallet.calls)
    response = clients["minor"].hook(hook)
    assert response.status_code == 400, response.text
    assert response.json()["error"] in ("invalid_request", "invalid_amount")
    assert len(wallet.calls) == before and _recorded(db, "minor", txid) == 0
    # Nothing of it was kept: the same transaction_id, valid now, is a new transaction.
    assert clients["minor"].hook(_hook(action, txid, "1", "JPY")).status_code == 200
    assert wallet.calls[-1] == (f"/{action}", {"user": "p1", "tx": txid, "amount": 1})


def test_jpy_with_a_trailing_newline_is_not_priced_as_eur(strict):
    """The bug this guards: "JPY\\n" passed and was scaled with two decimals (100 yen -> 10000)."""
    clients, wallet, _ = strict
    _refused(clients["minor"].hook(_hook("bet", "jpy-nl", "100", "JPY\n")), "invalid_request")
    assert clients["minor"].hook(_hook("bet", "jpy-ok", "100", "JPY")).status_code == 200
    assert wallet.calls[-1][1]["amount"] == 100


@pytest.mark.parametrize(("field", "value"), [("player_id", "p1\n"), ("transaction_id", "tx-nl\n"),
                                              ("session_id", "s-1\n")])
def test_identifiers_are_opaque_but_exact(strict, field, value):
    """The spec restricts identifiers by length only: a trailing newline is part of the id, kept
    verbatim, and is another id than the one without it (never silently trimmed into it)."""
    clients, wallet, db = strict
    txid = value if field == "transaction_id" else f"id-{field}"
    assert clients["decimal"].hook(_hook("bet", txid, "2", **{field: value})).status_code == 200
    assert wallet.calls[-1][1][{"player_id": "user", "transaction_id": "tx"}.get(field, "user")] == \
        (value if field in ("player_id", "transaction_id") else "p1")
    if field == "transaction_id":
        assert _recorded(db, "decimal", "tx-nl\n") == 1 and _recorded(db, "decimal", "tx-nl") == 0


@pytest.mark.parametrize("name", list(UNITS))
def test_an_amount_the_unit_cannot_hold_is_refused_naming_the_limit(strict, name):
    clients, wallet, db = strict
    limit = Decimal(UNITS[name][1])
    before = len(wallet.calls)
    for action in ("bet", "win"):
        for amount in (Decimal("999999999999999999999"), limit + Decimal("0.01")):
            txid = f"huge-{name}-{action}-{amount}"
            message = _refused(clients[name].hook(_hook(action, txid, amount)), "invalid_amount")
            assert message == f"amount exceeds {limit} EUR, the largest this wallet's unit holds"
            assert _recorded(db, name, txid) == 0
    assert len(wallet.calls) == before  # the wallet never heard of them
    # Exactly at the limit: accepted, and sent as the unit writes it.
    assert clients[name].hook(_hook("bet", f"limit-{name}", limit)).status_code == 200
    sent = wallet.calls[-1][1]["amount"]
    assert sent == {"decimal": limit, "minor": 2**63 - 1, "scaled": 9223372036854775000,
                    "minor32": 2147483647}[name]


def test_the_issue_amount_on_a_hub88_wallet(hub88, gateway_factory, tmp_path):
    """999999999999999 EUR in Hub88's 1/100 000 units is 10**20: it was a 'cannot build the
    legacy request'; it is a 400 naming the limit, and neither the ledger nor the wallet saw it."""
    from tests.conftest import ACME, platform_config
    from tests.support import IgspClient

    gateway = gateway_factory(platform_config(f"sqlite:///{tmp_path}/gateway.db"))
    acme = IgspClient(gateway.url, ACME["api_key"], ACME["secret"])
    hub88.player("p1", "100.00")
    message = _refused(acme.hook(_hook("bet", "tx-huge", 999999999999999)), "invalid_amount")
    assert message == "amount exceeds 92233720368547.75 EUR, the largest this wallet's unit holds"
    assert _recorded(tmp_path / "gateway.db", ACME["id"], "tx-huge") == 0
    assert hub88.state()["calls"].get("bet", 0) == 0 and hub88.balance("p1") == Decimal("100.00")


def test_configured_currency_exponents_reach_the_legacy_unit(strict):
    """``currencies: {BTC: 8}``: one satoshi is 1 in minor units (not refused as finer than a cent)."""
    clients, wallet, _ = strict
    assert clients["minor"].hook(_hook("bet", "btc-1", "0.00000001", "BTC")).status_code == 200
    assert wallet.calls[-1][1]["amount"] == 1
    message = _refused(clients["minor"].hook(_hook("bet", "btc-2", "92233720368.54775808", "BTC")), "invalid_amount")
    assert message == "amount exceeds 92233720368.54775807 BTC, the largest this wallet's unit holds"


def test_a_decimal_wallet_gets_no_more_decimals_than_the_currency_has(strict):
    clients, wallet, _ = strict
    assert clients["decimal"].hook(_hook("bet", "trim-1", Decimal("1.5000"))).status_code == 200
    assert str(wallet.calls[-1][1]["amount"]) == "1.50"
    assert clients["decimal"].hook(_hook("bet", "trim-2", Decimal("1.0000000000000000000000000000000001")))\
        .status_code == 400


async def test_an_integer_json_cannot_carry_is_a_final_refusal_not_an_adapter_bug(tmp_path):
    """Amounts never get this far (the limit comes first); any other integer beyond 64 bits that a
    template makes is this request's problem — a final 400 — not a retriable adapter failure."""
    from gateway.engine.mapping import load_mapping
    from gateway.errors import UpstreamError
    from gateway.outbound.legacy import LegacyClient

    path = tmp_path / "big.yaml"
    path.write_text(STRICT_MAPPING.format(name="big", amounts="{unit: minor}").replace(
        'tx: "{{ transaction_id }}"', 'tx: "{{ transaction_id | int }}"'))
    client = LegacyClient(load_mapping(path, {"STRICT_WALLET_URL": "http://127.0.0.1:9"}))
    try:
        with pytest.raises(IgspError) as refused:
            await client.step("bet", {"player_id": "p1", "transaction_id": "9" * 30, "legacy_amount": 1})
        assert not isinstance(refused.value, UpstreamError)
        assert (refused.value.code, refused.value.status) == ("invalid_request", 400)
    finally:
        await client.close()


# -- one status per error code -------------------------------------------------------------------------

def _error_examples(document: dict) -> list[tuple[str, dict]]:
    """Every example of an ErrorResponse: ``(where, example)``."""
    found = []
    for name, response in document["components"]["responses"].items():
        for content in response.get("content", {}).values():
            if content.get("schema", {}).get("$ref", "").endswith("/ErrorResponse"):
                examples = [content["example"]] if "example" in content else []
                examples += [e["value"] for e in content.get("examples", {}).values()]
                found += [(f"responses.{name}", e) for e in examples]
    schema = document["components"]["schemas"]["ErrorResponse"]
    found += [("schemas.ErrorResponse", e) for e in schema.get("examples", [])]
    return found


@pytest.mark.parametrize("name", [HOOKS_SPEC, PROVIDER_SPEC])
def test_every_error_example_in_the_spec_has_the_gateways_status(name):
    from gateway.errors import ERROR_CODES

    document = SpecValidators(name).document
    examples = _error_examples(document)
    assert len(examples) >= 10
    for where, example in examples:
        assert example["error"] in ERROR_CODES, f"{name} {where}: {example['error']} is no code the gateway answers"
        assert example["status"] == ERROR_CODES[example["error"]], f"{name} {where}: {example}"
    # And each sits under the HTTP status it names.
    for path in document["paths"].values():
        for operation in path.values():
            for status, response in operation.get("responses", {}).items():
                target = response.get("$ref", "").rsplit("/", 1)[-1]
                for where, example in examples:
                    if where == f"responses.{target}":
                        assert str(example["status"]) == status, (status, target, example)


def test_insufficient_funds_is_402_in_the_hook_spec():
    responses = SpecValidators(HOOKS_SPEC).document["paths"]["/platforms/game-provider/hooks"]["post"]["responses"]
    assert responses["402"] == {"$ref": "#/components/responses/InsufficientFunds"}
    examples = dict((e["error"], e["status"]) for _, e in _error_examples(SpecValidators(HOOKS_SPEC).document))
    assert examples["insufficient_funds"] == 402


#: ```413 payload_too_large``` in prose, ``402 ``insufficient_funds`` `` in docstrings, and
#: ``{"error": "insufficient_funds", "message": "…", "status": 402}`` in examples.
_PROSE = r"`?(\d{3})`? `{0,2}([a-z]+(?:_[a-z]+)+)`"
_JSON = r'"error": "([a-z_]+)"[^}]*?"status": (\d{3})'


def test_the_docs_give_each_error_code_the_gateways_status():
    import re

    from gateway.errors import ERROR_CODES

    files = [ROOT / "README.md", ROOT / "SECURITY.md", ROOT / "mappings" / "README.md", ROOT / "spec" / "README.md",
             *sorted((ROOT / "gateway" / "tools" / "simulators").glob("*.py")),
             *sorted((ROOT / "gateway" / "tools" / "conformance").glob("*.py"))]
    seen = {}
    for file in files:
        text = file.read_text(encoding="utf-8")
        pairs = [(int(s), c) for s, c in re.findall(_PROSE, text)] + [(int(s), c) for c, s in re.findall(_JSON, text)]
        for status, code in pairs:
            if code in ERROR_CODES:  # the simulators also speak other platforms' codes
                assert status == ERROR_CODES[code], f"{file.relative_to(ROOT)}: {status} {code}"
                seen[code] = status
    assert seen["insufficient_funds"] == 402 and seen["payload_too_large"] == 413
