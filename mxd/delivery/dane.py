"""Outbound DANE (RFC 7672) owns the TLSA records of MX hosts, trusted only when a validating resolver
says they are DNSSEC-secure (the AD bit), and the check of a presented certificate chain against them
(DANE-EE and DANE-TA usages).

What a lookup finds decides what the delivery is held to (RFC 7672 2.2):
- an insecure MX RRset, insecure address records, an insecure TLSA answer, or no TLSA records:
  DANE does not apply (MTA-STS or opportunistic TLS decides);
- a secure TLSA RRset with at least one usable record (DANE-TA 2 or DANE-EE 3, selector 0 or 1,
  matching type 0, 1 or 2 with a digest of the right length): TLS is required and the chain must
  match (`usable`);
- a secure, non-empty TLSA RRset with no usable record: TLS is still required, without authentication
  (`secure` without `usable`, RFC 7672 2.2 last paragraph);
- a lookup that fails (SERVFAIL, which is how a validating resolver answers a bogus RRset, or a
  timeout) for a host of a signed domain: the host must not be used (`failure`, RFC 7672 2.1.1).
"""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import verification

from mxd.resolver import DNSError, Resolver

if TYPE_CHECKING:
    from mxd.delivery.tlspolicy import TlsFailure

DANE_TA, DANE_EE = 2, 3                  # RFC 7218 mnemonics; PKIX-TA(0) and PKIX-EE(1) are unusable in SMTP
CERT, SPKI = 0, 1                        # selectors
FULL, SHA256, SHA512 = 0, 1, 2           # matching types
_DIGEST_SIZES = {SHA256: 32, SHA512: 64}
_EXT = verification.ExtensionPolicy
# DANE-TA chains are private PKIs: the WebPKI profile's extension rules (critical SAN, key usages...) do
# not apply; the chain's signatures, validity dates, CA flags and the MX host name do.
_CA_POLICY = _EXT.permit_all().require_present(x509.BasicConstraints, verification.Criticality.AGNOSTIC, None)
_EE_POLICY = _EXT.permit_all().require_present(x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None)


@dataclass(frozen=True)
class Tlsa:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        """RFC 7672 3.1.3: only DANE-TA and DANE-EE; RFC 7671 5: known selectors and matching types;
        a digest of the wrong length can match nothing."""
        if self.usage not in (DANE_TA, DANE_EE) or self.selector not in (CERT, SPKI):
            return False
        if self.mtype == FULL:
            return bool(self.data)
        return _DIGEST_SIZES.get(self.mtype) == len(self.data)

    def text(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


@dataclass
class Lookup:
    """The TLSA records of one MX host. `usable`: secure records with a usage we support (DANE applies).
    `failure`: a bogus answer or a failed lookup of a host that must use DANE (do not deliver to it).
    `secure`: a DNSSEC-validated, non-empty TLSA RRset was found (TLS is mandatory, RFC 7672 2.2).
    `base`: the TLSA base domain when it is not the host name (the host's secure CNAME target, 2.2.2)."""
    host: str
    records: list[Tlsa] = field(default_factory=list)
    usable: bool = False
    failure: "TlsFailure | None" = None
    port: int = 25
    secure: bool = False
    base: str = ""

    @property
    def name(self) -> str:
        return f"_{self.port}._tcp.{self.base or self.host}"

    def reference_names(self) -> list[str]:
        """The names a DANE-TA certificate may carry (RFC 7672 3.2.2): the TLSA base domain and the MX host."""
        return list(dict.fromkeys(n for n in (self.base, self.host) if n))

    def describe(self) -> str:
        if self.usable:
            return f"{len(self.records)} TLSA record(s) at {self.name}"
        return f"{len(self.records)} TLSA record(s) at {self.name}, none usable: TLS required, not authenticated"

    def policy_strings(self) -> list[str]:
        """RFC 8460 4.4: the TLSA records in presentation format."""
        return [r.text() for r in self.records]


def _failure(result_type: str, text: str) -> "TlsFailure":
    from mxd.delivery.tlspolicy import TlsFailure  # same layer; tlspolicy imports this module
    return TlsFailure(result_type, text)


def _is_address(host: str) -> bool:
    """An address literal ("[192.0.2.1]", "[IPv6:...]") or an MX naming an address: no TLSA base domain."""
    if host.startswith("["):
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


async def lookup(resolver: Resolver, domain: str, host: str, port: int) -> Lookup:
    """The TLSA records of host's SMTP service (RFC 7672 2.2).

    TLSA records count only when the MX RRset of `domain` (RFC 7672 2.2.1) and the address records of
    `host` (2.2.2) are secure too; an insecure step means no DANE. When host is an alias with a secure
    CNAME chain, the TLSA records of its target come first, then the host's own (2.2.2). A failed lookup
    once the domain is known to be signed is a failure: the host is not used, and mail is never sent in
    clear to it."""
    host = host.lower().rstrip(".")
    found = Lookup(host, port=port)
    if not host or host == "." or _is_address(host):
        return found                         # an address literal or an MX naming an address: no TLSA base domain
    try:
        if not await resolver.asecure(domain, "MX"):
            return found
    except DNSError as exc:
        found.failure = _failure("dnssec-invalid", f"DNSSEC lookup of the MX records of {domain} failed: {exc}")
        return found
    try:
        if not (await resolver.asecure(host, "A") or await resolver.asecure(host, "AAAA")):
            return found
        canonical, chain_secure = await resolver.acanonical(host)
        rows: list = []
        secure = False
        for base in ([canonical] if chain_secure and canonical != host else []) + [host]:
            found.base = base if base != host else ""
            rows, secure = await resolver.atlsa(found.name)
            if secure and rows:
                break
    except DNSError as exc:
        found.failure = _failure("dnssec-invalid", f"DNSSEC lookup for {found.name} failed (bogus or "
                                                   f"unreachable, RFC 7672 2.1.1): {exc}")
        return found
    if not secure or not rows:
        found.base = ""
        return found
    found.records = [Tlsa(*row) for row in rows]
    found.secure = True
    found.usable = any(r.usable for r in found.records)
    return found


def _selected(cert: x509.Certificate, der: bytes, selector: int) -> bytes:
    if selector == CERT:
        return der
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _matches(record: Tlsa, cert: x509.Certificate, der: bytes) -> bool:
    try:
        data = _selected(cert, der, record.selector)
    except (ValueError, TypeError, UnsupportedAlgorithm):     # a key type cryptography cannot read
        return False
    if record.mtype == SHA256:
        data = hashlib.sha256(data).digest()
    elif record.mtype == SHA512:
        data = hashlib.sha512(data).digest()
    return data == record.data


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]


