"""Static checks of a mapping (``igsp-gateway validate`` and every load): each template
variable against what the gateway gives that template (gateway/engine/inputs.py), every
filter and test, ``secrets.NAME``, and JMESPath mistakes with a hint for each. Every
message names file, line and field. Also: a request that cannot be built at run time
because a variable is absent names the variable (``502 upstream_error``, nothing sent)."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.engine.inputs import (
    CATALOGUE_CONTEXT,
    LAUNCH_CONTEXT,
    WALLET_CONTEXT,
    hook_fields,
    launch_fields,
    wallet_inputs,
)
from gateway.engine.mapping import load_mapping
from gateway.errors import ConfigError, IgspError, UpstreamError
from gateway.outbound.legacy import LegacyClient
from tests.support import ROOT
from tests.wallet_support import bet, refund, win

TYPOS = """\
version: 1
name: typos
face: platform
upstream: {base_url: "http://127.0.0.1:9"}
secrets: {password: "${TYPOS_PASSWORD:-pw}"}
result:
  success: "status == \\"OK\\""                                    # <- double-quoted-text
  code: "$.status"                                                 # <- jsonpath
echo:
  tx: "{{ transaction_id }}"                                       # <- echo-for-balance
operations:
  balance:
    path: /balance
    body:
      user: "{{ player_id }}"
      sid: "{{ sesion_id | default(player_id) }}"                  # <- typo-in-default
      pw: "{{ secrets.pasword }}"                                  # <- secret
    response: {balance: "wallet.game-balance"}                     # <- dash-key
  bet:
    path: "/bet/{{ player }}"                                      # <- path
    body:
      amount: "{% if currency == 'JPY' %}{{ amount }}{% else %}{{ legacy_amount | scaled(scal) }}{% endif %}"  # <- arg
      round: "{% if round_idd %}{{ round_id }}{% endif %}"         # <- if
      hash: "{% if finished %}{{ transaction_id | md6 }}{% endif %}"  # <- filter-in-if
      free: "{{ type is freespinn }}"                              # <- test
    response:
      balance: "'balance'"                                         # <- constant
      transaction_id: "data['id']"                                 # <- single-quoted-key
  win:
    path: /win
    body: {bonus: "{{ bonus_code | default(none) }}"}              # <- extra-input
    response: {balance: "balance = `1`"}                           # <- single-equals
  refund:
    path: /refund
    body: {bet: "{{ bet_transaction_id }}"}
    result: {success: "status == 'OK' and code == `0`"}            # <- and
  token:
    path: /token
    body: {anything: "{{ whatever_a_flow_gives }}"}                # never called by the gateway: not checked
