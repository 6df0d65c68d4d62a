"""The ``hmac_header`` signer over sorted parameters, with nonce and timestamp headers.

Each signature is recomputed here from the documented recipe with ``hmac`` and
``urlencode``, not with the signer's own helpers, so a wrong recipe fails.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from decimal import Decimal
from urllib.parse import urlencode

import pytest

from gateway.adapter_api import InboundRequest, LegacyRequest
from gateway.engine.adapters import make_adapter
from gateway.engine.mapping import load_mapping
from gateway.errors import ConfigError, UpstreamError
from gateway.outbound.legacy import LegacyClient
from tests.support import ROOT

KEY = "merchant-key-0123456789"
SIGNED = ["X-Merchant-Id", "X-Nonce", "X-Timestamp"]


def signer(**options):
    return make_adapter({"adapter": "hmac_header", "header": "X-Sign", "secret": KEY, "algorithm": "sha1",
                         "message": "params", "nonce_header": "X-Nonce", "timestamp_header": "X-Timestamp",
                         "signed_headers": SIGNED, **options}, "signer")


def request(fields=None, params=None) -> LegacyRequest:
    return LegacyRequest("bet", "POST", "http://w/wallet", headers={"X-Merchant-Id": "m-1"},
                         params=params or {}, fields=fields if fields is not None else
                         {"action": "bet", "amount": 1234, "player_id": "Tom & Jerry", "round_id": None})


def expected(fields: dict, headers: dict, algorithm=hashlib.sha1) -> str:
    values = {k: str(v) for k, v in fields.items() if v is not None}
    values.update({name: headers[name] for name in SIGNED})
    return hmac.new(KEY.encode(), urlencode(sorted(values.items())).encode(), algorithm).hexdigest()


def test_signs_the_sorted_fields_and_headers_with_a_fresh_nonce_and_time_per_call():
    s = signer()
    first, second = request(), request()
    before = int(time.time())
    s.sign(first)
    s.sign(second)
    after = int(time.time())
    for req in (first, second):
        assert before <= int(req.headers["X-Timestamp"]) <= after
        assert len(req.headers["X-Nonce"]) == 32
        assert req.headers["X-Sign"] == expected(req.fields, req.headers)
    assert first.headers["X-Nonce"] != second.headers["X-Nonce"]
    # What is signed is the url-encoded text: "Tom & Jerry" as the form carries it.
    assert "player_id=Tom+%26+Jerry" in urlencode(sorted({"player_id": "Tom & Jerry"}.items()))


def test_query_parameters_plain_joining_milliseconds_and_base64():
    s = signer(params_encoding="plain", timestamp_unit="ms", encoding="base64", algorithm="sha256",
               signed_headers=["X-Timestamp"])
    req = request(fields=None, params={"b": "x y", "a": Decimal("1.50")})
    req.fields = None
    s.sign(req)
    stamp = req.headers["X-Timestamp"]
    assert abs(int(stamp) - time.time() * 1000) < 60_000
    text = f"X-Timestamp={stamp}&a=1.50&b=x y"
    import base64
    assert req.headers["X-Sign"] == base64.b64encode(hmac.new(KEY.encode(), text.encode(), hashlib.sha256).digest()
                                                     ).decode()


def test_body_mode_is_unchanged():
    s = make_adapter({"adapter": "hmac_header", "header": "X-Sig", "secret": KEY}, "signer")
    req = request()
    req.body = b'{"a":1}'
    s.sign(req)
    assert req.headers["X-Sig"] == hmac.new(KEY.encode(), b'{"a":1}', hashlib.sha256).hexdigest()
    assert "X-Nonce" not in req.headers


def test_verify_checks_the_same_recipe():
    s = signer()
    req = request(fields={"action": "win", "amount": "5"})
    s.sign(req)
    inbound = InboundRequest("POST", "/wallet", dict(req.headers), {}, dict(req.fields), b"")
    assert s.verify(inbound)
    inbound.fields["amount"] = "6"
    assert not s.verify(inbound)
    inbound.fields["amount"] = "5"
    inbound.headers["X-Sign"] = "é" * 40  # not ASCII: a wrong signature, not a TypeError
    assert not s.verify(inbound)


@pytest.mark.parametrize("old, new, field, message", [
    ("algorithm: sha1", "algorithm: sha3", "algorithm",
     "option 'algorithm' must be one of sha1, sha256, sha512, md5, not 'sha3'"),
    ("message: params", "message: bytes", "message", "option 'message' must be body or params"),
    ("message: params", "message: body", "signed_headers", "option 'signed_headers' needs message: params"),
    ("timestamp_header: X-Timestamp", "timestamp_header: X-Timestamp\n  timestamp_unit: us", "timestamp_unit",
     "option 'timestamp_unit' must be s or ms"),
])
def test_a_bad_option_names_the_file_line_and_field(tmp_path, old, new, field, message):
    lines = (ROOT / "mappings" / "hmacsha1-wallet.yaml").read_text().splitlines()
    at = [i for i, t in enumerate(lines) if t.startswith(f"  {old}")]
    assert len(at) == 1
    lines[at[0]] = f"  {new}"
    path = tmp_path / "w.yaml"
    path.write_text("\n".join(lines) + "\n")
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if t.strip().startswith(f"{field}:"))
    env = {"HMACSHA1_WALLET_URL": "http://127.0.0.1:9", "HMACSHA1_WALLET_KEY": KEY,
           "HMACSHA1_WALLET_MERCHANT_ID": "m-1"}
    with pytest.raises(ConfigError) as info:
        load_mapping(path, env)
    problem = str(info.value)
    assert problem.startswith(f"{path}:{line}: signer.{field}: adapter 'hmac_header': "), problem
    assert message in problem and KEY not in problem


def test_the_shipped_mapping_signs_each_built_request_afresh():
    env = {"HMACSHA1_WALLET_URL": "http://127.0.0.1:9", "HMACSHA1_WALLET_KEY": KEY,
           "HMACSHA1_WALLET_MERCHANT_ID": "m-1"}
    client = LegacyClient(load_mapping(ROOT / "mappings" / "hmacsha1-wallet.yaml", env))
    context = {"player_id": "p1", "session_id": "s-1", "currency": "EUR", "legacy_amount": 1234, "amount": 12.34,
               "transaction_id": "tx-1", "partner": "acme", "game_id": "g", "type": "bet", "request_id": "r"}
    one, two = client.build("bet", context), client.build("bet", context)
    assert one.body == two.body and one.headers["X-Nonce"] != two.headers["X-Nonce"]
    for req in (one, two):
        assert req.headers["X-Merchant-Id"] == "m-1"
        assert req.headers["X-Sign"] == expected(req.fields, req.headers)


def test_a_signed_header_the_request_lacks_is_the_mappings_mistake_never_a_final_answer():
    req = request()
    del req.headers["X-Merchant-Id"]
    with pytest.raises(UpstreamError) as info:
        signer().sign(req)
    assert info.value.code == "upstream_error" and info.value.applied is False
    assert "signed header 'X-Merchant-Id' is not on the request" in info.value.message
    nested = request(fields={"action": "bet", "player": {"id": "p1"}})
    with pytest.raises(UpstreamError, match="cannot sign nested fields"):
        signer().sign(nested)
