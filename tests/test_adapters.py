"""The adapter contract: built-in codecs and signers both ways, filters, JMESPath
functions, multi-step ``run`` flows, third-party discovery through the entry-point
group, and clear load-time errors for broken or missing adapters."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from datetime import datetime, timezone
from decimal import Decimal
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from aiohttp import web

from adapters.signing import md5_param_hash
from gateway.adapter_api import Adapter, Codec, Flow, InboundRequest, LegacyRequest, roles_of
from gateway.engine import adapters as registry
from gateway.engine.adapters import make_adapter
from gateway.engine.mapping import load_mapping
from gateway.engine.templating import BUILTIN_FILTERS, Templates
from gateway.errors import ConfigError, IgspError, UpstreamError
from gateway.outbound.legacy import LegacyClient
from gateway.tools.simulators import hub88_wallet, start_in_thread
from tests.support import ROOT

# -- codecs ---------------------------------------------------------------------------------------

NICK = 'Tom & "Jerry" <3'


def test_json_codec_keeps_decimals_exact():
    codec = make_adapter("json")
    req = LegacyRequest("bet", "POST", "http://x", fields={"amount": Decimal("0.10"), "big": Decimal("1E+3")})
    codec.encode(req)
    assert req.body == b'{"amount":0.10,"big":1000}'
    assert codec.decode(b'{"balance": 97.50}', "application/json") == {"balance": Decimal("97.50")}


def test_form_and_query_codecs():
    form = make_adapter("form")
    req = LegacyRequest("bet", "POST", "http://x", fields={"amount": Decimal("12.50"), "nick": NICK, "free": True,
                                                           "skip": None})
    form.encode(req)
    assert req.body == b"amount=12.50&nick=Tom+%26+%22Jerry%22+%3C3&free=true"
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form.decode(req.body, "application/x-www-form-urlencoded")["nick"] == NICK
    query = make_adapter("query")
    req = LegacyRequest("bet", "GET", "http://x", fields={"user": "u 1", "amount": Decimal("1.5")})
    query.encode(req)
    assert req.params == {"user": "u 1", "amount": "1.5"} and req.body == b""


def test_soap_codec_escapes_and_reads_without_namespaces():
    soap = make_adapter({"adapter": "soap", "namespace": "urn:legacy-wallet"})
    req = LegacyRequest("bet", "POST", "http://x", fields={"Withdraw": {"nickname": NICK, "amount": Decimal("1.50")}})
    soap.encode(req)
    assert req.headers["SOAPAction"] == '"urn:legacy-wallet#Withdraw"'
    assert b"<nickname>Tom &amp; \"Jerry\" &lt;3</nickname>" in req.body
    data = soap.decode(req.body, "text/xml")
    assert data == {"Envelope": {"Body": {"Withdraw": {"nickname": NICK, "amount": "1.50"}}}}
    with pytest.raises(ValueError, match="DTD"):
        soap.decode(b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>', "text/xml")


LAUGHS = ('<?xml version="1.0" encoding="{enc}"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
          + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
          + ']>\n<Envelope><Body><Result>&lol9;</Result></Body></Envelope>')
HOSTILE = {
    "billion laughs, UTF-8": LAUGHS.format(enc="utf-8").encode("utf-8"),
    # The byte search for b"<!DOCTYPE" the codec once relied on finds nothing in these three.
    "billion laughs, UTF-16 with BOM": LAUGHS.format(enc="utf-16").encode("utf-16"),
    "billion laughs, UTF-16LE without BOM": LAUGHS.format(enc="utf-16").encode("utf-16-le"),
    "billion laughs, UTF-16BE without BOM": LAUGHS.format(enc="utf-16").encode("utf-16-be"),
    "external entity": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
    "external DTD": b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://127.0.0.1:9/evil.dtd"><r>1</r>',
    "internal DTD, no entity": b'<?xml version="1.0"?><!DOCTYPE r [<!ELEMENT r (#PCDATA)>]><r>1</r>',
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_xml_with_a_dtd_or_entities_is_unreadable_in_any_encoding(name):
    """Refused by the parser itself, whatever the encoding, before an entity expands;
    as a legacy answer it is the same unreadable-body failure as any garbage."""
    raw = HOSTILE[name]
    if "UTF-16" in name:
        assert b"<!DOCTYPE" not in raw and b"<!ENTITY" not in raw
    for adapter in ("xml", "soap"):
        with pytest.raises(ValueError, match="DTDs and entities are refused"):
            make_adapter(adapter).decode(raw, "text/xml")
    mapping = load_mapping(ROOT / "mappings" / "soap-wallet.yaml",
                           env={"SOAP_WALLET_URL": "http://127.0.0.1:9", "SOAP_WALLET_PASSWORD": "pw"})
    with pytest.raises(UpstreamError, match="unreadable body") as info:
        LegacyClient(mapping).read("balance", 200, "text/xml", raw)
    assert info.value.code == "upstream_bad_response"


def test_utf16_soap_envelopes_without_a_dtd_still_decode():
    """The parser, not a byte search, decides: a harmless UTF-16 answer reads as UTF-8 would."""
    text = ('<?xml version="1.0" encoding="utf-16"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
            "<soap:Body><R><code>0</code><balance>9.50</balance></R></soap:Body></soap:Envelope>")
    expected = {"Envelope": {"Body": {"R": {"code": "0", "balance": "9.50"}}}}
    assert make_adapter("soap").decode(text.encode("utf-16"), "text/xml") == expected
    assert make_adapter("soap").decode(text.replace("utf-16", "utf-8").encode(), "text/xml") == expected


# -- signers: outbound and inbound ----------------------------------------------------------------

def test_md5_params_signs_and_verifies():
    signer = make_adapter({"adapter": "md5_params", "secret": "s3cret"})
    req = LegacyRequest("bet", "POST", "http://x", fields={"userId": "u1", "amount": Decimal("12.50"), "gameId": "g"})
    signer.prepare(req)
    expected = hashlib.md5(b"amount=12.50&gameId=g&userId=u1s3cret").hexdigest()
    assert req.fields["hash"] == expected == md5_param_hash(req.fields, "s3cret")
    inbound = InboundRequest("POST", "/bet", {}, {}, {k: str(v) for k, v in req.fields.items()}, b"")
    assert signer.verify(inbound)
    inbound.fields["amount"] = "12.51"
    assert not signer.verify(inbound)


@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_hmac_header_signs_and_verifies(encoding):
    signer = make_adapter({"adapter": "hmac_header", "header": "X-Sig", "secret": "k", "encoding": encoding})
    req = LegacyRequest("bet", "POST", "http://x", body=b'{"a":1}')
    signer.sign(req)
    mac = hmac.new(b"k", b'{"a":1}', "sha256")
    assert req.headers["X-Sig"] == (mac.hexdigest() if encoding == "hex" else base64.b64encode(mac.digest()).decode())
    assert signer.verify(InboundRequest("POST", "/", {"x-sig": req.headers["X-Sig"]}, {}, None, b'{"a":1}'))
    assert not signer.verify(InboundRequest("POST", "/", {"X-Sig": req.headers["X-Sig"]}, {}, None, b'{"a":2}'))


def test_rsa_header_signs_and_verifies(hub88_keys):
    private, public = hub88_keys
    signer = make_adapter({"adapter": "rsa_sha256_header", "header": "X-Hub88-Signature", "private_key": private,
                           "public_key": public})
    req = LegacyRequest("bet", "POST", "http://x", body=b'{"amount":100000}')
    signer.sign(req)
    assert hub88_wallet.verify_body(public, req.body, req.headers["X-Hub88-Signature"])  # what the wallet checks
    inbound = InboundRequest("POST", "/", dict(req.headers), {}, None, req.body)
    assert signer.verify(inbound)
    assert not signer.verify(InboundRequest("POST", "/", dict(req.headers), {}, None, b'{"amount":100001}'))
    other = make_adapter({"adapter": "rsa_sha256_header", "header": "X-Hub88-Signature",
                          "public_key": hub88_wallet.generate_keypair()[1]})
    assert not other.verify(inbound)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"adapter": "md5_params"}, "adapter 'md5_params': option 'secret' is required"),
        ({"adapter": "hmac_header", "header": "X", "secret": "k", "algorithm": "md4"},
         "adapter 'hmac_header': option 'algorithm' must be one of sha1, sha256, sha512, md5, not 'md4'"),
        ({"adapter": "rsa_sha256_header", "header": "X", "private_key": "not a key"},
         "adapter 'rsa_sha256_header': cannot load RSA key: key 'not a key' is neither PEM text nor a readable file"),
        ({"adapter": "soap", "namespace": 7}, "adapter 'soap': option 'namespace' must be str, got int"),
        ("jsn", "unknown adapter 'jsn'; installed adapters: .*json.*soap"),
    ],
)
def test_bad_adapter_specs_are_clear(spec, message):
    with pytest.raises(ValueError, match=message):
        make_adapter(spec)


# -- filters and JMESPath functions ---------------------------------------------------------------

def test_builtin_filters():
    t = Templates()

    def render(expr, **ctx):
        return t.compile_value("{{ " + expr + " }}")(ctx)

    assert render("amount | minor(currency)", amount=Decimal("12.5"), currency="EUR") == 1250
    assert render("amount | minor('JPY')", amount=Decimal("5")) == 5
    assert render("units | from_minor('BHD')", units=1234) == Decimal("1.234")
    assert render("amount | scaled(100000)", amount=Decimal("10.00")) == 1000000
    assert render("amount | decimal(2)", amount=Decimal("1.5")) == "1.50"
    assert render("'a' | md5") == hashlib.md5(b"a").hexdigest()
    assert render("'a' | sha256") == hashlib.sha256(b"a").hexdigest()
    assert render("'a' | hmac_sha256('k')") == hmac.new(b"k", b"a", "sha256").hexdigest()
    assert render("'a' | b64encode") == "YQ=="
    assert render("'x' | uuid5") == render("'x' | uuid5") != render("'y' | uuid5")
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert render("when | timestamp_ms", when=when) == 1735787045000
    assert render("when | strftime", when=when) == "2025-01-02T03:04:05Z"
    assert render("when | strftime('%Y%m%d')", when=when) == "20250102"
    assert render("rtp | from_percent", rtp="96.50") == Decimal("0.965")
    assert set(BUILTIN_FILTERS) == {"minor", "from_minor", "scaled", "decimal", "from_percent", "md5", "sha256",
                                    "hmac_sha256", "b64encode", "uuid5", "timestamp_ms", "strftime"}


class Units(Adapter):
    """Test adapter: a filter and JMESPath functions of several arities."""

    description = "test units"

    def filters(self):
        return {"cents": lambda amount: int(amount * 100)}

    def jmespath_functions(self):
        return {"from_cents": lambda units: Decimal(units) / 100,
                "pick": lambda data, key, default=None: data.get(key, default),
                "now_marker": lambda: "now"}


class TokenFlow(Adapter):
    """Test adapter: ``bet`` takes a token from one call and spends it in another."""

    async def run(self, operation, context, call):
        if operation != "bet":
            return None
        if context.get("player_id") == "crash-before":
            raise RuntimeError("adapter bug")
        token = await call("token", context)
        if context.get("player_id") == "crash-after":
            raise RuntimeError("adapter bug")
        return await call("bet", {**context, "legacy_token": token["token"]})


@pytest.fixture(autouse=True)
def _fresh_registry():
    """Each test sees what its own monkeypatches installed, and leaves nothing behind."""
    registry.installed.cache_clear()
    yield
    registry.installed.cache_clear()


def install_fake(monkeypatch, *fakes: EntryPoint) -> None:
    """Install adapters as if a package had registered these entry points too."""
    real = registry._entry_points
    monkeypatch.setattr(registry, "_entry_points", lambda: [*real(), *fakes])
    registry.installed.cache_clear()


@pytest.fixture
def test_adapters(monkeypatch):
    install_fake(monkeypatch, EntryPoint("units", "tests.test_adapters:Units", registry.ENTRY_POINT_GROUP),
                 EntryPoint("token_flow", "tests.test_adapters:TokenFlow", registry.ENTRY_POINT_GROUP))


def test_a_second_package_claiming_a_builtin_key_is_an_error_naming_both(monkeypatch, tmp_path):
    """A third party registering ``json`` again does not silently replace the built-in
    codec (or get replaced by it): naming the key fails, with both targets; other keys work."""
    install_fake(monkeypatch, EntryPoint("json", "evil_pkg:Json", registry.ENTRY_POINT_GROUP))
    with pytest.raises(ValueError) as info:
        make_adapter("json")
    text = str(info.value)
    assert text.startswith("adapter 'json' is registered by more than one package: ")
    assert "adapters.codecs:JsonCodec (from igsp-gateway " in text and "evil_pkg:Json" in text
    assert make_adapter("soap").decode(b"<a>1</a>", "text/xml") == {"a": "1"}
    row = next(r for r in registry.describe() if r[0] == "json")
    assert row[2].startswith("BROKEN: adapter 'json' is registered by more than one package") and "evil_pkg" in row[2]
    path = write_mapping(tmp_path, """
        version: 1
        name: clash
        face: platform
        codec: json
        upstream: {base_url: "http://127.0.0.1:9"}
        operations:
          bet: {path: /bet, response: {balance: balance}}
        """)
    with pytest.raises(ConfigError) as load:
        load_mapping(path)
    assert f"{path}:5: codec: adapter 'json' is registered by more than one package" in str(load.value)


def test_the_same_registration_seen_twice_is_not_a_clash(monkeypatch):
    """One package found twice on sys.path (same target, same distribution) is one adapter."""
    twice = EntryPoint("units", "tests.test_adapters:Units", registry.ENTRY_POINT_GROUP)
    install_fake(monkeypatch, twice, EntryPoint("units", "tests.test_adapters:Units", registry.ENTRY_POINT_GROUP))
    assert registry.installed()[1] == {}
    assert make_adapter("units").filters()["cents"](Decimal("1.25")) == 125


def test_builtins_come_only_from_the_entry_point_group(monkeypatch):
    """No hidden second list: with the group empty, not even ``json`` is found, and the
    message says how to install."""
    monkeypatch.setattr(registry, "_entry_points", lambda: [])
    registry.installed.cache_clear()
    with pytest.raises(ValueError, match=r"no adapters are installed, not even the built-ins; .*pip install -e \."):
        make_adapter("json")


PLATFORM_OPS = """\
  balance: {path: /balance, response: {balance: balance}}
  win: {path: /win, response: {balance: balance}}
  refund: {path: /refund, response: {balance: balance}}
