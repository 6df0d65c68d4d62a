"""XML and SOAP 1.1 codecs.

The request tree's single top key is the element to send; nested dicts become child
elements and every text is escaped by ElementTree, so player-controlled strings can
never break the document. Responses are read into plain dicts keyed by local names
(namespaces dropped), ready for JMESPath: ``Envelope.Body.WithdrawResponse.Result.code``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET  # noqa: S405 - only to build documents; every parse goes through defusedxml
from typing import Any

import defusedxml
import defusedxml.ElementTree as SafeET

from adapters.codecs import form_value
from gateway.adapter_api import Codec, LegacyRequest

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
#: Characters XML 1.0 cannot carry at all, not even as character references.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: Any) -> str:
    text = form_value(value)
    if _NOT_XML.search(text):
        # Refuse (the caller gets 400) rather than send a document the legacy side cannot parse.
        raise ValueError("a value holds a character XML 1.0 cannot carry (a control character or lone surrogate)")
    return text


def _serialise(element: ET.Element) -> bytes:
    # ElementTree writes a carriage return in text as is, and every XML parser turns it
    # into a newline: escape it so the legacy side reads exactly what was sent.
    return ET.tostring(element, encoding="utf-8", xml_declaration=True).replace(b"\r", b"&#13;")


def _build(parent: ET.Element, tag: str, value: Any) -> None:
    if isinstance(value, list):
        for item in value:
            _build(parent, tag, item)
        return
    child = ET.SubElement(parent, tag)
    if isinstance(value, dict):
        for key, sub in value.items():
            if sub is not None:
                _build(child, str(key), sub)
    elif value is not None:
        child.text = _text(value)


def element_to_data(element: ET.Element) -> Any:
    """``<a><b>1</b><b>2</b><c/></a>`` -> ``{"b": ["1", "2"], "c": None}`` (local names)."""
    children = list(element)
    if not children:
        return element.text.strip() if element.text and element.text.strip() else (element.text or None)
    out: dict[str, Any] = {}
    for child in children:
        name = child.tag.rsplit("}", 1)[-1]
        value = element_to_data(child)
        if name in out:
            out[name] = out[name] if isinstance(out[name], list) else [out[name]]
            out[name].append(value)
        else:
            out[name] = value
    return out


def parse_xml(raw: bytes) -> dict:
    """Parse a document from outside; a DTD, an entity or an external reference is refused.

    The check runs inside the parser (defusedxml), on the document as the parser decodes
    it: a byte search for ``<!DOCTYPE`` missed the same text in UTF-16, whose entities
    then expanded. Every refusal and every malformed document is one ValueError, which
    callers already answer as an unreadable body.
    """
    try:
        root = SafeET.fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as exc:
        raise ValueError(f"DTDs and entities are refused: {type(exc).__name__}") from None
    except ET.ParseError as exc:
        raise ValueError(f"malformed XML: {exc}") from None
    return {root.tag.rsplit("}", 1)[-1]: element_to_data(root)}


class XmlCodec(Codec):
    description = "plain XML over HTTP (text/xml)"

    def __init__(self, options):
        super().__init__(options)
        self.namespace = self.option("namespace", None, str)

    def _root(self, req: LegacyRequest) -> ET.Element:
        if not isinstance(req.fields, dict) or len(req.fields) != 1:
            raise ValueError("an XML body must have exactly one top-level element")
        (tag, value), = req.fields.items()
        holder = ET.Element("holder")
        _build(holder, str(tag), value)
        element = holder[0]
        if self.namespace:
            element.set("xmlns", self.namespace)
        return element

    def encode(self, req: LegacyRequest) -> None:
        req.body = _serialise(self._root(req))
        req.headers.setdefault("Content-Type", "text/xml; charset=utf-8")

    def decode(self, raw: bytes, content_type: str) -> Any:
        return parse_xml(raw)


class SoapCodec(XmlCodec):
    """SOAP 1.1: the body element wrapped in an Envelope; ``SOAPAction`` from the element name.

    Options: ``namespace`` (of the operation element), ``action_prefix`` (SOAPAction is
    ``prefix + element``, default the namespace + ``#``; quote per SOAP 1.1).
    """

    description = "SOAP 1.1 envelopes over text/xml with a SOAPAction header"

    def encode(self, req: LegacyRequest) -> None:
        element = self._root(req)
        envelope = ET.Element(f"{{{SOAP_ENV}}}Envelope")
        body = ET.SubElement(envelope, f"{{{SOAP_ENV}}}Body")
        body.append(element)
        ET.register_namespace("soap", SOAP_ENV)
        req.body = _serialise(envelope)
        req.headers.setdefault("Content-Type", "text/xml; charset=utf-8")
        prefix = self.option("action_prefix", f"{self.namespace}#" if self.namespace else "", str)
        req.headers.setdefault("SOAPAction", f'"{prefix}{element.tag}"')
