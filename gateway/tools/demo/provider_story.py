"""Act 2 — provider face: an iGSP casino platform runs a legacy Pragmatic-style game.

The iGSP platform simulator's side is played by the demo (it signs ``GET /games``,
``GET /providers`` and ``POST /sessions`` with the platform's key pair); the legacy game
server simulator then plays rounds against the gateway as if it were the casino's
seamless wallet, and the gateway turns every callback into a signed iGSP hook to the
platform simulator, which keeps the real ledger. The game server retries its wins with
the same reference until one is acknowledged, which is how a platform outage is ridden
out: each copy reaches the platform as the same transaction, paid once.
"""

from __future__ import annotations

import json
from decimal import Decimal
from urllib.parse import parse_qs, urlparse

import aiohttp

from gateway.spec import PROVIDER_SPEC, SpecValidators
from gateway.tools.conformance.client import SignedClient
from gateway.tools.demo.output import Report
from gateway.tools.demo.platform_story import cents, control
from gateway.tools.demo.stack import DemoStack
from gateway.tools.simulators.pragmatic_provider import GAMES

PLAYER, CURRENCY, START = "demo-player-2", "EUR", Decimal("100.00")
SESSION, GAME_NAME = "demo-casino-session-1", "Gates of Olympus"
WALLET_PATH = "/legacy/pragmatic-provider"


