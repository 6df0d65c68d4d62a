"""The hooks endpoint fuzzed from its own spec, and its money semantics checked statefully.

- schemathesis generates valid (positive) and invalid (negative) hook requests from
  ``spec/igsp-platform-hooks.yaml``; each is signed over the exact bytes sent and posted
  to a real gateway process in front of the Hub88-style wallet simulator. No answer may
  be a 5xx or carry a trace; every refusal is a spec ``ErrorResponse``; every answer
  conforms to the spec (status, content type, schema).
- a hypothesis state machine plays bets, wins, refunds, retries and conflicting reuses
  of transaction ids against the same gateway, keeping its own model of the balance,
  and checks every answer and the wallet's own balance after each step.
"""

from __future__ import annotations

import os
from decimal import Decimal

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from adapters.codecs import dumps
from gateway import signing
from gateway.errors import ERROR_CODES
from gateway.spec import HOOKS_SPEC, SpecValidators
from gateway.tools.simulators import hub88_wallet, start_in_thread
from tests.conftest import ACME, Hub88, platform_config
from tests.support import ROOT, GatewayProcess, IgspClient, decimal_json, unique_timestamp

#: In CI the examples are the same every run (no flakes); locally they explore.
CI = bool(os.environ.get("CI"))
HOOKS = "/platforms/game-provider/hooks"
SIGN_ME = "sign-at-send-time"
SPEC = SpecValidators(HOOKS_SPEC)


class SigningSession(requests.Session):
    """Signs the exact bytes about to go on the wire (after schemathesis serialised them).

    Only requests that carry the ``SIGN_ME`` placeholder are signed, so schemathesis's
    own probes that drop or forge credentials stay unsigned.
    """

    def __init__(self, api_key: str, secret: str):
        super().__init__()
        self.api_key, self.secret = api_key, secret

    def send(self, request, **kwargs):
        if request.headers.get("X-Signature") == SIGN_ME:
            body = request.body or b""
            body = body.encode() if isinstance(body, str) else body
            timestamp = unique_timestamp()
            request.headers.update({"Authorization": f"Bearer {self.api_key}", "X-Timestamp": timestamp,
                                    "X-Signature": signing.sign(self.secret, body, timestamp)})
        return super().send(request, **kwargs)


@pytest.fixture(scope="module")
def wallet(hub88_keys):
    server = start_in_thread(hub88_wallet.make_app(hub88_wallet.State(), public_key_pem=hub88_keys[1]))
    yield Hub88(server)
    server.stop()


