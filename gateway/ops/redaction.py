"""Finding the secret values in a loaded config or mapping, so they never reach a log.

A value is secret when its key (or the key of a list or mapping holding it) names one:
``secret``, ``secrets``, ``private_key``, ``password``, ``token``… An adapter key given
as a file path is secret by its content, so the file is read too. Problems found while
loading a file are scrubbed of these values before they are shown: a too-short secret
must be reported without being printed.

    secret_values({"signer": {"private_key": "-----BEGIN…"}, "name": "x"})
    # -> ["-----BEGIN…"]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, Problem

_SECRET_KEY = re.compile(r"(?i)(secret|private_key|password|passwd|token|credential|pem$)")
REDACTED = "[REDACTED]"


def secret_values(data: Any) -> list[str]:
    """Every string under a secret-named key, plus the content of key files named there."""
    found: list[str] = []

    def walk(node: Any, secret: bool) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, secret or bool(_SECRET_KEY.search(str(key))))
        elif isinstance(node, list):
            for item in node:
                walk(item, secret)
        elif secret and isinstance(node, str) and node and "{{" not in node and "{%" not in node:
            found.append(node)  # (a template that reads a secret is not itself one)
            found.extend(_key_file(node))

    walk(data, False)
    return found


def _key_file(value: str) -> list[str]:
    """A PEM referenced by path: its full text and each base64 line of it."""
    if "\n" in value or len(value) > 4096:
        return _pem_lines(value)
    try:
        path = Path(value)
        if not path.is_file() or path.stat().st_size > 65536:
            return []
        text = path.read_text(errors="replace")
    except (OSError, ValueError):
        return []
    return [text.strip(), *_pem_lines(text)] if "-----BEGIN" in text else []


def _pem_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if len(line.strip()) >= 16 and "-----" not in line]


def scrub(error: ConfigError, secrets: list[str]) -> ConfigError:
    """The same problems with every secret value replaced (a no-op when none appears)."""
    values = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
    if not values:
        return error

    def clean(text: str | None) -> str | None:
        for value in values:
            if text and value in text:
                text = text.replace(value, REDACTED)
        return text

    return ConfigError([Problem(p.file, p.line, p.path, clean(p.message), clean(p.hint)) for p in error.problems])
