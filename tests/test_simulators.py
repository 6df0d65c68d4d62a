"""The legacy-API simulators behave as documented, bad habits included, and are driven over HTTP."""

from __future__ import annotations

import hashlib
import json
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from decimal import Decimal
from xml.sax.saxutils import escape

import pytest
import requests
from aiohttp import web

from gateway.signing import format_timestamp, signed_headers
from gateway.tools.simulators import (
    hub88_wallet,
    igsp_platform,
    pragmatic_provider,
    soap_wallet,
    spawn,
    start_in_thread,
)

NICK = 'Tom & "Jerry" <3'


@pytest.fixture(scope="module")
def keypair():
    return hub88_wallet.generate_keypair()


@pytest.fixture
def serve():
    servers = []

    def _serve(app):
        server = start_in_thread(app)
        servers.append(server)
        return server.url

    yield _serve
    for server in servers:
        server.stop()


def control(url, what, body=None):
    if body is None:
        response = requests.get(f"{url}/_control/{what}", timeout=5)
    else:
        response = requests.post(f"{url}/_control/{what}", json=body, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


# --- Hub88-style wallet -------------------------------------------------------------------


def hub88(url, path, body, private_pem=None, raw=None, signature=None, timeout=5):
    raw = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if private_pem:
        headers["X-Hub88-Signature"] = hub88_wallet.sign_body(private_pem, json.dumps(body).encode())
    if signature:
        headers["X-Hub88-Signature"] = signature
    return requests.post(url + path, data=raw, headers=headers, timeout=timeout)


def tx(uuid, amount, user="u1", **extra):
    return {
        "user": user,
        "token": "sess-1",
        "request_uuid": f"req-{uuid}-{time.monotonic_ns()}",
        "transaction_uuid": uuid,
        "round": "r1",
        "currency": "EUR",
        "amount": amount,
        "game_code": "g1",
        "supplier_transaction_id": f"s-{uuid}",
        "round_closed": False,
        "is_free": False,
        "bet": "red",
        **extra,
    }


def rollback(uuid, ref, user="u1"):
    return {
        "user": user,
        "token": "sess-1",
        "request_uuid": f"req-{uuid}",
        "transaction_uuid": uuid,
        "reference_transaction_uuid": ref,
        "round": "r1",
        "game_code": "g1",
    }


def test_hub88_signature_good_and_bad(serve, keypair):
    private_pem, public_pem = keypair
    url = serve(hub88_wallet.make_app(public_key_pem=public_pem))
    control(url, "players", {"player_id": "u1", "balance": "100.00", "currency": "EUR"})

    good = hub88(url, "/transaction/bet", tx("t1", 1_000_000), private_pem=private_pem).json()
    assert good["status"] == "RS_OK" and good["balance"] == 9_000_000 and good["currency"] == "EUR"

    signature = hub88_wallet.sign_body(private_pem, json.dumps(tx("t2", 1)).encode())
    tampered = hub88(url, "/transaction/bet", tx("t2", 5_000_000), signature=signature).json()
    assert tampered["status"] == "RS_ERROR_INVALID_SIGNATURE" and "balance" not in tampered
    assert hub88(url, "/user/balance", tx("x", 0), signature="not base64!").json()["status"] == (
        "RS_ERROR_INVALID_SIGNATURE"
    )
    assert hub88(url, "/user/balance", tx("x", 0)).json()["status"] == "RS_ERROR_INVALID_SIGNATURE"
    state = control(url, "state")
    assert state["players"]["u1"]["balance"] == "90.00000" and len(state["ledger"]) == 1


def test_hub88_not_idempotent_and_rollback_once(serve):
    url = serve(hub88_wallet.make_app())
    control(url, "players", {"player_id": "u1", "balance": "100.00", "currency": "EUR"})
    first = hub88(url, "/transaction/bet", tx("t1", 1_000_000)).json()
    again = hub88(url, "/transaction/bet", tx("t1", 1_000_000)).json()
    assert (first["balance"], again["balance"]) == (9_000_000, 8_000_000)  # debited twice

    undo = hub88(url, "/transaction/rollback", rollback("rb1", "t1")).json()
    assert undo["status"] == "RS_OK" and undo["balance"] == 9_000_000
    twice = hub88(url, "/transaction/rollback", rollback("rb2", "t1")).json()
    assert twice["status"] == "RS_OK" and twice["balance"] == 9_000_000
    unknown = hub88(url, "/transaction/rollback", rollback("rb3", "never-seen")).json()
    assert unknown["status"] == "RS_OK" and unknown["balance"] == 9_000_000
    ledger = control(url, "state")["ledger"]
    assert [(e["kind"], e["amount"]) for e in ledger] == [
        ("bet", "-10.00000"),
        ("bet", "-10.00000"),
        ("rollback", "10.00000"),
    ]


@pytest.mark.parametrize("mode, status", [("original", "RS_OK"), ("duplicate_error", "RS_ERROR_DUPLICATE_TRANSACTION")])
def test_hub88_idempotency_modes(serve, mode, status):
    url = serve(hub88_wallet.make_app(idempotency=mode, rollback_unknown="error"))
    control(url, "players", {"player_id": "u1", "balance": "100.00", "currency": "EUR"})
    hub88(url, "/transaction/bet", tx("t1", 1_000_000))
    again = hub88(url, "/transaction/bet", tx("t1", 1_000_000)).json()
    assert again["status"] == status and again["balance"] == 9_000_000
    missing = hub88(url, "/transaction/rollback", rollback("rb", "nope")).json()
    assert missing["status"] == "RS_ERROR_TRANSACTION_DOES_NOT_EXIST"
    assert len(control(url, "state")["ledger"]) == 1


def test_hub88_units_are_exact_and_statuses(serve):
    url = serve(hub88_wallet.make_app())
    control(url, "players", {"player_id": "u1", "balance": "0.00003", "currency": "EUR"})
    control(url, "players", {"player_id": "u2", "balance": "5", "currency": "EUR", "disabled": True})
    control(url, "players", {"player_id": "u3", "balance": "5", "currency": "EUR", "token": "only-this"})
    assert hub88(url, "/transaction/bet", tx("t1", 1)).json()["balance"] == 2
    won = hub88(url, "/transaction/win", tx("w1", 123_456_789, reference_transaction_uuid="t1")).json()
    assert won["balance"] == 123_456_791
    assert control(url, "state")["players"]["u1"]["balance"] == "1234.56791"

    def status(path, body=None, raw=None):
        return hub88(url, path, body, raw=raw).json()["status"]

    assert status("/transaction/bet", tx("t2", 10**12)) == "RS_ERROR_NOT_ENOUGH_MONEY"
    assert status("/transaction/bet", tx("t3", 1, user="ghost")) == "RS_ERROR_UNKNOWN"
    assert status("/transaction/bet", tx("t4", 1, user="u2")) == "RS_ERROR_USER_DISABLED"
    assert status("/user/balance", tx("t5", 0, user="u3")) == "RS_ERROR_INVALID_TOKEN"
    assert status("/transaction/bet", tx("t6", 1, currency="USD")) == "RS_ERROR_WRONG_CURRENCY"
    assert status("/transaction/bet", tx("t7", "1.5")) == "RS_ERROR_WRONG_TYPES"
    assert status("/transaction/bet", raw=b"{not json") == "RS_ERROR_WRONG_SYNTAX"
    assert status("/transaction/bet", {"user": "u1"}) == "RS_ERROR_WRONG_SYNTAX"
    assert len(control(url, "state")["ledger"]) == 2


# --- SOAP wallet ---------------------------------------------------------------------------


def soap(url, operation, **fields):
    items = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in fields.items())
    body = (
        f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{soap_wallet.SOAP_NS}" '
        f'xmlns:w="{soap_wallet.WALLET_NS}"><soap:Header/><soap:Body><w:{operation}>{items}</w:{operation}>'
        "</soap:Body></soap:Envelope>"
    )
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"urn:legacy-wallet/{operation}"'}
    return requests.post(url + "/wallet", data=body.encode(), headers=headers, timeout=5)


