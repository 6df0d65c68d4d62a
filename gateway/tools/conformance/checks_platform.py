"""The laws a casino platform's wallet hook keeps (``spec/igsp-platform-hooks.yaml``).

Target: the full hook URL (``…/platforms/game-provider/hooks``), the key pair the
platform issued, and a funded test player (plus, for ``wallet.refund_other_player``, a
second player the wallet knows). Signature and error checks use ``balance`` bodies, so
they move no money even on a target that accepts anything. Every other money check
measures the player's balance before and after itself, so one broken law fails one
check; ``wallet.balances_add_up`` then compares the whole run's net effect with what
the accepted transactions should have done. A conforming target ends where it started
(net 0): bets of A and B and a win of 2A; every other bet is refunded by its own check.

Retries are sent the ways providers send them: re-signed, or the very same bytes with
the very same ``X-Timestamp`` and ``X-Signature`` (what most retry code does after a
timeout), one after another or many at once. A wallet must answer each with the first
answer and move money once; a 4xx is final in iGSP, so a retry refused as a "replay"
is a provider giving up on a bet the wallet debited.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from decimal import Decimal

from gateway import money, signing
from gateway.tools.conformance.client import Answer, SignedClient, dumps
from gateway.tools.conformance.laws import (
    because,
    decimal_field,
    expect_error,
    expect_ok,
    expect_same_outcome,
    flip_byte,
    flipped_signature,
    raise_violations,
)
from gateway.tools.conformance.runner import CheckFailed, CheckSkipped, Registry

CHECKS = Registry()
UNKNOWN_KEY = "igsp-conformance-unknown-key"
CONCURRENT_COPIES = 5
#: byte-identical copies of one bet sent at once (wallet.bet_identical_concurrent)
IDENTICAL_COPIES = 16
#: bets sent together with their refunds (wallet.bet_refund_race)
RACE_PAIRS = 4
#: a 5xx is retriable: how often a check retries it before taking it as the answer
RETRIES = 10


@dataclass(frozen=True)
class PlatformTarget:
    url: str
    api_key: str
    secret: str
    player_id: str
    currency: str = "EUR"
    session_id: str = "igsp-conformance-session"
    game_id: str = "igsp-conformance-game"
    amount: Decimal = Decimal("1")
    #: a second player the wallet knows (same currency), for wallet.refund_other_player
    other_player_id: str | None = None


class PlatformContext:
    def __init__(self, target: PlatformTarget, client: SignedClient, run_id: str | None = None):
        self.target, self.client = target, client
        self.run_id = run_id or secrets.token_hex(4)
        quantum = Decimal(1).scaleb(-money.exponent(target.currency))
        self.quantum = quantum
        self.amount = target.amount.quantize(quantum)
        self.start_balance: Decimal | None = None
        self.final_balance: Decimal | None = None
        #: (description, signed delta) of every movement a conforming target made
        self.moves: list[tuple[str, Decimal]] = []
        self.saved: dict[str, tuple[dict, Answer]] = {}

    def txid(self, name: str) -> str:
        return f"conf-{self.run_id}-{name}"

    def balance_body(self, **extra) -> dict:
        t = self.target
        return {"action": "balance", "player_id": t.player_id, "currency": t.currency, "session_id": t.session_id,
                **extra}

    def refund_body(self, name: str, bet: dict, amount: Decimal | None = None, **extra) -> dict:
        """A refund of ``bet`` (its amount unless told otherwise), in the bet's round."""
        body = self.money_body("refund", name, bet["amount"] if amount is None else amount,
                               bet_transaction_id=bet["transaction_id"], **extra)
        return dict(body, round_id=bet["round_id"])

    def money_body(self, action: str, name: str, amount: Decimal, **extra) -> dict:
        t = self.target
        kind = "win" if action == "win" else "bet"
        return {"action": action, "player_id": t.player_id, "amount": amount, "currency": t.currency,
                "game_id": t.game_id, "transaction_id": self.txid(name), "session_id": t.session_id,
                "type": kind, "round_id": self.txid(extra.pop("round", name)), **extra}

    async def post(self, body: dict | bytes, expect: str = "TransactionResponse") -> Answer:
        return await self.client.call("POST", "", body, expect=expect)

    def signed(self, body: dict) -> tuple[bytes, dict[str, str]]:
        """The bytes and headers of one signed request, to be sent as is, as often as a check likes."""
        raw = dumps(body)
        return raw, self.client.headers(raw)

    async def resend(self, raw: bytes, headers: dict[str, str], expect: str = "TransactionResponse") -> Answer:
        return await self.client.send("POST", "", raw, headers, expect=expect)

    async def settled(self, body: dict) -> Answer:
        """The answer a provider ends with: a 5xx is retriable, so it is retried (re-signed) until it is not."""
        for attempt in range(RETRIES):
            answer = await self.post(body)
            if answer.status < 500:
                break
            await asyncio.sleep(min(0.05 * 2 ** attempt, 1.0))  # the provider's backoff
        return answer

    async def balance(self, player_id: str | None = None) -> Decimal:
        body = self.balance_body(**({"player_id": player_id} if player_id else {}))
        what = f"balance query of player {player_id!r}" if player_id else "balance query"
        answer = await self.post(body, expect="BalanceResponse")
        expect_ok(answer, 200, what)
        return decimal_field(answer, "balance", what)

    async def transact(self, body: dict, doing: str) -> tuple[Answer, Decimal]:
        answer = await self.post(body)
        expect_ok(answer, 200, doing)
        return answer, decimal_field(answer, "balance", doing)

    def moved(self, what: str, delta: Decimal) -> None:
        self.moves.append((what, delta))

    def expect_balance(self, got: Decimal, want: Decimal, doing: str) -> None:
        if got != want:
            raise CheckFailed(f"{doing}: balance {got}, expected {want} ({_signed(got - want)} {self.target.currency} "
                              "more than a conforming wallet)")


