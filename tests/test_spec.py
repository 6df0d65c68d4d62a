"""Checks on the project's own iGSP OpenAPI 3.1 files under ``spec/`` (no network).

Every component schema must be a valid JSON Schema 2020-12 document, local
``#/components/...`` references must resolve through a ``referencing.Registry`` that
holds the whole OpenAPI document, and concrete payloads must pass or fail as the
protocol intends.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec"
HOOKS_FILE = SPEC_DIR / "igsp-platform-hooks.yaml"
PROVIDER_FILE = SPEC_DIR / "igsp-provider.yaml"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

HOOK_SCHEMAS = {
    "BalanceRequest",
    "BetRequest",
    "WinRequest",
    "RefundRequest",
    "BalanceResponse",
    "TransactionResponse",
    "ErrorResponse",
    "HookRequest",
}
PROVIDER_SCHEMAS = {
    "Game",
    "Provider",
    "ProviderImage",
    "GameList",
    "ProviderList",
    "PageCursor",
    "PageMeta",
    "SessionRequest",
    "SessionResponse",
    "ErrorResponse",
}


def _load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def hooks() -> dict[str, Any]:
    return _load(HOOKS_FILE)


@pytest.fixture(scope="module")
def provider() -> dict[str, Any]:
    return _load(PROVIDER_FILE)


def _validator(document: dict[str, Any], name: str, *, formats: bool = False) -> Draft202012Validator:
    """A 2020-12 validator for ``components.schemas[name]`` with local refs resolvable."""
    base = "urn:igsp:spec"
    registry = Registry().with_resource(base, DRAFT202012.create_resource(document))
    schema = {"$ref": f"{base}#/components/schemas/{name}"}
    kwargs: dict[str, Any] = {"registry": registry}
    if formats:
        kwargs["format_checker"] = Draft202012Validator.FORMAT_CHECKER
    return Draft202012Validator(schema, **kwargs)


def _walk(node: Any, path: str = "$"):
    """Yield ``(path, key, value)`` for every mapping entry in a nested structure."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk(item, f"{path}[{index}]")