def result(response):
    assert response.status_code == 200, response.text
    found = ET.fromstring(response.content).find(f".//{{{soap_wallet.WALLET_NS}}}Result")
    return {child.tag.rsplit("}", 1)[-1]: child.text for child in found}


def test_soap_escaping_round_trips(serve):
    url = serve(soap_wallet.make_app())
    control(url, "players", {"player_id": "p1", "balance": "100.00", "currency": "EUR", "nickname": NICK})
    response = soap(url, "GetBalance", sessionToken="s1", playerId="p1", currency="EUR")
    assert b'Tom &amp; "Jerry" &lt;3' in response.content
    assert result(response) == {"code": "0", "balance": "100.00", "nickname": NICK}
    soap(
        url,
        "Withdraw",
        sessionToken="s1",
        playerId="p1",
        currency="EUR",
        amount="1.00",
        transactionId="t&<1",
        roundId="r1",
        gameCode="g1",
        nickname=NICK,
    )
    last = control(url, "state")["last_request"]
    assert last["operation"] == "Withdraw"
    assert last["fields"]["nickname"] == NICK and last["fields"]["transactionId"] == "t&<1"


def test_soap_codes(serve):
    url = serve(soap_wallet.make_app(password="pw"))
    control(url, "players", {"player_id": "p1", "balance": "100.00", "currency": "EUR"})
    common = {
        "sessionToken": "s1",
        "playerId": "p1",
        "currency": "EUR",
        "roundId": "r1",
        "gameCode": "g1",
        "password": "pw",
    }
    ok = result(soap(url, "Withdraw", amount="2.50", transactionId="t1", **common))
    assert ok["code"] == "0" and ok["balance"] == "97.50"
    assert result(soap(url, "Deposit", amount="0.25", transactionId="w1", **common))["balance"] == "97.75"
    dup = result(soap(url, "Withdraw", amount="2.50", transactionId="t1", **common))
    assert dup == {
        "code": "3",
        "balance": "97.50",
        "externalTxId": ok["externalTxId"],
        "message": "duplicate transaction",
    }
    assert result(soap(url, "Withdraw", amount="1000", transactionId="t2", **common))["code"] == "1"
    assert result(soap(url, "Rollback", transactionId="nope", **common))["code"] == "4"
    undone = result(soap(url, "Rollback", transactionId="t1", **common))
    assert undone["code"] == "0" and undone["balance"] == "100.25"
    assert result(soap(url, "Rollback", transactionId="t1", **common))["code"] == "3"
    assert result(soap(url, "GetBalance", **dict(common, playerId="ghost")))["code"] == "2"
    assert result(soap(url, "GetBalance", **dict(common, currency="USD")))["code"] == "99"

    wrong = soap(url, "GetBalance", **dict(common, password="guess"))
    assert wrong.status_code == 500 and b"Fault" in wrong.content and b"Authentication failed" in wrong.content
    dtd = requests.post(
        url + "/wallet",
        data=b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>',
        headers={"SOAPAction": "GetBalance"},
        timeout=5,
    )
    assert dtd.status_code == 500 and b"faultcode" in dtd.content
    utf16 = requests.post(  # no "<!DOCTYPE" bytes to find: the parser itself refuses it
        url + "/wallet",
        data='<?xml version="1.0" encoding="utf-16"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'.encode("utf-16"),
        headers={"SOAPAction": "GetBalance"},
        timeout=5,
    )
    assert utf16.status_code == 500 and b"DTDs are not allowed" in utf16.content
    assert control(url, "state")["players"]["p1"]["balance"] == "100.25"


