"""Email addresses: parse, validate and normalise; IDNA domains; plus-addressing."""
from __future__ import annotations

import re
from dataclasses import dataclass

import idna

# RFC 5321 4.1.2 Dot-string of atext; UTF-8 beyond ASCII is allowed (RFC 6531 3.3).
_ATEXT = r"[A-Za-z0-9!#$&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

MAX_LOCAL = 64     # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255   # RFC 5321 4.5.3.1.2
MAX_PATH = 256     # RFC 5321 4.5.3.1.3


class AddressError(ValueError):
    """The address is not one mxd accepts; the message says why."""


@dataclass(frozen=True)
class Address:
    local: str          # as written (case kept)
    domain: str         # lower-case A-label form

    @property
    def key(self) -> str:
        """The lookup form: lower-case local part @ A-label domain."""
        return f"{self.local.lower()}@{self.domain}"

    @property
    def base_key(self) -> str:
        """The lookup form without a +tag."""
        return f"{self.base_local.lower()}@{self.domain}"

    @property
    def base_local(self) -> str:
        return self.local.split("+", 1)[0] if "+" in self.local[1:] else self.local

    @property
    def tag(self) -> str | None:
        if "+" in self.local[1:]:
            return self.local.split("+", 1)[1]
        return None

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def normalize_domain(domain: str) -> str:
    """Lower-case A-label form of a domain name; raises AddressError."""
    domain = domain.strip().rstrip(".")
    if not domain or len(domain) > MAX_DOMAIN:
        raise AddressError("domain is empty or too long")
    if domain.startswith("[") or domain.endswith("]"):
        raise AddressError("address literals are not accepted")
    try:
        if domain.isascii():
            ascii_domain = domain.lower()
        else:
            ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise AddressError(f"invalid international domain: {exc}") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise AddressError(f"invalid domain {domain!r}")
    return ascii_domain


def parse(address: str) -> Address:
    """Parse a bare addr-spec (no angle brackets, no display name).

    Refused on purpose, since they are relay tricks or ambiguous:
    source routes (@a:b@c, RFC 5321 4.1.2 obs-route), quoted local parts,
    '%' and '!' routing in the local part, address literals.
    """
    if not isinstance(address, str):
        raise AddressError("address must be a string")
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if not address or len(address) > MAX_PATH:
        raise AddressError("address is empty or too long")
    if any(c in address for c in "\r\n\0\t ") or address.startswith("@"):
        raise AddressError("address holds whitespace, control characters or a source route")
    if address.count("@") != 1:
        raise AddressError("address must hold exactly one @")
    local, domain = address.split("@")
    if not local or len(local.encode("utf-8")) > MAX_LOCAL:
        raise AddressError("local part is empty or too long")
    if '"' in local or "%" in local or "!" in local or not _DOT_ATOM.fullmatch(local):
        raise AddressError(f"local part {local!r} is not accepted")
    return Address(local, normalize_domain(domain))


def try_parse(address: str) -> Address | None:
    try:
        return parse(address)
    except AddressError:
        return None
