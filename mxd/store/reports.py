"""DMARC aggregate and SMTP TLS reports read from the report addresses: which messages were looked at, the
reports they held, and the per-organisation, per-source summaries the reports API shows.

The report address of a served domain is its postmaster@ mailbox (`mxd.dnsrecords.report_address`, the
`rua=` of the DNS plan).
Functions run inside a `Database.read` / `write` call.
"""
from __future__ import annotations

import time
from typing import Any, Iterable

import peewee as pw

from mxd.dnsrecords import REPORT_LOCAL, report_address
from mxd.ids import new_id
from mxd.store.models import (
    DmarcReportRow,
    Domain,
    Mailbox,
    Message,
    ReceivedReport,
    ReportSource,
    TlsReportPolicy,
)


def unread(limit: int) -> list[tuple[str, str]]:
    """(message id, mailbox id) of inbound messages at a report address not looked at yet, oldest first.
    Quarantined messages wait: they are looked at once released."""
    looked = ReportSource.select(ReportSource.message_id)
    query = (Message.select(Message.id, Message.mailbox)
             .join(Mailbox, on=(Message.mailbox == Mailbox.id))
             .where(Mailbox.address.startswith(f"{REPORT_LOCAL}@"), Message.direction == "in",
                    Message.quarantine.is_null(), Message.id.not_in(looked))
             .order_by(Message.received_at).limit(limit))
    return [(m.id, m.mailbox_id) for m in query]


def record(message_id: str, mailbox_id: str, reports: Iterable[Any], errors: list[dict]) -> int:
    """Keep what one message held (runs in the writer); a report already kept (same kind, organisation and
    report id, e.g. sent twice) is not counted again. Returns the number of new reports."""
    added = 0
    now = time.time()
    for rep in reports:
        exists = ReceivedReport.get_or_none((ReceivedReport.kind == rep.kind)
                                            & (ReceivedReport.org_name == rep.org_name[:255])
                                            & (ReceivedReport.report_id == rep.report_id[:255]))
        if exists is not None:
            continue
        row = ReceivedReport.create(
            id=new_id("rpt"), kind=rep.kind, org_name=rep.org_name[:255],
            contact=(rep.org_email if rep.kind == "dmarc" else rep.contact)[:320], report_id=rep.report_id[:255],
            domain=(rep.domain if rep.kind == "dmarc" else "")[:255], policy=getattr(rep, "policy", "")[:16],
            begin=rep.begin, end=rep.end, message_id=message_id, received_at=now)
        if rep.kind == "dmarc":
            for batch in _batches([dict(report=row.id, source_ip=r.source_ip[:64], count=r.count,
                                        header_from=r.header_from[:255], spf=r.spf[:16], dkim=r.dkim[:16],
                                        dmarc=r.dmarc, disposition=r.disposition[:16]) for r in rep.rows]):
                DmarcReportRow.insert_many(batch).execute()
        else:
            for batch in _batches([dict(report=row.id, policy_type=p.policy_type[:20],
                                        policy_domain=p.policy_domain[:255], successful=p.successful,
                                        failed=p.failed, failures=p.failures) for p in rep.policies]):
                TlsReportPolicy.insert_many(batch).execute()
        added += 1
    ReportSource.insert(message_id=message_id, mailbox_id=mailbox_id, looked_at=now, reports=added,
                        errors=errors).on_conflict_ignore().execute()
    return added


def _batches(rows: list[dict], size: int = 200) -> Iterable[list[dict]]:
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


def owned_domains(org_ids: list[str | None] | None) -> list[str] | None:
    """Names of the domains of these organisations (None in the list: the operator's); None: every domain."""
    if org_ids is None:
        return None
    cond = [Domain.org_id.is_null() if o is None else Domain.org_id == o for o in org_ids]
    query = Domain.select(Domain.name)
    if cond:
        expr = cond[0]
        for c in cond[1:]:
            expr = expr | c
        query = query.where(expr)
    return [d.name for d in query]


def _window(query: Any, domains: list[str] | None, domain: str | None, since: float | None,
            until: float | None, column: Any) -> Any:
    if domains is not None:
        query = query.where(column.in_(domains or [""]))
    if domain:
        query = query.where(column == domain)
    if since is not None:
        query = query.where(ReceivedReport.end >= since)
    if until is not None:
        query = query.where(ReceivedReport.begin < until)
    return query


