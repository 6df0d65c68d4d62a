"""Act 1 — platform face: an iGSP game provider pays through the gateway into a legacy wallet.

The demo plays the iGSP game provider: it signs wallet hooks (``balance``, ``bet``,
``win``, ``refund``) to the gateway, which translates them for the Hub88-style wallet
simulator. That wallet is not idempotent — every copy of a debit it receives debits —
so each "one debit" below is the gateway's ledger at work, seen on the wallet's books.
"""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import aiohttp

from gateway.spec import HOOKS_SPEC, SpecValidators
from gateway.tools.conformance.client import Answer, SignedClient
from gateway.tools.demo.output import Report
from gateway.tools.demo.stack import DemoStack

PLAYER, CURRENCY, START = "demo-player-1", "EUR", Decimal("100.00")
SESSION, GAME = "demo-session-1", "vs20olympgate"


async def control(http: aiohttp.ClientSession, base: str, what: str, body: dict | None = None):
    """A simulator's ``/_control/`` API (its state is read with amounts as Decimal)."""
    method = "GET" if body is None else "POST"
    async with http.request(method, f"{base}/_control/{what}", json=body) as response:
        text = await response.text()
        if response.status != 200:
            raise RuntimeError(f"{base}/_control/{what}: HTTP {response.status} {text[:200]}")
        return json.loads(text, parse_float=Decimal)


def cents(value) -> Decimal:
    """An amount from a simulator's books, shown like the iGSP side (the wallet keeps 1/100 000)."""
    amount = Decimal(value)
    return amount.quantize(Decimal("0.01")) if amount == amount.quantize(Decimal("0.01")) else amount


def describe(answer: Answer) -> str:
    if answer.status == 200 and isinstance(answer.data, dict) and "balance" in answer.data:
        return f"200 balance {answer.data['balance']}"
    code = answer.data.get("error") if isinstance(answer.data, dict) else None
    return f"{answer.status} {code or answer.brief(30)}"