def _signed(value: Decimal) -> str:
    return f"+{value}" if value >= 0 else str(value)


# -- signatures (balance bodies only: nothing can move) -----------------------------------------

@CHECKS.check("signature.valid", "a correctly signed request is accepted")
async def signature_valid(ctx: PlatformContext) -> None:
    answer = await ctx.post(ctx.balance_body(), expect="BalanceResponse")
    expect_ok(answer, 200, "a correctly signed balance request (is --player-id a known test player?)")


@CHECKS.check("signature.missing_credentials", "a request without Authorization/X-Signature is 401")
async def signature_missing(ctx: PlatformContext) -> None:
    answer = await ctx.client.send("POST", "", dumps(ctx.balance_body()), {"Content-Type": "application/json"})
    expect_error(answer, 401, "an unsigned request without Authorization")


@CHECKS.check("signature.unknown_key", "an unknown api_key is 401")
async def signature_unknown_key(ctx: PlatformContext) -> None:
    body = dumps(ctx.balance_body())
    answer = await ctx.client.send("POST", "", body, ctx.client.headers(body, api_key=UNKNOWN_KEY))
    expect_error(answer, 401, f"a request signed for the unknown api_key {UNKNOWN_KEY!r}")


@CHECKS.check("signature.flipped_body_byte", "a body changed after signing (one byte) is 403")
async def signature_flipped_body(ctx: PlatformContext) -> None:
    body = dumps(ctx.balance_body(nonce="conformance" + secrets.token_hex(8)))
    headers = ctx.client.headers(body)
    answer = await ctx.client.send("POST", "", flip_byte(body, b"conformance"), headers)
    expect_error(answer, 403, "a body with one byte flipped after signing")


@CHECKS.check("signature.flipped_signature", "a signature with one hex digit changed is 403")
async def signature_flipped(ctx: PlatformContext) -> None:
    body = dumps(ctx.balance_body())
    answer = await ctx.client.send("POST", "", body, flipped_signature(ctx.client.headers(body)))
    expect_error(answer, 403, "a signature with one hex digit changed")


@CHECKS.check("signature.stale_timestamp", "a timestamp 10 minutes old or ahead is 403")
async def signature_stale(ctx: PlatformContext) -> None:
    for seconds, what in ((-600, "10 minutes old"), (600, "10 minutes in the future")):
        body = dumps(ctx.balance_body())
        headers = ctx.client.headers(body, timestamp=ctx.client.clock.shifted(seconds))
        expect_error(await ctx.client.send("POST", "", body, headers), 403,
                     f"a correctly signed request whose X-Timestamp is {what}")


