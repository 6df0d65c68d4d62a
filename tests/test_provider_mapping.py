"""Loading the provider-face sections of a mapping: every problem, with file, line and path."""

from __future__ import annotations

import textwrap
from importlib.metadata import EntryPoint

import pytest

from gateway.adapter_api import Signer
from gateway.engine import adapters as registry
from gateway.engine.mapping import load_mapping
from gateway.errors import ConfigError
from tests.support import ROOT

BROKEN = """\
version: 1
name: broken-provider
face: provider
upstream: {base_url: "http://127.0.0.1:1"}
codec: form
operations:
  games: {path: /games}
catalogue:
  games:
    operation: gamez
    items: "gameList[?"
    id: gameID
    fields:
      name: gameName
      status: {path: technology, value: active}
      updated_at: lastModified
  providers:
    static: [{code: p}]
    paging: {style: page}
    id: code
    fields: {name: name, currencies: currencies, min_age: {value: 18, mapp: {}}}
launch:
  steps: [launch]
  url: "{{ url "
callbacks:
  token: token
  verify: no_such_signer
  error_reply: {error: "{{ legacy_code }}"}
  default_error: {code: 120}
  retriable_error: {code: 100, text: retry}
  endpoints:
    bet:
      hook: bet
      fields: {transaction_id: reference}
    win:
      hook: payout
"""


def problems_of(tmp_path, text: str) -> list[str]:
    path = tmp_path / "mapping.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    return [str(p).replace(str(path), "mapping.yaml") for p in caught.value.problems]


def test_schema_problems_name_line_and_path(tmp_path):
    found = problems_of(tmp_path, BROKEN)
    assert "mapping.yaml:21: catalogue.providers.fields.min_age.mapp: unknown key 'mapp'; allowed keys: " \
           "default, map, path, template, value" in found
    assert "mapping.yaml:30: callbacks.retriable_error.text: unknown key 'text'; allowed keys: code, message" in found
    assert any(p.startswith("mapping.yaml:36: callbacks.endpoints.win.hook: got 'payout', want one of balance, bet")
               for p in found), found


def test_compile_problems_name_line_and_path(tmp_path):
    text = BROKEN.replace(", mapp: {}", "").replace(", text: retry", "").replace("hook: payout", "hook: win\n"
                                                                                 "      fields: {amount: amount}")
    found = problems_of(tmp_path, text)
    expected = [
        "mapping.yaml:10: catalogue.games.operation: unknown operation 'gamez'; defined: games",
        "mapping.yaml:13: catalogue.games.fields: missing provider_id: every game needs name, status, updated_at, "
        "provider_id",
        "mapping.yaml:15: catalogue.games.fields.status: give exactly one of path, template or value "
        "(got path, value)",
        "mapping.yaml:19: catalogue.providers.paging.style: static items are not paged; remove paging",
        "mapping.yaml:23: launch.steps[0]: unknown operation 'launch'; defined: games",
        "mapping.yaml:27: callbacks.verify: unknown adapter 'no_such_signer'; installed adapters: ",
        "mapping.yaml:34: callbacks.endpoints.bet.fields: a bet hook needs amount read from the legacy request",
        "mapping.yaml:32: callbacks.endpoints.bet: no success reply: give 'reply' here or a default "
        "'callbacks.reply'",
        "mapping.yaml:37: callbacks.endpoints.win.fields: a win hook needs transaction_id read from the legacy "
        "request",
    ]
    for message in expected:
        assert any(p.startswith(message) for p in found), (message, found)
    jmes = [p for p in found if p.startswith("mapping.yaml:11: catalogue.games.items: JMESPath parse error")]
    assert jmes and jmes[0].endswith("Hint: the expression ends too early: a bracket, a quote or an operator "
                                     "is not closed")
    assert any(p.startswith("mapping.yaml:24: launch.url: template error") for p in found), found


def test_a_provider_mapping_needs_catalogue_and_launch(tmp_path):
    text = textwrap.dedent("""\
        version: 1
        name: bare
        face: provider
        upstream: {base_url: "http://127.0.0.1:1"}
        operations:
          games: {path: /games}
        """)
    found = problems_of(tmp_path, text)
    assert "mapping.yaml:1: <root>: a provider mapping needs a 'catalogue' section" in found
    assert "mapping.yaml:1: <root>: a provider mapping needs a 'launch' section" in found