def _sum_if(column: Any, value: str) -> Any:
    return pw.fn.SUM(pw.Case(None, [(column == value, DmarcReportRow.count)], 0))


def dmarc_summary(domains: list[str] | None, domain: str | None = None, since: float | None = None,
                  until: float | None = None) -> list[dict]:
    """Per reporting organisation, domain and source IP: messages, and how many passed and failed SPF, DKIM
    and DMARC (the results DMARC evaluated, aligned with the author domain)."""
    total = pw.fn.SUM(DmarcReportRow.count)
    query = (DmarcReportRow.select(ReceivedReport.org_name, ReceivedReport.domain, DmarcReportRow.source_ip,
                                   total.alias("messages"),
                                   _sum_if(DmarcReportRow.spf, "pass").alias("spf_pass"),
                                   _sum_if(DmarcReportRow.dkim, "pass").alias("dkim_pass"),
                                   _sum_if(DmarcReportRow.dmarc, "pass").alias("dmarc_pass"),
                                   pw.fn.COUNT(pw.fn.DISTINCT(ReceivedReport.id)).alias("reports"),
                                   pw.fn.MIN(ReceivedReport.begin).alias("begin"),
                                   pw.fn.MAX(ReceivedReport.end).alias("end"))
             .join(ReceivedReport, on=(DmarcReportRow.report == ReceivedReport.id)))
    query = _window(query, domains, domain, since, until, ReceivedReport.domain)
    query = (query.group_by(ReceivedReport.org_name, ReceivedReport.domain, DmarcReportRow.source_ip)
             .order_by(ReceivedReport.domain, ReceivedReport.org_name, DmarcReportRow.source_ip))
    out = []
    for r in query.dicts():
        n = int(r["messages"] or 0)
        out.append({"org_name": r["org_name"], "domain": r["domain"], "source_ip": r["source_ip"], "messages": n,
                    "reports": int(r["reports"]), "begin": r["begin"], "end": r["end"],
                    **{f"{k}_{res}": (int(r[f"{k}_pass"] or 0) if res == "pass" else n - int(r[f"{k}_pass"] or 0))
                       for k in ("spf", "dkim", "dmarc") for res in ("pass", "fail")}})
    return out


def tls_summary(domains: list[str] | None, domain: str | None = None, since: float | None = None,
                until: float | None = None) -> list[dict]:
    """Per reporting organisation, policy domain and policy type: sessions that succeeded and failed, with the
    failed sessions per failure type (RFC 8460 4.3 result-type)."""
    query = (TlsReportPolicy.select(TlsReportPolicy, ReceivedReport.org_name)
             .join(ReceivedReport, on=(TlsReportPolicy.report == ReceivedReport.id)))
    query = _window(query, domains, domain, since, until, TlsReportPolicy.policy_domain)
    groups: dict[tuple[str, str, str], dict] = {}
    for p in query.order_by(TlsReportPolicy.policy_domain, ReceivedReport.org_name):
        key = (p.report.org_name, p.policy_domain, p.policy_type)
        g = groups.setdefault(key, {"org_name": key[0], "policy_domain": key[1], "policy_type": key[2],
                                    "successful": 0, "failed": 0, "failure_types": {}, "reports": 0})
        g["successful"] += p.successful
        g["failed"] += p.failed
        g["reports"] += 1
        for f in p.failures or []:
            kind = str(f.get("result_type", ""))
            g["failure_types"][kind] = g["failure_types"].get(kind, 0) + int(f.get("count") or 0)
    return list(groups.values())


def errors(mailbox_ids: list[str] | None, limit: int = 100) -> list[dict]:
    """Messages at a report address whose report parts could not be read, newest first."""
    query = ReportSource.select().where(pw.fn.LENGTH(ReportSource.errors) > 2)   # not "[]"
    if mailbox_ids is not None:
        query = query.where(ReportSource.mailbox_id.in_(mailbox_ids or [""]))
    return [{"message_id": s.message_id, "mailbox_id": s.mailbox_id, "looked_at": s.looked_at, "errors": s.errors}
            for s in query.order_by(ReportSource.looked_at.desc()).limit(limit)]


def report_mailboxes(domains: list[str] | None) -> list[str] | None:
    """Ids of the report mailboxes (postmaster@) of these domains; None: every one."""
    if domains is None:
        return None
    return [m.id for m in Mailbox.select(Mailbox.id).where(
        Mailbox.address.in_([report_address(d) for d in domains] or [""]))]
