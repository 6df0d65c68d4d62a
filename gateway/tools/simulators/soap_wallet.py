"""An older platform wallet speaking SOAP 1.1 (legacy-apis.md, section C).

``POST /wallet`` with ``Content-Type: text/xml`` and a ``SOAPAction`` header naming one of
``GetBalance``, ``Withdraw``, ``Deposit``, ``Rollback`` (quoted or not, bare or as a URI
ending in the name). The operation element in the envelope body (any namespace, usually
``urn:legacy-wallet``) holds ``sessionToken``, ``playerId``, ``currency``, ``amount``
(decimal string), ``transactionId``, ``roundId``, ``gameCode``, ``password`` and any
extra player-controlled strings (``nickname``…), all kept in ``state.last_request``.

The answer is ``<XResponse xmlns="urn:legacy-wallet"><Result><code>…</code>
<balance>97.50</balance><externalTxId>…</externalTxId></Result></XResponse>`` (note the
default namespace: clients must match by namespace, not by prefix), plus ``<message>``
on a non-zero code and ``<nickname>`` in GetBalance when the player has one.

Codes (HTTP 200): 0 OK; 1 insufficient funds; 2 invalid session (unknown player, empty
token, a token other than the player's pinned ``token``, or a disabled player);
3 duplicate transaction, answered with the ORIGINAL balance and externalTxId (this
wallet is idempotent by saying so); 4 unknown transaction (rollback); 99 internal error,
which this wallet also uses for a currency mismatch (a typical catch-all).

Technical failures are SOAP Faults with HTTP 500: malformed XML, a DTD (refused, never
expanded), a missing/unknown SOAPAction or one that differs from the body, a missing
element or a bad amount (``soap:Client``), and a wrong shared ``password`` when the
``password`` option is set (``soap:Client`` "Authentication failed": a configuration
error, not a business answer).

``Rollback`` names the transaction to undo in its own ``<transactionId>`` (this wallet has
no separate id for the rollback); rolling back twice answers code 3 with the balance
after the first rollback.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET  # noqa: S405 - ParseError only; parsing goes through defusedxml
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from xml.sax.saxutils import escape

import defusedxml
import defusedxml.ElementTree as SafeET
from aiohttp import web

from gateway.tools.simulators._common import BaseState, fmt, new_app, run_main, to_decimal

__all__ = ["SOAP_NS", "WALLET_NS", "State", "make_app", "soap_action"]

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
WALLET_NS = "urn:legacy-wallet"
OPERATIONS = ("GetBalance", "Withdraw", "Deposit", "Rollback")
#: Faults may name an operation or its generic role.
ALIASES = {"getbalance": "balance", "withdraw": "bet", "deposit": "win", "rollback": "rollback"}


class SoapFault(Exception):
    def __init__(self, message: str, code: str = "soap:Client") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class State(BaseState):
    #: transactionId -> {kind, player, amount (signed), balance, externalTxId, rollback}
    transactions: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: {"operation", "fields"} of the last well-formed request, strings exactly as parsed.
    last_request: dict[str, Any] = field(default_factory=dict)
    next_tx: int = 1


def soap_action(header: str) -> str:
    """``"urn:legacy-wallet/Withdraw"`` or ``Withdraw`` -> ``Withdraw``."""
    value = header.strip().strip('"').strip()
    for sep in ("/", "#", ":"):
        value = value.rsplit(sep, 1)[-1]
    return value


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_envelope(raw: bytes, operation: str) -> dict[str, str]:
    """The operation's child elements as ``{local name: text}``; raises SoapFault."""
    try:
        # In the parser, not by a byte search, which a UTF-16 document passes.
        root = SafeET.fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException:
        raise SoapFault("DTDs are not allowed") from None
    except ET.ParseError as exc:
        raise SoapFault(f"malformed XML: {exc}") from None
    body = root.find(f"{{{SOAP_NS}}}Body") if root.tag == f"{{{SOAP_NS}}}Envelope" else None
    if body is None or len(body) == 0:
        raise SoapFault("not a SOAP 1.1 envelope with a body")
    element = body[0]
    if operation not in OPERATIONS:
        raise SoapFault(f"unknown SOAPAction {operation!r}")
    if _local(element.tag) != operation:
        raise SoapFault(f"SOAPAction {operation} does not match body element {_local(element.tag)}")
    return {_local(child.tag): child.text or "" for child in element}


def envelope(operation: str, result: dict[str, Any]) -> str:
    items = "".join(f"<{k}>{escape(fmt(v) if isinstance(v, Decimal) else str(v))}</{k}>" for k, v in result.items())
    return (
        f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP_NS}"><soap:Body>'
        f'<{operation}Response xmlns="{WALLET_NS}"><Result>{items}</Result></{operation}Response>'
        "</soap:Body></soap:Envelope>"
    )


