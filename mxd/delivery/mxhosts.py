"""Routing owns the step from a recipient domain to the hosts and addresses to try, in order (RFC 5321 5.1, RFC 7505).

Loopback and private addresses are returned like any other: refusing them is a
policy decision for the caller (the scheduler's `public_targets`, unless
outbound_allow_private; the test suite delivers to 127.0.0.x). Removing
mxd's own host from the list (RFC 5321 5.1, last paragraphs) is also the caller's.
"""
from __future__ import annotations

import asyncio
import ipaddress
import random
from dataclasses import dataclass
from itertools import groupby

from mxd.address import AddressError, normalize_domain
from mxd.resolver import DNSError, Resolver
from mxd.smtpclient import DeliveryError


@dataclass
class Target:
    host: str                # the MX host name (or the domain itself for an implicit MX)
    addresses: list[str]     # A records first, then AAAA
    preference: int


class NoRoute(DeliveryError):
    """No host to deliver to: permanent when the domain or its MX hosts do not exist, temporary when DNS failed."""


class NullMX(NoRoute):
    """The domain publishes a null MX (RFC 7505): it accepts no mail, a permanent failure."""


def _no_route(permanent: bool, enhanced: str, text: str) -> NoRoute:
    return NoRoute(permanent, None, enhanced, text, None, "dns")


def _ip(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _literal(domain: str) -> str | None:
    """The address of an address literal "[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321 4.1.3)."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        addr = _ip(inner[5:])
        return addr if addr and ":" in addr else None
    addr = _ip(inner)
    return addr if addr and ":" not in addr else None


async def _addresses(host: str, resolver: Resolver) -> tuple[list[str], bool]:
    """(A then AAAA addresses of host, whether a lookup failed temporarily)."""
    ip = _ip(host)
    if ip is not None:
        # RFC 5321 5.1 wants a name here; an MX naming an address is used as that address
        return [ip], False
    found: list[str] = []
    temporary = False
    for result in await asyncio.gather(resolver.aa(host), resolver.aaaaa(host), return_exceptions=True):
        if isinstance(result, DNSError):
            temporary = True
        elif isinstance(result, BaseException):
            raise result
        else:
            found.extend(result)
    return list(dict.fromkeys(found)), temporary


async def resolve_targets(domain: str, resolver: Resolver, *, rng: random.Random | None = None) -> list[Target]:
    """The hosts to try for a domain, best first; raises NullMX or NoRoute when there is none.

    MX hosts come in preference order, equal preferences shuffled (RFC 5321 5.1);
    an MX host without addresses is skipped; a CNAME is followed by the resolver.
    No MX at all means the implicit MX: the domain's own A/AAAA (RFC 5321 5.1).
    """
    literal = _literal(domain.strip())
    if literal is not None:
        return [Target(domain.strip(), [literal], 0)]
    try:
        name = normalize_domain(domain)
    except AddressError as exc:
        raise _no_route(True, "5.1.2", f"{domain!r}: {exc}") from None
    try:
        records = await resolver.amx(name)
    except DNSError as exc:
        raise _no_route(False, "4.4.3", f"MX lookup for {name} failed: {exc}") from None

    hosts = [(pref, host) for pref, host in records if host not in (".", "")]
    if records and not hosts:
        # RFC 7505 3, 4.1: a lone "." MX says the domain accepts no mail; 556 5.1.10
        raise NullMX(True, 556, "5.1.10", f"{name} accepts no mail (null MX, RFC 7505)", None, "dns")

    if not hosts:
        addresses, temporary = await _addresses(name, resolver)       # RFC 5321 5.1: the implicit MX
        if addresses:
            return [Target(name, addresses, 0)]
        if temporary:
            raise _no_route(False, "4.4.3", f"address lookup for {name} failed")
        raise _no_route(True, "5.1.2", f"{name} does not exist or has no MX, A or AAAA records")

    shuffle = (rng or random).shuffle
    ordered: list[tuple[int, str]] = []
    seen: set[str] = set()
    for pref, group in groupby(sorted(hosts), key=lambda r: r[0]):
        names = [host for _, host in group if host not in seen]      # a host listed twice keeps its best preference
        seen.update(names)
        shuffle(names)                                                # RFC 5321 5.1: spread load over equal preferences
        ordered.extend((pref, host) for host in names)

    looked_up = await asyncio.gather(*(_addresses(host, resolver) for _, host in ordered))
    targets = [Target(host, addresses, pref) for (pref, host), (addresses, _) in zip(ordered, looked_up) if addresses]
    if targets:
        return targets
    if any(temporary for _, temporary in looked_up):
        raise _no_route(False, "4.4.3", f"address lookups for the MX hosts of {name} failed")
    raise _no_route(True, "5.4.4", f"no MX host of {name} has an address")
