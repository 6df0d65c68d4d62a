"""Who is really calling: the client address behind trusted proxies, and partner allowlists.

iGaming partners whitelist each other's addresses. A partner with ``allowed_ips`` is
refused (403 ``forbidden``) unless its request comes from one of those networks; the check
runs after its API key names it and before its signature is verified (gateway/auth.py).

The client address is the TCP peer's, unless that peer is one of ``server.trusted_proxies``
(an ingress controller, a load balancer): then the gateway reads the proxy's forwarding
header (``server.forwarded_header``: ``X-Forwarded-For``, or RFC 7239 ``Forwarded``) from
the right, skipping every hop that is itself a trusted proxy, and the client is the
rightmost hop that is not. Whatever a client wrote into the header itself sits to the left
of what its first trusted proxy appended, so it is never reached; and the header is not
read at all when the peer is not a trusted proxy. Only the configured header is read: a
proxy that maintains ``X-Forwarded-For`` passes a client's own ``Forwarded`` header
through untouched, and reading that one would let the client choose its address.

A hop that cannot be read (``unknown``, an obfuscated ``_name``, garbage) stops the walk
with no address, and a partner with an allowlist is then refused: failing closed.
IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``, what a dual-stack socket reports for an
IPv4 client) are compared as the IPv4 addresses they are.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED_HEADERS = ("X-Forwarded-For", "Forwarded")

# A quoted string (with backslash escapes), a separator, or a run of anything else.
_FORWARDED_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[,;]|[^",;]+')


def parse_network(text: str) -> Network:
    """``10.0.0.0/8``, ``2001:db8::/32``, or one address (``203.0.113.7`` is ``/32``).

    Raises ValueError with a message fit for a config problem; a network written with
    host bits set (``10.0.0.1/8``) is refused rather than silently widened.
    """
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            wide = ipaddress.ip_network(text.strip(), strict=False)
            raise ValueError(f"{text!r} has host bits set (the network is {wide})") from None
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address or CIDR network") from None


def parse_address(text: str | None) -> Address | None:
    """One address as a socket or a forwarding hop gives it, or None when it is not one.

    Accepts ``192.0.2.1``, ``192.0.2.1:4711``, ``2001:db8::1``, ``[2001:db8::1]`` and
    ``[2001:db8::1]:4711``; an IPv4-mapped IPv6 address becomes its IPv4 address.
    """
    if not text:
        return None
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and not text[end + 1:].startswith(":")):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port; an IPv6 address has at least two colons
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def allowed(address: Address | None, networks: Iterable[Network]) -> bool:
    """Whether ``address`` lies in one of ``networks`` (no address: never)."""
    return address is not None and any(address in network for network in networks)


def forwarded_for(value: str) -> list[str | None]:
    """The ``for=`` node of each element of an RFC 7239 ``Forwarded`` value, left to right.

    An element without ``for=`` gives None (an unreadable hop). Commas and semicolons
    inside quoted strings do not separate anything.
    """
    hops: list[str | None] = []
    pair: list[str] = []
    found: str | None = None
    element_started = False

    def end_pair() -> None:
        nonlocal found
        name, sep, node = "".join(pair).partition("=")
        if sep and name.strip().lower() == "for":
            node = node.strip()
            if len(node) >= 2 and node[0] == node[-1] == '"':
                node = re.sub(r"\\(.)", r"\1", node[1:-1])
            found = node
        pair.clear()

    for piece in _FORWARDED_TOKEN.findall(value):
        if piece == ";":
            end_pair()
        elif piece == ",":
            end_pair()
            if element_started or found is not None:
                hops.append(found)
            found, element_started = None, False
        else:
            pair.append(piece)
            element_started = element_started or bool(piece.strip())
    end_pair()
    if element_started or found is not None:
        hops.append(found)
    return hops


class ClientAddress:
    """Resolves the client address of a request: ``resolver(peer, headers)``."""

    def __init__(self, trusted_proxies: Iterable[Network] = (), header: str = "X-Forwarded-For"):
        if header not in FORWARDED_HEADERS:
            raise ValueError(f"forwarded header must be one of {FORWARDED_HEADERS}, not {header!r}")
        self.trusted = tuple(trusted_proxies)
        self.header = header

    def _hops(self, headers) -> list[str | None]:
        # Several header lines are one list, in order (RFC 9110 section 5.3).
        getall = getattr(headers, "getall", None)
        lines = getall(self.header, ()) if getall is not None else [v for v in [headers.get(self.header)] if v]
        value = ",".join(lines)
        if self.header == "Forwarded":
            return forwarded_for(value)
        return [hop for hop in (part.strip() for part in value.split(",")) if hop]

    def __call__(self, peer: str | None, headers) -> Address | None:
        address = parse_address(peer)
        if address is None or not allowed(address, self.trusted):
            return address  # a direct client, whatever headers it sent
        for hop in reversed(self._hops(headers)):
            address = parse_address(hop)
            if address is None or not allowed(address, self.trusted):
                return address  # the rightmost hop no trusted proxy stands for (None: unreadable)
        return address  # every hop is a trusted proxy (or there is no header): the leftmost one
