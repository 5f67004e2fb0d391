"""Domain DNS checks: compare what the resolver answers with the records a domain must publish.

Each record comes back found, missing or wrong (with the value found); a domain
is ready for outbound mail when every required record is found.
"""
from __future__ import annotations

from dataclasses import dataclass

from mxd import dnsrecords, keys
from mxd.config import Config
from mxd.resolver import DNSError, Resolver


@dataclass
class RecordCheck:
    record: dnsrecords.DnsRecord
    status: str                 # "found" | "missing" | "wrong" | "error"
    found: list[str]

    def to_json(self) -> dict:
        return dict(self.record.to_json(), status=self.status, found=self.found)


def _norm(value: str) -> str:
    return " ".join(value.replace('" "', "").split()).lower().rstrip(";")


def _tags(value: str) -> dict[str, str]:
    out = {}
    for part in value.split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip().lower()] = "".join(v.split())
    return out


async def _check(record: dnsrecords.DnsRecord, resolver: Resolver) -> RecordCheck:
    try:
        if record.type == "MX":
            answers = [f"{pref} {host}" for pref, host in await resolver.amx(record.name)]
            want = record.value.split()[-1].lower().rstrip(".")
            ok = any(a.split()[-1].lower() == want for a in answers)
        elif record.type == "TXT":
            answers = await resolver.atxt(record.name)
            if record.value.startswith("v=DKIM1"):
                want = _tags(record.value).get("p")
                relevant = [a for a in answers if "p=" in a]
                ok = any(_tags(a).get("p") == want for a in relevant)
            elif record.value.startswith("v=DMARC1"):
                relevant = [a for a in answers if a.lower().startswith("v=dmarc1")]
                ok = len(relevant) == 1                   # RFC 7489 6.6.3: exactly one record counts
            else:                                         # SPF: exactly one v=spf1 record (RFC 7208 4.5)
                relevant = [a for a in answers if a.lower().startswith("v=spf1")]
                ok = len(relevant) == 1 and _norm(relevant[0]) == _norm(record.value)
            answers = relevant if record.value.startswith(("v=DKIM1", "v=DMARC1", "v=spf1")) else answers
        elif record.type == "A":
            answers = await resolver.aa(record.name)
            ok = record.value in answers
        else:
            answers = await resolver.aaaaa(record.name)
            ok = record.value in answers
    except DNSError as exc:
        return RecordCheck(record, "error", [str(exc)])
    return RecordCheck(record, "found" if ok else ("wrong" if answers else "missing"), answers)


def plan(cfg: Config, domain: str) -> list[dnsrecords.DnsRecord]:
    return dnsrecords.required_records(domain, cfg.hostname, keys.load_dkim_keys(cfg.dkim_dir, domain))


async def check(cfg: Config, domain: str, resolver: Resolver) -> tuple[bool, list[RecordCheck]]:
    results = [await _check(r, resolver) for r in plan(cfg, domain)]
    return all(r.status == "found" for r in results), results
