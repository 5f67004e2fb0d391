"""Transport security owns the choice, per destination host, of how a delivery must be protected:
DANE (RFC 7672) where the host publishes DNSSEC-validated TLSA records, else the domain's MTA-STS
policy (RFC 8461), else opportunistic STARTTLS (RFC 7435). DANE takes precedence over MTA-STS
(RFC 8461 2); neither ever falls back to plain text.

The scheduler asks `plan_domain` once per lane, then `plan_host` for each MX host it tries, and opens
the connection as the HostPlan says. Every outcome is noted for the daily TLS report (RFC 8460) with
the policy that applied.
"""
from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from typing import Callable

from mxd.config import Config
from mxd.delivery import dane, mtasts
from mxd.delivery.mxhosts import Target
from mxd.resolver import Resolver

VALIDATION_FAILURE = "validation-failure"     # RFC 8460 4.3.2: a failure of no more specific type


@dataclass(frozen=True)
class TlsFailure:
    """Why a TLS session did not meet its policy: an RFC 8460 result type and a sentence."""
    result_type: str
    text: str


@dataclass
class Applied:
    """What one delivery attempt was held to; kept as JSON in QueueEntry.tls and shown by GET /api/queue/{id}."""
    policy: str                 # dane mta-sts opportunistic smart-host
    mode: str = ""              # enforce testing ("" for opportunistic)
    host: str = ""
    detail: str = ""            # why this policy, or why the attempt failed it
    report_type: str = "no-policy-found"          # RFC 8460 policy-type: tlsa sts no-policy-found
    report_strings: list[str] = field(default_factory=list)   # RFC 8460 policy-string
    report_domain: str = ""     # RFC 8460 policy-domain

    def to_json(self) -> str:
        return json.dumps({"policy": self.policy, "mode": self.mode, "host": self.host, "detail": self.detail},
                          separators=(",", ":"))


@dataclass
class HostPlan:
    """How to connect to one MX host. `refuse` set: do not connect at all (a host an enforced policy does
    not name). `check` runs on the presented chain (DER, leaf first) after the handshake; its failure
    ends the session when `enforce`, and is only noted for the report otherwise."""
    host: str
    tls: str                                        # smtpclient TLS mode: required or opportunistic
    context: ssl.SSLContext | None = None           # None: encrypt without authenticating (RFC 7435)
    check: Callable[[list[bytes]], TlsFailure | None] | None = None
    enforce: bool = False
    refuse: TlsFailure | None = None
    applied: Applied = field(default_factory=lambda: Applied("opportunistic"))


@dataclass
class DomainPlan:
    """The recipient domain's MTA-STS policy (None when it has none or it is off) and what fetching it found."""
    domain: str
    sts: mtasts.Policy | None = None
    sts_failure: TlsFailure | None = None           # sts-policy-fetch-error / sts-policy-invalid, for the report


class TransportPolicy:
    def __init__(self, cfg: Config, resolver: Resolver, sts_cache: mtasts.PolicyCache | None) -> None:
        self.cfg, self.resolver, self.sts_cache = cfg, resolver, sts_cache
        self._verify = mtasts.verifying_context(cfg.outbound_tls_ca_file)

    async def plan_domain(self, domain: str) -> DomainPlan:
        if self.sts_cache is None:
            return DomainPlan(domain)
        sts, failure = await self.sts_cache.get(domain)
        return DomainPlan(domain, sts, failure)

    async def plan_host(self, dplan: DomainPlan, target: Target, port: int) -> HostPlan:
        host = target.host
        if self.cfg.outbound_dane:
            tlsa = await dane.lookup(self.resolver, dplan.domain, host, port)
            if tlsa.usable:
                # RFC 7672 2.2: usable TLSA records make TLS mandatory and the certificate checked against them
                return HostPlan(host, "required", None, lambda chain: dane.verify(tlsa, chain, host), enforce=True,
                                applied=Applied("dane", "enforce", host, tlsa.describe(), "tlsa",
                                                tlsa.policy_strings(), dplan.domain))
            if tlsa.failure is not None:
                # RFC 7672 2.1.1: a bogus or failed TLSA lookup means the host must not be used
                return HostPlan(host, "required", refuse=tlsa.failure, enforce=True,
                                applied=Applied("dane", "enforce", host, tlsa.failure.text, "tlsa", [], dplan.domain))
            if tlsa.secure:
                # RFC 7672 2.2: secure TLSA records, none usable: TLS stays mandatory, unauthenticated
                return HostPlan(host, "required", None, None, enforce=True,
                                applied=Applied("dane", "enforce", host, tlsa.describe(), "tlsa",
                                                tlsa.policy_strings(), dplan.domain))
        sts = dplan.sts
        if sts is not None and sts.mode in ("enforce", "testing"):
            enforce = sts.mode == "enforce"
            applied = Applied("mta-sts", sts.mode, host, f"policy id {sts.policy_id}", "sts", sts.policy_strings(),
                              dplan.domain)
            if not sts.matches(host):
                miss = TlsFailure(VALIDATION_FAILURE, f"MX host {host} is not named by the MTA-STS policy of "
                                                      f"{dplan.domain} (mx: {', '.join(sts.mx)})")
                if enforce:     # RFC 8461 4.1: only hosts the policy names
                    applied.detail = miss.text
                    return HostPlan(host, "required", refuse=miss, enforce=True, applied=applied)
                return HostPlan(host, "opportunistic", None, lambda chain: miss, applied=applied)
            if enforce:         # RFC 8461 4.2: TLS with a certificate valid for the MX host name (WebPKI)
                return HostPlan(host, "required", self._verify, None, enforce=True, applied=applied)
            return HostPlan(host, "opportunistic", None,
                            lambda chain: mtasts.webpki_check(chain, host, self.cfg.outbound_tls_ca_file), applied=applied)
        detail = "no DANE or MTA-STS policy"
        if dplan.sts_failure is not None:       # RFC 8461 5: no policy could be had; the failure is reported
            detail += f" ({dplan.sts_failure.text})"
        return HostPlan(host, "opportunistic", applied=Applied("opportunistic", "", host, detail,
                                                               "no-policy-found", [], dplan.domain))