# -- error shapes (signed, invalid, no money) -----------------------------------------------------

@CHECKS.check("errors.invalid_json", "a body that is not JSON is a 400 ErrorResponse")
async def errors_invalid_json(ctx: PlatformContext) -> None:
    expect_error(await ctx.post(b'{"action": "balance", '), 400, "a signed body that is not JSON")


@CHECKS.check("errors.unknown_action", "an unknown action is a 400 ErrorResponse")
async def errors_unknown_action(ctx: PlatformContext) -> None:
    body = dict(ctx.balance_body(), action="jackpot-of-the-century")
    expect_error(await ctx.post(body), 400, "an unknown action")


@CHECKS.check("errors.missing_field", "a hook without a required field is a 400 ErrorResponse")
async def errors_missing_field(ctx: PlatformContext) -> None:
    body = {k: v for k, v in ctx.balance_body().items() if k != "currency"}
    expect_error(await ctx.post(body), 400, "a balance hook without currency")


@CHECKS.check("errors.currency_whole_string", "a currency with a trailing newline is a 400 ErrorResponse")
async def errors_currency_whole_string(ctx: PlatformContext) -> None:
    body = dict(ctx.balance_body(), currency=ctx.target.currency + "\n")
    expect_error(await ctx.post(body), 400, f"a balance hook whose currency is {body['currency']!r}")


# -- wallet laws ------------------------------------------------------------------------------------

@CHECKS.check("wallet.balance", "balance answers BalanceResponse with an exact decimal")
async def wallet_balance(ctx: PlatformContext) -> None:
    balance = await ctx.balance()
    if balance != balance.quantize(ctx.quantum):
        raise CheckFailed(f"balance {balance} has more decimals than {ctx.target.currency} allows "
                          "(binary floating point?)")
    ctx.start_balance = balance


SAME_SECOND = ("iGSP timestamps have second precision, so a provider asking for a balance twice within a second "
               "sends the very same request; a wallet that refuses it as a replay turns a healthy player's "
               "balance into an error, and a 4xx is final")


@CHECKS.check("wallet.balance_same_second", "two identical balance requests signed in one second are both 200",
              needs=("wallet.balance",))
async def wallet_balance_same_second(ctx: PlatformContext) -> None:
    raw = dumps(ctx.balance_body())
    headers = ctx.client.headers(raw, timestamp=signing.format_timestamp())  # 2025-10-17T12:03:41Z
    first = await ctx.resend(raw, headers, expect="BalanceResponse")
    expect_ok(first, 200, "a balance request signed with a second-precision X-Timestamp")
    again = await ctx.resend(raw, headers, expect="BalanceResponse")
    with because(SAME_SECOND):
        expect_ok(again, 200, "the same balance request again (same bytes, same X-Timestamp, so the same "
                              "X-Signature)")


@CHECKS.check("wallet.bet", "a bet debits its amount once and answers TransactionResponse",
              moves_money=True, needs=("wallet.balance",))
async def wallet_bet(ctx: PlatformContext) -> None:
    before = await ctx.balance()
    if before < 4 * ctx.amount:
        raise CheckFailed(f"the test player has {before} {ctx.target.currency}; the wallet checks need at least "
                          f"{4 * ctx.amount} (fund the player or lower --amount)")
    body = ctx.money_body("bet", "bet-a", ctx.amount)
    answer, after = await ctx.transact(body, f"bet of {ctx.amount}")
    ctx.moved("bet A", -ctx.amount)
    ctx.expect_balance(after, before - ctx.amount, f"bet of {ctx.amount} answered")
    ctx.expect_balance(await ctx.balance(), before - ctx.amount, f"balance query after a bet of {ctx.amount}")
    ctx.saved["bet-a"] = (body, answer)


@CHECKS.check("wallet.bet_duplicate", "a retried bet gets the same answer and debits once",
              moves_money=True, needs=("wallet.bet",))
async def wallet_bet_duplicate(ctx: PlatformContext) -> None:
    body, first = ctx.saved["bet-a"]
    before = await ctx.balance()
    again = await ctx.post(body)
    expect_same_outcome(first, again, "the retried bet (same transaction_id)")
    ctx.expect_balance(await ctx.balance(), before, "after the retried bet (one debit only)")