"""

#: marker -> (field, message, words the hint must contain)
EXPECTED = {
    "double-quoted-text": ("result.success", 'compares with "OK", which in JMESPath is the key OK',
                           "single quotes: 'OK'"),
    "jsonpath": ("result.code", "JMESPath parse error at column 0 near '$'",
                 "JMESPath has no '$' root (a JSONPath habit): write 'status' for '$.status'"),
    "echo-for-balance": ("echo.tx", "'transaction_id' is undefined in operation 'balance'",
                         "operation 'balance' can read: action, currency, now, now_ms, partner, player_id, "
                         "request_id, secrets, session_id;"),
    "typo-in-default": ("operations.balance.body.sid", "'sesion_id' is undefined", "did you mean 'session_id'?"),
    "secret": ("operations.balance.body.pw", "'secrets.pasword' is undefined",
               "did you mean 'secrets.password'? the file's secrets: password"),
    "dash-key": ("operations.balance.response.balance", "JMESPath parse error at column 11 near '-'",
                 'double-quoted in JMESPath: wallet."game-balance"'),
    "path": ("operations.bet.path", "'player' is undefined", "did you mean 'player_id'?"),
    "arg": ("operations.bet.body.amount", "'scal' is undefined", "operation 'bet' can read: action, amount,"),
    "if": ("operations.bet.body.round", "'round_idd' is undefined", "did you mean 'round_id'?"),
    "filter-in-if": ("operations.bet.body.hash", "unknown filter 'md6'",
                     "did you mean 'md5'? filters available here: b64encode, decimal, from_minor"),
    "test": ("operations.bet.body.free", "unknown test 'freespinn'", "tests available here: "),
    "constant": ("operations.bet.response.balance", "\"'balance'\" is a constant ('balance'), not a read of the "
                 "answer", "a key is written plain or in double quotes: balance"),
    "single-quoted-key": ("operations.bet.response.transaction_id", "JMESPath parse error",
                          "'id' (single quotes) is a text in JMESPath, not a key: write data.\"id\""),
    "extra-input": ("operations.win.body.bonus", "'bonus_code' is undefined",
                    "are declared in extra_inputs"),
    "single-equals": ("operations.win.response.balance", "JMESPath parse error at column 8 near '='",
                      "compare with == (and !=), not ="),
    "and": ("operations.refund.result.success", "JMESPath parse error at column 15 near 'and'",
            "JMESPath writes and / or / not as && / || / !"),
}


def line_of(text: str, marker: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.rstrip().endswith(f"# <- {marker}"))


def validate(*files: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "validate", *map(str, files)], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})})


def test_validate_names_every_undefined_variable_unknown_filter_and_jmespath_mistake(tmp_path):
    path = tmp_path / "typos.yaml"
    path.write_text(TYPOS)
    result = validate(path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[-1] == f"{len(EXPECTED)} problem(s) found", result.stderr
    for marker, (field, message, hint) in EXPECTED.items():
        prefix = f"{path}:{line_of(TYPOS, marker)}: {field}: {message}"
        found = [line for line in lines if line.startswith(prefix)]
        assert len(found) == 1, f"{marker}: no single line starting {prefix!r}\n{result.stderr}"
        assert hint in found[0].partition(" Hint: ")[2], (marker, found[0])


def test_declared_extra_inputs_are_variables_too(tmp_path):
    text = TYPOS.replace("secrets: {password", "extra_inputs: [bonus_code]\nsecrets: {password")
    path = tmp_path / "typos.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    assert "operations.win.body.bonus" not in {p.path for p in caught.value.problems}
    assert len(caught.value.problems) == len(EXPECTED) - 1


def test_an_operation_echo_replacing_the_files_is_checked_once(tmp_path):
    text = TYPOS.replace("    response: {balance: \"wallet.game-balance\"}",
                         "    response: {balance: balance}\n    echo: {tx: null}")
    path = tmp_path / "typos.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    assert not [p for p in caught.value.problems if p.path == "echo.tx"]


PROVIDER = """\
version: 1
name: checked-provider
face: provider
upstream: {base_url: "http://127.0.0.1:9"}
codec: form
signer: {adapter: md5_params, secret: s3cret-s3cret}
operations:
  games:
    path: "/games/{{ page }}"
    body: {size: "{{ page_size }}", since: "{{ updated_since }}"}   # <- catalogue-op
  auth:
    path: /auth
    body: {player: "{{ player_id }}", game: "{{ legacy_game_id }}", lang: "{{ language | default('en') }}"}
    response: {ticket: ticket}
  launch:
    path: /launch
    body: {ticket: "{{ ticket }}", url: "{{ url }}"}               # <- later-step
    response: {url: gameURL}
catalogue:
  games:
    operation: games
    id: id
    fields:
      name: name
      status: {value: active}
      updated_at: updated
      provider_id: {template: "{{ item.studio }}-{{ studio }}"}   # <- catalogue-field
  providers:
    static: [{code: p, name: P, currencies: [EUR]}]
    id: code
    fields: {name: name, currencies: currencies}
launch:
  steps: [auth, launch]
  url: "{{ url }}?t={{ ticket }}&s={{ sesion_id }}"               # <- launch-url
callbacks:
  token: token
  error_reply: {error: "{{ legacy_code }}", at: "{{ balance }}"}
  default_error: {code: 120}
  retriable_error: {code: 100}
  reply: {cash: "{{ legacy_balance }}", user: "{{ session.player_id }}", code: "{{ legacy_code }}"}  # <- reply
  endpoints:
    bet:
      hook: bet
      fields:
        transaction_id: reference
        amount: {template: "{{ req.amount }}{{ balance }}"}          # <- callback-field
