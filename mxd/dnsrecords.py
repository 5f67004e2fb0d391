"""The DNS records an operator publishes for a domain mxd serves, as data and as BIND zone-file lines.

Policy choices:

- SPF ends in ``~all`` (RFC 7208 8.5 softfail), not ``-all``: enforcement is
  DMARC's job. With ``-all`` some receivers reject at SMTP on SPF alone, before
  the aligned DKIM signature mxd adds is considered, which loses forwarded
  mail (RFC 7489 10.1). Given addresses come first as ip4:/ip6: (no DNS lookup
  needed, RFC 7208 4.6.4 limits lookups to 10); ``mx`` stays as the fallback for
  an address or family that was not given, since mxd sends from its MX host.
- DMARC ``p=quarantine``: every message mxd sends carries a DKIM signature
  aligned with the From domain, so its own mail passes; quarantine rather than
  reject so mail broken by a forwarder or list is filed as spam, not lost.
  Relaxed alignment (RFC 7489 6.3 defaults, written out). Aggregate reports go
  to postmaster@<domain>, which mxd always serves (RFC 5321 4.5.1); being in
  the same domain it needs no RFC 7489 7.1 authorisation record.
"""
from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from mxd.address import normalize_domain

if TYPE_CHECKING:                   # L0: only the type, not the key-handling module
    from mxd.keys import DkimKey

DEFAULT_TTL = 3600
MX_PREFERENCE = 10
_TXT_CHUNK = 255        # RFC 1035 3.3: a <character-string> holds at most 255 octets


@dataclass(frozen=True)
class DnsRecord:
    name: str           # FQDN, no trailing dot
    type: str           # "MX", "TXT", "A", "AAAA", "PTR"
    value: str          # presentation form, names without trailing dot; TXT unquoted
    purpose: str        # short text for humans

    def zone_line(self, ttl: int = DEFAULT_TTL) -> str:
        """One BIND zone-file line, e.g. ``example.com. 3600 IN MX 10 mail.example.com.``."""
        return f"{self.name}. {ttl} IN {self.type} {self._rdata()}"

    def to_json(self) -> dict:
        return asdict(self)

    def _rdata(self) -> str:
        if self.type == "TXT":
            return " ".join(_quote(chunk) for chunk in _chunks(self.value.encode("ascii")))
        if self.type == "MX":
            preference, host = self.value.split(None, 1)
            return f"{preference} {host}."
        if self.type in ("CNAME", "PTR", "NS"):
            return f"{self.value}."
        return self.value


def required_records(
    domain: str,
    hostname: str,
    dkim_keys: list[DkimKey],
    ipv4: str | None = None,
    ipv6: str | None = None,
) -> list[DnsRecord]:
    """MX, A/AAAA of the host (when addresses are given), SPF, one DKIM TXT per active key, DMARC."""
    domain = normalize_domain(domain)
    hostname = normalize_domain(hostname)
    v4 = str(ipaddress.IPv4Address(ipv4)) if ipv4 else None
    v6 = ipaddress.IPv6Address(ipv6).compressed if ipv6 else None

    records = [DnsRecord(domain, "MX", f"{MX_PREFERENCE} {hostname}", f"mail for {domain} is delivered to {hostname}")]
    if v4:
        records.append(DnsRecord(hostname, "A", v4, f"IPv4 address of {hostname}"))
    if v6:
        records.append(DnsRecord(hostname, "AAAA", v6, f"IPv6 address of {hostname}"))

    spf = ["v=spf1"]
    if v4:
        spf.append(f"ip4:{v4}")
    if v6:
        spf.append(f"ip6:{v6}")
    spf += ["mx", "~all"]
    records.append(DnsRecord(domain, "TXT", " ".join(spf), f"SPF: hosts allowed to send mail from {domain}"))

    for key in dkim_keys:
        if key.state in ("active", "published") and normalize_domain(key.domain) == domain:
            records.append(DnsRecord(
                f"{key.selector}._domainkey.{domain}", "TXT", key.public_dns_value,
                f"DKIM public key, selector {key.selector} ({key.algorithm})",
            ))

    dmarc = f"v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:postmaster@{domain}"
    records.append(DnsRecord(f"_dmarc.{domain}", "TXT", dmarc, "DMARC policy and where aggregate reports go"))
    return records


def reverse_records(hostname: str, ipv4: str | None = None, ipv6: str | None = None) -> list[DnsRecord]:
    """PTR records naming hostname; set at the address's owner (the hosting provider), not in the domain's zone.

    Many receivers refuse mail from an address whose reverse name does not
    resolve back to it (forward-confirmed reverse DNS).
    """
    hostname = normalize_domain(hostname)
    records = []
    for address in (ipaddress.IPv4Address(ipv4) if ipv4 else None, ipaddress.IPv6Address(ipv6) if ipv6 else None):
        if address is not None:
            records.append(DnsRecord(
                address.reverse_pointer, "PTR", hostname,
                f"reverse DNS of {address} (set it at your hosting provider)",
            ))
    return records


def _chunks(data: bytes) -> list[bytes]:
    # RFC 7208 3.3 and RFC 6376 3.6.2.2: receivers join the strings with nothing between them.
    return [data[i:i + _TXT_CHUNK] for i in range(0, len(data), _TXT_CHUNK)] or [b""]


def _quote(chunk: bytes) -> str:
    text = chunk.decode("ascii").replace("\\", "\\\\").replace('"', '\\"')   # RFC 1035 5.1
    return f'"{text}"'