REFUSED_RETRY = ("retry code resends the same bytes with the same headers after a timeout; a 4xx (such as a 403 "
                 "'replay') on that retry is fatal in iGSP: the provider gives up on a bet the wallet debited")
SAME_ANSWER = ("a retry is the same transaction, so it gets the first answer: a provider told another balance or "
               "another transaction_id books another outcome than the wallet did")
ONE_DEBIT = "a retry must move no money: every copy that debits again takes the stake twice"


def retry_law(answer: Answer) -> str:
    """Why a retry's answer matters: a refusal strands a debited bet, another answer misbooks it."""
    return REFUSED_RETRY if 400 <= answer.status < 500 else SAME_ANSWER


async def refund_own_bet(ctx: PlatformContext, bet: dict, name: str, before: Decimal, what: str) -> None:
    """Give a check's bet back, so that the run ends where it started."""
    _, after = await ctx.transact(ctx.refund_body(name, bet), f"the refund of {what}")
    ctx.moved(f"refund of {what}", bet["amount"])
    ctx.expect_balance(after, before, f"the refund of {what} answered")


@CHECKS.check("wallet.bet_identical_retry", "a bet resent byte for byte gets the first answer and debits once",
              moves_money=True, needs=("wallet.bet",))
async def wallet_bet_identical_retry(ctx: PlatformContext) -> None:
    before = await ctx.balance()
    bet = ctx.money_body("bet", "bet-d", ctx.amount)
    raw, headers = ctx.signed(bet)
    first = await ctx.resend(raw, headers)
    expect_ok(first, 200, f"bet of {ctx.amount}")
    ctx.moved("bet D", -ctx.amount)
    again = await ctx.resend(raw, headers)
    with because(retry_law(again)):
        expect_same_outcome(first, again, "the bet sent again byte for byte (same body, X-Timestamp and X-Signature)")
    with because(ONE_DEBIT):
        ctx.expect_balance(await ctx.balance(), before - ctx.amount, "after a byte-identical retry of a bet")
    await refund_own_bet(ctx, bet, "refund-d", before, "that bet")


@CHECKS.check("wallet.bet_concurrent_duplicates",
              f"{CONCURRENT_COPIES} concurrent copies of a bet debit once, with one answer",
              moves_money=True, needs=("wallet.bet",))
async def wallet_bet_concurrent(ctx: PlatformContext) -> None:
    before = await ctx.balance()
    body = ctx.money_body("bet", "bet-b", ctx.amount)
    answers = await asyncio.gather(*(ctx.post(body) for _ in range(CONCURRENT_COPIES)))
    ok = [a for a in answers if a.status == 200]
    if ok:
        ctx.moved("bet B", -ctx.amount)
    # A copy may be told to retry (5xx) while the first is in flight; none may be refused or differ.
    refused = [a for a in answers if a.status != 200 and a.status < 500]
    if refused or not ok:
        raise CheckFailed(f"concurrent copies of one bet: {', '.join(a.brief(60) for a in refused or answers)}")
    for answer in ok[1:]:
        expect_same_outcome(ok[0], answer, "a concurrent copy of the bet")
    final = await ctx.post(body)
    expect_same_outcome(ok[0], final, "the bet retried after the concurrent copies")
    ctx.expect_balance(await ctx.balance(), before - ctx.amount,
                       f"after {CONCURRENT_COPIES} concurrent copies of one bet of {ctx.amount}")


@CHECKS.check("wallet.bet_identical_concurrent",
              f"{IDENTICAL_COPIES} byte-identical concurrent copies of a bet: one answer, one debit",
              moves_money=True, needs=("wallet.bet",))