# --- Pragmatic-style provider ------------------------------------------------------------------


def test_pragmatic_hash_catalogue_and_launch(serve):
    assert (
        pragmatic_provider.hash_params({"b": "2", "a": "1", "hash": "x"}, "s") == hashlib.md5(b"a=1&b=2s").hexdigest()
    )
    url = serve(pragmatic_provider.make_app(secret_key="k"))
    api = url + "/IntegrationService/v3/http/CasinoGameAPI"

    def form(**params):
        return dict(params, hash=pragmatic_provider.hash_params(params, "k"))

    games = requests.post(f"{api}/getCasinoGames/", data=form(secureLogin="casino_login"), timeout=5).json()
    assert games["error"] == "0" and len(games["gameList"]) >= 25
    olympus = next(g for g in games["gameList"] if g["gameID"] == "vs20olympgate")
    assert olympus["rtp"] == "96.50" and olympus["gameName"] == "Gates of Olympus"
    bad = requests.post(f"{api}/getCasinoGames/", data={"secureLogin": "casino_login", "hash": "0" * 32}, timeout=5)
    assert bad.json() == {"error": "5", "description": "Invalid hash"}

    launch = form(
        secureLogin="casino_login",
        symbol="vs20olympgate",
        language="en",
        token="tok&1",
        currency="EUR",
        lobbyUrl="https://casino.example/lobby",
    )
    answer = requests.post(f"{api}/game/url/", data=launch, timeout=5).json()
    assert (
        answer["error"] == "0" and "token=tok%261" in answer["gameURL"] and "symbol=vs20olympgate" in answer["gameURL"]
    )
    missing = requests.post(f"{api}/game/url/", data=form(**dict(launch, symbol="nope")), timeout=5).json()
    assert missing["error"] == "8"
    assert control(url, "state")["launches"] == {"tok&1": 1}


