"""Generic legacy signing schemes: md5 of sorted parameters, HMAC (of the body or of the
sorted parameters, with nonce and timestamp headers) and RSA headers.

Each works both ways: ``prepare``/``sign`` on outbound calls, ``verify`` on inbound
legacy callbacks. Secrets come from the mapping's options (``${ENV}``), never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from adapters.codecs import form_value
from gateway.adapter_api import InboundRequest, LegacyRequest, Signer
from gateway.errors import UpstreamError


def md5_param_hash(params: dict, secret: str, exclude: str = "hash") -> str:
    """md5 over ``k1=v1&k2=v2`` sorted by name (minus ``exclude`` and empty values) + secret.

    >>> md5_param_hash({"b": "2", "a": "1"}, "s") == hashlib.md5(b"a=1&b=2s").hexdigest()
    True
    """
    pairs = sorted((str(k), form_value(v)) for k, v in params.items() if k != exclude and v is not None)
    text = "&".join(f"{k}={v}" for k, v in pairs) + secret
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - the legacy scheme


class Md5ParamsSigner(Signer):
    """Adds ``field`` (default ``hash``) = md5(sorted params + secret) to the body or query."""

    description = "md5 of sorted parameters plus a shared secret (Pragmatic-style seamless wallets)"

    def __init__(self, options):
        super().__init__(options)
        self.secret = self.option("secret", kind=str)
        if not self.secret:
            raise ValueError("option 'secret' must not be empty")
        self.field = self.option("field", "hash", str)

    def prepare(self, req: LegacyRequest) -> None:
        target = req.fields if isinstance(req.fields, dict) else req.params
        target[self.field] = md5_param_hash(target, self.secret, self.field)

    def verify(self, inbound: InboundRequest) -> bool:
        fields = inbound.fields if isinstance(inbound.fields, dict) else inbound.params
        given = str(fields.get(self.field, ""))
        return _same(md5_param_hash(fields, self.secret, self.field), given.lower())


#: What ``hmac_header`` can MAC with (``hmac`` from the standard library, nothing else).
HMAC_ALGORITHMS = ("sha1", "sha256", "sha512", "md5")


def sorted_params(params: dict, encoding: str = "urlencoded") -> str:
    """``k1=v1&k2=v2`` sorted by name, ``None`` values left out.

    ``urlencoded`` escapes names and values as the form body itself does (``a b`` ->
    ``a+b``); ``plain`` joins them as they are.

    >>> sorted_params({"b": "x y", "a": 1}), sorted_params({"b": "x y", "a": 1}, "plain")
    ('a=1&b=x+y', 'a=1&b=x y')
    """
    pairs = sorted((str(k), form_value(v)) for k, v in params.items() if v is not None)
    if encoding == "urlencoded":
        return urlencode(pairs)
    return "&".join(f"{k}={v}" for k, v in pairs)


def _mapping_error(text: str) -> UpstreamError:
    """A request this mapping cannot sign: its mistake, not the caller's, so never a final 400
    (a ValueError would be); a retriable error that sent nothing, with the reason kept."""
    return UpstreamError("upstream_error", f"hmac_header: {text}", kind="adapter", applied=False)


class HmacHeaderSigner(Signer):
    """A header carrying an HMAC, in hex or base64, of the raw body or of the sorted parameters.

    Options: ``header``, ``secret``, ``algorithm`` (``sha256``, ``sha1``, ``sha512``,
    ``md5``), ``encoding`` (``hex``, ``base64``), and, for wallets that sign their
    parameters rather than the bytes:

    - ``message``: ``body`` (default) or ``params``: the request's parameters (form or
      JSON body fields, and query parameters) sorted by name and joined as ``k=v&…``,
      ``params_encoding`` ``urlencoded`` (default) or ``plain``;
    - ``nonce_header``: a header given a fresh random nonce on every call, and
      ``timestamp_header``: one given the time of the call (``timestamp_unit`` ``s`` or
      ``ms``). They are made in ``sign``, which runs once per legacy call, so a retry or a
      queued redelivery never reuses a nonce nor carries a stale time;
    - ``signed_headers``: with ``message: params``, headers whose values join the
      parameters under their own names before sorting (``[X-Merchant-Id, X-Nonce,
      X-Timestamp]``), so that a replayed signature is refused for its nonce.
    """

    description = ("HMAC (sha256/sha1/sha512/md5, hex or base64) of the raw body or of the sorted parameters, "
                   "with optional nonce and timestamp headers")

    def __init__(self, options):
        super().__init__(options)
        self.header = self.option("header", kind=str)
        self.secret = self.option("secret", kind=str).encode()
        if not self.secret:
            raise ValueError("option 'secret' must not be empty")
        self.digest = self.option("algorithm", "sha256", str)
        if self.digest not in HMAC_ALGORITHMS:
            raise ValueError(f"option 'algorithm' must be one of {', '.join(HMAC_ALGORITHMS)}, not {self.digest!r}")
        self.encoding = self.option("encoding", "hex", str)
        if self.encoding not in ("hex", "base64"):
            raise ValueError("option 'encoding' must be hex or base64")
        self.message = self.option("message", "body", str)
        if self.message not in ("body", "params"):
            raise ValueError(f"option 'message' must be body or params, not {self.message!r}")
        self.params_encoding = self.option("params_encoding", "urlencoded", str)
        if self.params_encoding not in ("urlencoded", "plain"):
            raise ValueError("option 'params_encoding' must be urlencoded or plain")
        self.nonce_header = self.option("nonce_header", None, str)
        self.timestamp_header = self.option("timestamp_header", None, str)
        self.timestamp_unit = self.option("timestamp_unit", "s", str)
        if self.timestamp_unit not in ("s", "ms"):
            raise ValueError("option 'timestamp_unit' must be s or ms")
        signed = self.option("signed_headers", [], list)
        if not all(isinstance(h, str) and h for h in signed):
            raise ValueError("option 'signed_headers' must be a list of header names")
        if signed and self.message != "params":
            raise ValueError("option 'signed_headers' needs message: params (a body MAC covers the body only)")
        self.signed_headers = tuple(signed)

    def _mac(self, message: bytes) -> str:
        mac = hmac.new(self.secret, message, self.digest)
        return mac.hexdigest() if self.encoding == "hex" else base64.b64encode(mac.digest()).decode()

    def _message(self, body: bytes, fields: Any, params: dict, headers: dict[str, str]) -> bytes:
        if self.message == "body":
            return body
        values: dict[str, Any] = dict(params)
        if isinstance(fields, dict):
            values.update(fields)
        elif fields is not None:
            raise _mapping_error("message: params needs a body of named fields (a form, query or flat JSON body)")
        if any(isinstance(v, (dict, list)) for v in values.values()):
            raise _mapping_error("message: params cannot sign nested fields; use message: body")
        lower = {k.lower(): v for k, v in headers.items()}
        for name in self.signed_headers:
            if name.lower() not in lower:
                raise _mapping_error(f"signed header {name!r} is not on the request: set it in the operation's "
                                     "headers (upstream.headers are added after signing)")
            values[name] = lower[name.lower()]
        return sorted_params(values, self.params_encoding).encode()

    def sign(self, req: LegacyRequest) -> None:
        if self.nonce_header:
            req.headers[self.nonce_header] = secrets.token_hex(16)
        if self.timestamp_header:
            now = time.time()
            req.headers[self.timestamp_header] = str(int(now * 1000) if self.timestamp_unit == "ms" else int(now))
        req.headers[self.header] = self._mac(self._message(req.body, req.fields, req.params, req.headers))

    def verify(self, inbound: InboundRequest) -> bool:
        """The signature only: a caller's nonce and timestamp are not kept or checked here."""
        given = {k.lower(): v for k, v in inbound.headers.items()}.get(self.header.lower(), "")
        try:
            expected = self._mac(self._message(inbound.body, inbound.fields, inbound.params, inbound.headers))
        except UpstreamError:
            return False
        return _same(expected, given)


