"""The mapping reference and the published schema are contracts: every key, filter and
built-in adapter is documented, spec/mapping.schema.json is what the code checks, and
every shipped mapping validates."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib

import jsonschema
import pytest

from gateway.engine import error_codes
from gateway.engine.adapters import ENTRY_POINT_GROUP
from gateway.engine.mapping_schema import MAPPING_SCHEMA, schema_json
from gateway.engine.templating import BUILTIN_FILTERS
from gateway.errors import ERROR_CODES
from gateway.tools.simulators import hub88_wallet
from tests.support import ROOT

README = (ROOT / "mappings" / "README.md").read_text()
#: The built-in adapters, as this project registers them (there is no other list).
BUILTINS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
#: Sections of the provider face, documented with it.
PROVIDER_SECTIONS = {"catalogue", "launch", "callbacks"}


def schema_keys(schema, top: bool = True) -> set[str]:
    """Every property name declared anywhere in a (sub)schema."""
    keys: set[str] = set()
    if not isinstance(schema, dict):
        return keys
    for name, sub in schema.get("properties", {}).items():
        if top and name in PROVIDER_SECTIONS:
            continue
        keys.add(name)
        keys |= schema_keys(sub, False)
    for word in ("items", "additionalProperties"):
        keys |= schema_keys(schema.get(word), False)
    for word in ("oneOf", "anyOf", "allOf"):
        for sub in schema.get(word, []):
            keys |= schema_keys(sub, False)
    return keys


def documented(name: str) -> bool:
    return f"`{name}`" in README


def test_every_mapping_key_is_documented():
    keys = schema_keys(MAPPING_SCHEMA)
    assert {"version", "base_url", "idempotent", "success_codes", "default_error", "backoff_max", "adapter",
            "status", "scale"} <= keys  # the walk reaches nested and oneOf objects
    assert sorted(k for k in keys if not documented(k)) == []


def test_every_builtin_filter_adapter_and_context_variable_is_documented():
    names = [*BUILTIN_FILTERS, *BUILTINS, "legacy_amount", "request_id", "partner", "now", "now_ms", "secrets",
             "amount", "balance", "transaction_id", "currency"]
    assert [n for n in names if not documented(n)] == []


def test_readme_commands_exist():
    from gateway.cli import build_parser

    commands = set(re.findall(r"igsp-gateway (\w+)", README))
    parser = build_parser()
    known = set(parser._subparsers._group_actions[0].choices)
    assert commands <= known, commands - known


def test_published_schema_is_the_code_schema():
    published = ROOT / "spec" / "mapping.schema.json"
    assert published.read_text() == schema_json(), (
        "spec/mapping.schema.json is stale: run `igsp-gateway validate --print-schema > spec/mapping.schema.json`")
    jsonschema.Draft202012Validator.check_schema(json.loads(published.read_text()))
    printed = subprocess.run([sys.executable, "-m", "gateway", "validate", "--print-schema"], capture_output=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert printed.returncode == 0 and printed.stdout.decode() == schema_json()


@pytest.fixture(scope="module")
def mapping_env(tmp_path_factory):
    """A value for every ``${VAR}`` the shipped mappings use (URLs, PEM keys, secrets)."""
    private, public = hub88_wallet.generate_keypair()
    names = set()
    for path in (ROOT / "mappings").glob("*.yaml"):
        names |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", path.read_text()))

    def value(name: str) -> str:
        if name.endswith("URL"):
            return "http://127.0.0.1:9"
        if "PUBLIC_KEY" in name:
            return public
        if "PRIVATE_KEY" in name:
            return private
        return "test-secret-0123456789"

    return {name: value(name) for name in names}


def test_every_shipped_mapping_validates(mapping_env):
    files = sorted(str(p) for p in (ROOT / "mappings").glob("*.yaml"))
    assert {"hub88-wallet.yaml", "soap-wallet.yaml"} <= {os.path.basename(f) for f in files}
    result = subprocess.run([sys.executable, "-m", "gateway", "validate", *files], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **mapping_env}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{f}: ok" for f in files]


def test_the_error_code_table_is_generated_from_the_codes():
    """mappings/README.md documents every iGSP error code with the status gateway/errors.py
    gives it: regenerate with ``python -m gateway.engine.error_codes`` when a code changes."""
    assert set(error_codes.MEANINGS) == set(ERROR_CODES), "describe each code in gateway/engine/error_codes.py"
    begin, end = "<!-- error-codes:begin -->\n", "<!-- error-codes:end -->"
    assert README.count(begin) == 1 and README.count(end) == 1
    documented = README.split(begin)[1].split(end)[0]
    assert documented == error_codes.table()
    rows = {line.split("|")[1].strip(" `"): line.split("|")[2:4] for line in documented.splitlines()[2:]}
    assert {code: int(status) for code, (status, _) in rows.items()} == ERROR_CODES
    assert all((retriable.strip() == "yes") == (ERROR_CODES[code] >= 500) for code, (_, retriable) in rows.items())
    printed = subprocess.run([sys.executable, "-m", "gateway.engine.error_codes"], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert printed.returncode == 0 and printed.stdout == documented