class ProviderAct:
    title = "Act 2 — provider face: an iGSP casino platform runs a legacy Pragmatic-style game"

    def __init__(self, stack: DemoStack, http: aiohttp.ClientSession, report: Report):
        self.stack, self.http, self.report = stack, http, report
        partner = stack.platform_partner
        self.client = SignedClient(stack.provider_base_url, partner.api_key, partner.secret,
                                   SpecValidators(PROVIDER_SPEC))
        self.token: str | None = None
        self.cash_seen: Decimal | None = None  # the last balance the legacy game server was told
        self.platform_seen = START
        self.transactions: dict[str, str] = {}  # legacy reference -> transactionId the game server got

    async def platform_balance(self) -> Decimal:
        state = await control(self.http, self.stack.platform.url, "state")
        return cents(state["players"][PLAYER]["balance"])

    async def play(self) -> None:
        async with self.client:
            await self._play()

    async def _play(self) -> None:
        await control(self.http, self.stack.platform.url, "players",
                      {"player_id": PLAYER, "balance": str(START), "currency": CURRENCY, "sessions": [SESSION]})
        await control(self.http, self.stack.game_server.url, "config",
                      {"wallet_url": self.stack.gateway_url + WALLET_PATH})
        self.report.title(self.title, "iGSP: the platform's wallet; legacy: the balance the game server was told")
        game_id = await self.sync_catalogue()
        if game_id is None:
            return
        await self.launch(game_id)
        if self.token is None:
            return
        d = Decimal
        await self.round("bet 1.00 (ref pp-1)", [{"op": "bet", "reference": "pp-1", "amount": "1.00"}], d("-1.00"))
        await self.round("result 2.50 (ref pp-1w)", [{"op": "result", "reference": "pp-1w", "amount": "2.50"}],
                         d("2.50"))
        await self.round("bet 2.00 (ref pp-2)", [{"op": "bet", "reference": "pp-2", "amount": "2.00"}], d("-2.00"))
        await self.round("the same bet again (a game-server retry)",
                         [{"op": "bet", "reference": "pp-2", "amount": "2.00"}], d("0"), same_as="pp-2")
        await self.round("refund of pp-2", [{"op": "refund", "reference": "pp-2"}], d("2.00"))
        await self.round("bet 1000.00 (ref pp-3), over the balance",
                         [{"op": "bet", "reference": "pp-3", "amount": "1000.00"}], d("0"), legacy_error=1)
        await control(self.http, self.stack.platform.url, "faults", {"kind": "down", "endpoint": "win", "count": 2})
        await self.round("platform down: result 5.00 (ref pp-4w)",
                         [{"op": "result", "reference": "pp-4w", "amount": "5.00"}], d("5.00"),
                         retry={"attempts": 5, "delay": 0.3}, expect_retries=True)
        await self.reconcile()

    # -- catalogue and launch ------------------------------------------------------------------
    async def sync_catalogue(self) -> str | None:
        ids, pages, cursor, problems = [], 0, None, []
        while True:
            params = {"limit": "10", **({"cursor": cursor} if cursor else {})}
            answer = await self.client.call("GET", "/games", params=params, expect="GameList")
            pages += 1
            if answer.status != 200 or not isinstance(answer.data, dict):
                problems.append(f"page {pages}: {answer.brief(80)}")
                break
            ids += [(g.get("id"), g.get("name")) for g in answer.data.get("data", [])]
            cursor = (answer.data.get("cursor") or {}).get("next")
            if not cursor or pages > 20:
                break
        if len(ids) != len(GAMES) or len({i for i, _ in ids}) != len(ids):
            problems.append(f"expected {len(GAMES)} distinct games, got {len(ids)} ({len({i for i, _ in ids})} distinct)")
        self.report.step("platform syncs the catalogue: GET /games", f"{len(ids)} games in {pages} pages of 10",
                         None, None, problems + self.client.violations)
        providers = await self.client.call("GET", "/providers", expect="ProviderList")
        names = [p.get("name") for p in providers.data.get("data", [])] if isinstance(providers.data, dict) else []
        self.report.step("GET /providers", f"{providers.status} {', '.join(map(str, names)) or providers.brief(30)}",
                         None, None, [] if providers.status == 200 and names else [f"got {providers.brief(80)}"])
        return next((str(i) for i, name in ids if name == GAME_NAME), None)

    async def launch(self, game_id: str) -> None:
        body = {"game_id": game_id, "player_id": PLAYER, "player_name": "Demo Player", "currency": CURRENCY,
                "session_id": SESSION, "balance": START, "device": "desktop", "language": "en",
                "return_url": "https://casino.example/lobby"}
        first = await self.client.call("POST", "/sessions", body, expect="SessionResponse")
        url = first.field("url") or ""
        self.token = (parse_qs(urlparse(url).query).get("token") or [None])[0]
        problems = [] if first.status == 201 and self.token else [f"expected 201 with a launch url, got {first.brief(80)}"]
        self.report.step(f"launch {GAME_NAME} (POST /sessions)", f"{first.status} url …?token={self.token}", None,
                         None, problems)
        again = await self.client.call("POST", "/sessions", body, expect="SessionResponse")
        problems = [] if (again.status, again.body) == (first.status, first.body) else [
            f"a retried launch must get the first answer, got {again.brief(80)}"]
        self.report.step("the same launch again (a retry)", f"{again.status} the same url" if not problems
                         else again.brief(36), None, None, problems)

    # -- rounds --------------------------------------------------------------------------------
    async def round(self, label: str, steps: list[dict], change: Decimal, *, same_as: str | None = None,
                    legacy_error: int = 0, retry: dict | None = None, expect_retries: bool = False) -> None:
        """One ``/_control/play`` of the game server; judged by its last call and both balances."""
        body = {"token": self.token, "game": "vs20olympgate", "steps": steps, "retry": retry or {"attempts": 3}}
        played = await control(self.http, self.stack.game_server.url, "play", body)
        calls = [c for c in played.get("calls", []) if c["op"] != "authenticate"]
        last = calls[-1] if calls else {}
        answer = last.get("answer") if isinstance(last.get("answer"), dict) else {}
        code = answer.get("error")
        cash = Decimal(str(answer["cash"])) if "cash" in answer else None
        platform = await self.platform_balance()
        want = self.platform_seen + change
        problems = []
        if str(code) != str(legacy_error):
            problems.append(f"expected legacy error {legacy_error}, the game server got {json.dumps(answer)[:100]}")
        if platform != want:
            problems.append(f"expected the platform's wallet at {want}, it is at {platform}")
        if legacy_error == 0 and cash != want:
            problems.append(f"expected the game server to be told {want}, it was told {cash}")
        reference = steps[0].get("reference")
        txid = answer.get("transactionId")
        if same_as and txid != self.transactions.get(same_as):
            problems.append(f"a retry must get the first transactionId {self.transactions.get(same_as)}, got {txid}")
        if legacy_error == 0 and reference and not same_as:
            self.transactions[reference] = txid
        codes = [str((c.get("answer") or {}).get("error", c.get("status"))) for c in calls]
        if expect_retries and len(calls) < 2:
            problems.append("expected the game server to retry while the platform was down")
        self.platform_seen = platform
        if cash is not None:
            self.cash_seen = cash
        shown = f"error {', '.join(codes)}" + (f"; cash {cash}" if cash is not None else "")
        if same_as and not problems:
            shown = f"the first transactionId; cash {cash}"
        self.report.step(label, shown, platform, cash, problems)

    async def reconcile(self) -> None:
        game = await control(self.http, self.stack.game_server.url, "state")
        platform = await control(self.http, self.stack.platform.url, "state")
        legacy = [cents(e["amount"]) for e in game["ledger"] if e["player"] == PLAYER]
        igsp = [cents(e["amount"]) for e in platform["ledger"] if e["player"] == PLAYER]
        legacy_net, igsp_net = sum(legacy, Decimal(0)), sum(igsp, Decimal(0))
        balance = cents(platform["players"][PLAYER]["balance"])
        ok = (len(legacy) == len(igsp) and legacy_net == igsp_net and balance == self.cash_seen
              and not self.client.violations)
        self.report.say()
        self.report.verdict(ok, f"reconciliation, provider face: legacy ledger {len(legacy)} entries, net "
                                f"{legacy_net:+} {CURRENCY} == iGSP ledger {len(igsp)} transactions, net "
                                f"{igsp_net:+} {CURRENCY}; balance {self.cash_seen} == {balance}")
        for violation in self.client.violations:
            self.report.say(f"     -> an answer breaks spec/: {violation}")
