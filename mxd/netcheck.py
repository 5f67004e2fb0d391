"""Whether an IP address is public: the one rule for every connection mxd makes to an address that
someone outside chose (webhook URLs, recipients' MX hosts).

An IPv6 address that carries an IPv4 address (IPv4-mapped and -compatible, 6to4, Teredo, NAT64,
ISATAP) is judged by the IPv4 address too, since that is where its packets end up: 2002:7f00:1::
reaches 127.0.0.1 on a host with a 6to4 route.
"""
from __future__ import annotations

import ipaddress

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

_SIXTOFOUR = ipaddress.ip_network("2002::/16")             # RFC 3056
_TEREDO = ipaddress.ip_network("2001::/32")                # RFC 4380
_NAT64 = ipaddress.ip_network("64:ff9b::/96")              # RFC 6052 2.1, the well-known prefix
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")      # RFC 8215: local use, never global
_COMPATIBLE = ipaddress.ip_network("::/96")                # RFC 4291 2.5.5.1 (deprecated)
_ISATAP = (0x00005EFE, 0x02005EFE)                         # RFC 5214 6.1: interface id 0[02]00:5efe:<IPv4>

_KINDS = (("is_loopback", "loopback"), ("is_link_local", "link-local"), ("is_multicast", "multicast"),
          ("is_unspecified", "unspecified"), ("is_reserved", "reserved"), ("is_private", "private"))


def embedded_ipv4(ip: IP) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, each with the name of its form; [] for none."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    value = int(ip)
    low = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if ip.ipv4_mapped is not None:
        return [("IPv4-mapped", ip.ipv4_mapped)]
    if ip in _SIXTOFOUR:
        return [("6to4", ip.sixtofour)]                     # type: ignore[list-item]
    if ip in _TEREDO:
        server, client = ip.teredo                          # type: ignore[misc]
        return [("Teredo server", server), ("Teredo client", client)]
    if ip in _NAT64:
        return [("NAT64", low)]
    if ip in _COMPATIBLE and value > 1:
        return [("IPv4-compatible", low)]
    if (value >> 32) & 0xFFFFFFFF in _ISATAP:
        return [("ISATAP", low)]
    return []


def _kind(ip: IP) -> str | None:
    for attr, kind in _KINDS:
        if getattr(ip, attr):
            return kind
    return None if ip.is_global else "non-public"


def refusal(ip: IP | str) -> str | None:
    """Why an address is not public ("loopback", "6to4 of 10.0.0.1, private", ...), or None when it is."""
    if isinstance(ip, str):
        try:
            ip = ipaddress.ip_address(ip)
        except ValueError:
            return "not an IP address"
    for form, inner in embedded_ipv4(ip):
        kind = _kind(inner)
        if kind:
            return f"{form} of {inner}, {kind}"
    if ip in _NAT64_LOCAL:
        return "local-use NAT64"
    if ip in _NAT64 or (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None):
        return None                                         # only its IPv4 address counts, and it is public
    return _kind(ip)


def is_public(ip: IP | str) -> bool:
    return refusal(ip) is None
