"""How chaos judges a case, without processes: what iGSP was told fixes what the wallet must show."""

from __future__ import annotations

from decimal import Decimal

from gateway.tools.chaos.scenario import APPLIED, FAIL, HELD, NOT_APPLIED, PASS, SKIP, UNSETTLED, Step, amounts, judge

D = Decimal


def round_of(bet=APPLIED, win=APPLIED, bet2=APPLIED, refund=APPLIED) -> list[Step]:
    steps = [Step("bet", "b", D("1.60"), {}, outcome=bet), Step("win", "w", D("0.40"), {}, outcome=win),
             Step("bet", "b2", D("0.10"), {}, outcome=bet2), Step("refund", "r", D("0.10"), {}, outcome=refund)]
    steps[3].bet = steps[2]
    return steps


def test_everything_applied_adds_up_exactly():
    result = judge("lost_answer", "bet", D("100.00"), D("98.80"), round_of(), 1, True, 1.0)
    assert (result.verdict, result.expected, result.difference) == (PASS, [D("98.80")], D("0.00"))


def test_a_voided_bet_must_have_been_rolled_back():
    steps = round_of(bet=NOT_APPLIED)
    assert judge("lost_answer", "bet", D("100.00"), D("100.40"), steps, 1, True, 1.0).verdict == PASS
    failed = judge("lost_answer", "bet", D("100.00"), D("98.80"), round_of(bet=NOT_APPLIED), 1, True, 1.0)
    assert failed.verdict == FAIL and failed.difference == D("-1.60") and "-1.60" in failed.reason


def test_a_refund_of_a_bet_that_never_stood_moves_nothing():
    steps = round_of(bet2=NOT_APPLIED, refund=APPLIED)
    assert judge("duplicate_answer", "win", D("100.00"), D("98.80"), steps, 1, True, 1.0).verdict == PASS
    paid = judge("duplicate_answer", "win", D("100.00"), D("98.90"), round_of(bet2=NOT_APPLIED), 1, True, 1.0)
    assert paid.verdict == FAIL and paid.difference == D("0.10")


def test_a_held_win_may_be_in_the_wallet_once_or_not_at_all_never_twice():
    for actual in ("98.40", "98.80"):
        result = judge("late_answer", "win", D("100.00"), D(actual), round_of(win=HELD), 1, True, 1.0)
        assert result.verdict == PASS and result.expected == [D("98.40"), D("98.80")]
    twice = judge("late_answer", "win", D("100.00"), D("99.20"), round_of(win=HELD), 1, True, 1.0)
    assert twice.verdict == FAIL and twice.difference == D("0.40")


def test_a_fault_never_injected_or_a_case_never_settled_is_no_pass():
    never = judge("trickle", "refund", D("100.00"), D("98.80"), round_of(), 0, True, 1.0)
    assert never.verdict == FAIL and "never injected" in never.reason and never.difference == 0
    stuck = judge("trickle", "win", D("100.00"), D("98.40"), round_of(win=UNSETTLED), 1, True, 1.0)
    assert stuck.verdict == FAIL and "no final answer for win" in stuck.reason
    busy = judge("trickle", "win", D("100.00"), D("98.80"), round_of(), 1, False, 1.0)
    assert busy.verdict == FAIL and "queue did not empty" in busy.reason


def test_amounts_fit_the_currency_and_cannot_cancel_out():
    assert amounts("EUR", None) == (D("1.60"), D("0.40"), D("0.30"), D("0.10"))
    assert amounts("JPY", None) == (D("16"), D("4"), D("3"), D("1"))
    for currency in ("EUR", "JPY"):
        values = amounts(currency, None)
        # One step's error cannot hide another's: no two of them, with signs, cancel out.
        signed = [v * sign for v in values for sign in (1, -1)]
        assert all(a + b != 0 for a in signed for b in signed if abs(a) != abs(b))
        assert len(set(values)) == 4


def test_a_later_step_the_operation_skipped_is_a_skip_unless_money_is_off():
    skipped = judge("lost_answer", "win", D("100.00"), D("98.80"), round_of(), 0, True, 1.0, later_call=True)
    assert skipped.verdict == SKIP and skipped.difference == 0
    wrong = judge("lost_answer", "win", D("100.00"), D("99.20"), round_of(), 0, True, 1.0, later_call=True)
    assert wrong.verdict == FAIL and wrong.difference == D("0.40")
