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
  to postmaster@<domain> (`report_address`), which mxd always serves (RFC 5321
  4.5.1); being in the same domain it needs no RFC 7489 7.1 authorisation
  record. TLS-RPT reports go there too; mxd.report_reader reads both from that mailbox.
- The return path is the sending domain itself: bounces come back to the VERP
  address ``bounces+<queue id>.<tag>@<domain>`` (RFC 5321 4.4), so the domain's MX
  receives them and its SPF record is the one checked against MAIL FROM; no
  separate return-path host is needed, and SPF aligns with the From domain
  (RFC 7489 3.1.2).
- MTA-STS (RFC 8461) and TLS-RPT (RFC 8460) are recommended, not required:
  mail flows without them. A domain's policy is ``mode: testing`` until the
  operator switches it to ``enforce`` (or ``off``: nothing served, nothing to
  publish), so a certificate problem is reported (to the TLS-RPT address), never
  turned into lost mail; its ``id`` is derived from the policy text, so it
  changes when the policy does. The policy host ``mta-sts.<domain>`` is a CNAME
  to our hostname: mxd serves the policy itself on its HTTPS listener.
"""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from mxd.address import normalize_domain

if TYPE_CHECKING:                   # L0: only the type, not the key-handling module
    from mxd.keys import DkimKey

DEFAULT_TTL = 3600
MX_PREFERENCE = 10
_TXT_CHUNK = 255        # RFC 1035 3.3: a <character-string> holds at most 255 octets
REPORT_LOCAL = "postmaster"     # the local part of the DMARC rua= and TLS-RPT rua= address of every domain


def report_address(domain: str) -> str:
    """Where a domain's DMARC aggregate and TLS reports are sent: its postmaster@, which always exists."""
    return f"{REPORT_LOCAL}@{normalize_domain(domain)}"


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

    dmarc = f"v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:{report_address(domain)}"
    records.append(DnsRecord(f"_dmarc.{domain}", "TXT", dmarc, "DMARC policy and where aggregate reports go"))
    return records


@dataclass(frozen=True)
class PlannedRecord:
    """One record of a domain's DNS plan: what to publish, whether outbound readiness needs it,
    and which check it serves ("mx", "spf", "dkim", "dmarc", "mta-sts", "tls-rpt", "host")."""
    record: DnsRecord
    kind: str
    required: bool = True
    return_path: bool = False        # also serves the VERP return path (bounces+<id>.<tag>@domain)

    def to_json(self) -> dict:
        return dict(self.record.to_json(), kind=self.kind, required=self.required,
                    return_path=self.return_path, zone_line=self.record.zone_line())


MTA_STS_MODES = ("off", "testing", "enforce")     # a domain's policy: none served, RFC 8461 "testing", "enforce"
MTA_STS_LABEL = "mta-sts"                          # RFC 8461 3.3: the policy host is mta-sts.<domain>


def mta_sts_policy(domain: str, hostname: str, mode: str = "testing", max_age: int = 604800) -> str:
    """The policy file served at https://mta-sts.<domain>/.well-known/mta-sts.txt (RFC 8461 3.2): CRLF lines,
    our MX host the only `mx`. The same text for every domain of this server with the same mode."""
    normalize_domain(domain)
    if mode not in ("testing", "enforce"):
        raise ValueError(f"no MTA-STS policy is served in mode {mode!r}")
    return f"version: STSv1\r\nmode: {mode}\r\nmx: {normalize_domain(hostname)}\r\nmax_age: {int(max_age)}\r\n"


def mta_sts_id(policy: str) -> str:
    """The `id` of the _mta-sts TXT record (RFC 8461 3.1: 1-32 alphanumerics) for this policy text: a hash of
    it, so the id changes whenever the policy does and senders fetch it again."""
    return hashlib.sha256(policy.encode()).hexdigest()[:20]


def mta_sts_records(domain: str, hostname: str, mode: str = "testing", max_age: int = 604800) -> list[DnsRecord]:
    """The _mta-sts TXT record (RFC 8461 3.1) with the policy's id, and the policy host mta-sts.<domain>
    pointing at this server; none when the domain's MTA-STS is off."""
    domain = normalize_domain(domain)
    if mode == "off":
        return []
    policy_id = mta_sts_id(mta_sts_policy(domain, hostname, mode, max_age))
    return [
        DnsRecord(f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={policy_id}",
                  f"MTA-STS ({mode}): senders require TLS to the MX; the policy is at "
                  f"https://{MTA_STS_LABEL}.{domain}/.well-known/mta-sts.txt"),
        DnsRecord(f"{MTA_STS_LABEL}.{domain}", "CNAME", normalize_domain(hostname),
                  "MTA-STS policy host: this server answers HTTPS for it (https_listen) with a certificate "
                  "valid for this name"),
    ]


def recommended_records(domain: str, hostname: str, mode: str = "testing", max_age: int = 604800) -> list[DnsRecord]:
    """MTA-STS (RFC 8461 3.1) and TLS-RPT (RFC 8460 3) records: recommended, not needed to send."""
    domain = normalize_domain(domain)
    return mta_sts_records(domain, hostname, mode, max_age) + [
        DnsRecord(f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua=mailto:{report_address(domain)}",
                  "TLS-RPT: where senders report TLS failures delivering to this domain"),
    ]


def plan(domain: str, hostname: str, dkim_keys: list[DkimKey], ipv4: str | None = None,
         ipv6: str | None = None, mta_sts_mode: str = "testing", mta_sts_max_age: int = 604800) -> list[PlannedRecord]:
    """Everything to publish for a domain: the required records, then the recommended ones."""
    out = []
    for rec in required_records(domain, hostname, dkim_keys, ipv4, ipv6):
        if rec.type == "MX":
            out.append(PlannedRecord(rec, "mx", return_path=True))
        elif rec.type in ("A", "AAAA"):
            out.append(PlannedRecord(rec, "host"))
        elif rec.name.startswith("_dmarc."):
            out.append(PlannedRecord(rec, "dmarc"))
        elif "._domainkey." in rec.name:
            out.append(PlannedRecord(rec, "dkim"))
        else:
            out.append(PlannedRecord(rec, "spf", return_path=True))
    for rec in recommended_records(domain, hostname, mta_sts_mode, mta_sts_max_age):
        kind = "tls-rpt" if rec.name.startswith("_smtp._tls.") else "mta-sts"
        out.append(PlannedRecord(rec, kind, required=False))
    return out


def return_path(domain: str) -> dict:
    """How bounces find their way back: the VERP address form and the records that serve it."""
    domain = normalize_domain(domain)
    return {"domain": domain, "address": f"bounces+<queue id>.<tag>@{domain}",
            "records": [f"MX {domain}", f"TXT {domain} (SPF)"],
            "note": "The return path is the sending domain itself: its MX receives bounces and its SPF "
                    "record authorises the envelope sender, aligned with the From domain for DMARC."}


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