def fault_envelope(code: str, message: str) -> str:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP_NS}"><soap:Body>'
        f"<soap:Fault><faultcode>{code}</faultcode><faultstring>{escape(message)}</faultstring></soap:Fault>"
        "</soap:Body></soap:Envelope>"
    )


def make_app(state: State | None = None, *, password: str | None = None) -> web.Application:
    state = state if state is not None else State()

    async def endpoint_of(request: web.Request) -> tuple[str, ...]:
        name = soap_action(request.headers.get("SOAPAction", "")).lower() or "unknown"
        return (name, ALIASES.get(name, name))

    app = new_app(state, endpoint_of, content_type="text/xml")

    def need(fields: dict[str, str], *names: str) -> None:
        missing = [n for n in names if not fields.get(n)]
        if missing:
            raise SoapFault(f"missing element(s): {', '.join(missing)}")

    def amount_of(fields: dict[str, str]) -> Decimal:
        try:
            amount = to_decimal(fields["amount"])
        except ValueError:
            raise SoapFault(f"bad amount {fields['amount']!r}") from None
        if amount < 0:
            raise SoapFault("amount must not be negative")
        return amount

    def result(code: int, player_id: str | None = None, message: str = "", **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"code": code}
        if player_id is not None:
            out["balance"] = state.players[player_id]["balance"]
        out.update(extra)
        if message:
            out["message"] = message
        return out

    def transfer(kind: str, fields: dict[str, str], player_id: str) -> dict[str, Any]:
        need(fields, "amount", "transactionId")
        amount, txid = amount_of(fields), fields["transactionId"]
        prior = state.transactions.get(txid)
        if prior is not None:
            return {
                "code": 3,
                "balance": prior["balance"],
                "externalTxId": prior["externalTxId"],
                "message": "duplicate transaction",
            }
        if kind == "withdraw":
            if state.players[player_id]["balance"] < amount:
                return result(1, player_id, "insufficient funds")
            amount = -amount
        balance = state.move(kind, txid, player_id, amount)
        external = f"ext-{state.next_tx}"
        state.next_tx += 1
        state.transactions[txid] = {
            "kind": kind,
            "player": player_id,
            "amount": amount,
            "balance": balance,
            "externalTxId": external,
            "rollback": None,
        }
        return {"code": 0, "balance": balance, "externalTxId": external}

    def rollback(fields: dict[str, str], player_id: str) -> dict[str, Any]:
        need(fields, "transactionId")
        target = state.transactions.get(fields["transactionId"])
        if target is None or target["player"] != player_id:
            return result(4, player_id, "unknown transaction")
        if target["rollback"] is not None:
            return dict(target["rollback"], code=3, message="already rolled back")
        if state.players[player_id]["balance"] < target["amount"]:  # undoing a deposit
            return result(1, player_id, "insufficient funds")
        balance = state.move("rollback", fields["transactionId"], player_id, -target["amount"])
        external = f"ext-{state.next_tx}"
        state.next_tx += 1
        target["rollback"] = {"balance": balance, "externalTxId": external}
        return {"code": 0, "balance": balance, "externalTxId": external}

    def operate(operation: str, fields: dict[str, str]) -> dict[str, Any]:
        if password is not None and fields.get("password") != password:
            raise SoapFault("Authentication failed")
        need(fields, "playerId")
        player_id = fields["playerId"]
        player = state.players.get(player_id)
        token = fields.get("sessionToken", "")
        if player is None or not token or player.get("token") not in (None, token) or player["disabled"]:
            return result(2, message="invalid session")
        if fields.get("currency") and fields["currency"] != player["currency"]:
            return result(99, message="internal error: currency mismatch")
        if operation == "GetBalance":
            extra = {"nickname": player["nickname"]} if player.get("nickname") else {}
            return result(0, player_id, **extra)
        if operation == "Rollback":
            return rollback(fields, player_id)
        return transfer(operation.lower(), fields, player_id)

    async def wallet(request: web.Request) -> web.Response:
        operation = soap_action(request.headers.get("SOAPAction", ""))
        try:
            fields = parse_envelope(await request.read(), operation)
            state.last_request = {"operation": operation, "fields": fields}
            text = envelope(operation, operate(operation, fields))
        except SoapFault as exc:
            return web.Response(status=500, text=fault_envelope(exc.code, str(exc)), content_type="text/xml")
        except Exception as exc:  # noqa: BLE001 - any technical failure is a soap:Server fault, as SOAP wants
            return web.Response(status=500, text=fault_envelope("soap:Server", repr(exc)), content_type="text/xml")
        return web.Response(text=text, content_type="text/xml")

    app.router.add_post("/wallet", wallet)
    return app


def main(argv: list[str] | None = None) -> None:
    def options(parser: Any) -> None:
        parser.add_argument("--password", help="shared <password> every request must carry")

    run_main("SOAP 1.1 legacy wallet simulator", lambda args: make_app(State(), password=args.password), argv, options)


if __name__ == "__main__":
    main()