"""


def write_mapping(tmp_path, text: str) -> Path:
    """A platform mapping: ``text`` (indented like the test) plus the operations it does not care about."""
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(text).rstrip("\n") + "\n" + PLATFORM_OPS)
    return path


def test_adapter_filter_and_jmespath_functions(tmp_path, test_adapters):
    path = write_mapping(tmp_path, """
        version: 1
        name: units
        face: platform
        upstream: {base_url: "http://127.0.0.1:9"}
        extensions: [units]
        operations:
          bet:
            path: /bet
            body: {cents: "{{ amount | cents }}"}
            response:
              balance: from_cents(wallet.cents)
              currency: pick(wallet, 'currency', 'EUR')
              marker: now_marker()
        """)
    mapping = load_mapping(path)
    req = LegacyClient(mapping).build("bet", {"amount": Decimal("12.34")})
    assert req.body == b'{"cents":1234}'
    fields = LegacyClient(mapping)._read(mapping.operations["bet"], {"wallet": {"cents": 8766}}, 200)
    assert fields == {"balance": Decimal("87.66"), "currency": "EUR", "marker": "now"}


def test_unknown_jmespath_function_and_filter_fail_at_load(tmp_path, test_adapters):
    path = write_mapping(tmp_path, """
        version: 1
        name: units
        face: platform
        upstream: {base_url: "http://127.0.0.1:9"}
        operations:
          bet:
            path: /bet
            body: {cents: "{{ amount | cents }}"}
            response: {balance: from_cents(cents)}
        """)
    with pytest.raises(ConfigError) as info:
        load_mapping(path)
    text = str(info.value)
    assert f"{path}:9: operations.bet.body.cents: unknown filter 'cents' Hint: filters available here: " in text
    assert "(the gateway's and its adapters'), and Jinja2's: abs, " in text
    assert "No filter named" not in text  # said once, not again in Jinja's words
    assert f"{path}:10: operations.bet.response.balance: unknown JMESPath function from_cents()" in text
    assert "add the adapter that provides it to 'extensions'" in text


# -- roles ----------------------------------------------------------------------------------------

class HalfCodec(Codec):
    """Declared a codec, but cannot read an answer."""

    def encode(self, req):
        req.body = b"x"


class PrepareOnly(Adapter):
    """Written before roles: overriding prepare makes it a signer, nothing more."""

    def prepare(self, req):
        req.params["sig"] = "s"


class Nothing(Adapter):
    """Overrides no hook and declares no role."""


class BuggyCodec(Codec):
    """A codec with bugs (``KeyError``; ``AttributeError`` on a request without a body, as
    the mapping's win has), and a refusal (``ValueError``) of what it cannot express."""

    def encode(self, req):
        if req.fields.get("user") == "refuse":
            raise ValueError("cannot express this user")
        if req.fields.get("user") == "bug":
            return {}["missing"]
        req.body = b"{}"

    def decode(self, raw, content_type):
        return {"balance": "1.00"}


@pytest.fixture
def role_adapters(monkeypatch):
    group = registry.ENTRY_POINT_GROUP
    install_fake(monkeypatch, *(EntryPoint(key, f"tests.test_adapters:{cls}", group) for key, cls in (
        ("half", "HalfCodec"), ("prepare_only", "PrepareOnly"), ("nothing", "Nothing"), ("buggy", "BuggyCodec"))))


def test_roles_of_builtins_and_of_adapters_written_before_roles(role_adapters):
    assert {name: roles_of(registry.adapter_class(name)) for name in ("json", "soap", "md5_params", "hmac_header")} \
        == {"json": {"codec"}, "soap": {"codec"}, "md5_params": {"signer"}, "hmac_header": {"signer"}}
    assert roles_of(Units) == {"extension"} and roles_of(TokenFlow) == {"flow"}
    assert roles_of(PrepareOnly) == {"signer"} and roles_of(Nothing) == frozenset()

    class CodecAndFlow(Codec, Flow):
        pass

    assert roles_of(CodecAndFlow) == {"codec", "flow"}
    with pytest.raises(TypeError, match="unknown role.*decoder"):
        type("Odd", (Adapter,), {"roles": frozenset({"decoder"})})


@pytest.mark.parametrize(("spec", "slot", "message"), [
    ("md5_params", "codec", "adapter 'md5_params' is a signer, not a codec; a signer belongs under 'signer'"),
    ("soap", "extensions", "adapter 'soap' is a codec, not an extension or a flow; a codec belongs under 'codec'"),
    ("prepare_only", "codec", "adapter 'prepare_only' is a signer, not a codec"),
    ("nothing", "extensions", "adapter 'nothing' has no role (it overrides no hook); declare one by subclassing "
                              "Codec, Signer, Flow or Extension"),
    ("half", None, "adapter 'half' is declared a codec but does not implement decode"),
])
def test_an_adapter_is_refused_where_its_role_does_not_fit(role_adapters, spec, slot, message):
    with pytest.raises(ValueError) as info:
        make_adapter(spec, slot)
    assert str(info.value) == message or str(info.value).startswith(message)


def test_a_misplaced_adapter_fails_the_load_with_file_line_and_field(tmp_path, role_adapters):
    path = write_mapping(tmp_path, """
        version: 1
        name: misplaced
        face: platform
        codec: {adapter: md5_params, secret: s}
        signer: half
        upstream: {base_url: "http://127.0.0.1:9"}
        extensions: [units_missing, json]
        operations:
          bet: {path: /bet, response: {balance: balance}}
        """)
    with pytest.raises(ConfigError) as info:
        load_mapping(path)
    problems = [str(p) for p in info.value.problems]
    assert problems[:2] == [f"{path}:5: codec: adapter 'md5_params' is a signer, not a codec; a signer belongs "
                            "under 'signer'",
                            f"{path}:6: signer: adapter 'half' is declared a codec but does not implement decode"]
    assert problems[2].startswith(f"{path}:8: extensions[0]: unknown adapter 'units_missing'")
    assert problems[3] == (f"{path}:8: extensions[1]: adapter 'json' is a codec, not an extension or a flow; a codec "
                           "belongs under 'codec'")


async def test_an_adapter_bug_at_request_time_is_not_a_final_answer(tmp_path, role_adapters):
    """A codec's ``KeyError`` (or the ``NotImplementedError`` of a hook it never had) is
    the adapter's bug: ``upstream_error`` that sent nothing, so the wallet forgets the bet
    (a retry starts afresh) and queues the win — no final 4xx in the ledger. A ValueError
    is the codec refusing this request: still a final ``invalid_request``."""
    from gateway.faces.wallet import Wallet
    from gateway.store import open_store
    from gateway.store.base import QUEUED
    from tests.wallet_support import bet, win

    path = write_mapping(tmp_path, """
        version: 1
        name: buggy
        face: platform
        codec: buggy
        upstream: {base_url: "http://127.0.0.1:9"}
        operations:
          bet: {path: /bet, body: {user: "{{ player_id }}"}, response: {balance: balance}}
        """)
    client = LegacyClient(load_mapping(path))
    with pytest.raises(UpstreamError) as bug:
        await client.step("bet", {"player_id": "bug"})
    assert (bug.value.code, bug.value.status, bug.value.applied) == ("upstream_error", 502, False)
    assert "BuggyCodec.encode failed: KeyError" in bug.value.message
    with pytest.raises(IgspError) as refused:
        await client.step("bet", {"player_id": "refuse"})
    assert not isinstance(refused.value, UpstreamError) and refused.value.code == "invalid_request"
    with pytest.raises(UpstreamError, match="NotImplementedError") as never:
        Adapter({}).encode(LegacyRequest("bet", "POST", "http://x"))
    assert never.value.applied is False

    store = open_store(f"sqlite:///{tmp_path}/ledger.db")
    await store.open()
    try:
        wallet = Wallet("acme", client, store, retention=3600)
        status, body = await wallet.handle(bet("tx-bug", player="bug"), "r-1")
        assert status == 502 and json.loads(body)["error"] == "upstream_error"
        assert await store.tx_get("acme", "tx-bug") is None  # forgotten, not a stored answer
        status, body = await wallet.handle(win("w-bug", player="bug"), "r-2")
        assert status == 502 and json.loads(body)["error"] == "upstream_error"  # not the unreachable upstream's 503
        assert (await store.tx_get("acme", "w-bug")).state == QUEUED
        status, body = await wallet.handle(bet("tx-refused", player="refuse"), "r-3")
        assert status == 400 and (await store.tx_get("acme", "tx-refused")).status == 400
    finally:
        await store.close()


# -- multi-step flows -----------------------------------------------------------------------------

@pytest.fixture
def token_wallet():
    """A legacy wallet that wants a fresh token from /token on every debit."""
    seen = []

    async def token(request):
        seen.append(("token", await request.json()))
        return web.json_response({"token": f"tok-{len(seen)}"})

    async def debit(request):
        body = await request.json()
        seen.append(("debit", body))
        if body["token"] != f"tok-{len(seen) - 1}":
            return web.json_response({"ok": False, "code": "BAD_TOKEN"})
        return web.json_response({"ok": True, "balance": "90.00"})

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_post("/debit", debit)
    server = start_in_thread(app)
    yield server.url, seen
    server.stop()


async def test_run_flow_chains_mapping_operations(tmp_path, test_adapters, token_wallet):
    url, seen = token_wallet
    path = write_mapping(tmp_path, f"""
        version: 1
        name: flow
        face: platform
        upstream: {{base_url: "{url}"}}
        extensions: [token_flow]
        extra_inputs: [legacy_token]   # what the flow adds to the bet's context
        result: {{success: ok, code: code, errors: {{BAD_TOKEN: session_not_found}}}}
        operations:
          token: {{path: /token, body: {{user: "{{{{ player_id }}}}"}}, response: {{token: token}}, result: {{success: token}}}}
          bet:
            path: /debit
            body: {{user: "{{{{ player_id }}}}", token: "{{{{ legacy_token | default('') }}}}"}}
            response: {{balance: balance}}
        """)
    client = LegacyClient(load_mapping(path))
    try:
        reply = await client.call("bet", {"player_id": "p1"})
        assert reply.fields == {"balance": "90.00"}
        assert seen == [("token", {"user": "p1"}), ("debit", {"user": "p1", "token": "tok-1"})]
        # The mapping's own step alone (no flow) is refused by this wallet: the flow mattered.
        assert (await client.step("token", {"player_id": "p1"})).fields == {"token": "tok-3"}
        with pytest.raises(IgspError, match="BAD_TOKEN") as refused:
            await client.step("bet", {"player_id": "p1", "legacy_token": "stale"})
        assert refused.value.code == "session_not_found"
        # An adapter bug: money can only have moved if a step was already sent.
        with pytest.raises(UpstreamError) as before:
            await client.call("bet", {"player_id": "crash-before"})
        assert before.value.applied is False and before.value.code == "upstream_error"
        with pytest.raises(UpstreamError) as after:
            await client.call("bet", {"player_id": "crash-after"})
        assert after.value.applied is None
        # Operations the flow does not take over run as declared.
        assert (await client.call("token", {"player_id": "p2"})).fields == {"token": f"tok-{len(seen)}"}
    finally:
        await client.close()


# -- third-party adapters through the entry-point group -------------------------------------------

THIRD_PARTY_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "igsp-minor-units"
version = "0.3.1"
dependencies = ["igsp-gateway"]

[project.entry-points."igsp_gateway.adapters"]
minor_units = "igsp_minor_units:MinorUnits"
broken_codec = "igsp_minor_units.not_there:Codec"
"""

THIRD_PARTY_MODULE = '''\
"""An adapter package as a third party would publish it."""
from decimal import Decimal

from gateway.adapter_api import Adapter


class MinorUnits(Adapter):
    description = "minor_units/yyyymmdd filters and from_minor() for integer-cent wallets"

    def __init__(self, options):
        super().__init__(options)
        self.exponent = self.option("exponent", 2, int)

    def filters(self):
        return {"minor_units": lambda amount: int(Decimal(amount).scaleb(self.exponent)),
                "yyyymmdd": lambda when: when.strftime("%Y%m%d")}

    def jmespath_functions(self):
        return {"from_minor": lambda units: Decimal(units).scaleb(-self.exponent)}
'''

CENTS_MAPPING = """\
version: 1
name: cents-wallet
face: platform
upstream: {base_url: "${CENTS_URL}"}
extensions:
  - {adapter: minor_units, exponent: 2}
result: {success: "error == `0`", code: error, errors: {"1": insufficient_funds}}
operations:
  balance: {path: /balance, body: {user: "{{ player_id }}"}, response: {balance: from_minor(cash)}}
  bet:
    path: /debit
    body: {user: "{{ player_id }}", cents: "{{ amount | minor_units }}", day: "{{ now | yyyymmdd }}"}
    response: {balance: from_minor(cash), transaction_id: ref}
  win: {path: /credit, body: {cents: "{{ amount | minor_units }}"}, response: {balance: from_minor(cash)}}
  refund: {path: /undo, body: {ref: "{{ bet_transaction_id }}"}, response: {balance: from_minor(cash)}}
"""


def install_like_pip(project: Path, site: Path) -> None:
    """What ``pip install`` leaves for a pure-Python project: its modules and a dist-info
    with METADATA and entry_points.txt (taken from the project's own pyproject)."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    for item in project.iterdir():
        if item.is_dir():
            shutil.copytree(item, site / item.name)
    dist = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    groups = meta.get("entry-points", {})
    (dist / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in eps.items()) + "\n"
        for group, eps in groups.items()))
    (dist / "top_level.txt").write_text("igsp_minor_units\n")


