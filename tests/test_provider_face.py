"""Provider face end to end: a Pragmatic-style game provider behind the iGSP provider API.

Real servers on loopback: the gateway process, the pragmatic_provider simulator (legacy
catalogue/launch API, and a game server that plays rounds against the gateway as its
seamless wallet) and the igsp_platform simulator (the casino platform receiving the
gateway's signed iGSP hooks and keeping the ledger every money assertion reads).
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from decimal import Decimal
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from gateway import signing
from gateway.engine.templating import IGSP_NAMESPACE
from gateway.spec import PROVIDER_SPEC, SpecValidators
from gateway.tools.simulators import igsp_platform, pragmatic_provider, start_in_thread
from tests.ops_support import Metrics
from tests.support import ROOT, GatewayProcess, IgspClient, decimal_json

PP_SECRET = "pp-secret-key-0123"
PARTNER = {"id": "casino-one", "api_key": "casino-one-key", "secret": "casino-one-secret-0123456789"}
MAPPING = "pragmatic-provider"
SPEC = SpecValidators(PROVIDER_SPEC)


def game_uuid(code: str) -> str:
    return str(uuid.uuid5(IGSP_NAMESPACE, f"{MAPPING}/games/{code}"))


PROVIDER_UUID = str(uuid.uuid5(IGSP_NAMESPACE, f"{MAPPING}/providers/pragmaticplay"))


class World:
    def __init__(self, tmp_path):
        self.provider = start_in_thread(pragmatic_provider.make_app(
            pragmatic_provider.State(), secret_key=PP_SECRET, secure_login="casino_login"))
        self.platform = start_in_thread(igsp_platform.make_app(
            igsp_platform.State(), api_key=PARTNER["api_key"], secret=PARTNER["secret"]))
        config = {
            "version": 1,
            "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_seconds": 0, "drain_seconds": 2},
            "store": {"url": f"sqlite:///{tmp_path}/gateway.db"},
            "partners": [{"id": PARTNER["id"], "face": "provider", "mapping": str(ROOT / "mappings" / f"{MAPPING}.yaml"),
                          "api_key": PARTNER["api_key"], "secrets": [PARTNER["secret"]],
                          "hooks_url": self.platform.url + igsp_platform.HOOK_PATH}],
        }
        env = {"PP_API_URL": self.provider.url, "PP_SECRET_KEY": PP_SECRET, "PP_SECURE_LOGIN": "casino_login"}
        self.gateway = GatewayProcess(config, tmp_path, env=env).start()
        self.wallet_url = f"{self.gateway.url}/legacy/{MAPPING}"
        control(self.provider.url, "config", {"wallet_url": self.wallet_url})
        self.igsp = IgspClient(self.gateway.url + "/igsp/v1", PARTNER["api_key"], PARTNER["secret"])

    def stop(self):
        self.gateway.stop()
        self.provider.stop()
        self.platform.stop()

    # -- platform (ledger) -------------------------------------------------------------
    def player(self, player_id: str, balance: str, **extra) -> None:
        control(self.platform.url, "players", {"player_id": player_id, "balance": balance, "currency": "EUR", **extra})

    def balance(self, player_id: str) -> Decimal:
        return Decimal(state(self.platform.url)["players"][player_id]["balance"])

    def ledger(self, player_id: str) -> list[tuple[str, str, str]]:
        return [(e["kind"], e["txid"], e["amount"]) for e in state(self.platform.url)["ledger"]
                if e["player"] == player_id]

    # -- iGSP side -----------------------------------------------------------------------
    def get(self, path: str, **params) -> requests.Response:
        return checked(self.igsp.get(path, params=params))

    def launch(self, session_id: str, player_id: str = "p1", game: str = "vs20olympgate", **extra):
        body = {"game_id": game_uuid(game), "player_id": player_id, "player_name": "Lucky & \"Fox\" <3",
                "currency": "EUR", "session_id": session_id, "balance": Decimal("100.00"), "device": "desktop",
                "return_url": "https://casino.example/lobby", "language": "en", **extra}
        return checked(self.igsp.post("/sessions", body))

    def token(self, session_id: str, player_id: str = "p1") -> str:
        response = self.launch(session_id, player_id)
        assert response.status_code == 201, response.text
        return parse_qs(urlparse(response.json()["url"]).query)["token"][0]

    # -- legacy game server ---------------------------------------------------------------
    def play(self, token: str, steps: list, attempts: int = 3) -> dict:
        return control(self.provider.url, "play",
                       {"token": token, "steps": steps, "retry": {"attempts": attempts, "delay": 0.05}})


def control(url: str, what: str, body: dict) -> dict:
    response = requests.post(f"{url}/_control/{what}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def state(url: str) -> dict:
    return requests.get(f"{url}/_control/state", timeout=5).json()


def checked(response: requests.Response) -> requests.Response:
    """Every iGSP answer of the provider face must validate against spec/."""
    body = decimal_json(response)
    if response.status_code == 201:
        component = "SessionResponse"
    elif response.status_code == 200:
        component = "GameList" if response.url.split("?")[0].endswith("/games") else "ProviderList"
    else:
        component = "ErrorResponse"
        assert body["status"] == response.status_code
    assert SPEC.errors(component, body) == [], (component, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    return response


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == code


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = World(tmp_path_factory.mktemp("provider-face"))
    yield world
    world.stop()


def sync(world: World, path: str, limit: int, **params) -> list[dict]:
    pages, cursor = [], None
    while True:
        response = world.get(path, limit=limit, **params, **({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.text
        page = decimal_json(response)
        pages.append(page)
        assert page["meta"] == {"limit": limit, "returned": len(page["data"]), "has_more": page["cursor"]["next"]
                                is not None}
        cursor = page["cursor"]["next"]
        if cursor is None:
            return pages
        assert len(pages) < 50


# -- catalogue ----------------------------------------------------------------------------------


def test_games_page_without_gaps_or_duplicates_and_a_second_sync_is_cached(world):
    pages = sync(world, "/games", 7)
    games = [g for page in pages for g in page["data"]]
    assert len(pages) == 4 and [p["meta"]["returned"] for p in pages] == [7, 7, 7, 5]
    assert [g["id"] for g in games] == [g["id"] for g in {g["id"]: g for g in games}.values()]  # no duplicate
    assert {g["id"] for g in games} == {game_uuid(g["gameID"]) for g in pragmatic_provider.GAMES}  # no gap
    assert [(g["updated_at"], g["id"]) for g in games] == sorted((g["updated_at"], g["id"]) for g in games)
    assert pages[0]["cursor"]["previous"] is None and pages[-1]["meta"]["has_more"] is False

    olympus = next(g for g in games if g["id"] == game_uuid("vs20olympgate"))
    assert olympus["name"] == "Gates of Olympus" and olympus["rtp"] == Decimal("0.965")
    assert olympus["status"] == "active" and olympus["categories"] == ["slots"]
    assert olympus["provider_id"] == PROVIDER_UUID and olympus["updated_at"] == "2025-01-02T10:00:00Z"
    assert olympus["images"][0]["url"].endswith("/vs20olympgate.png")
    train = next(g for g in games if g["id"] == game_uuid("vs3train"))
    assert train["status"] == "deprecated" and train["categories"] == ["slots", "classic"]
    assert next(g for g in games if g["id"] == game_uuid("bjma"))["rtp"] == Decimal("0.995")

    # "previous" leads back to exactly the page before.
    back = decimal_json(world.get("/games", limit=7, cursor=pages[2]["cursor"]["previous"]))
    assert back["data"] == pages[1]["data"] and back["cursor"]["next"] == pages[1]["cursor"]["next"]

    # A second full sync (another page size too) is served from the store's cache.
    calls = state(world.provider.url)["calls"]["games"]
    again = [g for page in sync(world, "/games", 200) for g in page["data"]]
    assert again == games
    assert state(world.provider.url)["calls"]["games"] == calls == 1
    scrape = requests.get(world.gateway.internal_url + "/metrics", timeout=5).text
    hits = [line for line in scrape.splitlines() if line.startswith('igsp_catalogue_cache_total{result="hit"}')]
    assert hits and float(hits[0].split()[-1]) >= 5


def test_updated_after_is_strict_and_travels_in_the_cursor(world):
    pages = sync(world, "/games", 1, updated_after="2025-01-02T10:00:00Z")
    names = [g["name"] for page in pages for g in page["data"]]
    assert names == ["Sugar Rush", "Big Bass Splash"]  # later than, not equal to, 10:00:00
    assert len(sync(world, "/games", 50, updated_after="2025-03-01T07:14:59.999999+00:00")) == 1
    assert sync(world, "/games", 50, updated_after="2030-01-01T00:00:00Z")[0]["data"] == []
    first = decimal_json(world.get("/games", limit=1, updated_after="2025-01-02T10:00:00Z"))
    mismatch = world.get("/games", limit=1, updated_after="2024-01-01T00:00:00Z", cursor=first["cursor"]["next"])
    assert_error(mismatch, 400, "invalid_request")
    for bad in ("yesterday", "2025-13-01T00:00:00Z", "2025-01-02", "2025-01-02T10:00:00Z\n", " 2025-01-02T10:00:00Z"):
        assert_error(world.get("/games", updated_after=bad), 400, "invalid_request")


def test_providers_list(world):
    page = decimal_json(world.get("/providers"))
    assert page["meta"] == {"limit": 50, "returned": 1, "has_more": False}
    assert page["cursor"] == {"next": None, "previous": None}
    (provider,) = page["data"]
    assert provider["id"] == PROVIDER_UUID and provider["name"] == "Pragmatic Play"
    assert "EUR" in provider["currencies"] and provider["restricted_countries"][0] == "US"
    assert provider["min_age"] == 18 and provider["min_kyc_level"] == "verified"
    assert provider["images"] == [{"name": "pragmatic-play.png", "type": "logo",
                                   "url": "https://common-static.ppgames.net/logos/pragmatic-play.png"}]


def test_bad_limits_and_tampered_cursors_are_400(world):
    for limit in ("0", "201", "abc", "5.5", "-1", "", "5\n", " 5", "\u00b2", "\u0665", "\uff15"):
        assert_error(world.get("/games", limit=limit), 400, "invalid_request")
    assert world.get("/games", limit="200").status_code == 200
    cursor = decimal_json(world.get("/games", limit=2))["cursor"]["next"]
    payload, mac = cursor.split(".")
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    provider_cursor = decimal_json(world.get("/games", limit=2))["cursor"]["next"]
    tampered = [flipped + "." + mac, payload + "." + mac[::-1], "garbage", "a.b.c", "." * 3000, payload + ".",
                provider_cursor.replace(".", "x", 1)]
    for bad in tampered:
        assert_error(world.get("/games", cursor=bad), 400, "invalid_cursor")
    # A valid cursor of one list is refused on the other.
    assert_error(world.get("/providers", cursor=cursor), 400, "invalid_cursor")
    # Unsigned or wrongly signed catalogue reads.
    assert_error(checked(requests.get(world.igsp.base_url + "/games", timeout=5)), 401, "unauthorized")
    stranger = IgspClient(world.igsp.base_url, PARTNER["api_key"], "wrong-secret-0123456789")
    assert_error(checked(stranger.get("/games")), 403, "invalid_signature")
    assert_error(checked(world.igsp.post("/games", {})), 405, "method_not_allowed")
    assert_error(checked(world.igsp.get("/nothing")), 404, "not_found")
    # A path a caller made up never becomes a metric label (unbounded series).
    for made_up in ("/nothing", "/x-1", "/x-2"):
        assert_error(checked(world.igsp.get(made_up)), 404, "not_found")
    scrape = requests.get(world.gateway.internal_url + "/metrics", timeout=5).text
    assert 'operation="nothing"' not in scrape and 'operation="x-1"' not in scrape


# -- launch -------------------------------------------------------------------------------------


def launches(world: World) -> dict:
    return state(world.provider.url)["launches"]


def test_launch_is_idempotent_by_session_id(world):
    first = world.launch("sess-launch-1")
    assert first.status_code == 201, first.text
    url = first.json()["url"]
    query = parse_qs(urlparse(url).query)
    assert query["symbol"] == ["vs20olympgate"] and query["currency"] == ["EUR"] and query["language"] == ["en"]
    assert query["lobbyUrl"] == ["https://casino.example/lobby"]
    token = query["token"][0]

    again = world.launch("sess-launch-1")
    assert again.status_code == 201 and again.json()["url"] == url
    assert launches(world)[token] == 1

    assert_error(world.launch("sess-launch-1", balance=Decimal("99.00")), 409, "session_conflict")
    assert_error(world.launch("sess-launch-1", player_id="p2"), 409, "session_conflict")
    assert world.launch("sess-launch-1").json()["url"] == url  # the original still stands


def test_a_byte_identical_launch_retry_gets_the_same_launch(world):
    """What an HTTP client resends after a timeout: the same body, timestamp and signature."""
    body = {"game_id": game_uuid("vs20olympgate"), "player_id": "p1", "player_name": "P1", "currency": "EUR",
            "session_id": "sess-identical", "balance": Decimal("10")}
    timestamp = signing.format_timestamp()
    first, again = (checked(world.igsp.post("/sessions", body, timestamp=timestamp)) for _ in range(2))
    assert (first.status_code, again.status_code) == (201, 201), again.text
    assert first.content == again.content


def test_concurrent_copies_of_a_launch_call_the_legacy_side_once(world):
    before = dict(launches(world))
    clients = [IgspClient(world.igsp.base_url, PARTNER["api_key"], PARTNER["secret"]) for _ in range(10)]
    body = {"game_id": game_uuid("vs20fruitsw"), "player_id": "p9", "player_name": "P9", "currency": "EUR",
            "session_id": "sess-concurrent", "balance": Decimal("5")}
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda c: checked(c.post("/sessions", body)), clients))
    assert {a.status_code for a in answers} == {201}, [a.text for a in answers]
    assert len({a.json()["url"] for a in answers}) == 1
    new = {k: v for k, v in launches(world).items() if k not in before}
    assert list(new.values()) == [1]


def test_launch_refusals(world):
    before = sum(launches(world).values())
    unknown = dict(game_id=str(uuid.uuid4()))
    assert_error(world.launch("sess-unknown-game", **unknown), 400, "game_not_found")
    assert_error(world.launch("sess-not-a-uuid", game_id="vs20olympgate"), 400, "invalid_request")
    assert_error(world.launch("sess-xaf", currency="XAF"), 400, "unsupported_currency")
    assert_error(checked(world.igsp.post("/sessions", {"game_id": game_uuid("vs20olympgate")})), 400,
                 "invalid_request")
    assert_error(checked(world.igsp.post("/sessions", b"{not json")), 400, "invalid_json")
    assert sum(launches(world).values()) == before
    # A refused launch did not "progress": the same session_id may launch once it is right.
    assert world.launch("sess-unknown-game").status_code == 201


def test_legacy_launch_failure_is_retriable_and_the_retry_launches_once(world):
    control(world.provider.url, "faults", {"kind": "http_500_html", "endpoint": "launch"})
    failed = world.launch("sess-flaky")
    assert failed.status_code >= 500 and failed.json()["error"] in ("upstream_unavailable", "upstream_bad_response")
    retry = world.launch("sess-flaky")
    assert retry.status_code == 201, retry.text
    token = parse_qs(urlparse(retry.json()["url"]).query)["token"][0]
    assert launches(world)[token] == 1
    assert world.launch("sess-flaky").json() == retry.json()


# -- legacy wallet callbacks -> iGSP hooks ------------------------------------------------------------


def answers(played: dict) -> list[tuple[str, int]]:
    return [(c["op"], int(c["answer"]["error"])) for c in played["calls"]]


def test_a_round_moves_money_exactly_and_retries_move_it_once(world):
    world.player("alice", "100.00", sessions=["sess-alice"])
    token = world.token("sess-alice", "alice")
    steps = [
        {"op": "bet", "amount": "10.00", "reference": "a-bet-1"},
        {"op": "result", "amount": "25.50", "reference": "a-win-1"},
        {"op": "bet", "amount": "5.00", "reference": "a-bet-2"},
        {"op": "refund", "reference": "a-bet-2"},
        {"op": "balance"},
    ]
    played = world.play(token, steps)
    assert played["ok"] is True, played
    assert played["user_id"] == "alice" and played["currency"] == "EUR"
    assert answers(played) == [("authenticate", 0), ("bet", 0), ("result", 0), ("bet", 0), ("refund", 0),
                               ("balance", 0)]
    auth = played["calls"][0]["answer"]
    assert auth["cash"] == "100.00" and auth["userId"] == "alice" and auth["token"] == token
    assert [c["answer"]["cash"] for c in played["calls"][1:]] == ["90.00", "115.50", "110.50", "115.50", "115.50"]
    assert world.balance("alice") == Decimal("115.50")
    assert world.ledger("alice") == [("bet", "a-bet-1", "-10.00"), ("win", "a-win-1", "25.50"),
                                     ("bet", "a-bet-2", "-5.00"), ("refund", "a-bet-2:refund", "5.00")]
    # The platform received the hooks on the launched session, game and round.
    hooks = state(world.platform.url)["transactions"]
    assert hooks["a-bet-2:refund"]["bet_transaction_id"] == "a-bet-2"

    # The legacy server repeats every call (same references): nothing moves again.
    repeat = world.play(token, steps[:4])
    assert [code for _, code in answers(repeat)] == [0, 0, 0, 0]
    assert [c["answer"]["cash"] for c in repeat["calls"]] == ["90.00", "115.50", "110.50", "115.50"]
    assert world.balance("alice") == Decimal("115.50") and len(world.ledger("alice")) == 4


def test_business_errors_in_the_legacy_format(world):
    world.player("bob", "3.00")
    token = world.token("sess-bob", "bob")
    played = world.play(token, [{"op": "bet", "amount": "3.01", "reference": "b-big"}])
    assert played["calls"][-1]["answer"] == {"error": 1, "description": "Insufficient balance"}
    # A refund of a bet nobody took is a success (Pragmatic habit), with or without its amount.
    refunds = state(world.platform.url)["calls"].get("refund", 0)
    played = world.play(token, [{"op": "refund", "reference": "b-ghost"},
                                {"op": "refund", "reference": "b-big", "amount": "3.01"}])
    assert [(c["answer"]["error"], c["answer"]["cash"]) for c in played["calls"]] == [(0, "3.00"), (0, "3.00")]
    # Without an amount nothing could be refunded; with one, the platform was asked and said 404.
    assert state(world.platform.url)["calls"]["refund"] == refunds + 1
    assert world.balance("bob") == Decimal("3.00") and world.ledger("bob") == []
    # A malformed amount is "bad parameters".
    played = world.play(token, [{"op": "bet", "amount": "1", "reference": "b-odd", "params": {"amount": "1.5.0"}},
                                {"op": "bet", "amount": "1.001", "reference": "b-fine"},
                                {"op": "refund", "reference": "b-odd", "params": {"reference": ""}}])
    assert answers(played) == [("bet", 7), ("bet", 7)] + [("refund", 7)] * 3  # the game server retries refunds
    assert world.balance("bob") == Decimal("3.00") and world.ledger("bob") == []



def test_legacy_answers_count_by_their_code_not_their_status(world):
    """A legacy-format refusal is answered 200: the metrics read its code, so an insufficient
    balance is a decline and a platform outage an upstream error, neither an ok."""
    def counts() -> dict[str, float]:
        m = Metrics.scrape(world.gateway.internal_url)
        return {outcome: m.value("igsp_requests_total", partner=PARTNER["id"], face="legacy", operation="bet",
                                 outcome=outcome) for outcome in ("ok", "declined", "upstream_error")}

    world.player("fay", "1.00")
    token = world.token("sess-fay", "fay")
    before = counts()
    played = world.play(token, [{"op": "bet", "amount": "2.00", "reference": "f-big"}])
    assert played["calls"][-1]["answer"] == {"error": 1, "description": "Insufficient balance"}
    control(world.platform.url, "faults", {"kind": "down", "endpoint": "bet", "count": 1})
    played = world.play(token, [{"op": "bet", "amount": "0.50", "reference": "f-down"}], attempts=1)
    assert answers(played) == [("bet", 100)]
    after = counts()
    assert {outcome: after[outcome] - before[outcome] for outcome in after} == {
        "ok": 0, "declined": 1, "upstream_error": 1}


def test_strict_input_a_launch_pattern_and_a_callback_amount(world):
    """A currency or language with a trailing newline is no currency or language (patterns
    match the whole string); a legacy amount above what the unit holds never becomes a hook."""
    before = sum(launches(world).values())
    assert_error(world.launch("sess-strict", currency="EUR\n"), 400, "invalid_request")
    assert_error(world.launch("sess-strict", language="en\n"), 400, "invalid_request")
    assert sum(launches(world).values()) == before
    world.player("dora", "10.00")
    token = world.token("sess-strict", "dora")  # nothing of the refused launches was kept
    bets = state(world.platform.url)["calls"].get("bet", 0)
    played = world.play(token, [{"op": "bet", "amount": "10000000000000000", "reference": "d-huge"},
                                {"op": "bet", "amount": "1.00", "reference": "d-ok"}])
    assert answers(played)[-2:] == [("bet", 7), ("bet", 0)]  # 7: the mapping's code for invalid_amount
    assert state(world.platform.url)["calls"]["bet"] == bets + 1
    assert world.ledger("dora") == [("bet", "d-ok", "-1.00")]

def test_bad_hashes_and_unknown_tokens_are_refused_in_the_legacy_format(world):
    world.player("carol", "50.00")
    token = world.token("sess-carol", "carol")
    played = world.play(token, [{"op": "bet", "amount": "1.00", "reference": "c-1", "params": {"hash": "0" * 32}}])
    assert played["calls"][-1]["answer"] == {"error": 5, "description": "Invalid hash code"}
    assert world.balance("carol") == Decimal("50.00")
    # A hash outside ASCII is a wrong hash too (hmac.compare_digest cannot compare such text):
    # never "internal error, retry", which a game server would retry for ever.
    for bad in ("é" * 32, "0" * 31 + "\u00e9"):
        played = world.play(token, [{"op": "bet", "amount": "1.00", "reference": "c-2", "params": {"hash": bad}}])
        assert played["calls"][-1]["answer"] == {"error": 5, "description": "Invalid hash code"}, bad
    assert world.balance("carol") == Decimal("50.00")

    def form(**params):
        return dict(params, hash=pragmatic_provider.hash_params(params, PP_SECRET))

    url = world.wallet_url
    expired = requests.post(f"{url}/authenticate", data=form(token="no-such-token", providerId="PragmaticPlay"),
                            timeout=5)
    assert expired.status_code == 200 and expired.json()["error"] == 4
    # Without a token the player's latest session is used (Pragmatic's balance call).
    by_player = requests.post(f"{url}/balance", data=form(userId="carol", providerId="PragmaticPlay"), timeout=5)
    assert by_player.json()["error"] == 0 and by_player.json()["cash"] == 50
    assert requests.post(f"{url}/nothing", data=form(token=token), timeout=5).status_code == 404
    garbled = requests.post(f"{url}/bet", data=b"\xff\xfe", timeout=5,
                            headers={"Content-Type": "application/json"})
    assert garbled.status_code == 200 and garbled.json()["error"] == 7


def test_platform_outage_answers_retry_and_the_retry_pays_once(world):
    world.player("dave", "20.00")
    token = world.token("sess-dave", "dave")
    control(world.platform.url, "faults", {"kind": "down", "endpoint": "win", "count": 2})
    played = world.play(token, [{"op": "result", "amount": "7.25", "reference": "d-win"}], attempts=4)
    assert answers(played)[1:] == [("result", 100), ("result", 100), ("result", 0)]
    assert played["calls"][2]["answer"] == {"error": 100, "description": "Internal server error, retry"}
    assert world.ledger("dave") == [("win", "d-win", "7.25")] and world.balance("dave") == Decimal("27.25")
    # A bet during an outage is refused retriably and moves nothing.
    control(world.platform.url, "faults", {"kind": "down", "endpoint": "bet", "count": 1})
    played = world.play(token, [{"op": "bet", "amount": "1.00", "reference": "d-bet"}])
    assert answers(played) == [("bet", 100)] and world.balance("dave") == Decimal("27.25")


def test_a_lost_platform_answer_is_retried_and_pays_once(world):
    world.player("erin", "10.00")
    token = world.token("sess-erin", "erin")
    # The platform applies the win but answers after the gateway gave up (hook_timeout 3 s).
    control(world.platform.url, "faults", {"kind": "apply_then_hang", "endpoint": "win", "seconds": 4})
    played = world.play(token, [{"op": "result", "amount": "2.50", "reference": "e-win"}])
    assert answers(played)[1:] == [("result", 100), ("result", 0)]
    assert world.ledger("erin") == [("win", "e-win", "2.50")] and world.balance("erin") == Decimal("12.50")


def test_a_win_the_game_server_gave_up_on_is_delivered_from_the_queue(world):
    world.player("frank", "10.00")
    token = world.token("sess-frank", "frank")
    # The platform is down for the game server's only attempt and the queue's first one.
    control(world.platform.url, "faults", {"kind": "down", "endpoint": "win", "count": 2})
    played = world.play(token, [{"op": "result", "amount": "4.50", "reference": "frank-queued-win"}], attempts=1)
    assert [a for a in answers(played) if a[0] == "result"] == [("result", 100)], played
    assert world.balance("frank") == Decimal("10.00")
    # The signed hook was queued: it reaches the platform once, after the outage.
    deadline = time.time() + 30
    while time.time() < deadline and world.balance("frank") != Decimal("14.50"):
        time.sleep(0.2)
    assert world.balance("frank") == Decimal("14.50")
    assert world.ledger("frank") == [("win", "frank-queued-win", "4.50")]
    # The game server's late retry is the same transaction: answered, not paid again.
    played = world.play(token, [{"op": "result", "amount": "4.50", "reference": "frank-queued-win"}], attempts=1)
    assert answers(played)[-1:] == [("result", 0)] and world.balance("frank") == Decimal("14.50")