def _operations(document: dict[str, Any]):
    for route, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield f"{method.upper()} {route}", operation


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (one level is all the files use for responses)."""
    ref = node.get("$ref")
    if ref is None:
        return node
    assert ref.startswith("#/"), ref
    target: Any = document
    for part in ref[2:].split("/"):
        target = target[part]
    return target


BET = {
    "action": "bet",
    "player_id": "player-912",
    "amount": 1.5,
    "currency": "EUR",
    "game_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    "transaction_id": "prov-tx-1001",
    "session_id": "sess-20250101-0001",
    "type": "bet",
    "round_id": "round-77",
    "finished": False,
}

SESSION = {
    "game_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    "player_id": "player-912",
    "player_name": "LuckyFox",
    "currency": "EUR",
    "session_id": "sess-20250101-0001",
    "balance": 100.0,
}

GAME_PAGE = {
    "data": [
        {
            "id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
            "provider_id": "550e8400-e29b-41d4-a716-446655440000",
            "name": "Jaws Munch",
            "rtp": 0.95,
            "status": "active",
            "updated_at": "2025-10-02T08:18:25.000000Z",
            "categories": ["slots", "table games"],
            "deleted_at": None,
        }
    ],
    "cursor": {"next": "eyJvZmZzZXQiOiAiMTMzMzkifQ==", "previous": None},
    "meta": {"limit": 50, "returned": 1, "has_more": True},
}


# --- structure ---------------------------------------------------------------------


@pytest.mark.parametrize(("path", "names"), [(HOOKS_FILE, HOOK_SCHEMAS), (PROVIDER_FILE, PROVIDER_SCHEMAS)])
def test_documents_declare_expected_component_names(path: Path, names: set[str]) -> None:
    document = _load(path)
    assert document["openapi"].startswith("3.1")
    assert names <= set(document["components"]["schemas"])


@pytest.mark.parametrize("path", [HOOKS_FILE, PROVIDER_FILE])
def test_every_component_schema_is_valid_2020_12(path: Path) -> None:
    document = _load(path)
    for name, schema in document["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
        # And it compiles with its references resolved (raises on a dangling $ref).
        _validator(document, name).is_valid({})


@pytest.mark.parametrize("path", [HOOKS_FILE, PROVIDER_FILE])
def test_no_openapi_30_nullable_anywhere(path: Path) -> None:
    offenders = [f"{where}.{key}" for where, key, _ in _walk(_load(path)) if key == "nullable"]
    assert offenders == []


@pytest.mark.parametrize("path", [HOOKS_FILE, PROVIDER_FILE])
def test_only_local_component_refs(path: Path) -> None:
    refs = [value for _, key, value in _walk(_load(path)) if key == "$ref"]
    assert refs
    assert all(isinstance(ref, str) and ref.startswith("#/components/") for ref in refs), refs


@pytest.mark.parametrize("path", [HOOKS_FILE, PROVIDER_FILE])
def test_no_float_format_on_money(path: Path) -> None:
    formats = [value for _, key, value in _walk(_load(path)) if key == "format"]
    assert "float" not in formats and "double" not in formats


@pytest.mark.parametrize("path", [HOOKS_FILE, PROVIDER_FILE])
def test_security_declared_and_required_globally(path: Path) -> None:
    document = _load(path)
    schemes = document["components"]["securitySchemes"]
    assert schemes["igspHmac"] == {**schemes["igspHmac"], "type": "apiKey", "in": "header", "name": "X-Signature"}
    assert schemes["bearerAuth"]["type"] == "http" and schemes["bearerAuth"]["scheme"] == "bearer"
    assert "X-Timestamp" in schemes["igspHmac"]["description"]
    assert document["security"], "a global security requirement is required"
    for requirement in document["security"]:
        assert set(requirement) <= set(schemes)
    assert any({"bearerAuth", "igspHmac"} <= set(req) for req in document["security"])


@pytest.mark.parametrize("path", [HOOKS_FILE, PROVIDER_FILE])
def test_every_operation_declares_auth_errors_with_error_response(path: Path) -> None:
    document = _load(path)
    operations = list(_operations(document))
    assert operations
    for label, operation in operations:
        responses = operation["responses"]
        for status in ("401", "403"):
            assert status in responses, f"{label} lacks {status}"
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                schema = _resolve(document, response)["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (label, status)
        header_names = {_resolve(document, p)["name"] for p in operation.get("parameters", [])}
        assert "X-Timestamp" in header_names, label
        # An operation-level override must not drop the requirement.
        assert operation.get("security", document["security"]), label


def test_hook_server_and_path_do_not_repeat_prefix(hooks: dict[str, Any]) -> None:
    assert [server["url"] for server in hooks["servers"]] == ["/"]
    assert list(hooks["paths"]) == ["/platforms/game-provider/hooks"]
    responses = hooks["paths"]["/platforms/game-provider/hooks"]["post"]["responses"]
    assert {"400", "401", "403", "404", "409", "500", "503", "504"} <= set(responses)


def test_provider_paths_and_parameters(provider: dict[str, Any]) -> None:
    assert set(provider["paths"]) == {"/games", "/providers", "/sessions"}
    params = provider["components"]["parameters"]
    assert params["Limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}
    assert params["UpdatedAfter"]["schema"] == {"type": "string", "format": "date-time"}
    assert params["Cursor"]["in"] == "query"
    session = provider["paths"]["/sessions"]["post"]["responses"]
    assert "201" in session and "409" in session


# --- hooks payloads ----------------------------------------------------------------


def test_valid_bet_hook_passes(hooks: dict[str, Any]) -> None:
    _validator(hooks, "HookRequest", formats=True).validate(BET)
    _validator(hooks, "BetRequest", formats=True).validate(BET)


def test_all_hook_request_examples_pass(hooks: dict[str, Any]) -> None:
    body = hooks["paths"]["/platforms/game-provider/hooks"]["post"]["requestBody"]
    examples = body["content"]["application/json"]["examples"]
    assert set(examples) == {"balance", "bet", "win", "refund"}
    validator = _validator(hooks, "HookRequest", formats=True)
    for example in examples.values():
        validator.validate(example["value"])


def test_unknown_extra_properties_are_allowed(hooks: dict[str, Any]) -> None:
    assert _validator(hooks, "HookRequest").is_valid({**BET, "bonus_id": "b-1", "meta": {"x": 1}})


def test_balance_hook_without_session_passes(hooks: dict[str, Any]) -> None:
    assert _validator(hooks, "HookRequest").is_valid({"action": "balance", "player_id": "p", "currency": "EUR"})


@pytest.mark.parametrize(
    ("label", "change"),
    [
        ("negative amount", {"amount": -1}),
        ("lower-case currency", {"currency": "eur"}),
        ("four-letter currency", {"currency": "EURO"}),
        ("unknown action", {"action": "bogus"}),
        ("string amount", {"amount": "1.50"}),
        ("empty transaction_id", {"transaction_id": ""}),
        ("overlong session_id", {"session_id": "s" * 256}),
        ("win type on a bet", {"type": "jackpot"}),
    ],
)
def test_invalid_bet_hooks_fail(hooks: dict[str, Any], label: str, change: dict[str, Any]) -> None:
    assert not _validator(hooks, "HookRequest").is_valid({**BET, **change}), label


@pytest.mark.parametrize(
    "field", ["transaction_id", "player_id", "amount", "currency", "game_id", "session_id", "type", "action"]
)
def test_bet_hook_missing_required_field_fails(hooks: dict[str, Any], field: str) -> None:
    body = copy.deepcopy(BET)
    del body[field]
    assert not _validator(hooks, "HookRequest").is_valid(body)


def test_refund_requires_bet_transaction_id(hooks: dict[str, Any]) -> None:
    refund = {**BET, "action": "refund", "transaction_id": "prov-tx-1003"}
    validator = _validator(hooks, "HookRequest")
    assert not validator.is_valid(refund)
    assert validator.is_valid({**refund, "bet_transaction_id": "prov-tx-1001"})


def test_zero_amount_is_allowed(hooks: dict[str, Any]) -> None:
    assert _validator(hooks, "HookRequest").is_valid({**BET, "amount": 0, "type": "freespin"})


def test_hook_discriminator_matches_oneof(hooks: dict[str, Any]) -> None:
    hook = hooks["components"]["schemas"]["HookRequest"]
    refs = [entry["$ref"] for entry in hook["oneOf"]]
    assert hook["discriminator"]["propertyName"] == "action"
    assert sorted(hook["discriminator"]["mapping"].values()) == sorted(refs)
    for action, ref in hook["discriminator"]["mapping"].items():
        target = _resolve(hooks, {"$ref": ref})
        assert target["properties"]["action"]["enum"] == [action]
        assert "action" in target["required"]


def test_hook_responses(hooks: dict[str, Any]) -> None:
    assert _validator(hooks, "BalanceResponse").is_valid({"balance": 98.5})
    assert _validator(hooks, "TransactionResponse").is_valid({"balance": 98.5, "transaction_id": "plat-tx-1"})
    assert not _validator(hooks, "TransactionResponse").is_valid({"balance": 98.5})
    ok = hooks["paths"]["/platforms/game-provider/hooks"]["post"]["responses"]["200"]
    # A TransactionResponse also satisfies the open BalanceResponse: oneOf would reject it.
    assert "oneOf" not in ok["content"]["application/json"]["schema"]


@pytest.mark.parametrize("document_fixture", ["hooks", "provider"])
def test_error_response_shape(request: pytest.FixtureRequest, document_fixture: str) -> None:
    document = request.getfixturevalue(document_fixture)
    validator = _validator(document, "ErrorResponse")
    assert validator.is_valid({"error": "invalid_signature", "message": "Invalid signature", "status": 403})
    assert validator.is_valid({"error": "bet_not_found", "message": "No such bet."})
    assert not validator.is_valid({"error": "Invalid signature"})  # message is required
    assert not validator.is_valid({"error": "x", "message": "y", "status": "403"})


# --- provider payloads -------------------------------------------------------------


def test_session_request_valid_and_game_id_format(provider: dict[str, Any]) -> None:
    validator = _validator(provider, "SessionRequest", formats=True)
    validator.validate(SESSION)
    assert not validator.is_valid({**SESSION, "game_id": "not-a-uuid"})
    # Without format assertion the string type alone is checked (2020-12 default).
    assert _validator(provider, "SessionRequest").is_valid({**SESSION, "game_id": "not-a-uuid"})


@pytest.mark.parametrize(
    ("label", "change"),
    [
        ("lower-case currency", {"currency": "eur"}),
        ("language with region", {"language": "en-GB"}),
        ("unknown device", {"device": "tablet"}),
        ("string balance", {"balance": "100.00"}),
        ("non-boolean is_demo", {"is_demo": "false"}),
    ],
)
def test_invalid_session_requests_fail(provider: dict[str, Any], label: str, change: dict[str, Any]) -> None:
    assert not _validator(provider, "SessionRequest", formats=True).is_valid({**SESSION, **change}), label


@pytest.mark.parametrize("field", ["game_id", "player_id", "player_name", "currency", "session_id", "balance"])
def test_session_request_missing_required_field_fails(provider: dict[str, Any], field: str) -> None:
    body = dict(SESSION)
    del body[field]
    assert not _validator(provider, "SessionRequest").is_valid(body)


def test_session_response(provider: dict[str, Any]) -> None:
    validator = _validator(provider, "SessionResponse")
    assert validator.is_valid({"url": "https://games.provider.com/session/launch/abc123"})
    assert not validator.is_valid({})


def test_game_list_page(provider: dict[str, Any]) -> None:
    validator = _validator(provider, "GameList", formats=True)
    validator.validate(GAME_PAGE)
    last_page = {**GAME_PAGE, "cursor": {"next": None, "previous": "abc"}}
    validator.validate({**last_page, "meta": {"limit": 50, "returned": 1, "has_more": False}})

    bad_cursor = copy.deepcopy(GAME_PAGE)
    bad_cursor["cursor"]["next"] = 5
    assert not validator.is_valid(bad_cursor)

    for missing in ("data", "cursor", "meta"):
        assert not validator.is_valid({k: v for k, v in GAME_PAGE.items() if k != missing}), missing


@pytest.mark.parametrize(
    ("label", "change"),
    [
        ("unknown status", {"status": "live"}),
        ("rtp as percentage", {"rtp": 95.5}),
        ("bad uuid", {"id": "game-1"}),
        pytest.param(
            "deleted_at not a date",
            {"deleted_at": "yesterday"},
            marks=pytest.mark.skipif(
                "date-time" not in Draft202012Validator.FORMAT_CHECKER.checkers,
                reason="date-time format checking needs rfc3339-validator",
            ),
        ),
    ],
)
def test_invalid_games_fail(provider: dict[str, Any], label: str, change: dict[str, Any]) -> None:
    game = {**GAME_PAGE["data"][0], **change}
    assert not _validator(provider, "Game", formats=True).is_valid(game), label


def test_provider_list_and_provider(provider: dict[str, Any]) -> None:
    page = {
        "data": [
            {
                "id": "550e8400-e29b-41d4-a716-446655440000",
                "name": "NetEnt",
                "currencies": ["USD", "EUR"],
                "images": [{"name": "logo.png", "url": "https://static.example/logo.png", "type": "logo"}],
                "min_age": 18,
                "min_kyc_level": "basic",
            }
        ],
        "cursor": {"next": None, "previous": None},
        "meta": {"limit": 50, "returned": 1, "has_more": False},
    }
    validator = _validator(provider, "ProviderList", formats=True)
    validator.validate(page)
    bad = copy.deepcopy(page)
    bad["data"][0]["min_kyc_level"] = "gold"
    assert not validator.is_valid(bad)
    no_currencies = copy.deepcopy(page)
    del no_currencies["data"][0]["currencies"]
    assert not validator.is_valid(no_currencies)


@pytest.mark.parametrize("path", [HOOKS_FILE, PROVIDER_FILE])
def test_schema_examples_validate(path: Path) -> None:
    """Every ``examples`` list on a component schema satisfies that schema."""
    document = _load(path)
    for name, schema in document["components"]["schemas"].items():
        validator = _validator(document, name, formats=True)
        for example in schema.get("examples", []):
            validator.validate(example)


# --- optional full OpenAPI validation ---------------------------------------------


@pytest.mark.parametrize("path", [HOOKS_FILE, PROVIDER_FILE])
def test_openapi_spec_validator(path: Path) -> None:
    openapi_spec_validator = pytest.importorskip("openapi_spec_validator")
    openapi_spec_validator.validate(_load(path))
