"""TLS results: the outbound TLS session counts the daily SMTP TLS reports (RFC 8460) sum up, and which
reports went out. Rows are added by `add` (an upsert-increment, so that tallies of several flushes, or of
several nodes, add up), read per domain and day by `of_day`, claimed per domain and day by `claim` (so that
one report goes out, whichever node sends it) and dropped after `KEEP_DAYS` by `prune`."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

from peewee import EXCLUDED, IntegrityError, fn

from mxd.db import proxy
from mxd.store.models import TlsReportSent, TlsResult
from mxd.tlsreport import Result

KEEP_DAYS = 30          # results (and the record of reports sent) older than this are pruned
CLAIM_SECONDS = 3600.0  # a claim not settled in this time (a node died while sending) may be taken again

Key = tuple[str, str, str, str, str, str]   # day, policy_domain, policy_type, mx_host, result_type, receiving_ip


@dataclass
class Count:
    """What a tally holds for one key: sessions, and the policy string and detail of the last one."""
    count: int
    policy_string: list[str]
    detail: str = ""


def add(counts: dict[Key, Count]) -> None:
    """Runs in the writer: add the counts to the stored ones, keeping the latest policy string and detail."""
    rows = [{"day": k[0], "policy_domain": k[1], "policy_type": k[2], "mx_host": k[3], "result_type": k[4],
             "receiving_ip": k[5], "policy_string": c.policy_string, "detail": c.detail, "count": c.count}
            for k, c in counts.items()]
    for start in range(0, len(rows), 200):
        (TlsResult.insert_many(rows[start:start + 200])
         .on_conflict(conflict_target=[TlsResult.day, TlsResult.policy_domain, TlsResult.policy_type,
                                       TlsResult.mx_host, TlsResult.result_type, TlsResult.receiving_ip],
                      update={TlsResult.count: TlsResult.count + EXCLUDED.count,
                              TlsResult.policy_string: EXCLUDED.policy_string,
                              TlsResult.detail: fn.COALESCE(fn.NULLIF(EXCLUDED.detail, ""), TlsResult.detail)})
         .execute())


def of_day(domain: str, day: str) -> list[Result]:
    """The results of one policy domain and UTC day."""
    query = (TlsResult.select().where(TlsResult.policy_domain == domain, TlsResult.day == day)
             .order_by(TlsResult.policy_type, TlsResult.mx_host, TlsResult.result_type, TlsResult.receiving_ip))
    return [Result(r.policy_type, tuple(str(s) for s in r.policy_string or []), r.mx_host, r.result_type,
                   r.sending_ip, r.receiving_ip, r.detail, r.count) for r in query]


def unreported(days: Iterable[str], now: float | None = None) -> list[tuple[str, str]]:
    """(policy domain, day) pairs of the given days that have results and no report sent or being sent
    (a claim older than CLAIM_SECONDS, whose sender died, counts as none)."""
    days = list(days)
    if not days:
        return []
    now = time.time() if now is None else now
    settled = TlsReportSent.select(TlsReportSent.policy_domain, TlsReportSent.day).where(
        TlsReportSent.day.in_(days),
        (TlsReportSent.outcome != "sending") | (TlsReportSent.sent_at > now - CLAIM_SECONDS))
    have = {(r.policy_domain, r.day) for r in settled}
    query = (TlsResult.select(TlsResult.policy_domain, TlsResult.day).where(TlsResult.day.in_(days))
             .group_by(TlsResult.policy_domain, TlsResult.day).order_by(TlsResult.day, TlsResult.policy_domain))
    return [(r.policy_domain, r.day) for r in query if (r.policy_domain, r.day) not in have]


def claim(domain: str, day: str, now: float | None = None) -> bool:
    """Runs in the writer: take the report of (domain, day) to send it; False when it is sent or being sent."""
    now = time.time() if now is None else now
    row = TlsReportSent.get_or_none(TlsReportSent.policy_domain == domain, TlsReportSent.day == day)
    if row is not None:
        if row.outcome != "sending" or row.sent_at > now - CLAIM_SECONDS:
            return False
        row.delete_instance()
    try:
        with proxy.atomic():          # a savepoint: when another node claimed it first, only this insert fails
            TlsReportSent.create(policy_domain=domain, day=day, sent_at=now, outcome="sending")
    except IntegrityError:
        return False
    return True


def settle(domain: str, day: str, outcome: str, rua: str = "") -> None:
    """Runs in the writer: what became of a claimed report (queued, no-rua, failed)."""
    TlsReportSent.update(outcome=outcome, rua=rua[:2000], sent_at=time.time()).where(
        TlsReportSent.policy_domain == domain, TlsReportSent.day == day).execute()


def release(domain: str, day: str) -> None:
    """Runs in the writer: give a claim back (a temporary failure: the next pass tries again)."""
    TlsReportSent.delete().where(TlsReportSent.policy_domain == domain, TlsReportSent.day == day,
                                 TlsReportSent.outcome == "sending").execute()


def sent(domain: str, day: str) -> TlsReportSent | None:
    return TlsReportSent.get_or_none(TlsReportSent.policy_domain == domain, TlsReportSent.day == day)


def prune(oldest_day: str) -> int:
    """Runs in the writer: drop results and report records of days before `oldest_day` (YYYY-MM-DD)."""
    dropped = TlsResult.delete().where(TlsResult.day < oldest_day).execute()
    TlsReportSent.delete().where(TlsReportSent.day < oldest_day).execute()
    return dropped
