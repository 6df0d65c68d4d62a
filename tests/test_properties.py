"""Properties that must hold for every input, checked with hypothesis.

- signing: any body and timestamp round-trips; any single mutation of body, timestamp
  or signature is rejected (gateway/signing.py and the inbound Verifier);
- money: Decimal <-> minor units round-trips for every ISO-4217 exponent, and for any
  integer scale; nothing finer than the currency allows gets through;
- mappings: player-controlled strings rendered through the sandboxed templates and the
  codecs (JSON, form, query, XML, SOAP) come out on the legacy side exactly as sent —
  never evaluated, never breaking the encoding.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import string
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jinja2.exceptions import SecurityError
from yarl import URL

from adapters.codecs import FormCodec, JsonCodec, QueryCodec, dumps, loads
from adapters.xml import SoapCodec, XmlCodec
from gateway import money, signing
from gateway.adapter_api import LegacyRequest
from gateway.auth import AuthFailure, Verifier
from gateway.config import Partner
from gateway.engine.mapping import Amounts
from gateway.engine.templating import Templates
from gateway.errors import IgspError
from gateway.faces.wallet import amount_json
from gateway.store.sqlite import SqliteStore

#: In CI the examples are the same every run (no flakes); locally they explore.
CI = bool(os.environ.get("CI"))
PROPERTY = settings(derandomize=CI, max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- signing -----------------------------------------------------------------------------------
bodies = st.binary(max_size=2048)
secrets = st.binary(min_size=16, max_size=64)
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(timezone.utc))


def test_signature_is_hmac_sha256_of_body_then_timestamp():
    """Pins the wire format (RFC 4231, test case 2, split into body and timestamp): the MAC
    covers the raw body followed by the timestamp, keyed by the secret, lowercase hex."""
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert signing.sign("Jefe", b"what do ya want ", "for nothing?") == expected
    assert signing.verify((b"Jefe",), b"what do ya want ", "for nothing?", expected.upper())
    assert not signing.verify((b"Jefe",), b"for nothing?", "what do ya want ", expected)


@PROPERTY
@given(secret=secrets, other=st.binary(min_size=16, max_size=200), body=bodies)
def test_a_signature_verifies_under_its_own_secret_only(secret, other, body):
    """Any key length (longer than the 64-byte block too): another secret never verifies it."""
    assume(other != secret)
    signature = signing.sign(secret, body, "2025-10-17T12:03:41Z")
    assert signing.verify((other, secret), body, "2025-10-17T12:03:41Z", signature)
    assert not signing.verify((other,), body, "2025-10-17T12:03:41Z", signature)


def _timestamp(moment: datetime, micro: bool) -> str:
    if micro:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}Z"
    return signing.format_timestamp(moment)


@PROPERTY
@given(secret=secrets, body=bodies, moment=moments, micro=st.booleans())
def test_any_signed_body_and_timestamp_verify(secret, body, moment, micro):
    timestamp = _timestamp(moment, micro)
    signature = signing.sign(secret, body, timestamp)
    assert len(signature) == 64 and set(signature) <= set("0123456789abcdef")
    assert signing.verify((secret,), body, timestamp, signature)
    assert signing.verify((b"another-secret-0123456789", secret), body, timestamp, signature.upper())
    expected = moment.replace(microsecond=moment.microsecond if micro else 0).timestamp()
    assert signing.parse_timestamp(timestamp) == pytest.approx(expected, abs=1e-6)


@st.composite
def single_mutation(draw, value: bytes | str, alphabet: str | None = None):
    """``value`` with exactly one byte/char flipped, inserted or deleted (always different)."""
    kind = draw(st.sampled_from(["flip", "insert", "delete"] if value else ["insert"]))
    index = draw(st.integers(0, max(0, len(value) - (0 if kind == "insert" else 1))))
    if isinstance(value, bytes):
        if kind == "flip":
            bit = draw(st.integers(0, 7))
            return value[:index] + bytes([value[index] ^ (1 << bit)]) + value[index + 1:]
        if kind == "insert":
            return value[:index] + bytes([draw(st.integers(0, 255))]) + value[index:]
        return value[:index] + value[index + 1:]
    chars = alphabet or string.printable
    if kind == "flip":
        return value[:index] + draw(st.sampled_from([c for c in chars if c != value[index]])) + value[index + 1:]
    if kind == "insert":
        return value[:index] + draw(st.sampled_from(chars)) + value[index:]
    return value[:index] + value[index + 1:]


@PROPERTY
@given(secret=secrets, body=bodies, moment=moments, data=st.data())
def test_any_single_mutation_is_rejected(secret, body, moment, data):
    timestamp = signing.format_timestamp(moment)
    signature = signing.sign(secret, body, timestamp)
    target = data.draw(st.sampled_from(["body", "timestamp", "signature"]))
    if target == "body":
        body = data.draw(single_mutation(body))
    elif target == "timestamp":
        timestamp = data.draw(single_mutation(timestamp))
    else:
        signature = data.draw(single_mutation(signature, "0123456789abcdef"))
    assert not signing.verify((secret,), body, timestamp, signature)


class _Mapping:
    name = "m"


#: A partner in strict mode: its signatures are remembered, so a replay is refused.
PARTNER = Partner("acme", "platform", "acme-key-0001", (b"acme-secret-0123456789abcdef",), _Mapping(),
                  replay_protection=True)


def _as_read(name: str, value: str) -> str:
    """A header value as the verifier reads it: surrounding blanks dropped, and for
    Authorization any run of spaces after "Bearer" (RFC 9110: 1*SP before the credentials)."""
    if name == "Authorization" and value.startswith("Bearer "):
        return "Bearer " + value[7:].strip()
    return value.strip()


async def _verify(headers: dict, body: bytes, store=None) -> Partner:
    verifier = Verifier({PARTNER.api_key: PARTNER}, 300, store)
    return await verifier.verify(headers, body, "platform")


@PROPERTY
@given(body=bodies, skew=st.integers(-290, 290), micro=st.booleans(), data=st.data())
def test_verifier_accepts_the_signed_request_once_and_refuses_every_mutation(body, skew, micro, data):
    moment = datetime.now(timezone.utc) + timedelta(seconds=skew)
    headers = signing.signed_headers(PARTNER.api_key, PARTNER.secrets[0], body, _timestamp(moment, micro))

    async def scenario():
        store = SqliteStore("sqlite://:memory:")
        await store.open()
        try:
            assert await _verify(headers, body, store) is PARTNER
            with pytest.raises(AuthFailure) as replay:
                await _verify(headers, body, store)
            assert replay.value.reason == "replayed_signature" and replay.value.status == 403
        finally:
            await store.close()
        target = data.draw(st.sampled_from(["body", "X-Timestamp", "X-Signature", "Authorization"]))
        mutated_headers, mutated_body = dict(headers), body
        if target == "body":
            mutated_body = data.draw(single_mutation(body))
        elif target == "X-Signature":
            mutated_headers[target] = data.draw(single_mutation(headers[target], "0123456789abcdef"))
        else:
            mutated_headers[target] = data.draw(single_mutation(headers[target]))
        assume(target == "body" or _as_read(target, mutated_headers[target]) != _as_read(target, headers[target]))
        with pytest.raises(AuthFailure) as refused:
            await _verify(mutated_headers, mutated_body)
        assert refused.value.status in (401, 403)
        assert refused.value.message in ("missing or unknown credential", "signature or timestamp rejected")

    asyncio.run(scenario())


# -- money -------------------------------------------------------------------------------------
ISO_CURRENCIES = sorted(set(money._EXPONENTS) | {"EUR", "USD", "GBP"})


@PROPERTY
@given(currency=st.sampled_from(ISO_CURRENCIES), units=st.integers(0, 10**15 - 1))
def test_minor_units_round_trip_for_every_iso_exponent(currency, units):
    exp = money.exponent(currency)
    amount = money.from_minor(units, currency)
    assert amount.as_tuple().exponent == -exp  # always written with the currency's decimals
    assert money.to_minor(amount, currency) == units
    assert money.from_minor(str(units), currency) == amount
    assert money.check_amount(amount, currency) == amount


@PROPERTY
@given(currency=st.sampled_from(ISO_CURRENCIES), units=st.integers(0, 10**12), extra=st.integers(1, 9))
def test_nothing_finer_than_the_currency_gets_through(currency, units, extra):
    exp = money.exponent(currency)
    finer = Decimal(units).scaleb(-exp) + Decimal(extra).scaleb(-exp - 1)
    with pytest.raises(IgspError, match="invalid_amount"):
        money.to_minor(finer, currency)
    with pytest.raises(IgspError, match="invalid_amount"):
        money.check_amount(finer, currency)


@PROPERTY
@given(exp=st.integers(0, 18), units=st.integers(0, 10**18))
def test_configured_exponents_round_trip(exp, units):
    overrides = {"XBT": exp}
    amount = money.from_minor(units, "XBT", overrides)
    assert money.to_minor(amount, "XBT", overrides) == units


@PROPERTY
@given(scale_exp=st.integers(0, 8), odd_scale=st.sampled_from([1, 2, 4, 5, 8, 25, 64, 100000, 1_000_000]),
       units=st.integers(0, 10**15), use_odd=st.booleans())
def test_scaled_units_round_trip(scale_exp, odd_scale, units, use_odd):
    """Any scale whose 1/scale is a finite decimal (2**a * 5**b: 100, 100000, 8...)."""
    scale = odd_scale if use_odd else 10**scale_exp
    amount = money.from_scaled(units, scale)
    assert money.to_scaled(amount, scale) == units
    legacy = Amounts("scaled", scale)
    assert legacy.to_legacy(legacy.from_legacy(units, "EUR"), "EUR") == units


@PROPERTY
@given(currency=st.sampled_from(ISO_CURRENCIES), units=st.integers(0, 10**15 - 1))
def test_amounts_survive_json_both_ways_exactly(currency, units):
    amount = money.from_minor(units, currency)
    text = dumps({"amount": amount, "balance": amount_json(amount)})
    decoded = loads(text)
    assert decoded["amount"] == amount and decoded["balance"] == amount
    assert json.loads(text, parse_float=Decimal)["amount"] == amount
    for unit in ("decimal", "minor"):
        legacy = Amounts(unit)
        assert legacy.from_legacy(legacy.to_legacy(amount, currency), currency) == amount



@PROPERTY
@given(unit=st.sampled_from(["decimal", "minor", "scaled"]), exp=st.integers(0, 18),
       scale=st.sampled_from([1, 8, 100, 100000, 10**8]), quanta=st.integers(0, 10**40),
       legacy_max=st.one_of(st.none(), st.integers(1, 2**63 - 1)))
def test_an_amount_fits_the_legacy_unit_or_is_refused_naming_the_limit(unit, exp, scale, quanta, legacy_max):
    """Any amount with the currency's decimals, any unit, any exponent: either it is refused
    with the limit in the message, or it converts exactly into a value the unit holds."""
    overrides = {"XBT": exp}
    amounts = Amounts(unit, scale if unit == "scaled" else None, legacy_max)
    amount = Decimal(f"{quanta}E-{exp}")
    limit = amounts.largest("XBT", overrides)
    assert amounts.check(limit, "XBT", overrides) == limit  # the limit itself is accepted
    try:
        amounts.check(amount, "XBT", overrides)
    except IgspError as refused:
        assert refused.code == "invalid_amount" and amount > limit
        assert f"amount exceeds {limit} XBT" in refused.message
        return
    try:
        legacy = amounts.to_legacy(amount, "XBT", overrides)
    except IgspError as finer:  # 1/8 of a unit cannot carry 0.01
        assert unit == "scaled" and "finer than" in finer.message
        return
    if unit == "decimal":
        assert legacy == amount and len(legacy.as_tuple().digits) <= money.DECIMAL_DIGITS
        assert legacy_max is None or legacy <= legacy_max
    else:
        assert isinstance(legacy, int) and 0 <= legacy <= min(money.MAX_LEGACY_INTEGER, legacy_max or 2**63)
        assert amounts.from_legacy(legacy, "XBT", overrides) == amount


@PROPERTY
@given(text=st.one_of(st.text(max_size=5), st.sampled_from(["EUR", "JPY\n", "EUR ", "eur", "\nUSD", "USD\r\n"])))
def test_a_spec_pattern_accepts_exactly_the_whole_string_matches(text):
    from gateway.spec import hook_validators

    hook = {"action": "balance", "player_id": "p1", "currency": text}
    accepted = hook_validators().validator("BalanceRequest").is_valid(hook)
    assert accepted == (re.fullmatch("[A-Z]{3}", text) is not None)
    try:
        hook_validators().check("BalanceRequest", hook)
    except IgspError:
        assert not accepted
    else:
        assert accepted


# -- templates and codecs ----------------------------------------------------------------------------
#: Strings a player or provider controls (player names, round ids), with the nasty ones up front.
NASTY = [
    "{{ 7*7 }}", "{% for x in range(10**9) %}x{% endfor %}", "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ secrets }}", "{{ self._TemplateReference__context }}", "${HUB88_PRIVATE_KEY}", "{#", "}}{{",
    'Tom & "Jerry" <3', "</Bet><Bet amount='999'>", "]]><!--", "<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>",
    "&amp;", "a=1&amount=999", "x%26amount%3D999", "#frag", "?q=1", "line\nbreak", "crlf\r\nheader: x",
    "tab\there", " padded ", "", "\u00e9\u4e2d\U0001f3b0", "\u202eRTL", "null\\u0000", "'; DROP TABLE ledger; --",
]
player_strings = st.one_of(st.sampled_from(NASTY), st.text(st.characters(exclude_categories=("Cs",)), max_size=80))

TEMPLATES = Templates()
REQUEST_TREE = {
    "user": "{{ player_name }}",
    "memo": "round {{ round_id }} for {{ player_name }}",
    "nested": {"round": "{{ round_id }}", "list": ["{{ player_name }}", "fixed"]},
}


def _render(player_name: str, round_id: str) -> dict:
    problems = []
    render = TEMPLATES.compile_tree(REQUEST_TREE, lambda path, exc: problems.append((path, exc)))
    assert problems == []
    return render({"player_name": player_name, "round_id": round_id, "secrets": {"key": "s3cr3t"}})


@PROPERTY
@given(name=player_strings, round_id=player_strings)
def test_player_strings_are_data_never_templates(name, round_id):
    fields = _render(name, round_id)
    assert fields["user"] == name and fields["nested"]["round"] == round_id
    assert fields["memo"] == f"round {round_id} for {name}"
    assert fields["nested"]["list"] == [name, "fixed"]
    assert "s3cr3t" not in json.dumps(fields)


def _xml_safe(text: str) -> bool:
    return all(c in "\t\n\r" or 0x20 <= ord(c) <= 0xD7FF or 0xE000 <= ord(c) <= 0xFFFD or ord(c) >= 0x10000
               for c in text)


def _encode(codec, fields) -> LegacyRequest:
    req = LegacyRequest("bet", "POST", "http://legacy.test/bet", fields=fields)
    codec.encode(req)
    return req


@PROPERTY
@given(name=player_strings, round_id=player_strings)
def test_json_form_and_query_encodings_decode_to_the_same_strings(name, round_id):
    fields = _render(name, round_id)
    flat = {"user": fields["user"], "memo": fields["memo"], "round": round_id, "amount": Decimal("1.50")}

    assert json.loads(_encode(JsonCodec({}), fields).body) == fields

    form = _encode(FormCodec({}), dict(flat))
    assert parse_qsl(form.body.decode("ascii"), keep_blank_values=True) == [
        ("user", name), ("memo", fields["memo"]), ("round", round_id), ("amount", "1.50")]

    query = _encode(QueryCodec({}), dict(flat))
    assert query.body == b""
    # The URL as aiohttp sends it, read back by a standard parser.
    sent = str(URL(query.url).with_query(query.params))
    assert urlsplit(sent).path == "/bet" and not urlsplit(sent).fragment
    assert dict(parse_qsl(urlsplit(sent).query, keep_blank_values=True)) == {
        "user": name, "memo": fields["memo"], "round": round_id, "amount": "1.50"}


@PROPERTY
@given(name=player_strings, round_id=player_strings, soap=st.booleans())
def test_xml_and_soap_encodings_carry_exactly_the_strings_or_refuse_cleanly(name, round_id, soap):
    codec = SoapCodec({"namespace": "urn:wallet"}) if soap else XmlCodec({})
    fields = {"Bet": {"User": name, "Round": round_id, "Amount": Decimal("1.50")}}
    if not (_xml_safe(name) and _xml_safe(round_id)):
        # XML 1.0 cannot carry these characters at all: a clean refusal (-> 400), not a broken document.
        with pytest.raises(ValueError, match="XML"):
            _encode(codec, fields)
        return
    req = _encode(codec, fields)
    root = ET.fromstring(req.body)  # noqa: S314 - our own output
    bet = root if not soap else root[0][0]
    assert bet.tag.endswith("Bet") and len(bet) == 3
    by_name = {child.tag.rsplit("}", 1)[-1]: child.text or "" for child in bet}
    assert by_name == {"User": name, "Round": round_id, "Amount": "1.50"}


def test_the_sandbox_refuses_unsafe_template_code():
    """Mapping authors are trusted, but a mapping can still never reach Python internals."""
    for source in ("{{ x.__class__.__mro__ }}", "{{ x.__init__.__globals__ }}", "id {{ x.__class__ }}",
                   "{{ cycler.__init__ }}"):
        render = TEMPLATES.compile_value(source)
        with pytest.raises(SecurityError):
            str(render({"x": "player"}))  # refused at render, or an undefined that refuses to become text
    # Immutable sandbox: a template cannot change the data it is given.
    render = TEMPLATES.compile_value("{{ items.append(1) }}")
    with pytest.raises(SecurityError):
        render({"items": []})
