"""Domain DNS checks: compare what the resolver answers with the records a domain must publish,
and mark a domain ready for outbound mail when every required record checks out.

Each planned record comes back `found`, `missing` (no answer), `wrong` (an
answer, not the planned one) or `error` (the resolver failed, so nothing is
known), with the values found. Plain functions taking a domain name, shared by
both API dialects and the CLI.

MTA-STS (RFC 8461) is checked end to end when the domain's mode is not "off": the _mta-sts TXT record
with the id of the policy served now, the policy host mta-sts.<domain> resolving to this server, and
the policy fetched from it as a sender would (HTTPS on port 443 to the address our resolver gives,
the certificate verified against the system's CAs and `outbound_tls_ca_file`, no redirects) and
compared with ours, and our MX answering STARTTLS at the hostname's address with a certificate valid for
the hostname (what an enforcing sender demands). Passing on a domain in "testing" makes it `enforce_ready`; the switch to
"enforce" stays the operator's (a bad certificate on the MX then delays mail at every sender).

An organisation's domain also has an ownership record, TXT `_mxd-verify.<domain>`
holding `mxd-verify=<token>` (a token per registration): required until it has
been found once; mail for the domain is routed here only from then on.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from mxd import dnsrecords, keys, smtpclient
from mxd.address import normalize_domain
from mxd.config import Config, parse_hostport
from mxd.delivery import mtasts
from mxd.delivery.mtasts import verifying_context
from mxd.errors import MxdError
from mxd.netcheck import refusal
from mxd.resolver import DNSError, Resolver
from mxd.store import directory, events
from mxd.store.models import Domain

FOUND, MISSING, WRONG, ERROR = "found", "missing", "wrong", "error"
CERTIFICATE_INVALID = "certificate_invalid"        # the policy host's certificate fails verification
POLICY_PATH = "/.well-known/mta-sts.txt"
POLICY_TIMEOUT = 10.0                              # seconds for a whole answer (RFC 8461 3.3 suggests at most 60)
SHOWN = 2048                                       # characters of a wrong policy shown back


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
class MtaStsCheck:
    """The domain's MTA-STS as a sender sees it: each step with its status (found | missing | wrong | error |
    certificate_invalid) and what was seen."""
    mode: str
    policy: str = ""                             # the policy text served now ("" when off)
    steps: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mode != "off" and bool(self.steps) and all(s["status"] == FOUND for s in self.steps)

    def to_json(self, domain: str) -> dict:
        out: dict = {"mode": self.mode, "ok": self.ok, "enforce_ready": self.ok and self.mode == "testing",
                     "checks": self.steps}
        if self.mode != "off":
            out.update(policy_url=f"https://{dnsrecords.MTA_STS_LABEL}.{domain}{POLICY_PATH}", policy=self.policy,
                       policy_id=dnsrecords.mta_sts_id(self.policy))
        return out


@dataclass
class DomainCheck:
    domain: str
    checks: list[RecordCheck]
    mta_sts: MtaStsCheck | None = None

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
        out = {"domain": self.domain, "dns_ok": self.ok, "records": [c.to_json() for c in self.checks]}
        if self.mta_sts is not None:
            out["mta_sts"] = self.mta_sts.to_json(self.domain)
        return out


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
    if planned.kind == "mta-sts":                            # RFC 8461 3.1: exactly one, with the id served now
        relevant = [a for a in answers if a.replace(" ", "").lower().startswith("v=stsv1")]
        return len(relevant) == 1 and _tags(relevant[0]).get("id") == _tags(want).get("id"), relevant
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
        elif record.type == "CNAME":                         # the name must reach the target's addresses
            answers = await _addresses(resolver, record.name)
            ok = bool(set(answers) & set(await _addresses(resolver, record.value)))
        else:
            return RecordCheck(planned, ERROR, [], f"records of type {record.type} are not checked")
    except DNSError as exc:
        return RecordCheck(planned, ERROR, [], str(exc))
    return RecordCheck(planned, FOUND if ok else (WRONG if answers else MISSING), answers)


async def _addresses(resolver: Resolver, name: str) -> list[str]:
    return list(await resolver.aa(name)) + list(await resolver.aaaaa(name))


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


async def fetch_policy(cfg: Config, domain: str, resolver: Resolver, want: str) -> dict:
    """Fetch https://mta-sts.<domain>/.well-known/mta-sts.txt as a sender does (mxd.delivery.mtasts.fetch_policy,
    RFC 8461 3.3) from the addresses our resolver gives, and compare it with `want`: one step
    {"check": "policy", "status", "detail"}."""
    host = f"{dnsrecords.MTA_STS_LABEL}.{domain}"
    step = {"check": "policy", "status": MISSING, "detail": ""}
    try:
        addresses = await _addresses(resolver, host)
    except DNSError as exc:
        return dict(step, status=ERROR, detail=f"{host} does not resolve: {exc}")
    if not addresses:
        return dict(step, detail=f"{host} has no address record")
    addresses, refused = _public(cfg, addresses)    # a check is no way to reach this host's own network
    if not addresses:
        return dict(step, status=ERROR, detail=f"{host} resolves only to non-public addresses: "
                                               f"{', '.join(refused)} (outbound_allow_private is off)")
    context = verifying_context(cfg.outbound_tls_ca_file)
    for address in addresses[:3]:
        try:
            async with asyncio.timeout(POLICY_TIMEOUT):
                text = await mtasts.fetch_policy(host, address, context)
        except TimeoutError:
            step = dict(step, status=ERROR, detail=f"https://{host}{POLICY_PATH} ({address}): no complete answer "
                                                   f"within {POLICY_TIMEOUT:g} s")
            continue
        except mtasts.FetchError as exc:
            if exc.result_type == mtasts.WEBPKI_INVALID:
                return dict(step, status=CERTIFICATE_INVALID, detail=f"({address}) {exc.text}")
            if exc.result_type == mtasts.POLICY_INVALID:
                return dict(step, status=WRONG, detail=f"({address}) {exc.text}")
            step = dict(step, status=MISSING, detail=f"({address}) {exc.text}")
            continue                                   # another address may answer
        if _lines(text) != _lines(want):
            return dict(step, status=WRONG, detail="the policy served is not the one expected", found=text[:SHOWN])
        return dict(step, status=FOUND, detail=f"served over HTTPS by {address} with a valid certificate")
    return step


def _public(cfg: Config, addresses: list[str]) -> tuple[list[str], list[str]]:
    """(the addresses a check may connect to, the refused ones with why): all of them with outbound_allow_private."""
    if cfg.outbound_allow_private:
        return addresses, []
    return [a for a in addresses if not refusal(a)], [f"{a} ({refusal(a)})" for a in addresses if refusal(a)]


async def check_mx_certificate(cfg: Config, resolver: Resolver) -> dict:
    """What an MTA-STS sender in enforce mode checks at our MX (RFC 8461 4.2): STARTTLS at the hostname's
    address, on the MX port, with a certificate valid for the hostname. One step {"check": "mx_certificate"}."""
    step = {"check": "mx_certificate", "status": MISSING, "detail": ""}
    if not cfg.mx_listen:
        return dict(step, status=ERROR, detail="the MX listener is off (mx_listen)")
    port = parse_hostport(cfg.mx_listen, "mx_listen")[1]
    try:
        addresses = await _addresses(resolver, cfg.hostname)
    except DNSError as exc:
        return dict(step, status=ERROR, detail=f"{cfg.hostname} does not resolve: {exc}")
    addresses, refused = _public(cfg, addresses)
    if refused and not addresses:
        return dict(step, status=ERROR, detail=f"{cfg.hostname} resolves only to non-public addresses: "
                                               f"{', '.join(refused)} (outbound_allow_private is off)")
    if not addresses:
        return dict(step, detail=f"{cfg.hostname} has no address record")
    for address in addresses[:3]:
        try:
            conn = await smtpclient.Connection.open(
                cfg.hostname, port, helo_name=cfg.hostname, ip_for_connect=address, tls="required",
                tls_context=verifying_context(cfg.outbound_tls_ca_file), timeout=POLICY_TIMEOUT)
        except smtpclient.DeliveryError as exc:
            if exc.stage == "starttls" and exc.tls_result:
                return dict(step, status=CERTIFICATE_INVALID,
                            detail=f"the MX certificate at {address}:{port} fails for {cfg.hostname}: {exc.text}")
            step = dict(step, status=ERROR, detail=f"{address}:{port}: {exc}")
            continue
        version = conn.tls_version
        await conn.close()
        return dict(step, status=FOUND,
                    detail=f"STARTTLS at {address}:{port} ({version}) with a certificate valid for {cfg.hostname}")
    return step


async def check_mta_sts(cfg: Config, domain: str, mode: str, resolver: Resolver,
                        records: list[RecordCheck]) -> MtaStsCheck:
    """The MTA-STS steps: the TXT record and the policy host (from the record checks already made), then the
    policy fetched over HTTPS."""
    if mode == "off":
        return MtaStsCheck(mode)
    policy = dnsrecords.mta_sts_policy(domain, cfg.hostname, mode, cfg.mta_sts_max_age)
    steps = []
    for rc in records:
        if rc.planned.kind == "mta-sts":
            what = "txt" if rc.record.type == "TXT" else "host"
            detail = {FOUND: "published", MISSING: "not published",
                      WRONG: "another id than the policy served now" if what == "txt" else "not this server's address",
                      ERROR: rc.error or "DNS failure"}[rc.status]
            steps.append({"check": what, "status": rc.status, "detail": f"{rc.record.name}: {detail}",
                          "expected": rc.record.value, "found": rc.found})
    steps += await asyncio.gather(fetch_policy(cfg, domain, resolver, policy), check_mx_certificate(cfg, resolver))
    return MtaStsCheck(mode, policy, steps)


def ownership(domain: Domain) -> dnsrecords.PlannedRecord | None:
    """The ownership record of an organisation's domain (None for the operator's): required until found once."""
    if domain.org_id is None or not domain.verify_token:
        return None
    record = dnsrecords.DnsRecord(f"{directory.VERIFY_LABEL}.{domain.name}", "TXT",
                                  f"mxd-verify={domain.verify_token}",
                                  f"proves that you own {domain.name}: mail for it is accepted only once this is found")
    return dnsrecords.PlannedRecord(record, "ownership", required=domain.owner_verified_at is None)


def plan(cfg: Config, domain: str, owner: dnsrecords.PlannedRecord | None = None,
         mta_sts_mode: str = "testing") -> list[dnsrecords.PlannedRecord]:
    """The records to publish for `domain` with this server's hostname and the domain's DKIM keys
    (first the ownership record `owner`, for an organisation's domain)."""
    name = normalize_domain(domain)
    return ([owner] if owner else []) + dnsrecords.plan(name, cfg.hostname, keys.load_dkim_keys(cfg.dkim_dir, name),
                                                        mta_sts_mode=mta_sts_mode,
                                                        mta_sts_max_age=cfg.mta_sts_max_age)


def plan_json(cfg: Config, domain: str, owner: dnsrecords.PlannedRecord | None = None,
              mta_sts_mode: str = "testing") -> dict:
    """The DNS plan as the API shows it: records (required and recommended), the return path, MTA-STS."""
    name = normalize_domain(domain)
    out = {
        "domain": name,
        "records": [p.to_json() for p in plan(cfg, name, owner, mta_sts_mode)],
        "return_path": dnsrecords.return_path(name),
        "mta_sts": {"mode": mta_sts_mode},
    }
    if mta_sts_mode != "off":
        policy = dnsrecords.mta_sts_policy(name, cfg.hostname, mta_sts_mode, cfg.mta_sts_max_age)
        out["mta_sts"].update(
            policy_url=f"https://{dnsrecords.MTA_STS_LABEL}.{name}{POLICY_PATH}", policy=policy,
            policy_id=dnsrecords.mta_sts_id(policy),
            note=f"Recommended: mxd serves this policy on its HTTPS listener (https_listen, port 443) for "
                 f"{dnsrecords.MTA_STS_LABEL}.{name}, with a certificate valid for that name; publish the "
                 f"_mta-sts TXT record and the {dnsrecords.MTA_STS_LABEL} CNAME, then verify.")
    return out


async def check(cfg: Config, domain: str, resolver: Resolver,
                owner: dnsrecords.PlannedRecord | None = None, mta_sts_mode: str = "testing") -> DomainCheck:
    """Query every planned record of `domain` (concurrently) and report each one, then the MTA-STS policy
    as senders fetch it."""
    name = normalize_domain(domain)
    planned = plan(cfg, name, owner, mta_sts_mode)
    records = list(await asyncio.gather(*(check_record(p, resolver) for p in planned)))
    return DomainCheck(name, records, await check_mta_sts(cfg, name, mta_sts_mode, resolver, records))


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