def stub_wallet(secret, fail):
    """A minimal Pragmatic-style casino wallet: checks hashes, idempotent by reference."""
    seen = {"balance": Decimal("100.00"), "done": {}, "received": []}

    async def handle(request):
        op = request.match_info["op"]
        form = dict(await request.post())
        seen["received"].append((op, form))
        if form.pop("hash") != pragmatic_provider.hash_params(form, secret):
            return web.json_response({"error": 5, "description": "Invalid hash"})
        if fail.get(op):
            fail[op] -= 1
            return web.json_response({"error": 100, "description": "Internal error"})
        if op == "authenticate":
            return web.json_response({"userId": "user-7", "currency": "EUR", "cash": 100.0, "bonus": 0, "error": 0})
        key = (op, form.get("reference"))
        if op != "balance" and key not in seen["done"]:
            amount = Decimal(form.get("amount", "0"))
            seen["balance"] += -amount if op == "bet" else amount
            seen["done"][key] = str(seen["balance"])
        cash = seen["done"].get(key, str(seen["balance"]))
        return web.Response(
            text=f'{{"transactionId": "c-{len(seen["done"])}", "currency": "EUR", "cash": {cash}, '
            '"bonus": 0, "usedPromo": 0, "error": 0, "description": "Success"}',
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_post("/{op}", handle)
    return app, seen


def test_pragmatic_play_retries_against_a_wallet(serve):
    fail = {"result": 1}
    wallet_app, seen = stub_wallet("k", fail)
    wallet_url = serve(wallet_app)
    url = serve(pragmatic_provider.make_app(secret_key="k", wallet_url=wallet_url, provider_id="PP"))
    steps = [
        {"op": "bet", "amount": "1.00", "reference": "b1"},
        {"op": "result", "amount": "2.50", "reference": "w1"},
        {"op": "refund", "reference": "b1"},
        {"op": "balance"},
    ]
    played = control(url, "play", {"token": "launch-1", "steps": steps, "retry": {"attempts": 3, "delay": 0.01}})
    assert played["ok"] is True and played["user_id"] == "user-7"
    assert [(c["op"], c["attempt"]) for c in played["calls"]] == [
        ("authenticate", 1),
        ("bet", 1),
        ("result", 1),
        ("result", 2),
        ("refund", 1),
        ("balance", 1),
    ]
    assert played["calls"][2]["answer"]["error"] == 100
    assert played["calls"][2]["params"] == played["calls"][3]["params"]  # a retry repeats itself
    refund = played["calls"][4]["params"]
    assert refund["amount"] == "1.00" and refund["token"] == "launch-1" and refund["roundId"] == played["round_id"]
    assert played["calls"][5]["answer"]["cash"] == "102.50"
    assert [(e["kind"], e["amount"]) for e in control(url, "state")["ledger"]] == [
        ("bet", "-1.00"),
        ("result", "2.50"),
        ("refund", "1.00"),
    ]

    fail["refund"] = 5
    again = control(
        url,
        "play",
        {
            "token": "launch-1",
            "steps": [{"op": "refund", "reference": "b9", "amount": "1"}],
            "retry": {"attempts": 3, "delay": 0},
        },
    )
    assert again["ok"] is False and [c["op"] for c in again["calls"]] == ["refund"] * 3  # no second authenticate
    assert sum(1 for op, _ in seen["received"] if op == "authenticate") == 1


# --- iGSP platform ----------------------------------------------------------------------------


def hook(url, amount=None, key="test-key", secret="test-secret", timestamp=None, **fields):
    raw = json.dumps(fields)
    if amount is not None:
        raw = raw[:-1] + f', "amount": {amount}}}'
    headers = signed_headers(key, secret, raw.encode(), timestamp)
    return requests.post(url + igsp_platform.HOOK_PATH, data=raw.encode(), headers=headers, timeout=5)


def money(action, txid, amount, **extra):
    fields = {
        "action": action,
        "player_id": "p1",
        "currency": "EUR",
        "game_id": "g1",
        "transaction_id": txid,
        "session_id": "s1",
        "type": "bet" if action != "win" else "win",
        **extra,
    }
    return {"amount": amount, **fields}


def test_igsp_platform_signature(serve):
    url = serve(igsp_platform.make_app(secret=["old-secret", "test-secret"]))
    control(url, "players", {"player_id": "p1", "balance": "100.00", "currency": "EUR"})
    ok = hook(url, action="balance", player_id="p1", currency="EUR")
    assert ok.status_code == 200 and ok.text == '{"balance": 100.00}'
    assert hook(url, secret="old-secret", action="balance", player_id="p1", currency="EUR").status_code == 200
    bad = hook(url, secret="wrong", action="balance", player_id="p1", currency="EUR")
    assert bad.status_code == 403 and bad.json() == {
        "error": "invalid_signature",
        "message": "Invalid signature",
        "status": 403,
    }
    assert hook(url, key="who", action="balance", player_id="p1", currency="EUR").json()["error"] == "unauthorized"
    stale = format_timestamp(datetime(2001, 1, 1, tzinfo=UTC))
    assert hook(url, timestamp=stale, action="balance", player_id="p1", currency="EUR").status_code == 403


def test_igsp_platform_idempotency_and_refunds(serve):
    url = serve(igsp_platform.make_app())
    control(url, "players", {"player_id": "p1", "balance": "100.00", "currency": "EUR"})
    first = hook(url, **money("bet", "b1", "0.10"))
    assert first.status_code == 200 and json.loads(first.text, parse_float=Decimal)["balance"] == Decimal("99.90")
    retry = hook(url, **money("bet", "b1", "0.10"))
    assert retry.text == first.text
    assert hook(url, **money("bet", "b1", "0.20")).json()["error"] == "transaction_conflict"
    assert hook(url, **money("bet", "b2", "0.20")).text.startswith('{"balance": 99.70')
    assert hook(url, **money("bet", "b3", "1000")).status_code == 402
    assert hook(url, **dict(money("bet", "b4", "1"), player_id="ghost")).json()["status"] == 404
    assert hook(url, **money("refund", "r0", "1", bet_transaction_id="nope")).json()["error"] == "transaction_not_found"
    # The refund left a tombstone: the bet it named, arriving late, is refused and moves nothing.
    late = hook(url, **money("bet", "nope", "1"))
    assert late.status_code == 409 and late.json()["error"] == "transaction_already_refunded"
    refund = hook(url, **money("refund", "r1", "0.10", bet_transaction_id="b1"))
    assert refund.status_code == 200 and hook(url, **money("refund", "r1", "0.10", bet_transaction_id="b1")).text == (
        refund.text
    )
    second = hook(url, **money("refund", "r2", "0.10", bet_transaction_id="b1"))
    assert second.status_code == 409 and second.json()["error"] == "already_refunded"
    won = hook(url, **money("win", "w1", "0.30"))
    assert json.loads(won.text, parse_float=Decimal)["balance"] == Decimal("100.10")
    state = control(url, "state")
    assert state["players"]["p1"]["balance"] == "100.10" and len(state["ledger"]) == 4


# --- faults, control API, subprocess --------------------------------------------------------


def test_each_fault_kind_once(serve):
    url = serve(hub88_wallet.make_app())
    control(url, "players", {"player_id": "u1", "balance": "100.00", "currency": "EUR"})

    def bet(uuid, timeout=5):
        return hub88(url, "/transaction/bet", tx(uuid, 100_000), timeout=timeout)

    def ledger_size():
        return len(control(url, "state")["ledger"])

    control(url, "faults", {"kind": "delay", "seconds": 0.3})
    started = time.monotonic()
    assert bet("d1").json()["status"] == "RS_OK" and time.monotonic() - started >= 0.3

    control(url, "faults", {"kind": "http_500_html"})
    broken = bet("h1")
    assert broken.status_code == 500 and broken.headers["Content-Type"].startswith("text/html")

    control(url, "faults", {"kind": "garbage"})
    garbage = bet("g1")
    assert garbage.status_code == 200 and garbage.text == "<<not json>>"

    control(url, "faults", {"kind": "reset"})
    with pytest.raises(requests.ConnectionError):
        bet("r1")
    assert ledger_size() == 1  # only the delayed bet was applied

    control(url, "faults", {"kind": "apply_then_hang", "seconds": 1})
    with pytest.raises(requests.ReadTimeout):
        bet("a1", timeout=0.3)
    assert ledger_size() == 2  # applied although the caller never heard back

    control(url, "faults", {"kind": "down", "endpoint": "win"})
    control(url, "faults", {"kind": "down", "count": 2, "endpoint": "bet"})
    assert [bet(f"x{i}").status_code for i in range(3)] == [503, 503, 200]
    state = control(url, "state")
    assert len(state["faults"]) == 1 and state["faults"][0]["endpoint"] == "win"
    assert state["calls"]["bet"] == 8

    assert requests.post(f"{url}/_control/faults", json={"kind": "explode"}, timeout=5).status_code == 400
    control(url, "reset", {})
    assert control(url, "state")["players"] == {} and control(url, "state")["faults"] == []


def test_igsp_platform_down_answers_an_error_response(serve):
    url = serve(igsp_platform.make_app())
    control(url, "faults", {"kind": "down"})
    down = hook(url, action="balance", player_id="p1", currency="EUR")
    assert down.status_code == 503 and down.json()["error"] == "service_unavailable"


def test_spawn_prints_ready_and_serves():
    proc, url = spawn("igsp_platform", "--player", "p1:5.00:EUR")
    try:
        assert url.startswith("http://127.0.0.1:")
        assert control(url, "state")["players"]["p1"]["balance"] == "5.00"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
