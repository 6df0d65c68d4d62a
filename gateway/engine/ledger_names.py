"""What a wallet operation's templates may read of the gateway's ledger: ``ledger.NAME.FIELD``.

Some wallets need, for a win or a refund, what they answered for the bet: a credit must
name the bet's wallet-side id, a cancel the bet it undoes. The gateway has the bet in its
ledger (its hook, its answer) and keeps the values a ``bet`` operation declares under
``keep:`` from the wallet's answer. An operation declares each read under ``ledger:``, so
``validate`` can check every ``ledger.NAME.FIELD`` and say what happens when the read is
empty. This module is that contract; gateway/faces/ledger_reads.py reads it at run time.

    bet        refund, rollback   the bet the refund names (``bet_transaction_id``). Its answer
                                  fields are none when the bet's outcome was never known (the
                                  compensating rollback of a timed-out bet)
    round_bet  win                the accepted, unrefunded bet of the win's player and ``round_id``
                                  (never another player's: a round id may be a shared table's);
                                  empty when the win has no round_id, or its round no such bet
"""

from __future__ import annotations

#: ledger name -> the operations that may read it
READS = {"bet": ("refund", "rollback"), "round_bet": ("win",)}

#: Fields every ledger read has (besides the names the ``bet`` operation keeps).
FIELDS = {
    "transaction_id": "the bet's iGSP transaction_id",
    "player_id": "the bet's player",
    "currency": "the bet's currency",
    "amount": "the bet's amount (Decimal)",
    "legacy_amount": "the bet's amount in the legacy unit",
    "round_id": "the bet's round (none if it had none)",
    "legacy_transaction_id": "the transaction_id answered for the bet (its response field, else none)",
}
#: ``round_bet`` only: the transaction_id of the round's first win to read this bet. A wallet
#: that takes one credit per bet credits it from that win only; later wins open their own.
ROUND_FIELDS = {"first_win": "the transaction_id of the first win of the round that read this bet"}

#: When each read is empty ("it is empty …", in validate's messages).
EMPTY = {"bet": "in no refund (the gateway refunds only a known, accepted bet), but its answer fields "
                "(legacy_transaction_id, kept values) are none in the rollback of a bet whose outcome was unknown",
         "round_bet": "for a win without round_id, or whose round has no accepted bet (a win with no bet, a bet "
                      "refused, refunded or rolled back, a bet that expired from the ledger)"}


def fields_of(name: str, kept: frozenset[str]) -> frozenset[str]:
    """Every field ``ledger.NAME`` has, with ``kept`` (the bet operation's ``keep`` names)."""
    return frozenset(FIELDS) | (frozenset(ROUND_FIELDS) if name == "round_bet" else frozenset()) | kept


def reserved() -> frozenset[str]:
    """Names a ``keep`` entry may not take: they are ledger fields already."""
    return frozenset(FIELDS) | frozenset(ROUND_FIELDS)


__all__ = ["EMPTY", "FIELDS", "READS", "ROUND_FIELDS", "fields_of", "reserved"]