@pytest.fixture
def third_party(tmp_path):
    project = tmp_path / "igsp-minor-units"
    (project / "igsp_minor_units").mkdir(parents=True)
    (project / "pyproject.toml").write_text(THIRD_PARTY_PYPROJECT)
    (project / "igsp_minor_units" / "__init__.py").write_text(THIRD_PARTY_MODULE)
    site = tmp_path / "site"
    site.mkdir()
    install_like_pip(project, site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)])}
    env.pop("CENTS_URL", None)

    def cli(*args, extra_env=None):
        return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                              env={**env, **(extra_env or {})}, cwd=tmp_path, timeout=60)

    return cli


def test_third_party_adapter_is_discovered_and_used(third_party, tmp_path):
    listed = third_party("validate", "--list-adapters")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert "integer-cent wallets" in lines["minor_units"] and "[igsp_minor_units:MinorUnits]" in lines["minor_units"]
    assert "BROKEN" in lines["broken_codec"] and "rsa_sha256_header" in lines

    mapping = tmp_path / "cents.yaml"
    mapping.write_text(CENTS_MAPPING)
    ok = third_party("validate", str(mapping), extra_env={"CENTS_URL": "http://127.0.0.1:9"})
    assert ok.returncode == 0 and ok.stdout.strip() == f"{mapping}: ok", ok.stderr

    hook = {"player_id": "p1", "amount": 12.34, "currency": "EUR", "game_id": "g", "transaction_id": "t1",
            "session_id": "s1", "type": "bet"}
    shown = third_party("try", str(mapping), "bet", "--input", json.dumps(hook), "--json",
                        "--response", '{"error": 0, "cash": 8766, "ref": "L-1"}')
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    sent = json.loads(report["request"]["body"])
    assert sent["cents"] == 1234 and len(sent["day"]) == 8 and sent["day"].isdigit()
    assert report["answer"] == {"status": 200, "body": {"balance": 87.66, "transaction_id": "L-1"},
                                "raw": '{"balance":87.66,"transaction_id":"L-1"}'}


