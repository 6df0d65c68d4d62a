"""The gateway's exceptions.

    GatewayError
    ├── ConfigError        a config or mapping file is wrong (carries every Problem found)
    └── IgspError          answered to an iGSP caller as ErrorResponse {error, message, status}
        └── UpstreamError  the legacy side failed; ``applied`` says whether money may have moved

Codes are stable and machine-readable; 4xx are fatal for the caller, 5xx retriable.
The precise reason of an authentication failure goes to logs and metrics only.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Every iGSP error code the gateway can answer, with its HTTP status.
ERROR_CODES: dict[str, int] = {
    "invalid_request": 400,
    "invalid_json": 400,
    "unknown_action": 400,
    "invalid_amount": 400,
    "currency_mismatch": 400,
    "unsupported_currency": 400,
    "invalid_cursor": 400,
    "game_not_found": 400,
    "session_not_found": 400,
    "limit_exceeded": 400,
    "bet_not_allowed": 400,
    "unauthorized": 401,
    "insufficient_funds": 402,
    "invalid_signature": 403,
    "forbidden": 403,
    "player_not_found": 404,
    "transaction_not_found": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "transaction_conflict": 409,
    "transaction_already_refunded": 409,
    "transaction_voided": 409,
    "transaction_not_applied": 409,  # an operator found the wallet did not apply it (dlq resolve)
    "session_conflict": 409,
    "player_blocked": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "internal_error": 500,
    "upstream_error": 502,
    "upstream_bad_response": 502,
    "upstream_unavailable": 503,
    "service_unavailable": 503,
    "transaction_in_progress": 503,
    "upstream_timeout": 504,
}


class GatewayError(Exception):
    """Base of everything the gateway raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a config or mapping file, pointing at where it is."""

    file: str
    line: int | None
    path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.path or '<root>'}: {self.message}"
        return f"{text} Hint: {self.hint}" if self.hint else text


class ConfigError(GatewayError):
    """A config or mapping is invalid; ``problems`` lists all of them at once."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class IgspError(GatewayError):
    """An error answered to an iGSP caller."""

    def __init__(self, code: str, message: str, status: int | None = None):
        self.code = code
        self.message = message
        self.status = status or ERROR_CODES.get(code, 500)
        super().__init__(f"{self.code}: {message}")

    @property
    def retriable(self) -> bool:
        return self.status >= 500

    def body(self) -> dict:
        return {"error": self.code, "message": self.message, "status": self.status}


class UpstreamError(IgspError):
    """The legacy API failed.

    ``applied`` is False when the request certainly had no effect (never sent, or the
    legacy side said so) and None when the outcome is unknown (timeout after sending,
    reset, 5xx, unreadable body): money may have moved.
    """

    def __init__(self, code: str, message: str, *, kind: str, applied: bool | None, status: int | None = None):
        super().__init__(code, message, status)
        self.kind = kind
        self.applied = applied
