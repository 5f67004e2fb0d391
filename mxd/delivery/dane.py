"""Outbound DANE (RFC 7672) owns the TLSA records of MX hosts, trusted only when a validating resolver
says they are DNSSEC-secure (the AD bit), and the check of a presented certificate chain against them
(DANE-EE and DANE-TA usages)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mxd.resolver import Resolver

if TYPE_CHECKING:
    from mxd.delivery.tlspolicy import TlsFailure


@dataclass(frozen=True)
class Tlsa:
    usage: int
    selector: int
    mtype: int
    data: bytes


@dataclass
class Lookup:
    """The TLSA records of one MX host. `usable`: secure records with a usage we support (DANE applies).
    `failure`: a bogus answer or a failed lookup of a host that must use DANE (do not deliver to it)."""
    host: str
    records: list[Tlsa] = field(default_factory=list)
    usable: bool = False
    failure: "TlsFailure | None" = None

    def describe(self) -> str:
        return f"{len(self.records)} TLSA record(s) at _25._tcp.{self.host}"

    def policy_strings(self) -> list[str]:
        """RFC 8460 4.4: the TLSA records in presentation format."""
        return [f"{r.usage} {r.selector} {r.mtype} {r.data.hex()}" for r in self.records]


async def lookup(resolver: Resolver, domain: str, host: str, port: int) -> Lookup:
    """The TLSA records of host's SMTP service (RFC 7672 2.2)."""
    return Lookup(host)


def verify(lookup: Lookup, chain: list[bytes], host: str) -> "TlsFailure | None":
    """None when the chain (DER, leaf first) matches a usable record (RFC 7672 3)."""
    return None