"""


def test_provider_templates_are_checked_against_their_own_context(tmp_path):
    path = tmp_path / "provider.yaml"
    path.write_text(PROVIDER)
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    found = sorted(str(p).replace(str(path), "provider.yaml").partition(" Hint: ")[0] for p in caught.value.problems)
    at = {marker: f"provider.yaml:{line_of(PROVIDER, marker)}" for marker in (
        "catalogue-op", "later-step", "catalogue-field", "launch-url", "reply", "callback-field")}
    assert found == sorted([
        f"{at['catalogue-op']}: operations.games.body.since: 'updated_since' is undefined",
        # A launch step reads the fields of the steps before it (ticket), not its own (url).
        f"{at['later-step']}: operations.launch.body.url: 'url' is undefined",
        f"{at['catalogue-field']}: catalogue.games.fields.provider_id.template: 'studio' is undefined",
        f"{at['launch-url']}: launch.url: 'sesion_id' is undefined",
        f"{at['reply']}: callbacks.reply.code: 'legacy_code' is undefined",
        f"{at['callback-field']}: callbacks.endpoints.bet.fields.amount.template: 'balance' is undefined",
    ])


def test_the_shipped_mappings_read_only_what_they_are_given():
    """Loaded with a stand-in for every variable: no problem at all (test_mapping_docs runs
    ``validate`` on them too); every template variable of theirs is a known input."""
    env = {"HUB88_WALLET_URL": "http://127.0.0.1:9", "SOAP_WALLET_URL": "http://127.0.0.1:9",
           "SOAP_WALLET_PASSWORD": "pw-0123456789", "PP_API_URL": "http://127.0.0.1:9", "PP_SECRET_KEY": "k",
           "PP_SECURE_LOGIN": "l"}
    for name in ("soap-wallet", "pragmatic-provider"):
        mapping = load_mapping(ROOT / "mappings" / f"{name}.yaml", env)
        assert mapping.operations


# -- the contexts the checks assume are the ones the code builds ------------------------------------------

def _wallet_mapping(tmp_path, body: str = '{user: "{{ player_id }}"}', extra: str = "") -> Path:
    path = tmp_path / "w.yaml"
    path.write_text(f"""\
version: 1
name: ctx
face: platform
upstream: {{base_url: "http://127.0.0.1:9"}}
{extra}
operations:
  balance: {{path: /balance, body: {body}, response: {{balance: balance}}}}
  bet: {{path: /bet, body: {body}, response: {{balance: balance}}}}
  win: {{path: /win, body: {body}, response: {{balance: balance}}}}
  refund: {{path: /refund, body: {body}}}
""")
    return path


def test_wallet_context_is_what_the_checks_assume(tmp_path):
    from gateway.faces.wallet import Wallet, compensation_payload

    wallet = Wallet("acme", LegacyClient(load_mapping(_wallet_mapping(tmp_path))), store=None, retention=0)
    for hook in (bet(), win(), refund(), {"action": "balance", "player_id": "p1", "currency": "EUR"}):
        added = set(wallet.context(hook, "rq")) - set(hook)
        assert added == WALLET_CONTEXT | ({"legacy_amount"} if "amount" in hook else set())
        assert set(hook) <= hook_fields(hook["action"]) and added <= wallet_inputs(hook["action"])
    rollback = compensation_payload(bet())
    assert set(wallet.context(rollback, "rq")) <= wallet_inputs("rollback")


async def test_catalogue_and_launch_contexts_are_what_the_checks_assume(tmp_path):
    from gateway.faces.catalogue import Catalogue
    from gateway.faces.sessions import Launcher

    path = tmp_path / "provider.yaml"
    path.write_text(PROVIDER.replace(', since: "{{ updated_since }}"', "")
                    .replace(', url: "{{ url }}"', "").replace("-{{ studio }}", "")
                    .replace("&s={{ sesion_id }}", "").replace(', code: "{{ legacy_code }}"', "")
                    .replace("{{ balance }}", ""))
    mapping = load_mapping(path)
    seen: dict[str, dict] = {}

    class Client:
        async def call(self, name, context):
            seen[name] = dict(context)
            fields = {"auth": {"ticket": "t-1"}, "launch": {"url": "https://games.test/x"}}.get(name, {})
            return type("Reply", (), {"fields": fields, "data": []})()

    await Catalogue(mapping, Client(), store=None, spec=None).fetch("games")
    assert set(seen["games"]) == CATALOGUE_CONTEXT

    class Store:
        async def kv_put(self, *args, **kwargs):
            return True

    class Games:
        async def find(self, kind, game_id, request_id):
            return (0, game_id, "vs20", {"id": game_id, "currencies": ["EUR"]})

    payload = {"game_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "player_id": "p1", "player_name": "P",
               "currency": "EUR", "session_id": "s-1", "balance": Decimal("100"), "language": "en"}
    partner = type("Partner", (), {"id": "acme"})()
    launcher = Launcher(mapping, Client(), Games(), Store(), retention=60)
    assert await launcher._run(partner, payload, "rq") == "https://games.test/x?t=t-1"
    assert set(seen["auth"]) - set(payload) == LAUNCH_CONTEXT and set(payload) <= launch_fields()
    assert set(seen["launch"]) - set(payload) == LAUNCH_CONTEXT | {"ticket"}


# -- a request that cannot be built at run time -----------------------------------------------------------

SID = """\
version: 1
name: sid-wallet
face: platform
upstream: {base_url: "http://127.0.0.1:9"}
echo:
  round: "{{ round_id }}"
