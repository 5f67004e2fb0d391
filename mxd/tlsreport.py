"""SMTP TLS reports (RFC 8460), outbound: the recipient domain's reporting policy read from its
`_smtp._tls` TXT record (section 3), the daily aggregate report as JSON (section 4.4) and the mail that
carries it (section 5.3). Pure: results in, a dict or bytes out."""
from __future__ import annotations

import calendar
import email.policy
import gzip
import hashlib
import json
import re
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime

from mxd import address as addr

# RFC 8460 4.3 (and the IANA "STARTTLS Validation Result Types" registry)
RESULT_TYPES = ("starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
                "certificate-not-trusted", "validation-failure", "tlsa-invalid", "dnssec-invalid", "dane-required",
                "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid")
POLICY_TYPES = ("tlsa", "sts", "no-policy-found")
MAX_RUA = 10              # report addresses used from one record
MAX_RECORD = 4096         # characters of a TXT record looked at
MEDIA_TYPE = "application/tlsrpt+gzip"
# CRLF, and header fields folded only past 200 characters: the report file name stays one plain quoted
# parameter (a name split by RFC 2231 is legal, and lost on some report readers)
_POLICY = email.policy.SMTP.clone(max_line_length=200)


@dataclass(frozen=True)
class Result:
    """Sessions of one day to one policy domain with one policy and outcome (result_type "" = success)."""
    policy_type: str
    policy_string: tuple[str, ...]
    mx_host: str
    result_type: str
    sending_ip: str
    receiving_ip: str
    detail: str
    count: int


# ---------------------------------------------------------------- the reporting policy (RFC 8460 3)
_WSP = " \t"
_VERSION = re.compile(r"v=TLSRPTv1[ \t]*;")      # tlsrpt-version field-delim: case-sensitive (%s)


def parse_record(txts: list[str]) -> list[str] | None:
    """The rua URIs of a domain's `_smtp._tls` TXT answers, or None when it has no usable TLSRPT policy.

    RFC 8460 3: records not starting with "v=TLSRPTv1;" are discarded; other than exactly one left means
    no policy; fields are separated by ";" with optional white space; rua= is a comma list of URIs (which
    cannot hold "," or "!"); a record without rua is no policy."""
    records = [t for t in txts if isinstance(t, str) and _VERSION.match(t)]
    if len(records) != 1:
        return None
    fields = [f.strip(_WSP) for f in records[0][:MAX_RECORD].split(";")]
    rua = None
    for field in fields[1:]:
        if field.startswith("rua="):
            if rua is not None:
                return None         # two rua fields: ambiguous
            uris = [u.strip(_WSP) for u in field[4:].split(",")]
            if not uris or any(not u or "!" in u or any(c in u for c in " \t\r\n") for u in uris):
                return None
            rua = uris
        elif field and "=" not in field:
            return None             # not a field: a malformed record
    return rua


def mail_recipients(uris: list[str]) -> list[str]:
    """The addresses of the mailto: URIs (RFC 6068; headers after "?" ignored), valid ones, at most MAX_RUA.
    https: URIs (RFC 8460 3: POSTed reports) are left to the caller."""
    found: list[str] = []
    for uri in uris:
        if not uri[:7].lower() == "mailto:":
            continue
        target = urllib.parse.unquote(uri[7:].split("?", 1)[0])
        for one in target.split(","):        # RFC 6068 2: a mailto: URI may name several addresses
            parsed = addr.try_parse(one)
            if parsed is not None and parsed.key not in found:
                found.append(parsed.key)
    return found[:MAX_RUA]


def https_endpoints(uris: list[str]) -> list[str]:
    return [u for u in uris if u[:8].lower() == "https://"][:MAX_RUA]


