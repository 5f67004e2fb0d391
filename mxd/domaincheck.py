"""Domain DNS checks: compare what the resolver answers with the records a domain must publish,
and mark a domain ready for outbound mail when every required record checks out.

Each planned record comes back `found`, `missing` (no answer), `wrong` (an
answer, not the planned one) or `error` (the resolver failed, so nothing is
known), with the values found. Plain functions taking a domain name, shared by
both API dialects and the CLI.

An organisation's domain also has an ownership record, TXT `_mxd-verify.<domain>`
holding `mxd-verify=<token>` (a token per registration): required until it has
been found once; mail for the domain is routed here only from then on.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from mxd import dnsrecords, keys
from mxd.address import normalize_domain
from mxd.config import Config
from mxd.errors import MxdError
from mxd.resolver import DNSError, Resolver
from mxd.store import directory, events
from mxd.store.models import Domain

FOUND, MISSING, WRONG, ERROR = "found", "missing", "wrong", "error"


@dataclass
class RecordCheck:
    planned: dnsrecords.PlannedRecord
    status: str                                  # found | missing | wrong | error
    found: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def record(self) -> dnsrecords.DnsRecord:
        return self.planned.record

    @property
    def required(self) -> bool:
        return self.planned.required

    def to_json(self) -> dict:
        out = dict(self.planned.to_json(), expected=self.record.value, status=self.status, found=self.found)
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class DomainCheck:
    domain: str
    checks: list[RecordCheck]

    @property
    def ok(self) -> bool:
        """Every required record is found (recommended ones do not count)."""
        return all(c.status == FOUND for c in self.checks if c.required)

    @property
    def definitely_broken(self) -> bool:
        """A required record is missing or wrong according to an answer (not merely a resolver failure)."""
        return any(c.status in (MISSING, WRONG) for c in self.checks if c.required)

    @property
    def owner_found(self) -> bool:
        """The ownership record of an organisation's domain is published as planned."""
        return any(c.planned.kind == "ownership" and c.status == FOUND for c in self.checks)

    def to_json(self) -> dict:
        return {"domain": self.domain, "dns_ok": self.ok, "records": [c.to_json() for c in self.checks]}


def _tags(value: str) -> dict[str, str]:
    """tag=value pairs of a DKIM/DMARC/STS/TLSRPT record (RFC 6376 3.2), whitespace removed from values."""
    out = {}
    for part in value.split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip().lower()] = "".join(v.split())
    return out


def _spf_terms(value: str) -> set[str]:
    """The mechanisms and modifiers of an SPF record, lower case, without the default '+' qualifier."""
    return {t.lower().lstrip("+") for t in value.split()[1:]}


def _judge(planned: dnsrecords.PlannedRecord, answers: list[str]) -> tuple[bool, list[str]]:
    """(matches, the answers worth showing) for the TXT kinds."""
    want = planned.record.value
    if planned.kind == "dkim":
        relevant = [a for a in answers if "p=" in a]
        return any(_tags(a).get("p") == _tags(want).get("p") for a in relevant), relevant
    if planned.kind == "dmarc":
        relevant = [a for a in answers if a.lower().startswith("v=dmarc1")]
        return len(relevant) == 1, relevant                  # RFC 7489 6.6.3: exactly one record counts
    if planned.kind == "spf":                                # RFC 7208 4.5: exactly one v=spf1 record
        relevant = [a for a in answers if a.lower().split()[:1] == ["v=spf1"]]
        needed = {t for t in _spf_terms(want) if not t.endswith("all")}
        return len(relevant) == 1 and needed <= _spf_terms(relevant[0]), relevant
    if planned.kind == "ownership":                          # the token of this registration, exactly
        relevant = [a for a in answers if a.strip().lower().startswith("mxd-verify=")]
        return any(a.strip() == want for a in relevant), relevant
    if planned.kind == "mta-sts":                            # RFC 8461 3.1: exactly one, with an id
        relevant = [a for a in answers if a.replace(" ", "").lower().startswith("v=stsv1")]
        return len(relevant) == 1 and bool(_tags(relevant[0]).get("id")), relevant
    if planned.kind == "tls-rpt":                            # RFC 8460 3: exactly one, with rua
        relevant = [a for a in answers if a.replace(" ", "").lower().startswith("v=tlsrptv1")]
        return len(relevant) == 1 and bool(_tags(relevant[0]).get("rua")), relevant
    return any(" ".join(a.split()) == " ".join(want.split()) for a in answers), answers