operations:
  balance:
    path: /balance
    body: {user: "{{ player_id }}", sid: "{{ session_id }}"}     # <- sid
    response: {balance: balance}
    echo: {round: null}
  bet:
    path: /bet
    body: {user: "{{ player_id }}", round: "r-{{ round_id | default('none') }}", amount: "{{ amount | default(0) | decimal(2) }}"}
    response: {balance: balance}
  win:
    path: /win
    body: {user: "{{ player_id }}", round: "{{ round_id | default('none') }}"}
    response: {balance: balance}
  refund: {path: /refund, body: {user: "{{ player_id }}"}, echo: {round: null}}
"""


async def test_an_absent_variable_is_the_mappings_problem_named_with_its_field(tmp_path):
    """``sid: "{{ session_id }}"`` on a balance hook without session_id (optional there) once said
    ``cannot build the legacy request: TypeError``: a 400 for a hook that was valid."""
    path = tmp_path / "sid.yaml"
    path.write_text(SID)
    client = LegacyClient(load_mapping(path))
    try:
        with pytest.raises(UpstreamError) as caught:
            await client.step("balance", {"player_id": "p1", "currency": "EUR", "request_id": "rq"})
        error = caught.value
        assert (error.code, error.status, error.applied, error.kind) == ("upstream_error", 502, False, "mapping")
        assert error.message == ("mapping sid-wallet cannot build the legacy balance request: operations.balance.body"
                                 ".sid: 'session_id' is undefined for this call; nothing was sent")
        # An echo's template is part of the request: the same, never an answer that "does not echo".
        with pytest.raises(UpstreamError) as echoed:
            await client.step("bet", {"player_id": "p1"})
        assert echoed.value.kind == "mapping" and "echo.round: 'round_id' is undefined" in echoed.value.message
        # Any other failure to build (a filter refusing this value) is the request's own: a
        # final 400, as before.
        with pytest.raises(IgspError) as other:
            await client.step("bet", {"player_id": "p1", "round_id": "r-1", "amount": "twelve"})
        assert not isinstance(other.value, UpstreamError)
        assert (other.value.code, other.value.message) == ("invalid_request",
                                                           "cannot build the legacy request: InvalidOperation")
    finally:
        await client.close()


async def test_a_wallet_forgets_such_a_bet_and_queues_such_a_win(tmp_path):
    from gateway.faces.wallet import Wallet
    from gateway.store import open_store
    from gateway.store.base import QUEUED

    path = tmp_path / "sid.yaml"
    path.write_text(SID.replace("echo:\n  round: \"{{ round_id }}\"\n", "")
                    .replace("    echo: {round: null}\n", "").replace(", echo: {round: null}", "")
                    .replace("round: \"{{ round_id | default('none') }}\"", 'round: "{{ round_id }}"'))
    store = open_store(f"sqlite:///{tmp_path}/ledger.db")
    await store.open()
    client = LegacyClient(load_mapping(path))
    try:
        wallet = Wallet("acme", client, store, retention=3600)
        with pytest.raises(UpstreamError, match="'session_id' is undefined"):  # answered 502 by the face
            await wallet.handle({"action": "balance", "player_id": "p1", "currency": "EUR"}, "r-0")
        hook = win("w-1")
        del hook["round_id"]
        status, body = await wallet.handle(hook, "r-1")
        assert status == 502 and "'round_id' is undefined" in json.loads(body)["message"]
        # Not a final answer: queued, delivered once the mapping is fixed (or dead-lettered).
        assert (await store.tx_get("acme", "w-1")).state == QUEUED
    finally:
        await client.close()
        await store.close()


def test_try_names_the_missing_variable_with_file_and_line(tmp_path):
    path = tmp_path / "sid.yaml"
    path.write_text(SID)
    result = subprocess.run([sys.executable, "-m", "gateway", "try", str(path), "balance", "--input",
                             '{"player_id": "p1", "currency": "EUR"}'], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "TypeError" not in result.stdout and "StrictUndefined" not in result.stdout
    assert result.stdout.splitlines()[-2:] == [
        "==> iGSP error: HTTP 502 (retriable, money moved: no)",
        json.dumps({"error": "upstream_error", "message": f"mapping sid-wallet cannot build the legacy balance "
                    f"request: {path}:{line_of(SID, 'sid')}: operations.balance.body.sid: 'session_id' is "
                    "undefined for this call; nothing was sent", "status": 502}),
    ]
