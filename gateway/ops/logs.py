"""Structured JSON logs, one object per line, with secrets redacted everywhere.

Redaction is applied to the final JSON line, so a secret cannot leak through any code
path that logs (a message, an extra field, a traceback). It removes

- every secret value the config holds (partner secrets, mapping secrets, adapter keys,
  the admin token), in plain and in JSON-escaped form (a PEM key has newlines);
- whatever follows a signature or credential header name (``X-Signature: …``,
  ``"authorization": "…"``), since per-request signatures cannot be listed up front.

API keys are public identifiers (PROTOCOL.md) and are not redacted; the gateway logs a
partner by its id and never logs request headers.

Every line written while a request (or a queued delivery) runs carries its
``request_id`` through a context variable, so one grep follows a request end to end.
With tracing on (gateway/ops/tracing.py), a line written inside a span also carries its
``trace_id`` and ``span_id`` (hex, as trace backends show them).

Lines go through ``logging`` and are written synchronously by one StreamHandler: a line
logged before a response is sent is in the stream (the file, the pipe) before the client
has the response, and nothing is lost on SIGKILL or a crash. The price is that a stalled
reader of stderr (a full pipe) stalls the event loop; the container runtime drains it. A
QueueHandler/QueueListener pair was measured and not taken: it moved 3 us of the ~13 us
a line costs off the event loop but added 6 us of CPU per line in total (the hand-over
and the listener thread contending for the GIL on a 2-core box), and its lines reach the
stream after the response, or never on SIGKILL.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time

import orjson
from aiohttp.http_exceptions import HttpProcessingError

from gateway.ops import tracing

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
REDACTED = "[REDACTED]"

#: The request (or delivery) being handled by the current task, for every log line.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# `X-Signature: abc`, `"x-hub88-signature": "abc"`, `authorization=Bearer abc`, `signature=abc`
_HEADER_VALUE = re.compile(
    r"""(?ix)
    ( (?:x-[a-z0-9-]*signature|signature|authorization|x-api-secret|x-admin-token|x-auth-token)
      \\?["']?\s*[:=]\s*\\?["']? )
    (?:bearer\s+)?
    [^\s"'\\,;}&]+
    """
)


#: Every name _HEADER_VALUE can match contains one of these (lowercase).
_HEADER_WORDS = ("signature", "authorization", "x-api-secret", "x-admin-token", "x-auth-token")


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: list[str] | None = None):
        super().__init__()
        self._pattern: re.Pattern | None = None
        self._secrets: set[str] = set()
        self.add_secrets(secrets or [])

    def add_secrets(self, secrets) -> None:
        """Redact these values from now on (a reload only ever adds: old values may still be in flight)."""
        forms = set(self._secrets)
        for secret in secrets:
            if not secret or len(secret) < 6:
                continue  # too short to redact without mangling ordinary text
            forms.add(secret)
            forms.add(orjson.dumps(secret).decode()[1:-1])  # as it appears inside a JSON string
        self._secrets = forms
        self._forms = tuple(forms)
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def redact(self, text: str) -> str:
        # Plain substring tests first (C speed): most lines hold neither a secret nor a
        # credential header name, and the regular expressions then need not scan them.
        # Loops that stop at the first hit, not any() over a generator: the same tests, about
        # a third of the cost (every line is tested, on the event loop).
        for form in self._forms:
            if form in text:
                text = self._pattern.sub(REDACTED, text)
                break
        lowered = text.lower()
        for word in _HEADER_WORDS:
            if word in lowered:
                return _HEADER_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
        return text

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key[:1] != "_":  # (a slice: no method call per key)
                entry[key] = value
        if "request_id" not in entry and (request_id := REQUEST_ID.get()) is not None:
            entry["request_id"] = request_id
        if tracing.ENABLED and (ids := tracing.log_ids()) is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self.redact(orjson.dumps(entry, default=str).decode())


_second: list = [None, ""]  # the last whole second formatted, and its text


def timestamp(when: float) -> str:
    """``2025-10-17T12:03:41.123Z``; the seconds part is formatted once per second."""
    second = int(when)
    if _second[0] != second:
        _second[0], _second[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{int((when - second) * 1000):03d}Z"


def quiet_protocol_errors(record: logging.LogRecord) -> bool:
    """Malformed HTTP from a client (an oversized header, garbage bytes) is its mistake, not
    ours: aiohttp already answered 4xx; log one warning line instead of an error traceback."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError) and (exc.code or 400) < 500:
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.args = "malformed HTTP request refused: %s", (str(exc.message)[:200],)
    return True


_handler: logging.Handler | None = None


def setup_logging(level: str = "info", secrets: list[str] | None = None, stream=None) -> None:
    global _handler
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(secrets))
    handler.addFilter(quiet_protocol_errors)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # No line shows the caller's file/line or thread: skip collecting them for every record
    # (the "Optimization" knobs of the logging docs; ~2 µs a line).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    _handler = handler


def update_logging(level: str, secrets: list[str]) -> None:
    """After a config reload: new level, and the new secrets added to the redaction list."""
    logging.getLogger().setLevel(level.upper())
    if _handler is not None and isinstance(_handler.formatter, JsonFormatter):
        _handler.formatter.add_secrets(secrets)
