"""Signed iGSP requests, and every answer checked against ``spec/`` as it arrives.

The client signs exactly as the protocol says (``HMAC-SHA256(secret, raw_body +
X-Timestamp)`` over the bytes sent) and lets a check break any part of that on purpose
(another key, a stale timestamp, a flipped byte). Every answer is validated: a 2xx
against the component the caller names, anything >= 400 against ``ErrorResponse`` with
a JSON content type and a ``status`` equal to the HTTP status. What does not conform is
kept in ``violations`` for the final ``schema.every_answer`` check.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import aiohttp
import orjson

from gateway import signing
from gateway.spec import SpecValidators
from gateway.tools.conformance.runner import CheckFailed


def dumps(value: Any) -> bytes:
    """JSON bytes; a Decimal is written as the exact JSON number it holds (``1.50``)."""
    return orjson.dumps(value, default=_exact)


def _exact(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(format(value, "f"))
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class Clock:
    """ISO-8601 UTC timestamps with milliseconds, never the same twice.

    So no two requests the kit signs carry the same signature unless a check means it to:
    the identical-copy checks (``wallet.bet_identical_retry``, ``wallet.balance_same_second``
    …) send one request's bytes and headers again, as a provider's retry code does.
    """

    def __init__(self) -> None:
        self._last_ms = 0

    def now(self) -> str:
        ms = max(int(time.time() * 1000), self._last_ms + 1)
        self._last_ms = ms
        return self.format(ms)

    @staticmethod
    def shifted(seconds: float) -> str:
        return Clock.format(int((time.time() + seconds) * 1000))

    @staticmethod
    def format(ms: int) -> str:
        when = datetime.fromtimestamp(ms / 1000, timezone.utc)
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@dataclass
class Answer:
    """One HTTP exchange as the target answered it."""

    method: str
    path: str
    status: int
    headers: dict[str, str]
    body: bytes
    data: Any = None  # decoded JSON (fractions as Decimal), None when the body is not JSON

    def brief(self, limit: int = 160) -> str:
        text = self.body.decode("utf-8", errors="replace").strip().replace("\n", " ")
        if len(text) > limit:
            text = text[:limit] + "…"
        return f"HTTP {self.status} {text}" if text else f"HTTP {self.status} (empty body)"

    def field(self, name: str) -> Any:
        return self.data.get(name) if isinstance(self.data, dict) else None


@dataclass
class SignedClient:
    base_url: str
    api_key: str
    secret: str
    spec: SpecValidators
    timeout: float = 10.0
    clock: Clock = field(default_factory=Clock)
    violations: list[str] = field(default_factory=list)
    answers: int = 0
    _http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SignedClient:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    def headers(self, body: bytes, *, timestamp: str | None = None, api_key: str | None = None,
                secret: str | None = None) -> dict[str, str]:
        return signing.signed_headers(api_key or self.api_key, secret or self.secret, body,
                                      timestamp or self.clock.now())

    async def call(self, method: str, path: str, payload: Any = None, *, params: dict | None = None,
                   expect: str | None = None) -> Answer:
        """A correctly signed request; ``payload`` may be bytes (sent as is) or JSON data."""
        body = b"" if payload is None else payload if isinstance(payload, bytes) else dumps(payload)
        return await self.send(method, path, body, self.headers(body), params=params, expect=expect)

    async def send(self, method: str, path: str, body: bytes, headers: dict[str, str], *,
                   params: dict | None = None, expect: str | None = None) -> Answer:
        """Send exactly these bytes and headers; record what does not conform to the spec."""
        assert self._http is not None, "use the client as an async context manager"  # noqa: S101 - programming error
        url = self.base_url.rstrip("/") + path
        try:
            async with self._http.request(method, url, data=body or None, headers=headers, params=params,
                                          allow_redirects=False) as response:
                raw = await response.read()
                answer = Answer(method, path, response.status, dict(response.headers), raw)
        except TimeoutError:
            raise CheckFailed(f"{method} {url}: no answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise CheckFailed(f"{method} {url}: no answer ({type(exc).__name__}: {exc})") from None
        try:
            answer.data = json.loads(raw, parse_float=Decimal) if raw else None
        except ValueError:
            answer.data = None
        self.answers += 1
        label = f"{method} {path or '/'}" + (f"?{'&'.join(f'{k}={v}' for k, v in params.items())}" if params else "")
        for problem in self.problems(answer, expect):
            self.violations.append(f"{label} -> HTTP {answer.status}: {problem}")
        return answer

    def problems(self, answer: Answer, expect: str | None) -> list[str]:
        if answer.status >= 400:
            return error_shape_problems(answer, self.spec)
        if 200 <= answer.status < 300 and expect:
            if answer.data is None:
                return [f"body is not JSON (want {expect})"]
            return [f"{expect}: {e}" for e in self.spec.errors(expect, answer.data)]
        return []


def error_shape_problems(answer: Answer, spec: SpecValidators) -> list[str]:
    """Why an error answer is not a proper iGSP ``ErrorResponse`` (empty when it is)."""
    problems = []
    content_type = answer.headers.get("Content-Type", "")
    if not content_type.startswith("application/json"):
        problems.append(f"Content-Type is {content_type or 'missing'!r}, want application/json")
    if not isinstance(answer.data, dict):
        return [*problems, "error body is not a JSON object (want ErrorResponse {error, message})"]
    problems += [f"ErrorResponse: {e}" for e in spec.errors("ErrorResponse", answer.data)]
    status = answer.data.get("status")
    if status is not None and status != answer.status:
        problems.append(f"ErrorResponse.status is {status} but the HTTP status is {answer.status}")
    return problems