async def wallet_bet_identical_concurrent(ctx: PlatformContext) -> None:
    before = await ctx.balance()
    bet = ctx.money_body("bet", "bet-e", ctx.amount)
    raw, headers = ctx.signed(bet)
    answers = await asyncio.gather(*(ctx.resend(raw, headers) for _ in range(IDENTICAL_COPIES)))
    ok = [a for a in answers if a.status == 200]
    if ok:
        ctx.moved("bet E", -ctx.amount)
    # A copy may be told to retry (5xx) while the first is in flight; none may be refused or differ.
    refused = [a for a in answers if a.status != 200 and a.status < 500]
    with because(REFUSED_RETRY):
        if refused:
            raise CheckFailed(f"{len(refused)} of {IDENTICAL_COPIES} byte-identical copies of one bet sent at once "
                              f"were refused: {', '.join(sorted({a.brief(60) for a in refused}))}")
        if not ok:
            raise CheckFailed(f"none of {IDENTICAL_COPIES} byte-identical copies of one bet sent at once was "
                              f"accepted: {', '.join(sorted({a.brief(60) for a in answers}))}")
    for answer in ok[1:]:
        with because(SAME_ANSWER):
            expect_same_outcome(ok[0], answer, "a byte-identical concurrent copy of the bet")
    final = await ctx.resend(raw, headers)
    with because(retry_law(final)):
        expect_same_outcome(ok[0], final, "the same bytes once more, after the copies")
    with because(ONE_DEBIT):
        ctx.expect_balance(await ctx.balance(), before - ctx.amount,
                           f"after {IDENTICAL_COPIES} byte-identical concurrent copies of one bet of {ctx.amount}")
    await refund_own_bet(ctx, bet, "refund-e", before, "that bet")


@CHECKS.check("wallet.bet_conflict", "a transaction_id reused with another amount is 409 and moves nothing",
              moves_money=True, needs=("wallet.bet",))
async def wallet_bet_conflict(ctx: PlatformContext) -> None:
    body, _ = ctx.saved["bet-a"]
    before = await ctx.balance()
    answer = await ctx.post(dict(body, amount=2 * ctx.amount))
    expect_error(answer, 409, "the bet's transaction_id reused with another amount")
    ctx.expect_balance(await ctx.balance(), before, "after the conflicting bet")


@CHECKS.check("wallet.win", "a win credits its amount", moves_money=True, needs=("wallet.bet",))
async def wallet_win(ctx: PlatformContext) -> None:
    before = await ctx.balance()
    amount = 2 * ctx.amount
    _, after = await ctx.transact(ctx.money_body("win", "win-a", amount, round="bet-a"), f"win of {amount}")
    ctx.moved("win", amount)
    ctx.expect_balance(after, before + amount, f"win of {amount} answered")
    ctx.expect_balance(await ctx.balance(), before + amount, f"balance query after a win of {amount}")


@CHECKS.check("wallet.refund", "a refund returns its bet's amount", moves_money=True, needs=("wallet.balance",))
async def wallet_refund(ctx: PlatformContext) -> None:
    before = await ctx.balance()
    bet = ctx.money_body("bet", "bet-c", ctx.amount)
    await ctx.transact(bet, f"bet of {ctx.amount} (to be refunded)")
    ctx.moved("bet C", -ctx.amount)
    body = ctx.money_body("refund", "refund-c", ctx.amount, bet_transaction_id=bet["transaction_id"], round="bet-c")
    answer, after = await ctx.transact(body, "refund of that bet")
    ctx.moved("refund of bet C", ctx.amount)
    ctx.expect_balance(after, before, "refund answered")
    ctx.expect_balance(await ctx.balance(), before, "balance query after bet + refund")
    ctx.saved["refund-c"] = (body, answer)


@CHECKS.check("wallet.refund_duplicate", "a retried refund gets the same answer and credits once",
              moves_money=True, needs=("wallet.refund",))
async def wallet_refund_duplicate(ctx: PlatformContext) -> None:
    body, first = ctx.saved["refund-c"]
    before = await ctx.balance()
    expect_same_outcome(first, await ctx.post(body), "the retried refund (same transaction_id)")
    ctx.expect_balance(await ctx.balance(), before, "after the retried refund (one credit only)")


@CHECKS.check("wallet.refund_once", "a second refund of the same bet is 409 and credits nothing",
              moves_money=True, needs=("wallet.refund",))
async def wallet_refund_once(ctx: PlatformContext) -> None:
    body, _ = ctx.saved["refund-c"]
    before = await ctx.balance()
    answer = await ctx.post(dict(body, transaction_id=ctx.txid("refund-c-again")))
    expect_error(answer, 409, "a second refund (new transaction_id) of an already refunded bet")
    ctx.expect_balance(await ctx.balance(), before, "after the second refund")


