"""SMTP TLS reports, outbound (RFC 8460): the tally of sessions and its rows, the reporting policy read from
DNS, the report's JSON against RFC 8460 4.4's schema, the mail that carries it, and the reports sent for
a store's results (once per domain and day, DKIM-signed, through the one send path)."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import email
import email.policy
import gzip
import json
import re
import time
from pathlib import Path
from typing import Iterator

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxd import config, reports, tlsreport
from mxd.delivery.tlspolicy import Applied
from mxd.delivery.tlsrpt import TlsTally, flush_all, utc_day
from mxd.errors import MxdError
from mxd.ingest import with_trace
from mxd.resolver import StaticResolver
from mxd.service import Services, tls_reports
from mxd.service import directory as directory_service
from mxd.store import open_store, tls_results
from mxd.store.directory import Directory
from mxd.store.models import Domain, Inbound, QueueEntry, TlsReportSent, TlsResult
from mxd.tls_reporter import JITTER, RETRY, TlsReporter, until_next_pass
from mxd.tlsreport import Result
from tests.support.pg import fresh_database
from tests.support.store import db, sqlite_url, started_store  # noqa: F401 (fixture)

# RFC 8460 4.4 (with erratum 6241: mx-host is a list) and 4.3's result types, as JSON Schema.
RFC8460_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["organization-name", "date-range", "contact-info", "report-id", "policies"],
    "properties": {
        "organization-name": {"type": "string", "minLength": 1},
        "date-range": {"type": "object", "required": ["start-datetime", "end-datetime"],
                       "properties": {"start-datetime": {"type": "string", "format": "date-time"},
                                      "end-datetime": {"type": "string", "format": "date-time"}},
                       "additionalProperties": False},
        "contact-info": {"type": "string", "minLength": 1},
        "report-id": {"type": "string", "minLength": 1},
        "policies": {"type": "array", "items": {
            "type": "object", "required": ["policy", "summary"], "additionalProperties": False,
            "properties": {
                "policy": {"type": "object", "required": ["policy-type", "policy-domain"],
                           "additionalProperties": False,
                           "properties": {"policy-type": {"enum": ["tlsa", "sts", "no-policy-found"]},
                                          "policy-string": {"type": "array", "items": {"type": "string"}},
                                          "policy-domain": {"type": "string", "minLength": 1},
                                          "mx-host": {"type": "array", "items": {"type": "string"}}}},
                "summary": {"type": "object", "additionalProperties": False,
                            "required": ["total-successful-session-count", "total-failure-session-count"],
                            "properties": {"total-successful-session-count": {"type": "integer", "minimum": 0},
                                           "total-failure-session-count": {"type": "integer", "minimum": 0}}},
                "failure-details": {"type": "array", "items": {
                    "type": "object", "required": ["result-type", "failed-session-count"],
                    "additionalProperties": False,
                    "properties": {
                        "result-type": {"enum": ["starttls-not-supported", "certificate-host-mismatch",
                                                 "certificate-expired", "certificate-not-trusted",
                                                 "validation-failure", "tlsa-invalid", "dnssec-invalid",
                                                 "dane-required", "sts-policy-fetch-error", "sts-policy-invalid",
                                                 "sts-webpki-invalid"]},
                        "sending-mta-ip": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
                        "receiving-mx-hostname": {"type": "string"},
                        "receiving-mx-helo": {"type": "string"},
                        "receiving-ip": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
                        "failed-session-count": {"type": "integer", "minimum": 0},
                        "additional-information": {"type": "string", "format": "uri"},
                        "failure-reason-code": {"type": "string"}}}}}}},
    },
    "additionalProperties": False,
}
VALIDATOR = jsonschema.Draft202012Validator(RFC8460_SCHEMA, format_checker=jsonschema.FormatChecker())

STS = ("version: STSv1", "mode: testing", "mx: mx1.peer.test", "mx: *.backup.peer.test", "max_age: 86400")
TLSA = ("_25._tcp.mx2.peer.test. IN TLSA 3 1 1 0123456789abcdef",)
DAY = "2026-03-04"


def _results() -> list[Result]:
    return [
        Result("sts", STS, "mx1.peer.test", "", "", "192.0.2.1", "", 40),
        Result("sts", STS, "mx1.peer.test", "certificate-expired", "", "192.0.2.1", "certificate expired", 3),
        Result("sts", STS, "a.backup.peer.test", "certificate-host-mismatch", "", "2001:db8::25", "", 2),
        Result("sts", (), "", "sts-policy-fetch-error", "", "", "HTTP 404 from mta-sts.peer.test", 1),
        Result("tlsa", TLSA, "mx2.peer.test", "", "", "192.0.2.2", "", 7),
        Result("tlsa", TLSA, "mx2.peer.test", "tlsa-invalid", "", "192.0.2.2", "no TLSA record matched", 4),
        Result("no-policy-found", (), "mx3.peer.test", "", "", "192.0.2.3", "", 5),
        Result("no-policy-found", (), "mx3.peer.test", "starttls-not-supported", "", "192.0.2.3", "", 6),
    ]


# ---------------------------------------------------------------- the tally
def _applied(kind: str = "sts", host: str = "mx1.peer.test", domain: str = "peer.test",
             strings: tuple[str, ...] = STS) -> Applied:
    policy = {"sts": "mta-sts", "tlsa": "dane", "no-policy-found": "opportunistic"}[kind]
    return Applied(policy, "testing", host, "", kind, list(strings), domain)


async def test_tally_counts_sessions_and_flushes_add_up(db):  # noqa: F811
    tally = TlsTally(db)
    for _ in range(3):
        tally.note(_applied(), "192.0.2.1")
    tally.note(_applied(), "192.0.2.1", "certificate-expired", "the certificate expired on 2026-01-01")
    tally.note(_applied(host="MX1.Peer.Test", domain="PEER.test"), "192.0.2.1")      # names as the DNS wrote them
    tally.note(Applied("smart-host", "required", "relay.test"), "192.0.2.9")      # no recipient domain: not counted
    assert tally.pending == 5
    await tally.flush()
    assert tally.pending == 0
    tally.note(_applied(), "192.0.2.1")
    tally.note(_applied(strings=("version: STSv1", "mode: enforce")), "192.0.2.1", "certificate-expired", "")
    await tally.flush()
    await tally.flush()                         # nothing noted: nothing written

    def rows():
        return {(r.day, r.policy_domain, r.policy_type, r.mx_host, r.result_type, r.receiving_ip):
                (r.count, r.policy_string, r.detail) for r in TlsResult.select()}
    today = utc_day(time.time())
    assert await db.read(rows) == {
        (today, "peer.test", "sts", "mx1.peer.test", "", "192.0.2.1"): (5, list(STS), ""),
        (today, "peer.test", "sts", "mx1.peer.test", "certificate-expired", "192.0.2.1"):
            (2, ["version: STSv1", "mode: enforce"], "the certificate expired on 2026-01-01"),
    }


async def test_flush_all_writes_every_tally_of_a_store(db):  # noqa: F811
    one, two = TlsTally(db), TlsTally(db)
    one.note(_applied(), "192.0.2.1")
    two.note(_applied(), "192.0.2.1")
    two.note(_applied("tlsa", "mx2.peer.test", strings=TLSA), "192.0.2.2", "tlsa-invalid", "mismatch")
    await flush_all(db)
    assert one.pending == two.pending == 0
    found = await db.read(tls_results.of_day, "peer.test", utc_day(time.time()))
    assert [(r.policy_type, r.result_type, r.count) for r in found] == [("sts", "", 2), ("tlsa", "tlsa-invalid", 1)]


# ---------------------------------------------------------------- the reporting policy (RFC 8460 3)
@pytest.mark.parametrize("txts, rua", [
    (["v=TLSRPTv1; rua=mailto:tlsrpt@peer.test"], ["mailto:tlsrpt@peer.test"]),
    (["v=TLSRPTv1;rua=mailto:a@peer.test, https://reports.peer.test/v1;"],
     ["mailto:a@peer.test", "https://reports.peer.test/v1"]),
    (["v=spf1 -all", "v=TLSRPTv1 ; rua=mailto:a@peer.test ; ext=1"], ["mailto:a@peer.test"]),
    (["v=TLSRPTv1; rua=mailto:a@peer.test", "v=TLSRPTv1; rua=mailto:b@peer.test"], None),   # two records: none
    (["v=TLSRPTv1"], None),                                     # no rua
    (["v=TLSRPTv10; rua=mailto:a@peer.test"], None),            # another version
    (["v=TLSRPTv10; rua=mailto:b@peer.test", "v=TLSRPTv1;rua=mailto:a@peer.test"], ["mailto:a@peer.test"]),
    (["v=TLSRPTv1 rua=mailto:a@peer.test"], None),              # no field delimiter
    (["V=TLSRPTv1; rua=mailto:a@peer.test"], None),              # the version is case-sensitive
    (["v=TLSRPTv1; rua=mailto:a@peer.test!10m"], None),         # "!" cannot be in a TLSRPT URI
    (["v=TLSRPTv1; rua="], None),
    (["v=TLSRPTv1; rua=mailto:a@peer.test; rua=mailto:b@peer.test"], None),
    (["v=TLSRPTv1; junk; rua=mailto:a@peer.test"], None),
    ([], None),
])
def test_reporting_policy_is_read_as_rfc_8460_3_says(txts, rua):
    assert tlsreport.parse_record(txts) == rua


def test_only_valid_mailto_addresses_are_used():
    uris = ["https://r.peer.test/x", "mailto:Reports@Peer.Test?subject=x", "mailto:a%40b@peer.test",
            "mailto:one@peer.test,two@peer.test", "mailto:not-an-address", "MAILTO:reports@peer.test",
            "ftp://x.test/"]
    assert tlsreport.mail_recipients(uris) == ["reports@peer.test", "one@peer.test", "two@peer.test"]
    assert tlsreport.https_endpoints(uris) == ["https://r.peer.test/x"]
    many = [f"mailto:r{i}@peer.test" for i in range(50)]
    assert len(tlsreport.mail_recipients(many)) == tlsreport.MAX_RUA


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=300), st.builds(lambda s: "v=TLSRPTv1;" + s, st.text(max_size=300))),
                max_size=4))
def test_hostile_records_give_a_list_of_addresses_or_nothing(txts):
    rua = tlsreport.parse_record(txts)
    assert rua is None or (isinstance(rua, list) and all(isinstance(u, str) and u for u in rua))
    for address in tlsreport.mail_recipients(rua or []):
        assert address.count("@") == 1 and not any(c in address for c in " \r\n\t,")


# ---------------------------------------------------------------- the report (RFC 8460 4.4)
def test_report_matches_the_rfc_schema_and_sums_the_sessions():
    report = tlsreport.build(DAY, "peer.test", _results(), "mx.example.test", "postmaster@example.test")
    VALIDATOR.validate(report)
    assert report["date-range"] == {"start-datetime": "2026-03-04T00:00:00Z", "end-datetime": "2026-03-04T23:59:59Z"}
    assert report["report-id"] == "2026-03-04T00:00:00Z_peer.test@mx.example.test"
    by = {(p["policy"]["policy-type"], tuple(p["policy"].get("policy-string", ()))): p for p in report["policies"]}
    assert sorted(by) == [("no-policy-found", ()), ("sts", ()), ("sts", STS), ("tlsa", TLSA)]
    sts = by[("sts", STS)]
    assert sts["policy"]["mx-host"] == ["mx1.peer.test", "*.backup.peer.test"]          # the policy's patterns
    assert sts["summary"] == {"total-successful-session-count": 40, "total-failure-session-count": 5}
    assert sorted((f["result-type"], f["receiving-mx-hostname"], f["receiving-ip"], f["failed-session-count"])
                  for f in sts["failure-details"]) == [
        ("certificate-expired", "mx1.peer.test", "192.0.2.1", 3),
        ("certificate-host-mismatch", "a.backup.peer.test", "2001:db8::25", 2)]
    assert [f.get("failure-reason-code") for f in sts["failure-details"]] == ["certificate expired", None]
    assert by[("sts", ())]["failure-details"] == [{"result-type": "sts-policy-fetch-error", "failed-session-count": 1,
                                                  "failure-reason-code": "HTTP 404 from mta-sts.peer.test"}]
    assert by[("tlsa", TLSA)]["policy"]["mx-host"] == ["mx2.peer.test"]
    assert by[("tlsa", TLSA)]["summary"] == {"total-successful-session-count": 7, "total-failure-session-count": 4}
    assert by[("no-policy-found", ())]["summary"] == {"total-successful-session-count": 5,
                                                      "total-failure-session-count": 6}
    assert "failure-details" not in tlsreport.build(DAY, "peer.test", _results()[:1], "m", "c")["policies"][0]


def test_the_schema_catches_a_broken_report():
    """The schema fixture itself: a report missing its summary, or with a result type RFC 8460 lacks, fails."""
    report = tlsreport.build(DAY, "peer.test", _results(), "mx.example.test", "postmaster@example.test")
    broken = json.loads(json.dumps(report))
    del broken["policies"][0]["summary"]
    assert not VALIDATOR.is_valid(broken)
    broken = json.loads(json.dumps(report))
    broken["policies"][1]["failure-details"][0]["result-type"] = "certificate-too-pretty"
    assert not VALIDATOR.is_valid(broken)
    broken = json.loads(json.dumps(report))
    broken["date-range"]["start-datetime"] = "2026-03-04 00:00"
    assert not VALIDATOR.is_valid(broken)


def test_unknown_types_from_the_store_become_rfc_types():
    odd = [Result("dane-ish", (), "mx.peer.test", "weird-failure", "", "", "", 1)]
    report = tlsreport.build(DAY, "peer.test", odd, "mx.example.test", "postmaster@example.test")
    VALIDATOR.validate(report)
    assert report["policies"][0]["policy"]["policy-type"] == "no-policy-found"
    assert report["policies"][0]["failure-details"][0]["result-type"] == "validation-failure"


@pytest.mark.parametrize("day", ["2026-3-4", "yesterday", "2026-13-01", "", "2026-03-04T00:00:00Z"])
def test_a_day_is_a_utc_date(day):
    with pytest.raises(ValueError):
        tlsreport.day_range(day)


# ---------------------------------------------------------------- the mail (RFC 8460 5.3)
def test_report_mail_is_a_tlsrpt_multipart_report_the_reports_reader_reads():
    report = tlsreport.build(DAY, "peer.test", _results(), "mx.example.test", "postmaster@example.test")
    raw = tlsreport.message(report, "peer.test", "mx.example.test", "tls-reports@example.test",
                            ["tlsrpt@peer.test", "ops@peer.test"], "<r1@example.test>", now=1772600000)
    assert b"\r\n" in raw and all(len(line) <= 998 for line in raw.split(b"\r\n"))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "tlsrpt"
    assert msg["TLS-Report-Domain"] == "peer.test" and msg["TLS-Report-Submitter"] == "mx.example.test"
    assert msg["TLS-Required"] == "No"
    assert msg["Subject"] == ("Report Domain: peer.test Submitter: mx.example.test "
                              "Report-ID: <2026-03-04T00:00:00Z_peer.test@mx.example.test>")
    assert msg["From"] == "tls-reports@example.test" and msg["To"] == "tlsrpt@peer.test, ops@peer.test"
    text, attachment = list(msg.iter_parts())
    assert text.get_content_type() == "text/plain" and "40 successful" not in text.get_content()
    assert "aggregate TLS report" in text.get_content()
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    name = attachment.get_filename()
    assert re.fullmatch(r"mx\.example\.test!peer\.test!1772582400!1772668799![0-9a-f]{16}\.json\.gz", name), name
    assert json.loads(gzip.decompress(attachment.get_content())) == report
    assert b'filename="mx.example.test!peer.test!' in raw           # one plain parameter, not RFC 2231 pieces
    [parsed], errors = reports.in_message(raw, 1 << 20)
    assert errors == [] and parsed.kind == "tls" and parsed.report_id == report["report-id"]
    assert parsed.org_name == "mx.example.test" and parsed.contact == "postmaster@example.test"
    got = {(p.policy_type, p.successful, p.failed) for p in parsed.policies}
    assert got == {("sts", 40, 5), ("sts", 0, 1), ("tlsa", 7, 4), ("no-policy-found", 5, 6)}


# ---------------------------------------------------------------- sending what a store holds
@pytest.fixture
def sending(tmp_path: Path) -> Iterator[Services]:
    """A store serving example.test (ready, with DKIM keys) and a resolver where peer.test asks for reports."""
    cfg = config.load(None, {"MXD_DATA_DIR": str(tmp_path), "MXD_HOSTNAME": "mx.example.test"})
    database = open_store(sqlite_url(tmp_path))
    directory_service.setup_domain(database, cfg, "example.test")
    database.write_sync(lambda: Domain.update(ready=True).execute())
    resolver = StaticResolver({
        "_smtp._tls.peer.test": {"TXT": ["v=TLSRPTv1; rua=mailto:tlsrpt@peer.test,https://r.peer.test/"]},
        "_smtp._tls.quiet.test": {"TXT": ["v=spf1 -all"]},
        "_smtp._tls.web.test": {"TXT": ["v=TLSRPTv1; rua=https://r.web.test/"]},
        "_smtp._tls.down.test": "SERVFAIL",
    })
    workers = concurrent.futures.ThreadPoolExecutor(1)
    yield Services(cfg, database, Directory(), workers, lambda: None, resolver)
    workers.shutdown()
    database.close()


def _note(db, day: str, domain: str, count: int = 1, result_type: str = "") -> None:
    key = (day, domain, "sts", "mx1." + domain, result_type, "192.0.2.1")
    db.write_sync(tls_results.add, {key: tls_results.Count(count, list(STS), "why" if result_type else "")})


async def test_past_days_are_reported_once_signed_and_queued(sending):
    s = sending
    now = time.time()
    yesterday, today = utc_day(now - 86400), utc_day(now)
    _note(s.db, yesterday, "peer.test", 9)
    _note(s.db, yesterday, "peer.test", 2, "certificate-expired")
    _note(s.db, today, "peer.test", 4)                      # today is not over: not reported by a scheduled pass
    for domain in ("quiet.test", "web.test"):
        _note(s.db, yesterday, domain)
    done = await tls_reports.send_reports(s, now=now)
    by = {r["domain"]: r for r in done}
    assert sorted(by) == ["peer.test", "quiet.test", "web.test"]
    assert by["quiet.test"]["outcome"] == by["web.test"]["outcome"] == "no-rua"
    sent = by["peer.test"]
    assert sent["outcome"] == "queued" and sent["rua"] == ["tlsrpt@peer.test"] and sent["day"] == yesterday

    def stored():
        [entry] = QueueEntry.select().where(QueueEntry.recipient == "tlsrpt@peer.test")
        row = Inbound.get_by_id(entry.inbound_id)
        return entry.mail_from, with_trace(row.trace, row.data), {
            (r.policy_domain, r.day): (r.outcome, r.rua) for r in TlsReportSent.select()}
    mail_from, raw, marks = await s.db.read(stored)
    assert mail_from.endswith("@example.test")
    assert marks == {("peer.test", yesterday): ("queued", "tlsrpt@peer.test"),
                     ("quiet.test", yesterday): ("no-rua", ""),
                     ("web.test", yesterday): ("no-rua", "https://r.web.test/")}
    assert raw.startswith(b"DKIM-Signature:") and b"d=example.test" in raw.split(b"\r\n\r\n")[0]
    [report], _ = reports.in_message(raw, 1 << 20)
    [policy] = report.policies
    assert (policy.policy_domain, policy.successful, policy.failed) == ("peer.test", 9, 2)
    assert await tls_reports.send_reports(s, now=now) == []           # sent once
    # asked for today explicitly (an operator, a test): the sessions so far, and today is then reported
    [now_sent] = await tls_reports.send_reports(s, day=today, now=now)
    assert now_sent["outcome"] == "queued" and now_sent["day"] == today


async def test_a_dns_failure_gives_the_report_back_for_the_next_pass(sending):
    s = sending
    now = time.time()
    _note(s.db, utc_day(now - 86400), "down.test")
    [r] = await tls_reports.send_reports(s, now=now)
    assert r["outcome"] == "retry" and "DNS" in r["reason"]
    assert await s.db.read(lambda: TlsReportSent.select().count()) == 0
    [again] = await tls_reports.send_reports(s, now=now)
    assert again["outcome"] == "retry"


async def test_a_claim_is_taken_once_and_a_dead_claim_again(sending):
    s = sending
    now = time.time()
    assert await s.db.write(tls_results.claim, "peer.test", DAY, now)
    assert not await s.db.write(tls_results.claim, "peer.test", DAY, now + 10)
    assert await s.db.write(tls_results.claim, "peer.test", DAY, now + tls_results.CLAIM_SECONDS + 1)
    await s.db.write(tls_results.settle, "peer.test", DAY, "queued")
    assert not await s.db.write(tls_results.claim, "peer.test", DAY, now + 10 * tls_results.CLAIM_SECONDS)


async def test_old_results_are_pruned_and_a_bad_day_is_refused(sending):
    s = sending
    now = time.time()
    old = utc_day(now - 86400 * (tls_results.KEEP_DAYS + 2))
    _note(s.db, old, "peer.test")
    _note(s.db, utc_day(now - 86400 * (tls_reports.REPORT_DAYS + 1)), "late.test")   # missed: not sent this late
    assert await tls_reports.send_reports(s, now=now) == []
    assert await s.db.read(lambda: sorted(r.policy_domain for r in TlsResult.select())) == ["late.test"]
    with pytest.raises(MxdError) as caught:
        await tls_reports.send_reports(s, day="last tuesday")
    assert caught.value.code == "bad_request"


async def test_the_daily_pass_sends_and_sleeps_until_after_next_midnight(sending):
    s = sending
    now = time.time()
    _note(s.db, utc_day(now - 86400), "peer.test", 3)
    reporter = TlsReporter(s)
    wait = await reporter.run_once()
    assert await s.db.read(lambda: [(r.policy_domain, r.outcome) for r in TlsReportSent.select()]) == [
        ("peer.test", "queued")]
    to_midnight = 86400 - time.time() % 86400
    assert wait is not None and JITTER[0] - 5 <= wait - to_midnight <= JITTER[1] + 5
    assert until_next_pass(86400 * 10 + 3600, 600) == 86400 - 3600 + 600
    _note(s.db, utc_day(now - 86400), "down.test")
    assert await reporter.run_once() == RETRY                   # DNS failed: again in an hour, not tomorrow


@pytest.mark.slow
async def test_rows_add_up_and_a_claim_holds_on_postgresql():
    """The upsert-increment and the claim on PostgreSQL, where several nodes share one store."""
    with fresh_database("mxd_tlsrpt") as url, started_store(url) as database:
        one, two = TlsTally(database), TlsTally(database)          # two nodes' tallies
        for tally in (one, two, one):
            tally.note(_applied(), "192.0.2.1")
            tally.note(_applied(), "192.0.2.1", "certificate-expired", "expired")
            await tally.flush()
        today = utc_day(time.time())
        found = await database.read(tls_results.of_day, "peer.test", today)
        assert [(r.result_type, r.count, r.policy_string, r.detail) for r in found] == [
            ("", 3, STS, ""), ("certificate-expired", 3, STS, "expired")]
        assert await database.read(tls_results.unreported, [today]) == [("peer.test", today)]
        assert await database.write(tls_results.claim, "peer.test", today)
        assert not await database.write(tls_results.claim, "peer.test", today)
        assert await database.read(tls_results.unreported, [today]) == []
        assert await database.write(tls_results.prune, "9999-01-01") == 2


async def test_a_sender_that_cannot_send_marks_the_report_failed_and_a_set_one_is_used(sending):
    now = time.time()
    yesterday = utc_day(now - 86400)
    _note(sending.db, yesterday, "peer.test")
    elsewhere = dataclasses.replace(sending, cfg=dataclasses.replace(sending.cfg, tls_report_from="r@nowhere.test"))
    [r] = await tls_reports.send_reports(elsewhere, now=now)
    assert r["outcome"] == "failed" and "nowhere.test" in r["reason"]
    assert await sending.db.read(lambda: tls_results.sent("peer.test", yesterday).outcome) == "failed"
    _note(sending.db, yesterday, "other.test")
    own = dataclasses.replace(sending, cfg=dataclasses.replace(sending.cfg, tls_report_from="ops@example.test"),
                              resolver=StaticResolver({"_smtp._tls.other.test": {"TXT": [
                                  "v=TLSRPTv1; rua=mailto:tlsrpt@other.test"]}}))
    [r] = await tls_reports.send_reports(own, now=now)
    assert r["outcome"] == "queued"
    assert await sending.db.read(lambda: [e.mail_from for e in QueueEntry.select()]) == ["ops@example.test"]
