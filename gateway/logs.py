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
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import os
import re
import sys
import time

import orjson
from aiohttp.http_exceptions import HttpProcessingError

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
        if self._pattern is not None and any(form in text for form in self._forms):
            text = self._pattern.sub(REDACTED, text)
        lowered = text.lower()
        if any(word in lowered for word in _HEADER_WORDS):
            text = _HEADER_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
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
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if "request_id" not in entry and (request_id := REQUEST_ID.get()) is not None:
            entry["request_id"] = request_id
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


class AccessLog:
    """The access log's one line per request, written straight to the JSON handler.

    The same line ``logger.info("request", extra=fields)`` would give (same format, same
    redaction), without building a LogRecord for every request; when logging is set up
    otherwise (another handler, a filter of its own), it goes through ``logging``.
    The lines of one turn of the event loop leave in one write (a write per line is a
    system call per request); they are written at the end of the turn, and at exit.
    """

    def __init__(self, name: str = "igsp.access"):
        self.logger = logging.getLogger(name)
        self.name = name
        self._pending: list[str] = []
        self._pending_to: logging.StreamHandler | None = None
        atexit.register(self.flush)

    def info(self, msg: str, fields: dict) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handler = _handler
        if (handler is None or logger.handlers or logger.filters or handler.level > logging.INFO
                or not isinstance(handler.formatter, JsonFormatter) or handler.filters != [quiet_protocol_errors]
                or logging.root.handlers != [handler]):
            logger.info(msg, extra=fields)
            return
        entry = {"ts": timestamp(time.time()), "level": "info", "logger": self.name, "pid": _PID, "msg": msg, **fields}
        if "request_id" not in fields and (request_id := REQUEST_ID.get()) is not None:
            entry["request_id"] = request_id
        line = handler.formatter.redact(orjson.dumps(entry, default=str).decode()) + handler.terminator
        if self._pending_to is not handler:
            self.flush()
            self._pending_to = handler
        self._pending.append(line)
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no event loop: nothing will come back to flush
                self.flush()

    def flush(self) -> None:
        lines, handler = self._pending, self._pending_to
        if not lines or handler is None:
            return
        self._pending = []
        text = "".join(lines)
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.flush()
        except Exception:  # noqa: BLE001 - as logging does: a failing log write is not the request's failure
            handler.handleError(logging.makeLogRecord({"msg": text}))
        finally:
            handler.release()


_PID = os.getpid()


def _after_fork() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


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