def test_callbacks_must_check_the_legacy_caller(tmp_path):
    text = BROKEN.replace("codec: form\n", "").replace("  verify: no_such_signer\n", "")
    found = problems_of(tmp_path, text.replace(", mapp: {}", "").replace(", text: retry", "").replace(
        "hook: payout", "hook: balance"))
    assert "mapping.yaml:24: callbacks: nothing checks the legacy caller: give 'verify' (an adapter such as " \
           "md5_params) or a mapping 'signer'" in found


#: BROKEN without its schema problems, so that compiling it reports the rest.
COMPILABLE = BROKEN.replace(", mapp: {}", "").replace(", text: retry", "").replace(
    "hook: payout", "hook: win\n      fields: {amount: amount}")


def test_callback_adapters_must_fit_their_place(tmp_path):
    """A codec cannot check a caller's signature, and a signer cannot write a reply body."""
    text = COMPILABLE.replace("verify: no_such_signer", "verify: json\n  reply_codec: {adapter: md5_params, secret: s}")
    found = problems_of(tmp_path, text)
    assert "mapping.yaml:27: callbacks.verify: adapter 'json' is a codec, not a signer; a codec belongs under " \
           "'codec'" in found
    assert "mapping.yaml:28: callbacks.reply_codec: adapter 'md5_params' is a signer, not a codec; a signer " \
           "belongs under 'signer'" in found


class SignOnly(Signer):
    """Signs outbound calls; inherits the default verify, which accepts every caller."""

    def sign(self, req):
        req.headers["X-Sig"] = "x"


def test_a_signer_that_cannot_verify_does_not_guard_callbacks(tmp_path, monkeypatch):
    """Neither as ``callbacks.verify`` nor as the mapping signer it falls back to: its
    verify is the default that says yes to everyone."""
    real = registry._entry_points
    monkeypatch.setattr(registry, "_entry_points", lambda: [
        *real(), EntryPoint("sign_only", "tests.test_provider_mapping:SignOnly", registry.ENTRY_POINT_GROUP)])
    registry.installed.cache_clear()
    try:
        found = problems_of(tmp_path, COMPILABLE.replace("verify: no_such_signer", "verify: sign_only"))
        assert "mapping.yaml:27: callbacks.verify: adapter 'sign_only' cannot check a legacy caller: it does not " \
               "implement verify" in found
        fallback = COMPILABLE.replace("  verify: no_such_signer\n", "").replace("codec: form\n", "signer: sign_only\n")
        found = problems_of(tmp_path, fallback)
        assert "mapping.yaml:25: callbacks: the mapping's signer (SignOnly) does not implement verify, so it cannot " \
               "check the legacy caller: give 'verify' (an adapter such as md5_params)" in found
    finally:
        monkeypatch.undo()
        registry.installed.cache_clear()


def test_the_shipped_pragmatic_mapping_loads(monkeypatch):
    env = {"PP_API_URL": "http://127.0.0.1:1", "PP_SECRET_KEY": "k" * 16, "PP_SECURE_LOGIN": "casino_login"}
    mapping = load_mapping(ROOT / "mappings" / "pragmatic-provider.yaml", env)
    spec = mapping.provider
    assert spec.catalogue.cache_ttl == 300 and spec.catalogue.games.operation == "games"
    assert spec.launch.steps == ("launch",)
    assert set(spec.callbacks.endpoints) >= {"/authenticate", "/balance", "/bet", "/result", "/refund"}
    assert spec.callbacks.endpoints["/refund"].succeed_on == {"transaction_not_found"}
    assert type(spec.callbacks.verify).__name__ == "Md5ParamsSigner"
    with pytest.raises(ConfigError, match=r"pragmatic-provider.yaml:\d+: upstream.base_url: environment variable "
                                          r"PP_API_URL is not set"):
        load_mapping(ROOT / "mappings" / "pragmatic-provider.yaml", {k: v for k, v in env.items() if k != "PP_API_URL"})