@CHECKS.check("wallet.refund_unknown", "a refund of an unknown bet is 404 and credits nothing",
              moves_money=True, needs=("wallet.balance",))
async def wallet_refund_unknown(ctx: PlatformContext) -> None:
    before = await ctx.balance()
    body = ctx.money_body("refund", "refund-x", ctx.amount, bet_transaction_id=ctx.txid("never-placed"))
    answer = await ctx.post(body)
    expect_error(answer, 404, "a refund of a bet that was never placed")
    ctx.expect_balance(await ctx.balance(), before, "after the refund of an unknown bet")


LATE_BET = ("a refund answered 404 is final for the provider: it wrote the bet off as refunded and will never "
            "refund it again, so a wallet that takes the late bet keeps the player's stake for good")
OTHER_PLAYER = ("a refund voids the bet of its own player only: voiding another player's bet pays one player with "
                "another's stake and leaves the real refund nothing to void")
MISMATCH = ("a refund gives back exactly the bet it names: one for more than the bet pays money never staked, one in "
            "another currency credits another account, and a wallet that voids the bet for it has nothing left for "
            "the right refund")
STILL_REFUNDABLE = "the refused refund must void nothing, so the bet's own refund must still succeed"
RACE = ("a provider sends a refund when it stopped waiting for its bet, so the two can cross; a bet that debits "
        "while its refund was answered 404 is a stake the provider will never give back")


@CHECKS.check("wallet.refund_before_bet", "a refund before its bet is 404; the late bet is a 4xx, debits nothing",
              moves_money=True, needs=("wallet.balance",))
async def wallet_refund_before_bet(ctx: PlatformContext) -> None:
    before = await ctx.balance()
    bet = ctx.money_body("bet", "bet-late", ctx.amount)
    expect_error(await ctx.post(ctx.refund_body("refund-early", bet)), 404, "a refund that arrives before its bet")
    with because(LATE_BET):
        expect_error(await ctx.post(bet), "4xx", "the bet arriving after its refund was answered 404")
        expect_error(await ctx.post(bet), "4xx", "a retry of that late bet")
        ctx.expect_balance(await ctx.balance(), before, "after a refund and its late bet")


@CHECKS.check("wallet.refund_other_player", "a refund naming another player's bet is a 4xx; the right one works",
              moves_money=True, needs=("wallet.balance",))
async def wallet_refund_other_player(ctx: PlatformContext) -> None:
    player, other = ctx.target.player_id, ctx.target.other_player_id
    if not other:
        raise CheckSkipped("needs a second test player of the wallet (--other-player-id)")
    before, other_before = await ctx.balance(), await ctx.balance(other)
    bet = ctx.money_body("bet", "bet-f", ctx.amount)
    await ctx.transact(bet, f"bet of {ctx.amount}")
    ctx.moved("bet F", -ctx.amount)
    wrong = ctx.refund_body("refund-f-other-player", bet, player_id=other)
    with because(OTHER_PLAYER):
        expect_error(await ctx.post(wrong), "4xx", f"a refund by player {other!r} naming a bet of {player!r}")
        ctx.expect_balance(await ctx.balance(), before - ctx.amount, f"{player!r} after another player's refund "
                                                                     "of its bet")
        ctx.expect_balance(await ctx.balance(other), other_before, f"{other!r} after refunding another's bet")
    with because(STILL_REFUNDABLE):
        await refund_own_bet(ctx, bet, "refund-f", before, f"the bet by its own player {player!r}")


@CHECKS.check("wallet.refund_mismatch", "a refund of another amount or currency is a 4xx; the right one works",
              moves_money=True, needs=("wallet.balance",))