@pytest.fixture(scope="module")
def gateway(wallet, hub88_keys, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fuzz")
    proc = GatewayProcess(platform_config(f"sqlite:///{workdir}/gateway.db"), workdir,
                          env={"HUB88_WALLET_URL": wallet.url, "HUB88_PRIVATE_KEY": hub88_keys[0]}).start()
    yield proc
    proc.stop()
    log = proc.log_text()
    assert "Traceback" not in log, log[log.find("Traceback") - 600:][:3000]


def assert_clean(response) -> None:
    """What holds for every answer of a healthy gateway, whatever the request."""
    assert response.status_code < 500, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    assert "Traceback" not in response.text and 'File "' not in response.text
    if response.status_code >= 400:
        body = response.json()
        assert SPEC.errors("ErrorResponse", body) == []
        assert body["status"] == response.status_code and ERROR_CODES[body["error"]] == response.status_code


SCHEMA = schemathesis.openapi.from_path(ROOT / "spec" / "igsp-platform-hooks.yaml")
OPERATION = SCHEMA[HOOKS]["POST"]
PLACEHOLDERS = {"Authorization": "Bearer placeholder", "X-Timestamp": "2000-01-01T00:00:00Z", "X-Signature": SIGN_ME}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_fuzzed_hooks_never_fail_and_always_conform(gateway, wallet, mode):
    wallet.player("player-912", "1000.00")
    session = SigningSession(ACME["api_key"], ACME["secret"])
    seen: dict[int, int] = {}
    checks = CHECKS + ([negative_data_rejection] if mode == schemathesis.GenerationMode.NEGATIVE else [])

    @settings(derandomize=CI, max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(case=OPERATION.as_strategy(generation_mode=mode, headers=dict(PLACEHOLDERS)))
    def run(case):
        response = case.call(base_url=gateway.url, session=session, timeout=10)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code != 403, response.text  # the signature always matched the bytes sent
        assert_clean(_as_requests(response))
        case.validate_response(response, checks=checks)

    run()
    if mode == schemathesis.GenerationMode.NEGATIVE:
        assert set(seen) <= {400, 404, 409, 413}, seen
        assert seen.get(400, 0) > 0
    else:
        assert 200 in seen or 404 in seen, seen


def _as_requests(response) -> requests.Response:
    """schemathesis's Response, seen through the same few attributes as a requests.Response."""
    out = requests.Response()
    out.status_code = response.status_code
    out._content = response.content
    out.headers.update({k: v[0] if isinstance(v, list) else v for k, v in response.headers.items()})
    return out


@pytest.mark.parametrize("field", ["transaction_id", "player_id", "round_id", "currency"])
def test_escaped_lone_surrogates_are_invalid_json_not_a_crash(gateway, wallet, field):
    """JSON may escape a lone surrogate ("\\ud800"); it is not text, so it is refused as such."""
    client = IgspClient(gateway.url, ACME["api_key"], ACME["secret"])
    payload = {"action": "bet", "player_id": "player-912", "amount": 1, "currency": "EUR", "game_id": "g",
               "transaction_id": "t-sur", "session_id": "s", "type": "bet", "round_id": "r"}
    body = dumps(payload).replace(f'"{field}":"'.encode(), f'"{field}":"\\ud800'.encode())
    r = client.post(HOOKS, body)
    assert_clean(r)
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"


# -- stateful money semantics -------------------------------------------------------------------------
AMOUNTS = st.sampled_from(["0", "0.01", "1.50", "7", "19.99", "100.00", "250"]).map(Decimal)


class WalletMachine(RuleBasedStateMachine):
    """A provider's life against one player: the gateway must agree with a plain model."""

    client: IgspClient
    wallet: Hub88
    run_id = 0

    sent = Bundle("sent")  # (payload, status, exact body) of every money request answered
    bets = Bundle("bets")  # bet payloads not refunded yet (or refused)

    @initialize()
    def new_player(self):
        WalletMachine.run_id += 1
        self.player = f"sm-{WalletMachine.run_id}"
        self.balance = Decimal("100.00")
        self.wallet.player(self.player, str(self.balance))
        self.counter = 0

    def txid(self, kind: str) -> str:
        self.counter += 1
        return f"{self.player}-{kind}-{self.counter}"

    def payload(self, action: str, amount: Decimal, **extra) -> dict:
        return {"action": action, "player_id": self.player, "amount": amount, "currency": "EUR",
                "game_id": "vs20olympgate", "session_id": "s-1", "type": "win" if action == "win" else "bet",
                "transaction_id": self.txid(action), **extra}

    def send(self, payload: dict):
        r = self.client.hook(payload)
        assert_clean(r)
        return r

    def expect_balance(self, r) -> None:
        assert r.status_code == 200, r.text
        assert decimal_json(r)["balance"] == self.balance

    @rule(target=bets, amount=AMOUNTS)
    def bet(self, amount):
        payload = self.payload("bet", amount)
        r = self.send(payload)
        if amount <= self.balance:
            self.balance -= amount
            self.expect_balance(r)
        else:
            assert r.status_code == 402 and r.json()["error"] == "insufficient_funds"
        return payload, r.status_code, r.content

    @rule(target=sent, amount=AMOUNTS)
    def win(self, amount):
        payload = self.payload("win", amount)
        r = self.send(payload)
        self.balance += amount
        self.expect_balance(r)
        return payload, r.status_code, r.content

    @rule(target=sent, placed=consumes(bets))
    def refund(self, placed):
        bet, status, _ = placed
        payload = self.payload("refund", bet["amount"], bet_transaction_id=bet["transaction_id"])
        r = self.send(payload)
        if status == 200:
            self.balance += bet["amount"]
            self.expect_balance(r)
        else:
            assert r.status_code == 404 and r.json()["error"] == "transaction_not_found"
        # A second, different refund of the same bet never pays again.
        again = self.send({**payload, "transaction_id": self.txid("refund")})
        assert again.status_code == (409 if status == 200 else 404), again.text
        return payload, r.status_code, r.content

    @rule(previous=st.one_of(sent, bets))
    def retry(self, previous):
        payload, status, body = previous
        r = self.send(payload)
        assert (r.status_code, r.content) == (status, body)  # byte for byte the first answer

    @rule(previous=st.one_of(sent, bets), delta=st.sampled_from(["0.01", "1"]).map(Decimal))
    def reuse_with_another_amount(self, previous, delta):
        payload, _, _ = previous
        r = self.send({**payload, "amount": payload["amount"] + delta})
        assert r.status_code == 409 and r.json()["error"] == "transaction_conflict"

    @rule()
    def refund_of_an_unknown_bet(self):
        r = self.send(self.payload("refund", Decimal("1"), bet_transaction_id=self.txid("ghost")))
        assert r.status_code == 404 and r.json()["error"] == "transaction_not_found"

    @invariant()
    def wallet_agrees(self):
        if hasattr(self, "player"):
            assert self.wallet.balance(self.player) == self.balance
            r = self.client.hook({"action": "balance", "player_id": self.player, "currency": "EUR"})
            self.expect_balance(r)


def test_money_semantics_hold_for_any_sequence_of_hooks(gateway, wallet):
    WalletMachine.client = IgspClient(gateway.url, ACME["api_key"], ACME["secret"])
    WalletMachine.wallet = wallet
    runner = WalletMachine.TestCase()
    runner.settings = settings(derandomize=CI, max_examples=20, stateful_step_count=25, deadline=None, database=None,
                               suppress_health_check=[HealthCheck.too_slow])
    runner.runTest()
