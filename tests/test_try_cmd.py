"""``igsp-gateway try`` on the shipped mappings: the legacy request it renders, and the
iGSP answer a legacy reply becomes — as a subprocess, like a mapping author runs it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from decimal import Decimal

import pytest

from adapters.codecs import dumps
from gateway.tools.simulators import hub88_wallet, soap_wallet, start_in_thread
from gateway.tools.try_cmd import load_for_try, parse_input, run_try
from tests.support import ROOT
from tests.wallet_support import Simulator

HUB88 = str(ROOT / "mappings" / "hub88-wallet.yaml")
SOAP = str(ROOT / "mappings" / "soap-wallet.yaml")
BET = {"player_id": "p1", "amount": Decimal("12.34"), "currency": "EUR", "game_id": "vs20olympgate",
       "transaction_id": "tx-1", "session_id": "s-1", "type": "bet", "round_id": "r-1"}
NICK = 'Tom & "Jerry" <3'
SOAP_OK = ('<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
           '<soap:Body><{op}Response xmlns="urn:legacy-wallet"><Result><code>{code}</code><balance>87.66</balance>'
           '<externalTxId>ext-9</externalTxId></Result></{op}Response></soap:Body></soap:Envelope>')
SOAP_FAULT = ('<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
              '<soap:Body><soap:Fault><faultcode>soap:{kind}</faultcode><faultstring>went wrong</faultstring>'
              '</soap:Fault></soap:Body></soap:Envelope>')


def run(*args, env=None, check=True):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HUB88_", "SOAP_WALLET_"))}
    result = subprocess.run([sys.executable, "-m", "gateway", "try", *args], capture_output=True, text=True,
                            env={**clean, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def hook(**changes) -> str:
    if isinstance(changes.get("amount"), str):
        changes["amount"] = Decimal(changes["amount"])
    return dumps({**BET, **changes}).decode()


def test_hub88_request_without_any_environment():
    out = run(HUB88, "bet", "--input", hook(), "--request-id", "rq-1").stdout
    assert out.splitlines()[:5] == [
        f"mapping:   {HUB88} (hub88-wallet, platform face)",
        "operation: bet",
        "unset:     HUB88_PRIVATE_KEY, HUB88_WALLET_URL (placeholders used; pass --env NAME=VALUE)",
        "unsigned:  the signer needs HUB88_PRIVATE_KEY",
        "amount:    12.34 -> legacy_amount 1234000",
    ]
    assert "POST ${HUB88_WALLET_URL}/transaction/bet\n" in out
    body = json.loads(out.split("\n\n")[2].splitlines()[-1])
    assert body == {"user": "p1", "token": "s-1", "request_uuid": "rq-1", "game_code": "vs20olympgate",
                    "transaction_uuid": "try:tx-1", "supplier_transaction_id": "tx-1", "round": "r-1",
                    "round_closed": False, "currency": "EUR", "amount": 1234000, "is_free": False, "bet": "bet"}
    assert "(give --response BODY|@file or --live to see the iGSP answer)" in out


def test_hub88_signed_request_and_answer(tmp_path, hub88_keys):
    key = tmp_path / "key.pem"
    key.write_text(hub88_keys[0])
    result = run(HUB88, "bet", "--input", hook(), "--json", "--env", "HUB88_WALLET_URL=http://wallet.test",
                 "--env", f"HUB88_PRIVATE_KEY=@{key}", "--request-id", "x",
                 "--response", '{"user":"p1","status":"RS_OK","request_uuid":"x","currency":"EUR","balance":8766000}')
    report = json.loads(result.stdout)
    req = report["request"]
    assert req["url"] == "http://wallet.test/transaction/bet" and report["unset"] == []
    # The signature is the one the wallet will check, over exactly these bytes.
    assert hub88_wallet.verify_body(hub88_keys[1], req["body"].encode(), req["headers"]["X-Hub88-Signature"])
    assert report["fields"] == {"balance": 8766000, "transaction_id": "x"}
    assert report["answer"]["raw"] == '{"balance":87.66,"transaction_id":"x"}'
    assert hub88_keys[0] not in result.stdout


def test_hub88_error_answer_in_text():
    out = run(HUB88, "bet", "--input", hook(), "--request-id", "x",
              "--response", '{"user":"p1","status":"RS_ERROR_NOT_ENOUGH_MONEY","request_uuid":"x"}').stdout
    assert out.rstrip().endswith("==> iGSP error: HTTP 402 (fatal)\n"
                                 '{"error": "insufficient_funds", "message": "legacy error RS_ERROR_NOT_ENOUGH_MONEY", '
                                 '"status": 402}')
    out = run(HUB88, "bet", "--input", hook(), "--status", "500", "--response", "<html>oops</html>").stdout
    assert "==> iGSP error: HTTP 503 (retriable, money moved: unknown)" in out


def test_hub88_echoes_are_shown_and_checked():
    answer = '{"user":"p1","status":"RS_OK","request_uuid":"rq-1","currency":"EUR","balance":8766000}'
    out = run(HUB88, "bet", "--input", hook(), "--request-id", "rq-1", "--response", answer).stdout
    assert "echo:      request_uuid = 'rq-1', as sent\necho:      user = 'p1', as sent\n" in out
    assert "==> iGSP answer: HTTP 200" in out
    # Another request's answer (another player's, or no request id at all) is refused, as the gateway would.
    stale = answer.replace('"p1"', '"p2"').replace('"request_uuid":"rq-1",', "")
    out = run(HUB88, "bet", "--input", hook(), "--request-id", "rq-1", "--response", stale).stdout
    assert "echo:      request_uuid is missing; the request sent 'rq-1'\n" in out
    assert "echo:      user = 'p2', but the request sent 'p1'\n" in out
    assert "==> iGSP error: HTTP 502 (retriable, money moved: unknown)" in out
    assert "legacy answer is not this request's (request_uuid is missing); outcome unknown" in out
    report = json.loads(run(HUB88, "bet", "--input", hook(), "--request-id", "rq-1", "--response", stale,
                            "--json").stdout)
    assert report["echo"] == [{"field": "request_uuid", "expected": "rq-1", "got": None, "ok": False},
                              {"field": "user", "expected": "p1", "got": "p2", "ok": False}]
    assert report["fields"] is None and report["answer"]["applied"] == "unknown"


#: Every status of legacy-apis.md (B), as the shipped mapping answers it, per operation.
HUB88_STATUSES = {
    "RS_OK": ("bet", 200, None),
    "RS_ERROR_UNKNOWN": ("bet", 404, "player_not_found"),
    "RS_ERROR_INVALID_PARTNER": ("bet", 502, "upstream_error"),
    "RS_ERROR_INVALID_TOKEN": ("bet", 400, "session_not_found"),
    "RS_ERROR_INVALID_GAME": ("bet", 400, "game_not_found"),
    "RS_ERROR_WRONG_CURRENCY": ("bet", 400, "currency_mismatch"),
    "RS_ERROR_NOT_ENOUGH_MONEY": ("bet", 402, "insufficient_funds"),
    "RS_ERROR_USER_DISABLED": ("bet", 409, "player_blocked"),
    "RS_ERROR_INVALID_SIGNATURE": ("bet", 502, "upstream_error"),
    "RS_ERROR_TOKEN_EXPIRED": ("bet", 400, "session_not_found"),
    "RS_ERROR_WRONG_SYNTAX": ("bet", 502, "upstream_error"),
    "RS_ERROR_WRONG_TYPES": ("bet", 502, "upstream_error"),
    "RS_ERROR_DUPLICATE_TRANSACTION": ("bet", 409, "transaction_conflict"),
    "RS_ERROR_TRANSACTION_DOES_NOT_EXIST": ("win", 404, "transaction_not_found"),
    "RS_ERROR_LIMIT_REACHED": ("bet", 400, "limit_exceeded"),
    "RS_ERROR_TIMEOUT": ("bet", 504, "upstream_timeout"),
    "SOMETHING_NEW": ("bet", 502, "upstream_error"),
}


def try_in_process(mapping, operation, payload, response, status=200, env=None):
    loaded = load_for_try(mapping, env or {})
    parsed = parse_input(dumps(payload), loaded.mapping, operation)
    return asyncio.run(run_try(loaded, operation, parsed, request_id="rq", partner="try", response=response,
                               status=status, content_type=None, live=False))


@pytest.mark.parametrize("status", HUB88_STATUSES)
def test_every_hub88_status(status):
    operation, http, code = HUB88_STATUSES[status]
    body = json.dumps({"user": "p1", "status": status, "request_uuid": "rq", "currency": "EUR", "balance": 100000})
    payload = {**BET, "type": "win"} if operation == "win" else BET
    answer = try_in_process(HUB88, operation, payload, body.encode())["answer"]
    assert answer["status"] == http
    assert (answer["body"].get("error") if http >= 400 else None) == code


def test_hub88_per_operation_success_codes():
    """A rollback of a transaction the wallet never saw: nothing to undo, acknowledged."""
    body = json.dumps({"user": "p1", "status": "RS_ERROR_TRANSACTION_DOES_NOT_EXIST", "request_uuid": "rq",
                       "currency": "EUR", "balance": 100000})
    report = try_in_process(HUB88, "refund", {**BET, "bet_transaction_id": "tx-0"}, body.encode())
    assert report["answer"]["status"] == 200 and report["answer"]["body"] == {"balance": 1, "transaction_id": "rq"}


def test_hub88_duplicate_win_is_not_taken_as_paid():
    """RS_ERROR_DUPLICATE_TRANSACTION on a win says "already done" but carries nothing of the
    transaction it collided with: an unknown outcome, never a paid win."""
    body = json.dumps({"user": "p1", "status": "RS_ERROR_DUPLICATE_TRANSACTION", "request_uuid": "rq",
                       "currency": "EUR", "balance": 100000})
    answer = try_in_process(HUB88, "win", {**BET, "type": "win"}, body.encode())["answer"]
    assert (answer["status"], answer["body"]["error"], answer["applied"]) == (502, "upstream_error", "unknown")


def test_soap_request_escapes_and_redacts():
    result = run(SOAP, "bet", "--input", hook(session_id=NICK, round_id=NICK), "--env", "SOAP_WALLET_PASSWORD=pw-0123-secret",
                 "--env", "SOAP_WALLET_URL=http://soap.test")
    out = result.stdout
    assert "POST http://soap.test/wallet\n" in out and 'SOAPAction: "urn:legacy-wallet#Withdraw"' in out
    assert ("<Withdraw xmlns=\"urn:legacy-wallet\"><sessionToken>Tom &amp; \"Jerry\" &lt;3</sessionToken>"
            "<playerId>p1</playerId><currency>EUR</currency><amount>12.34</amount><transactionId>tx-1</transactionId>"
            "<roundId>Tom &amp; \"Jerry\" &lt;3</roundId><gameCode>vs20olympgate</gameCode>"
            "<password>[REDACTED]</password></Withdraw>") in out
    assert "pw-0123-secret" not in out


@pytest.mark.parametrize(
    ("operation", "response", "status", "expected"),
    [
        ("bet", SOAP_OK.format(op="Withdraw", code=0), 200, (200, {"balance": Decimal("87.66"), "transaction_id": "ext-9"})),
        # "Duplicate": nothing in it proves it is this transaction, so the outcome is unknown.
        ("bet", SOAP_OK.format(op="Withdraw", code=3), 200, (502, "upstream_error")),
        ("win", SOAP_OK.format(op="Deposit", code=3), 200, (502, "upstream_error")),
        ("bet", SOAP_OK.format(op="Withdraw", code=1), 200, (402, "insufficient_funds")),
        ("bet", SOAP_OK.format(op="Withdraw", code=2), 200, (400, "session_not_found")),
        ("bet", SOAP_OK.format(op="Withdraw", code=99), 200, (502, "upstream_error")),
        ("win", SOAP_OK.format(op="Deposit", code=4), 200, (404, "transaction_not_found")),
        ("refund", SOAP_OK.format(op="Rollback", code=4), 200, (200, {"balance": Decimal("87.66"), "transaction_id": "ext-9"})),
        ("refund", SOAP_OK.format(op="Rollback", code=3), 200, (200, {"balance": Decimal("87.66"), "transaction_id": "ext-9"})),
        ("bet", SOAP_FAULT.format(kind="Client"), 500, (502, "upstream_error")),
        ("bet", SOAP_FAULT.format(kind="Server"), 500, (503, "upstream_unavailable")),
        ("balance", SOAP_OK.format(op="GetBalance", code=0), 200, (200, {"balance": Decimal("87.66")})),
    ],
)
def test_soap_answers(operation, response, status, expected):
    payload = {**BET, "bet_transaction_id": "tx-0"} if operation == "refund" else dict(BET)
    if operation == "win":
        payload["type"] = "win"
    if operation == "balance":
        payload = {"player_id": "p1", "currency": "EUR"}
    answer = try_in_process(SOAP, operation, payload, response.encode(), status,
                            env={"SOAP_WALLET_PASSWORD": "pw"})["answer"]
    assert answer["status"] == expected[0]
    assert answer["body"] == expected[1] if expected[0] == 200 else answer["body"]["error"] == expected[1]


def test_soap_fault_in_text_says_what_moved():
    out = run(SOAP, "bet", "--input", hook(), "--env", "SOAP_WALLET_PASSWORD=pw", "--status", "500",
              "--response", SOAP_FAULT.format(kind="Client")).stdout
    assert "<-- legacy response (given): HTTP 500 text/xml; charset=utf-8" in out
    assert "==> iGSP error: HTTP 502 (retriable, money moved: no)" in out
    assert '"message": "legacy error soap:Client: went wrong"' in out


def test_live_really_calls_the_wallet(tmp_path):
    server = start_in_thread(soap_wallet.make_app(soap_wallet.State(), password="pw-live"))
    try:
        wallet = Simulator(server)
        wallet.player("p1", "100.00", token="s-1")
        env = ["--env", f"SOAP_WALLET_URL={server.url}", "--env", "SOAP_WALLET_PASSWORD=pw-live"]
        report = json.loads(run(SOAP, "bet", "--input", hook(), "--live", "--json", *env).stdout)
        assert report["response"]["source"] == "live" and report["response"]["status"] == 200
        assert report["answer"]["body"] == {"balance": 87.66, "transaction_id": "ext-1"}
        assert wallet.balance("p1") == Decimal("87.66")  # --live is real: it moved money
        # Missing variables are refused for a live call rather than sent as placeholders.
        refused = run(SOAP, "bet", "--input", hook(), "--live", check=False)
        assert refused.returncode == 2 and "unset: SOAP_WALLET_PASSWORD, SOAP_WALLET_URL" in refused.stderr
    finally:
        server.stop()


def test_bad_invocations_are_explained(tmp_path):
    bad_input = run(HUB88, "bet", "--input", hook(amount="12.345"), check=False)
    assert bad_input.returncode == 2
    assert "the input would be refused: invalid_amount: amount has more than 2 decimals for EUR" in bad_input.stderr
    missing = run(HUB88, "bet", "--input", '{"player_id": "p1"}', check=False)
    assert missing.returncode == 2 and "invalid_request" in missing.stderr
    unknown = run(HUB88, "jackpot", "--input", "{}", check=False)
    assert unknown.returncode == 2 and "unknown operation 'jackpot'; hub88-wallet has: balance, bet, win, refund" in \
        unknown.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nname: x\nface: platform\nupstream: {base_url: 'http://x'}\noperations: {}\n")
    result = run(str(broken), "bet", "--input", "{}", check=False)
    assert result.returncode == 1 and f"{broken}:5: operations: got a mapping: {{}} should be non-empty" in result.stderr


def test_provider_face_operation_shows_the_read_fields():
    pragmatic = str(ROOT / "mappings" / "pragmatic-provider.yaml")
    out = run(pragmatic, "launch", "--input", '{"legacy_game_id": "vs20olympgate", "token": "t1", "currency": "EUR", "device": "mobile"}',
              "--env", "PP_SECRET_KEY=key-0123456789", "--env", "PP_SECURE_LOGIN=login-0123",
              "--response", '{"gameURL": "https://games.test/play?t=1", "error": "0"}').stdout
    request = out.split("--> legacy request\n", 1)[1].split("\n\n")
    fields = dict(pair.split("=", 1) for pair in request[1].splitlines()[0].split("&"))
    assert fields["symbol"] == "vs20olympgate" and fields["platform"] == "MOBILE" and fields["secureLogin"] == "[REDACTED]"
    assert len(fields["hash"]) == 32 and "key-0123456789" not in out
    assert out.rstrip().endswith('==> read successfully (fields for the rest of the flow)\n{"url":"https://games.test/play?t=1"}')