class PlatformAct:
    title = "Act 1 — platform face: an iGSP game provider pays into a legacy Hub88-style wallet"

    def __init__(self, stack: DemoStack, http: aiohttp.ClientSession, report: Report):
        self.stack, self.http, self.report = stack, http, report
        self.client = SignedClient(stack.hooks_url, stack.provider_partner.api_key, stack.provider_partner.secret,
                                   SpecValidators(HOOKS_SPEC))
        #: the iGSP ledger: every transaction the gateway accepted (once per transaction_id)
        self.accepted: dict[str, Decimal] = {}
        self.answers: dict[str, Answer] = {}
        self.last_balance: Decimal | None = None
        self.legacy_seen = START

    async def legacy_balance(self) -> Decimal:
        state = await control(self.http, self.stack.wallet.url, "state")
        return cents(state["players"][PLAYER]["balance"])

    def body(self, action: str, txid: str | None = None, amount: Decimal | None = None, **extra) -> dict:
        body = {"action": action, "player_id": PLAYER, "currency": CURRENCY, "session_id": SESSION}
        if action != "balance":
            body.update(amount=amount, game_id=GAME, transaction_id=txid, round_id=f"round-{txid}",
                        type="win" if action == "win" else "bet", **extra)
        return body

    async def hook(self, label: str, body: dict, *, status: int = 200, error: str | None = None,
                   change: Decimal = Decimal(0), same_as: str | None = None) -> Answer:
        """Send one hook and judge it on its own: status/error, the balance change on both
        sides (from where the wallet stood), a retry's answer byte for byte."""
        want = self.legacy_seen + change
        answer = await self.client.call("POST", "", body, expect="TransactionResponse" if "amount" in body
                                        else "BalanceResponse")
        legacy = self.legacy_seen = await self.legacy_balance()
        got_balance = answer.field("balance")
        problems = []
        if answer.status != status or (error and answer.field("error") != error):
            problems.append(f"expected {status} {error or ''}".rstrip() + f", got {answer.brief(80)}")
        if answer.status == 200 and got_balance != want:
            problems.append(f"expected the iGSP balance {want}, got {got_balance}")
        if legacy != want:
            problems.append(f"expected the legacy wallet at {want}, it is at {legacy}")
        first = self.answers.get(same_as) if same_as else None
        if same_as and (first is None or answer.body != first.body):
            problems.append("a retry must get the first answer byte for byte, got "
                            f"{answer.body.decode(errors='replace')[:80]}")
        txid = body.get("transaction_id")
        if answer.status == 200 and txid and txid not in self.accepted:
            # The iGSP ledger: what this transaction is worth, counted once.
            self.accepted[txid] = -body["amount"] if body["action"] == "bet" else body["amount"]
            self.answers[txid] = answer
        if answer.status == 200:
            self.last_balance = Decimal(got_balance)
        shown = "the first answer, byte for byte" if same_as and not problems else describe(answer)
        self.report.step(label, shown, Decimal(got_balance) if got_balance is not None else None, legacy, problems)
        return answer

    async def wait_for_queue(self, label: str, change: Decimal, timeout: float = 20.0) -> None:
        want, started = self.legacy_seen + change, time.monotonic()
        legacy = await self.legacy_balance()
        while legacy != want and time.monotonic() - started < timeout:
            await asyncio.sleep(0.2)
            legacy = await self.legacy_balance()
        self.legacy_seen = legacy
        problems = [] if legacy == want else [f"the queued win was not delivered within {timeout:g} s"]
        self.report.step(label, f"delivered after {time.monotonic() - started:.1f} s", None, legacy, problems)

    async def play(self) -> None:
        async with self.client:
            await self._play()

    async def _play(self) -> None:
        await control(self.http, self.stack.wallet.url, "players",
                      {"player_id": PLAYER, "balance": str(START), "currency": CURRENCY})
        self.report.title(self.title, "iGSP: the balance the gateway answered the provider; legacy: the wallet's own books")
        d = Decimal
        await self.hook("balance", self.body("balance"))
        await self.hook("bet 10.00 (tx b-1)", self.body("bet", "b-1", d("10.00")), change=d("-10.00"))
        await self.hook("the same bet again (a retry)", self.body("bet", "b-1", d("10.00")), same_as="b-1")
        await self.hook("win 25.00 (tx w-1)", self.body("win", "w-1", d("25.00")), change=d("25.00"))
        await self.hook("bet 5.00 (tx b-2)", self.body("bet", "b-2", d("5.00")), change=d("-5.00"))
        refund = self.body("refund", "r-2", d("5.00"), bet_transaction_id="b-2")
        await self.hook("refund of b-2 (tx r-2)", refund, change=d("5.00"))
        await self.hook("the same refund again (a retry)", refund, same_as="r-2")
        await self.hook("bet 500.00 (tx b-3), over the balance", self.body("bet", "b-3", d("500.00")),
                        status=402, error="insufficient_funds")
        await control(self.http, self.stack.wallet.url, "faults", {"kind": "down", "endpoint": "win", "count": 1})
        win = self.body("win", "w-2", d("7.50"))
        await self.hook("wallet down: win 7.50 (tx w-2)", win, status=503, error="upstream_unavailable")
        await self.wait_for_queue("  the retry queue delivers w-2", d("7.50"))
        await self.hook("the provider retries w-2", win)
        await self.reconcile()

    async def reconcile(self) -> None:
        state = await control(self.http, self.stack.wallet.url, "state")
        entries = [cents(e["amount"]) for e in state["ledger"] if e["player"] == PLAYER]
        legacy_net, igsp_net = sum(entries, Decimal(0)), sum(self.accepted.values(), Decimal(0))
        legacy_balance = cents(state["players"][PLAYER]["balance"])
        ok = (len(entries) == len(self.accepted) and legacy_net == igsp_net and legacy_balance == self.last_balance
              and not self.client.violations)
        self.report.say()
        self.report.verdict(ok, f"reconciliation, platform face: legacy ledger {len(entries)} entries, net "
                                f"{legacy_net:+} {CURRENCY} == iGSP ledger {len(self.accepted)} transactions, net "
                                f"{igsp_net:+} {CURRENCY}; balance {legacy_balance} == {self.last_balance}")
        for violation in self.client.violations:
            self.report.say(f"     -> an answer breaks spec/: {violation}")
