"""The iGSP error codes as mappings/README.md documents them, generated from
``gateway.errors.ERROR_CODES`` (tests/test_mapping_docs.py checks the README holds
exactly ``table()``; ``python -m gateway.engine.error_codes`` prints it).

A mapping's error rules (``result.errors``, ``default_error``) name these codes; the HTTP
status is the code's unless a rule gives its own ``status``. Retriable means the caller
may send the same request again (any 5xx): 4xx answers are final.
"""

from __future__ import annotations

from gateway.errors import ERROR_CODES

#: What each code tells the caller; in a mapping, the legacy failures it stands for.
MEANINGS: dict[str, str] = {
    "invalid_request": "the request breaks the iGSP spec (a field missing or malformed), or the legacy request "
                       "cannot be built from it (a filter refusing a value)",
    "invalid_json": "the body is not a JSON object",
    "unknown_action": "a hook's `action` is not balance, bet, win or refund",
    "invalid_amount": "an amount finer than the currency or the legacy unit allows, or larger than the unit holds",
    "currency_mismatch": "the wallet keeps the player's money in another currency",
    "unsupported_currency": "the game or provider does not take this currency",
    "invalid_cursor": "a catalogue cursor that is not one the gateway issued for this list",
    "game_not_found": "the game is unknown or disabled",
    "session_not_found": "the session or token is unknown or expired",
    "limit_exceeded": "a bet, loss or responsible-gaming limit is reached",
    "bet_not_allowed": "the wallet refuses this bet (game, player or round state)",
    "unauthorized": "credentials missing or unknown",
    "insufficient_funds": "the balance does not cover the bet",
    "invalid_signature": "the request's signature is wrong",
    "forbidden": "the credential may not do this",
    "player_not_found": "the wallet does not know the player",
    "transaction_not_found": "the transaction a refund (or rollback) names is unknown, or was not accepted",
    "not_found": "no such resource",
    "method_not_allowed": "the resource does not take this HTTP method",
    "transaction_conflict": "the `transaction_id` was used with other terms, or the legacy side says it was",
    "transaction_already_refunded": "the bet was refunded already (or a refund came before it: it is never debited)",
    "transaction_voided": "the bet's outcome was unknown and the gateway rolled it back; place a new bet",
    "transaction_not_applied": "an operator found the wallet did not apply this win or refund, and it never will",
    "session_conflict": "the `session_id` was used for another launch",
    "player_blocked": "the player is blocked, frozen or disabled",
    "payload_too_large": "the body is larger than the gateway takes",
    "unsupported_media_type": "the body's content type is not one the gateway takes",
    "rate_limited": "too many requests for this credential",
    "internal_error": "the gateway failed",
    "upstream_error": "the legacy side (or the mapping speaking to it) failed: a legacy \"retry\" code, a request "
                      "the mapping cannot build (a variable the call lacks), an adapter's bug; nothing was applied, "
                      "unless a rule says `outcome: unknown`",
    "upstream_bad_response": "the legacy answer is unreadable, of another shape, another request's (`echo`), or an "
                             "\"already done\" it does not prove (`proves`): the outcome is unknown",
    "upstream_unavailable": "the legacy side could not be reached, or answered an HTTP 5xx",
    "service_unavailable": "the gateway's store is unavailable",
    "transaction_in_progress": "the first copy of this transaction is still running, or it is queued for "
                               "delivery to the wallet: ask again later for its outcome",
    "upstream_timeout": "the legacy side did not answer in time: the outcome is unknown",
}


def table() -> str:
    """The Markdown table of every iGSP error code, its HTTP status and retriability."""
    rows = ["| code | HTTP | retriable | meaning |", "|---|---|---|---|"]
    for code, status in sorted(ERROR_CODES.items(), key=lambda item: (item[1], item[0])):
        rows.append(f"| `{code}` | {status} | {'yes' if status >= 500 else 'no'} | {MEANINGS[code]} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(table(), end="")