def _name_matches(pattern: str, host: str) -> bool:
    """RFC 6125 6.4.3 as RFC 7672 3.2.3 allows: exact, or a wildcard as the whole left-most label."""
    if pattern == host:
        return True
    if pattern.startswith("*.") and "." in host:
        return host.split(".", 1)[1] == pattern[2:]
    return False


def verify(lookup: Lookup, chain: list[bytes], host: str) -> "TlsFailure | None":
    """None when the chain (DER, leaf first) matches a usable record (RFC 7672 3).

    DANE-EE (3): the leaf certificate or its public key matches; names and dates are not checked
    (RFC 7672 3.1.1). DANE-TA (2): a certificate of the chain matches, and the leaf chains up to it
    with valid dates and the MX host name among its DNS names (RFC 7672 3.1.2, 3.2). The chain comes
    from the peer: whatever it holds ends in a failure, never an exception."""
    try:
        return _verify(lookup, chain, host)
    except Exception as exc:                 # a certificate that breaks the parser authenticates nothing
        return _failure("validation-failure", f"the certificate chain of {host} cannot be checked against "
                                              f"{lookup.name}: {type(exc).__name__}: {exc}")


def _verify(lookup: Lookup, chain: list[bytes], host: str) -> "TlsFailure | None":
    records = [r for r in lookup.records if r.usable]
    named = "; ".join(r.text() for r in records) or "none"
    if not chain:
        return _failure("validation-failure", f"no certificate presented; TLSA at {lookup.name}: {named}")
    certs: list[tuple[x509.Certificate, bytes]] = []
    for der in chain:
        try:
            certs.append((x509.load_der_x509_certificate(der), der))
        except ValueError:
            break                            # what follows an unreadable certificate cannot be used
    if not certs:
        return _failure("validation-failure", f"the presented certificate cannot be parsed; TLSA at {lookup.name}")
    leaf, leaf_der = certs[0]
    if any(r.usage == DANE_EE and _matches(r, leaf, leaf_der) for r in records):
        return None
    anchors = [cert for cert, der in certs if any(r.usage == DANE_TA and _matches(r, cert, der) for r in records)]
    if not anchors:
        return _failure("validation-failure", f"the certificate chain of {host} matches none of the TLSA records "
                                              f"at {lookup.name}: {named}")
    host = host.lower().rstrip(".")
    references = list(dict.fromkeys([*lookup.reference_names(), host]))
    error: Exception | None = None
    for name in references:
        try:
            verifier = (verification.PolicyBuilder().store(verification.Store(anchors))
                        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
                        .build_server_verifier(verification.DNSName(name)))
            verifier.verify(leaf, [cert for cert, _ in certs[1:]])
            return None
        except (verification.VerificationError, ValueError) as exc:
            error = exc
    if not any(_name_matches(n, ref) for n in _names(leaf) for ref in references):
        return _failure("certificate-host-mismatch",
                        f"the certificate of {host} (names: {', '.join(_names(leaf)) or 'none'}) names none of "
                        f"{', '.join(references)}, as DANE-TA at {lookup.name} requires")
    return _failure("validation-failure", f"the certificate of {host} does not chain to the DANE-TA trust anchor "
                                          f"at {lookup.name} ({named}): {error}")