def _same(expected: str, given: str) -> bool:
    """``hmac.compare_digest`` of two texts as bytes: a caller's signature with characters
    outside ASCII is a wrong signature, not a TypeError (which compare_digest raises for str)."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


def _pem(value: str) -> bytes:
    """A PEM given inline or as a file path."""
    if "-----BEGIN" in value:
        return value.encode()
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"key {value!r} is neither PEM text nor a readable file")
    return path.read_bytes()


class RsaSha256HeaderSigner(Signer):
    """Base64 RSA-SHA256 (PKCS#1 v1.5) signature of the raw body in a header (Hub88-style).

    Options: ``header``; ``private_key`` (to sign our calls) and/or ``public_key`` (to
    verify the legacy side's calls), each PEM text or a file path.
    """

    description = "RSA-SHA256 signature of the raw body in a header"
    sign_in_batches = True  # ~0.2-0.35 ms of CPU a signature

    def __init__(self, options):
        super().__init__(options)
        from cryptography.hazmat.primitives import serialization

        self.header = self.option("header", kind=str)
        private, public = self.option("private_key", None, str), self.option("public_key", None, str)
        if not private and not public:
            raise ValueError("give 'private_key' (to sign) and/or 'public_key' (to verify)")
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        self._padding, self._hash = padding.PKCS1v15(), hashes.SHA256()
        try:
            self.private = serialization.load_pem_private_key(_pem(private), None) if private else None
            self.public = serialization.load_pem_public_key(_pem(public)) if public else None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cannot load RSA key: {exc}") from None

    def sign(self, req: LegacyRequest) -> None:
        if self.private is None:
            # The configuration's fault, not the request's: not a ValueError, which would be
            # stored as the transaction's final 400 (see gateway/adapter_api.py).
            raise RuntimeError("no private_key configured to sign with")
        signature = self.private.sign(req.body, self._padding, self._hash)
        req.headers[self.header] = base64.b64encode(signature).decode()

    def verify(self, inbound: InboundRequest) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        given = {k.lower(): v for k, v in inbound.headers.items()}.get(self.header.lower(), "")
        if self.public is None or not given:
            return False
        try:
            self.public.verify(base64.b64decode(given, validate=True), inbound.body, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return False
        return True