def test_broken_and_missing_adapters_fail_at_load(third_party, tmp_path):
    mapping = tmp_path / "broken.yaml"
    mapping.write_text(CENTS_MAPPING.replace("upstream:", "codec: broken_codec\nsigner: {adapter: md5_sig}\nupstream:"))
    result = third_party("validate", str(mapping), extra_env={"CENTS_URL": "http://127.0.0.1:9"})
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    broken = next(line for line in errors if "broken_codec" in line)
    assert broken.startswith(f"{mapping}:4: codec: adapter 'broken_codec' (igsp_minor_units.not_there:Codec) "
                             "failed to load: ModuleNotFoundError")
    assert "installed adapters: broken_codec, form, hmac_header, json, md5_params, minor_units" in broken
    missing = next(line for line in errors if "md5_sig" in line)
    assert missing.startswith(f"{mapping}:5: signer: unknown adapter 'md5_sig'; installed adapters: ")
    assert "minor_units" in missing and "2 problem(s) found" in result.stderr


# -- batched signing --------------------------------------------------------------------------
async def test_costly_signatures_of_one_turn_are_made_back_to_back_and_each_fits_its_request(hub88_keys):
    """Twenty concurrent balance calls through the RSA-signing Hub88 mapping: the simulator
    checks every signature (a wrong or swapped one is RS_ERROR_INVALID_SIGNATURE), all twenty
    are signed before the first leaves, and a signature that fails fails its own call only."""
    import asyncio

    state = hub88_wallet.State()
    server = start_in_thread(hub88_wallet.make_app(state, public_key_pem=hub88_keys[1]))
    mapping = load_mapping(ROOT / "mappings" / "hub88-wallet.yaml",
                           env={"HUB88_WALLET_URL": server.url, "HUB88_PRIVATE_KEY": hub88_keys[0]})
    assert mapping.signer.sign_in_batches
    events = []
    real_sign = mapping.signer.sign

    def sign(req):
        if b'"player-bad"' in req.body:
            raise ValueError("key unavailable")
        events.append("sign")
        real_sign(req)

    mapping.signer.sign = sign
    client = LegacyClient(mapping)
    real_send = client.send

    async def send(req, timeout=None):
        events.append("send")
        return await real_send(req, timeout)

    client.send = send
    try:
        for i in range(20):
            state.upsert_player({"player_id": f"player-{i}", "balance": Decimal(i + 1)})
        players = [f"player-{i}" for i in range(20)] + ["player-bad"]
        results = await asyncio.gather(*(client.step("balance", {"player_id": p, "currency": "EUR",
                                                                 "request_id": f"r-{p}", "partner": "acme"})
                                         for p in players), return_exceptions=True)
        assert events[:20] == ["sign"] * 20 and events[20:] == ["send"] * 20
        failed = results[-1]
        assert isinstance(failed, IgspError) and failed.code == "invalid_request"
        assert [Decimal(r.fields["balance"]) for r in results[:-1]] == [Decimal(100000 * (i + 1)) for i in range(20)]
        assert state.calls["balance"] == 20
    finally:
        await client.close()
        server.stop()