# ---------------------------------------------------------------- the report (RFC 8460 4.4)
def day_range(day: str) -> tuple[int, int]:
    """(first second, last second) of a UTC day YYYY-MM-DD; ValueError for anything else."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        raise ValueError(f"not a day (YYYY-MM-DD): {day!r}")
    begin = calendar.timegm(time.strptime(day, "%Y-%m-%d"))
    return begin, begin + 86399


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def report_id(day: str, domain: str, submitter: str) -> str:
    """Unique per domain and day and the same when a report is made again (receivers keep it once)."""
    return f"{day}T00:00:00Z_{domain}@{submitter}"


def _mx_hosts(policy_type: str, strings: tuple[str, ...], results: list[Result]) -> list[str]:
    if policy_type == "sts":      # RFC 8460 4.4: for MTA-STS, the policy's mx patterns
        patterns = [s.split(":", 1)[1].strip() for s in strings if s.lower().startswith("mx:")]
        if patterns:
            return patterns
    return sorted({r.mx_host for r in results if r.mx_host})


def build(day: str, domain: str, results: list[Result], organization: str, contact: str,
          rid: str | None = None) -> dict:
    """The report of one policy domain and UTC day: one policy entry per (policy type, policy string), its
    successful and failed sessions, and one failure-details entry per failure kind, MX host and address."""
    begin, end = day_range(day)
    groups: dict[tuple[str, tuple[str, ...]], list[Result]] = {}
    for r in results:
        groups.setdefault((r.policy_type, r.policy_string), []).append(r)
    policies = []
    for (ptype, strings), rows in sorted(groups.items()):
        policy: dict = {"policy-type": ptype if ptype in POLICY_TYPES else "no-policy-found"}
        if strings:
            policy["policy-string"] = list(strings)
        policy["policy-domain"] = domain
        hosts = _mx_hosts(ptype, strings, rows)
        if hosts:
            policy["mx-host"] = hosts                       # a list (RFC 8460 erratum 6241)
        failures = []
        for r in rows:
            if not r.result_type:
                continue
            detail: dict = {"result-type": r.result_type if r.result_type in RESULT_TYPES else "validation-failure"}
            if r.sending_ip:
                detail["sending-mta-ip"] = r.sending_ip
            if r.mx_host:
                detail["receiving-mx-hostname"] = r.mx_host
            if r.receiving_ip:
                detail["receiving-ip"] = r.receiving_ip
            detail["failed-session-count"] = r.count
            if r.detail:
                detail["failure-reason-code"] = r.detail
            failures.append(detail)
        entry: dict = {"policy": policy, "summary": {
            "total-successful-session-count": sum(r.count for r in rows if not r.result_type),
            "total-failure-session-count": sum(r.count for r in rows if r.result_type)}}
        if failures:
            entry["failure-details"] = failures
        policies.append(entry)
    return {"organization-name": organization,
            "date-range": {"start-datetime": _iso(begin), "end-datetime": _iso(end)},
            "contact-info": contact, "report-id": rid or report_id(day, domain, organization),
            "policies": policies}


# ---------------------------------------------------------------- the mail (RFC 8460 5.3)
def filename(submitter: str, domain: str, report: dict) -> str:
    """receiver "!" policy-domain "!" begin-timestamp "!" end-timestamp "!" unique-id ".json.gz" (5.1)."""
    begin = calendar.timegm(time.strptime(report["date-range"]["start-datetime"], "%Y-%m-%dT%H:%M:%SZ"))
    end = calendar.timegm(time.strptime(report["date-range"]["end-datetime"], "%Y-%m-%dT%H:%M:%SZ"))
    unique = hashlib.sha256(report["report-id"].encode()).hexdigest()[:16]
    return f"{submitter}!{domain}!{begin}!{end}!{unique}.json.gz"


def compressed(report: dict) -> bytes:
    """The report as gzipped JSON (mtime 0: the same report gives the same bytes)."""
    return gzip.compress(json.dumps(report, separators=(",", ":")).encode("utf-8"), mtime=0)


def message(report: dict, domain: str, submitter: str, from_addr: str, to: list[str], message_id: str,
            now: float | None = None) -> bytes:
    """The report as mail: multipart/report; report-type="tlsrpt" with a text part and the gzipped
    JSON as application/tlsrpt+gzip, TLS-Report-Domain and TLS-Report-Submitter, the subject 5.3 asks, and
    TLS-Required: No."""
    rid = report["report-id"]
    msg = EmailMessage()
    msg["From"] = from_addr
    msg["To"] = ", ".join(to)
    msg["Subject"] = f"Report Domain: {domain} Submitter: {submitter} Report-ID: <{rid}>"
    msg["Date"] = format_datetime(datetime.fromtimestamp(time.time() if now is None else now, timezone.utc))
    msg["Message-ID"] = message_id
    msg["TLS-Report-Domain"] = domain
    msg["TLS-Report-Submitter"] = submitter
    # RFC 8460 5.3: a report is delivered despite TLS failures (it is how the domain learns of them);
    # RFC 8689 5 is the way a message says so to the MTAs that carry it
    msg["TLS-Required"] = "No"
    total_ok = sum(p["summary"]["total-successful-session-count"] for p in report["policies"])
    total_failed = sum(p["summary"]["total-failure-session-count"] for p in report["policies"])
    msg.set_content(
        f"This is an aggregate TLS report (RFC 8460) from {submitter}\n"
        f"for the domain {domain}, covering {report['date-range']['start-datetime']}\n"
        f"to {report['date-range']['end-datetime']}: {total_ok} successful and {total_failed} failed\n"
        "TLS sessions. The report is attached.\n", cte="7bit")
    maintype, subtype = MEDIA_TYPE.split("/")
    msg.add_attachment(compressed(report), maintype=maintype, subtype=subtype,
                       filename=filename(submitter, domain, report))
    msg.set_type("multipart/report")
    msg.set_param("report-type", "tlsrpt")
    for part in msg.iter_parts():
        if "MIME-Version" in part:
            del part["MIME-Version"]
    return msg.as_bytes(policy=_POLICY)