async def check_record(planned: dnsrecords.PlannedRecord, resolver: Resolver) -> RecordCheck:
    """Ask the resolver for one planned record and judge the answer."""
    record = planned.record
    try:
        if record.type == "MX":
            pairs = await resolver.amx(record.name)
            answers = [f"{pref} {host}" for pref, host in pairs]
            want = record.value.split()[-1].lower().rstrip(".")
            ok = any(host.lower().rstrip(".") == want for _, host in pairs)
        elif record.type == "TXT":
            ok, answers = _judge(planned, await resolver.atxt(record.name))
            if not answers:                                  # other TXT records at the name: not this one
                return RecordCheck(planned, MISSING, [])
        elif record.type == "A":
            answers = await resolver.aa(record.name)
            ok = record.value in answers
        elif record.type == "AAAA":
            answers = await resolver.aaaaa(record.name)
            ok = record.value in answers
        else:
            return RecordCheck(planned, ERROR, [], f"records of type {record.type} are not checked")
    except DNSError as exc:
        return RecordCheck(planned, ERROR, [], str(exc))
    return RecordCheck(planned, FOUND if ok else (WRONG if answers else MISSING), answers)


def ownership(domain: Domain) -> dnsrecords.PlannedRecord | None:
    """The ownership record of an organisation's domain (None for the operator's): required until found once."""
    if domain.org_id is None or not domain.verify_token:
        return None
    record = dnsrecords.DnsRecord(f"{directory.VERIFY_LABEL}.{domain.name}", "TXT",
                                  f"mxd-verify={domain.verify_token}",
                                  f"proves that you own {domain.name}: mail for it is accepted only once this is found")
    return dnsrecords.PlannedRecord(record, "ownership", required=domain.owner_verified_at is None)


def plan(cfg: Config, domain: str, owner: dnsrecords.PlannedRecord | None = None) -> list[dnsrecords.PlannedRecord]:
    """The records to publish for `domain` with this server's hostname and the domain's DKIM keys
    (first the ownership record `owner`, for an organisation's domain)."""
    name = normalize_domain(domain)
    return ([owner] if owner else []) + dnsrecords.plan(name, cfg.hostname, keys.load_dkim_keys(cfg.dkim_dir, name))


def plan_json(cfg: Config, domain: str, owner: dnsrecords.PlannedRecord | None = None) -> dict:
    """The DNS plan as the API shows it: records (required and recommended), the return path, MTA-STS."""
    name = normalize_domain(domain)
    return {
        "domain": name,
        "records": [p.to_json() for p in plan(cfg, name, owner)],
        "return_path": dnsrecords.return_path(name),
        "mta_sts": {"policy_url": f"https://mta-sts.{name}/.well-known/mta-sts.txt",
                    "policy": dnsrecords.mta_sts_policy(name, cfg.hostname),
                    "note": f"Recommended: serve this policy over HTTPS at mta-sts.{name} (a certificate "
                            f"valid for that name), then publish the _mta-sts TXT record."},
    }


async def check(cfg: Config, domain: str, resolver: Resolver,
                owner: dnsrecords.PlannedRecord | None = None) -> DomainCheck:
    """Query every planned record of `domain` (concurrently) and report each one."""
    name = normalize_domain(domain)
    planned = plan(cfg, name, owner)
    return DomainCheck(name, list(await asyncio.gather(*(check_record(p, resolver) for p in planned))))


def record_verification(domain: str, dns_ok: bool, definitely_broken: bool,
                        owner_found: bool = False) -> tuple[Domain, bool]:
    """Runs in the writer after a check: record an organisation's ownership proof when it was found; mark
    the domain ready (source "dns") when its records check out, emitting `domain.verified` when it becomes
    DNS-verified; take back a readiness that DNS gave when a required record is now missing or wrong (an
    operator's override stays). Returns (domain, newly verified)."""
    row = Domain.get_or_none(Domain.name == normalize_domain(domain))
    if row is None:
        raise MxdError("not_found", f"domain {domain!r} not found")
    if owner_found and row.org_id is not None and row.owner_verified_at is None:
        row.owner_verified_at = time.time()
        row.save()
    if dns_ok:
        if row.ready and row.ready_source == "dns":
            return row, False
        row.ready, row.ready_source, row.ready_at = True, "dns", time.time()
        row.save()
        events.emit("domain.verified", org_id=row.org_id, domain=row.name, domain_id=row.id)
        return row, True
    if definitely_broken and row.ready and row.ready_source == "dns":
        row.ready, row.ready_source, row.ready_at = False, None, time.time()
        row.save()
    return row, False
