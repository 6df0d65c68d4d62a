"""One chaos case: a bet/win/refund round with one fault, then the books reconciled.

Chaos plays the iGSP game provider: it signs hooks with the partner's own key pair and,
like a provider, retries every retriable (5xx) answer until the answer is final. What the
provider was finally told is what it will act on, so it fixes what the legacy wallet must
show:

- ``200`` -> the money moved, once;
- a ``4xx`` -> it did not move (a voided bet: its compensating rollback must have run);
- ``503`` while the transaction sits in the dead-letter queue (a win or refund of unknown
  outcome on a wallet that is not idempotent) -> held for an operator, who checks the
  wallet and resolves it: the wallet may show it once or not at all, never twice.

A refund undoes its bet, so it moves money only when its bet did: a refund answered
``200`` for a bet the gateway voided (and rolled back) moves nothing.

The case waits, polling with a deadline, until the gateway's queue is empty (retries,
redeliveries and compensating rollbacks done), then reads the legacy balance through the
mapping's own balance operation (the gateway's balance hook, no fault armed) and compares.
Amounts differ from step to step, so no two errors can cancel out in the sum.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp

from gateway import money, signing
from gateway.tools.chaos.proxy import FaultProxy
from gateway.tools.conformance.client import Clock, dumps

OPERATIONS = ("bet", "win", "refund")
#: what a case's fault can hit: an operation's step in the round (a win twice: one crediting
#: the round's bet, one in a round without a bet, which some wallets must open first)
TARGETS = {"bet": ("bet",), "win": ("win", "win without a bet"), "refund": ("refund",)}
OPERATION_OF = {target: operation for operation, targets in TARGETS.items() for target in targets}
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
APPLIED, NOT_APPLIED, HELD, UNSETTLED = "applied", "not applied", "held (dead letter)", "unsettled"


class ChaosError(Exception):
    """The run cannot go on (the gateway died, the balance cannot be read): not a verdict."""


@dataclass
class Player:
    player_id: str
    currency: str
    session_id: str
    game_id: str


@dataclass
class Step:
    action: str
    txid: str
    amount: Decimal
    payload: dict
    label: str = ""  # the step as a case names it (TARGETS); its action when empty
    answers: list[int] = field(default_factory=list)
    outcome: str = UNSETTLED
    error: str = ""
    #: a refund's bet: a refund undoes that bet, so it moves money only if the bet did
    bet: Step | None = None

    @property
    def delta(self) -> Decimal:
        """What this step moves in the wallet if it applied."""
        if self.action == "bet":
            return -self.amount
        if self.action == "refund":
            return self.bet.amount if self.bet is not None and self.bet.outcome == APPLIED else Decimal(0)
        return self.amount

    def brief(self) -> str:
        runs = [(status, len(list(group))) for status, group in itertools.groupby(self.answers)]
        chain = "→".join(f"{status}×{n}" if n > 1 else str(status) for status, n in runs) or "no answer"
        note = f" {self.error}" if self.error and self.outcome != APPLIED else ""
        return f"{self.label or self.action} {chain}{note} ({self.outcome})"


@dataclass
class CaseResult:
    fault: str
    operation: str
    verdict: str
    expected: list[Decimal]
    actual: Decimal | None
    difference: Decimal | None
    steps: list[Step]
    injected: int
    reason: str = ""
    seconds: float = 0.0
    #: which legacy call of the operation the fault hit, of how many its mapping lists
    call: int = 1
    calls: int = 1

    @property
    def name(self) -> str:
        where = f", call {self.call}/{self.calls}" if self.calls > 1 else ""
        return f"{self.fault} on {self.operation}{where}"


def amounts(currency: str, overrides: dict | None) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """Bet, win, win without a bet, second bet (refunded): no one or two of them, with signs,
    cancel out, so one step's error cannot hide another's."""
    if money.exponent(currency, overrides) >= 2:
        return Decimal("1.60"), Decimal("0.40"), Decimal("0.30"), Decimal("0.10")
    return Decimal("16"), Decimal("4"), Decimal("3"), Decimal("1")


class Driver:
    """Signed hooks to chaos's gateway, its admin API, and the cases."""

    def __init__(self, gateway, proxy: FaultProxy, player: Player, *, api_key: str, secret: str,
                 hooks_path: str, currencies: dict | None, deadline: float) -> None:
        self.gateway, self.proxy, self.player = gateway, proxy, player
        #: legacy calls each operation makes (its steps), so a fault can hit each of them
        self.calls = {name: max(1, len(op.steps)) for name, op in gateway.target.mapping.operations.items()}
        self.api_key, self.secret, self.hooks_path = api_key, secret, hooks_path
        self.currencies = currencies
        self.deadline = deadline  # seconds a case may take to settle
        self.clock = Clock()
        # Transaction ids new to the wallet on every run: a sandbox keeps what earlier runs sent.
        self.run_id = secrets.token_hex(4)
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Driver:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    # -- the gateway, as a provider and as an operator sees it ------------------------------------
    async def hook(self, payload: dict) -> tuple[int, Any]:
        body = dumps(payload)
        headers = signing.signed_headers(self.api_key, self.secret, body, self.clock.now())
        try:
            async with self._http.post(self.gateway.url + self.hooks_path, data=body, headers=headers) as r:
                raw = await r.read()
                try:
                    data = json.loads(raw, parse_float=Decimal)
                except ValueError:
                    data = None
                return r.status, data
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._alive()
            return 0, {"error": type(exc).__name__}

    async def admin(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {self.gateway.admin_token}"}
        async with self._http.get(self.gateway.internal_url + path, headers=headers) as r:
            if r.status != 200:
                raise ChaosError(f"the gateway's admin API answered {r.status} to {path}")
            return await r.json()

    def _alive(self) -> None:
        if not self.gateway.running():
            raise ChaosError(f"the gateway stopped; its log:\n{self.gateway.log_tail()}")

    async def balance(self) -> Decimal:
        """The legacy balance through the mapping's balance operation; two reads in a row agree.

        Retried while the answer is an error: a stale copy of an earlier answer left on a
        pooled connection is refused by the gateway where the mapping can tell, and the next
        read gets a fresh one; two equal reads in a row rule out a single stale one.
        """
        payload = {"action": "balance", "player_id": self.player.player_id, "currency": self.player.currency,
                   "session_id": self.player.session_id}
        last: Decimal | None = None
        status, data = 0, None
        ends = time.monotonic() + self.deadline
        while time.monotonic() < ends:
            status, data = await self.hook(payload)
            if status == 200 and isinstance(data, dict) and "balance" in data:
                value = Decimal(str(data["balance"])) if not isinstance(data["balance"], Decimal) else data["balance"]
                if value == last:
                    return value
                last = value
                continue
            last = None
            if 400 <= status < 500:
                break
            await asyncio.sleep(0.2)  # polling interval of a retried read
        raise ChaosError(f"cannot read the balance of {self.player.player_id!r} through the gateway: "
                         f"HTTP {status} {data}")

    async def queue_idle(self) -> bool:
        ends = time.monotonic() + self.deadline
        while time.monotonic() < ends:
            self._alive()
            if (await self.admin("/admin/queue")).get("depth", 1) == 0:
                return True
            await asyncio.sleep(0.2)  # polling interval
        return False

    async def dead_lettered(self, txid: str) -> bool:
        entries = (await self.admin("/admin/dlq?limit=10000")).get("entries", [])
        needle = json.dumps(txid)
        return any(needle in json.dumps(entry.get("payload"), default=str) for entry in entries)

    async def settle(self, step: Step, ends: float, fault: str | None = None, call: int = 1) -> None:
        """Send the step (its ``call``-th legacy call hit by ``fault``), and retry it as a
        provider does until the answer is final. Only the first attempt meets the fault."""
        self.proxy.arm(fault, after=call - 1)
        while True:
            status, data = await self.hook(step.payload)
            self.proxy.arm(None)  # a duplicated answer's copy still waits for the next call
            step.answers.append(status)
            if isinstance(data, dict) and data.get("error"):
                step.error = str(data["error"])
            if 200 <= status < 300:
                step.outcome = APPLIED
                return
            if 400 <= status < 500:
                step.outcome = NOT_APPLIED
                return
            if await self.dead_lettered(step.txid):
                step.outcome = HELD
                return
            if time.monotonic() > ends:
                step.outcome = UNSETTLED
                return
            await asyncio.sleep(0.25)  # a provider's retry interval

    def cost(self, cases: int) -> Decimal:
        """What ``cases`` rounds need in the wallet: each leaves the player the bet less the win
        down, and the last needs both of its bets in hand."""
        bet, win, bonus, refunded = amounts(self.player.currency, self.currencies)
        return cases * (bet - win - bonus) + win + bonus + refunded

    # -- one case ----------------------------------------------------------------------------------
    def steps(self, case: str) -> list[Step]:
        p = self.player
        bet_amount, win_amount, bonus, refunded = amounts(p.currency, self.currencies)
        base = {"player_id": p.player_id, "currency": p.currency, "game_id": p.game_id, "session_id": p.session_id}
        ids = {name: f"chaos-{self.run_id}-{case}-{name}" for name in ("bet", "win", "win2", "bet2", "refund")}

        def make(action: str, name: str, amount: Decimal, label: str = "", **extra: Any) -> Step:
            payload = {**base, "action": action, "amount": amount, "transaction_id": ids[name],
                       "type": "win" if action == "win" else "bet", **extra}
            return Step(action, ids[name], amount, payload, label or action)

        second = make("bet", "bet2", refunded, round_id=f"{ids['bet2']}-r")
        refund = make("refund", "refund", refunded, round_id=f"{ids['bet2']}-r", bet_transaction_id=ids["bet2"])
        refund.bet = second
        return [make("bet", "bet", bet_amount, round_id=f"{ids['bet']}-r"),
                make("win", "win", win_amount, round_id=f"{ids['bet']}-r", finished=True),
                make("win", "win2", bonus, "win without a bet", round_id=f"{ids['win2']}-r", finished=True),
                second, refund]

    async def run_case(self, fault: str, target: str, index: int, call: int = 1) -> CaseResult:
        """One round with ``fault`` on the ``call``-th legacy call of the step ``target`` (TARGETS)."""
        started = time.monotonic()
        self._alive()
        before = await self.balance()
        steps = self.steps(f"{index:02d}")
        need = sum(s.amount for s in steps if s.action == "bet")
        if before < need:
            raise ChaosError(f"player {self.player.player_id!r} has {before} {self.player.currency}; "
                             f"chaos needs at least {need} in the legacy wallet")
        injected_before = self.proxy.injected[fault]
        ends = time.monotonic() + self.deadline
        hit = next(s for s in steps if s.label == target)
        operation = hit.action
        for step in steps:
            await self.settle(step, ends, fault if step is hit else None, call)
        idle = await self.queue_idle()
        actual = await self.balance()
        injected = self.proxy.injected[fault] - injected_before
        self.proxy.disarm()
        # A gateway that opens a new connection for every call to this wallet (its answers echo
        # nothing: gateway/engine/mapping.py) never reads one call's answer for another's.
        cannot = (NO_REUSE if fault == "duplicate_answer" and not self.gateway.target.mapping.reuse_connections
                  else None)
        result = judge(fault, target, before, actual, steps, injected, idle, time.monotonic() - started,
                       later_call=call > 1, cannot_happen=cannot)
        result.call, result.calls = call, self.calls.get(operation, 1)
        return result


NO_REUSE = ("the gateway opens a new connection for every call to this wallet (its answers echo nothing), "
            "so no call can read another's answer")


def judge(fault: str, operation: str, before: Decimal, actual: Decimal, steps: list[Step], injected: int,
          idle: bool, seconds: float, *, later_call: bool = False, cannot_happen: str | None = None) -> CaseResult:
    """PASS only when the fault happened, everything settled, and the wallet shows what iGSP was told.

    ``later_call``: the fault was for a later step of a multi-step operation, which the
    operation may skip (its ``when``): not injected then, and all else right, is a SKIP.
    ``cannot_happen``: why this fault cannot reach this gateway; not injected then, and all
    else right, is a SKIP saying so.
    """
    certain = before + sum(s.delta for s in steps if s.outcome == APPLIED)
    held = [s.delta for s in steps if s.outcome == HELD]
    expected = sorted({certain + sum(c) for n in range(len(held) + 1) for c in itertools.combinations(held, n)})
    nearest = min(expected, key=lambda e: (abs(actual - e), e))
    difference = actual - nearest
    reasons = []
    if injected == 0 and not later_call and cannot_happen is None:
        reasons.append("the fault was never injected (no legacy call to inject it into)")
    unsettled = [s.action for s in steps if s.outcome == UNSETTLED]
    if unsettled:
        reasons.append(f"no final answer for {', '.join(unsettled)} before the deadline")
    if not idle:
        reasons.append("the gateway's queue did not empty before the deadline")
    if difference:
        reasons.append(f"the legacy wallet shows {difference:+} against what iGSP was told")
    if not reasons and injected == 0:
        return CaseResult(fault, operation, SKIP, expected, actual, difference, steps, injected,
                          cannot_happen or "the operation did not make that legacy call in this round", seconds)
    return CaseResult(fault, operation, FAIL if reasons else PASS, expected, actual, difference, steps, injected,
                      "; ".join(reasons), seconds)