async def wallet_refund_mismatch(ctx: PlatformContext) -> None:
    currency = ctx.target.currency
    other_currency = "USD" if currency != "USD" else "EUR"
    before = await ctx.balance()
    bet = ctx.money_body("bet", "bet-g", ctx.amount)
    await ctx.transact(bet, f"bet of {ctx.amount}")
    ctx.moved("bet G", -ctx.amount)
    wrongs = ((ctx.refund_body("refund-g-more", bet, 2 * ctx.amount), f"a refund of {2 * ctx.amount} naming a bet of "
                                                                       f"{ctx.amount}"),
              (ctx.refund_body("refund-g-currency", bet, currency=other_currency),
               f"a refund in {other_currency} naming a bet in {currency}"))
    with because(MISMATCH):
        for wrong, what in wrongs:
            expect_error(await ctx.post(wrong), "4xx", what)
            ctx.expect_balance(await ctx.balance(), before - ctx.amount, f"after {what}")
    with because(STILL_REFUNDABLE):
        await refund_own_bet(ctx, bet, "refund-g", before, "the bet, for its amount and in its currency")


@CHECKS.check("wallet.bet_refund_race", f"{RACE_PAIRS} bets raced by their refunds: (200, 200) or (404, 4xx), "
              "none lost", moves_money=True, needs=("wallet.balance",))
async def wallet_bet_refund_race(ctx: PlatformContext) -> None:
    before = await ctx.balance()
    if before < RACE_PAIRS * ctx.amount:
        raise CheckFailed(f"the test player has {before} {ctx.target.currency}; this check needs "
                          f"{RACE_PAIRS * ctx.amount} (fund the player or lower --amount)")

    async def pair(i: int) -> tuple[Answer, Answer]:
        bet = ctx.money_body("bet", f"race-bet-{i}", ctx.amount)
        refund = ctx.refund_body(f"race-refund-{i}", bet)
        if i % 2 == 0:  # every other pair sends its refund first
            got_refund, got_bet = await asyncio.gather(ctx.settled(refund), ctx.settled(bet))
        else:
            got_bet, got_refund = await asyncio.gather(ctx.settled(bet), ctx.settled(refund))
        return got_bet, got_refund

    numbers = range(1, RACE_PAIRS + 1)
    wrong = []
    for i, (got_bet, got_refund) in zip(numbers, await asyncio.gather(*(pair(i) for i in numbers)), strict=True):
        if got_bet.status == 200 and got_refund.status == 200:
            ctx.moved(f"race bet {i}", -ctx.amount)
            ctx.moved(f"refund of race bet {i}", ctx.amount)
        elif not (got_refund.status == 404 and 400 <= got_bet.status < 500):
            wrong.append(f"pair {i}: bet {got_bet.brief(50)}, refund {got_refund.brief(50)}")
    with because(RACE):
        if wrong:
            raise CheckFailed(f"{len(wrong)} of {RACE_PAIRS} bets sent together with their refunds ended otherwise "
                              f"than (bet 200, refund 200) or (refund 404, bet 4xx): {'; '.join(wrong)}")
        ctx.expect_balance(await ctx.balance(), before, f"after {RACE_PAIRS} bets raced their refunds")


@CHECKS.check("wallet.insufficient_funds", "a bet above the balance is 402 insufficient_funds and debits nothing",
              moves_money=True, needs=("wallet.balance",))
async def wallet_insufficient(ctx: PlatformContext) -> None:
    before = await ctx.balance()
    too_much = before + ctx.amount
    answer = await ctx.post(ctx.money_body("bet", "bet-too-much", too_much))
    expect_error(answer, 402, f"a bet of {too_much} with a balance of {before}", code="insufficient_funds")
    ctx.expect_balance(await ctx.balance(), before, "after the refused bet")


@CHECKS.check("wallet.balances_add_up", "the run's net balance change equals its accepted transactions",
              needs=("wallet.balance",))
async def wallet_balances_add_up(ctx: PlatformContext) -> None:
    assert ctx.start_balance is not None  # noqa: S101 - guaranteed by needs
    net = sum((delta for _, delta in ctx.moves), Decimal(0))
    final = ctx.final_balance = await ctx.balance()
    if final - ctx.start_balance != net:
        raise CheckFailed(f"the balance went from {ctx.start_balance} to {final} ({_signed(final - ctx.start_balance)}), "
                          f"but the accepted transactions add up to {_signed(net)} {ctx.target.currency}")


@CHECKS.check("schema.every_answer", "every answer matches spec/igsp-platform-hooks.yaml")
async def schema_every_answer(ctx: PlatformContext) -> None:
    raise_violations(ctx.client)

