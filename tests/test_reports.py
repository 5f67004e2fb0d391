"""DMARC aggregate (RFC 7489 appendix C) and SMTP TLS (RFC 8460) reports: parsed from plain, zipped and
gzipped files, kept per message at the report address, summarised per organisation and source, bounded
against archive and XML bombs, and delivered end to end by SMTP to a running daemon."""
from __future__ import annotations

import email.policy
import gzip
import io
import json
import smtplib
import subprocess
import sys
import time
import tracemalloc
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxd import reports
from mxd.report_reader import ReportReader
from mxd.service import Services
from mxd.service import reports as report_service
from mxd.store import messages
from mxd.store import reports as report_rows
from mxd.store.models import ReportSource
from tests.support.daemon import start_daemon, wait_for
from tests.support.tenants import ADMIN_A, ADMIN_B, OPERATOR, deliver, services  # noqa: F401 (fixture)

MB = 1024 * 1024


def dmarc_xml(domain: str = "a.test", org: str = "google.com", report_id: str = "r1",
              rows: tuple[tuple[str, int, str, str], ...] = (("192.0.2.1", 5, "pass", "pass"),
                                                            ("198.51.100.7", 3, "fail", "fail"))) -> bytes:
    """An aggregate report as RFC 7489 appendix C describes it: (source ip, count, dkim, spf) per record."""
    records = "".join(f"""
  <record>
    <row>
      <source_ip>{ip}</source_ip>
      <count>{count}</count>
      <policy_evaluated><disposition>none</disposition><dkim>{dkim}</dkim><spf>{spf}</spf></policy_evaluated>
    </row>
    <identifiers><header_from>{domain}</header_from></identifiers>
    <auth_results>
      <dkim><domain>{domain}</domain><result>{dkim}</result></dkim>
      <spf><domain>{domain}</domain><result>{spf}</result></spf>
    </auth_results>
  </record>""" for ip, count, dkim, spf in rows)
    return f"""<?xml version="1.0" encoding="UTF-8" ?>
<feedback>
  <report_metadata>
    <org_name>{org}</org_name>
    <email>noreply-dmarc-support@{org}</email>
    <report_id>{report_id}</report_id>
    <date_range><begin>1767225600</begin><end>1767311999</end></date_range>
  </report_metadata>
  <policy_published>
    <domain>{domain}</domain><adkim>r</adkim><aspf>r</aspf><p>quarantine</p><sp>quarantine</sp><pct>100</pct>
  </policy_published>{records}
</feedback>
""".encode()


def tls_json(domain: str = "a.test", org: str = "Company-X", report_id: str = "2026-01-01T00:00:00Z_a.test") -> bytes:
    """An SMTP TLS report as RFC 8460 4.1 / appendix B shows it."""
    return json.dumps({
        "organization-name": org,
        "date-range": {"start-datetime": "2026-01-01T00:00:00Z", "end-datetime": "2026-01-01T23:59:59Z"},
        "contact-info": "sts-reporting@company-x.example",
        "report-id": report_id,
        "policies": [{
            "policy": {"policy-type": "sts", "policy-string": ["version: STSv1", "mode: testing",
                                                               f"mx: mx.{domain}", "max_age: 86400"],
                       "policy-domain": domain, "mx-host": [f"mx.{domain}"]},
            "summary": {"total-successful-session-count": 5326, "total-failure-session-count": 303},
            "failure-details": [
                {"result-type": "certificate-expired", "sending-mta-ip": "2001:db8:abcd:0012::1",
                 "receiving-mx-hostname": f"mx.{domain}", "failed-session-count": 100},
                {"result-type": "starttls-not-supported", "sending-mta-ip": "2001:db8:abcd:0013::1",
                 "receiving-mx-hostname": f"mx2.{domain}", "receiving-ip": "203.0.113.56",
                 "failed-session-count": 200},
                {"result-type": "validation-failure", "sending-mta-ip": "198.51.100.62",
                 "receiving-ip": "203.0.113.58", "receiving-mx-hostname": f"mx3.{domain}",
                 "failed-session-count": 3, "failure-reason-code": "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED"},
            ]}],
    }).encode()


def zipped(*members: tuple[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def report_mail(to: str, attachment: bytes | None, filename: str, ctype: str, body: bytes | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = "noreply-dmarc-support@google.com"
    msg["To"] = to
    msg["Subject"] = f"Report Domain: {to.split('@')[1]} Submitter: google.com"
    msg["Message-ID"] = f"<{time.time_ns()}@google.com>"
    if body is not None:
        maintype, subtype = ctype.split("/")
        msg.set_content(body, maintype=maintype, subtype=subtype)
    else:
        msg.set_content("This is an aggregate report.")
    if attachment is not None:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(attachment, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes(policy=email.policy.SMTP)


# ---------------------------------------------------------------- the parser
@pytest.mark.parametrize("wrap", ["plain", "zip", "gzip"])
def test_dmarc_aggregate_report_in_each_wrapping(wrap: str) -> None:
    xml = dmarc_xml()
    data = {"plain": xml, "zip": zipped(("google.com!a.test!1!2.xml", xml)), "gzip": gzip.compress(xml)}[wrap]
    [rep] = reports.parse_file(data, MB)
    assert isinstance(rep, reports.DmarcReport)
    assert (rep.org_name, rep.report_id, rep.domain, rep.policy) == ("google.com", "r1", "a.test", "quarantine")
    assert (rep.begin, rep.end) == (1767225600.0, 1767311999.0)
    assert [(r.source_ip, r.count, r.spf, r.dkim, r.dmarc) for r in rep.rows] == [
        ("192.0.2.1", 5, "pass", "pass", "pass"), ("198.51.100.7", 3, "fail", "fail", "fail")]


def test_dmarc_passes_when_either_aligned_result_passes() -> None:
    [rep] = reports.parse_file(dmarc_xml(rows=(("192.0.2.9", 2, "fail", "pass"),)), MB)
    assert [(r.spf, r.dkim, r.dmarc) for r in rep.rows] == [("pass", "fail", "pass")]


@pytest.mark.parametrize("wrap", ["plain", "gzip"])
def test_tls_report(wrap: str) -> None:
    data = tls_json() if wrap == "plain" else gzip.compress(tls_json())
    [rep] = reports.parse_file(data, MB)
    assert isinstance(rep, reports.TlsReport)
    assert (rep.org_name, rep.begin) == ("Company-X", 1767225600.0)
    [policy] = rep.policies
    assert (policy.policy_type, policy.policy_domain, policy.successful, policy.failed) == ("sts", "a.test", 5326, 303)
    assert [(f["result_type"], f["count"]) for f in policy.failures] == [
        ("certificate-expired", 100), ("starttls-not-supported", 200), ("validation-failure", 3)]


def test_corrupt_zip_is_a_report_error() -> None:
    data = zipped(("r.xml", dmarc_xml()))
    with pytest.raises(reports.ReportError) as e:
        reports.parse_file(data[:40] + b"\0" * 30 + data[70:], MB)
    assert e.value.code == "corrupt_archive"


def _bounded(fn: object) -> tuple[reports.ReportError, int, float]:
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(reports.ReportError) as e:
            fn()
        return e.value, tracemalloc.get_traced_memory()[1], time.monotonic() - started
    finally:
        tracemalloc.stop()


def test_zip_bomb_is_refused_while_reading() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("bomb.xml", "w", force_zip64=True) as member:   # 256 MiB of zeros, ~250 KiB zipped
            block = b"\0" * MB
            for _ in range(256):
                member.write(block)
    data = buf.getvalue()
    assert len(data) < MB
    # the declared size would stop it at once; a forged directory entry must not get further either
    forged = data.replace((256 * MB).to_bytes(8, "little"), (1000).to_bytes(8, "little"))
    for bomb in (data, forged):
        error, peak, _ = _bounded(lambda b=bomb: reports.parse_file(b, 4 * MB))
        assert error.code == "too_large"
        assert peak < 16 * MB


def test_gzip_bomb_is_refused_while_reading() -> None:
    bomb = gzip.compress(b"<" + b" " * (200 * MB), compresslevel=9)
    error, peak, _ = _bounded(lambda: reports.parse_file(bomb, 4 * MB))
    assert error.code == "too_large" and peak < 16 * MB


def test_too_many_members_and_nested_archives() -> None:
    many = zipped(*[(f"r{i}.xml", dmarc_xml(report_id=str(i))) for i in range(reports.MAX_MEMBERS + 1)])
    with pytest.raises(reports.ReportError) as e:
        reports.parse_file(many, MB)
    assert e.value.code == "too_many_members"
    for inner in (zipped(("r.xml", dmarc_xml())), gzip.compress(dmarc_xml())):
        with pytest.raises(reports.ReportError) as e:
            reports.parse_file(zipped(("inner.bin", inner)), MB)
        assert e.value.code == "nested_archive"
    with pytest.raises(reports.ReportError) as e:
        reports.parse_file(gzip.compress(gzip.compress(dmarc_xml())), MB)
    assert e.value.code == "nested_archive"


def test_xml_bomb_is_refused() -> None:
    lol = b'<?xml version="1.0"?>\n<!DOCTYPE feedback [\n<!ENTITY a "aaaaaaaaaa">\n' + b"".join(
        b'<!ENTITY %c "&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;">\n' % ((98 + i,) + (97 + i,) * 10) for i in range(9)
    ) + b"]>\n<feedback><report_metadata><org_name>&j;</org_name></report_metadata></feedback>\n"
    error, peak, _ = _bounded(lambda: reports.parse_file(lol, MB))
    assert error.code == "forbidden_xml" and peak < 16 * MB
    external = b'<?xml version="1.0"?><!DOCTYPE f [<!ENTITY x SYSTEM "file:///etc/passwd">]><feedback>&x;</feedback>'
    with pytest.raises(reports.ReportError) as e:
        reports.parse_file(external, MB)
    assert e.value.code == "forbidden_xml"


def test_not_a_report() -> None:
    with pytest.raises(reports.ReportError) as e:
        reports.parse_file(b"<feedback><nothing/></feedback>", MB)
    assert e.value.code == "invalid_report"
    with pytest.raises(reports.ReportError) as e:
        reports.parse_file(b'{"organization-name": "x"}', MB)
    assert e.value.code == "invalid_report"
    with pytest.raises(reports.ReportError) as e:
        reports.parse_file(b"hello", MB)
    assert e.value.code == "unknown_format"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=2048),
                 st.binary(max_size=512).map(lambda b: b"PK\x03\x04" + b),
                 st.binary(max_size=512).map(lambda b: b"\x1f\x8b" + b),
                 st.binary(max_size=512).map(lambda b: b"<?xml version='1.0'?><feedback>" + b),
                 st.binary(max_size=512).map(lambda b: b'{"organization-name":' + b)))
def test_random_bytes_raise_only_report_errors(data: bytes) -> None:
    """Any other exception fails the test; what parses is a list of typed reports, or a ReportError with a code."""
    try:
        found = reports.parse_file(data, 64 * 1024)
    except reports.ReportError as exc:
        assert exc.code and isinstance(exc.code, str)
    else:
        assert isinstance(found, list)
        assert all(isinstance(r, (reports.DmarcReport, reports.TlsReport)) for r in found)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=4096))
def test_random_messages_never_raise(data: bytes) -> None:
    found, errors = reports.in_message(b"Content-Type: application/zip\r\n\r\n" + data, 64 * 1024)
    assert isinstance(found, list) and isinstance(errors, list)


def test_message_with_report_as_attachment_and_as_body() -> None:
    attached = report_mail("postmaster@a.test", zipped(("r.xml", dmarc_xml())), "r.zip", "application/zip")
    in_body = report_mail("postmaster@a.test", None, "", "text/xml", body=dmarc_xml())
    tls = report_mail("postmaster@a.test", gzip.compress(tls_json()), "r.json.gz", "application/tlsrpt+gzip")
    for raw, kind in ((attached, "dmarc"), (in_body, "dmarc"), (tls, "tls")):
        found, errors = reports.in_message(raw, MB)
        assert errors == [] and [r.kind for r in found] == [kind]
    plain = report_mail("postmaster@a.test", None, "", "text/plain", body=b"Hello postmaster, a question.")
    assert reports.in_message(plain, MB) == ([], [])


# ---------------------------------------------------------------- the reader, the store and the access rule
def _deliver_raw(services: Services, address: str, raw: bytes) -> str:   # noqa: F811
    from mxd.ingest import Envelope, Recipient, store
    from mxd.mime.parse import parse
    from mxd.store import directory
    from mxd.store.models import Inbound
    db = services.db
    box = db.write_sync(directory.get_mailbox, address)
    env = Envelope(mail_from="noreply@google.com", rcpts=[Recipient(address, (box.id,))], data=raw)
    inbound_id = db.write_sync(store, env)
    row = db.write_sync(lambda: Inbound.get_by_id(inbound_id))
    [(msg_id, _)] = db.write_sync(messages.deliver, row, parse(bytes(row.data)), None, "", 30 * 86400.0)
    return msg_id


async def test_reader_keeps_reports_and_flags_broken_ones(services: Services) -> None:  # noqa: F811
    s = services
    zipped_report = zipped(("google.com!a.test!1767225600!1767311999.xml", dmarc_xml()))
    ok = _deliver_raw(s, "postmaster@a.test", report_mail("postmaster@a.test", zipped_report, "r.zip",
                                                          "application/zip"))
    again = _deliver_raw(s, "postmaster@a.test", report_mail("postmaster@a.test", gzip.compress(dmarc_xml()),
                                                             "r.xml.gz", "application/gzip"))
    other = _deliver_raw(s, "postmaster@b.test", report_mail(
        "postmaster@b.test", dmarc_xml(domain="b.test", org="yahoo.com", rows=(("203.0.113.5", 7, "fail", "pass"),)),
        "r.xml", "text/xml"))
    tls = _deliver_raw(s, "postmaster@a.test", report_mail("postmaster@a.test", gzip.compress(tls_json()),
                                                           "r.json.gz", "application/tlsrpt+gzip"))
    broken = _deliver_raw(s, "postmaster@a.test", report_mail("postmaster@a.test", zipped_report[:60] + b"junk",
                                                              "broken.zip", "application/zip"))
    ordinary = deliver(s.db, "one@a.test", "not a report")

    reader = ReportReader(s.cfg, s.db)
    assert await reader.run_once() is None
    looked = s.db.write_sync(lambda: {r.message_id: (r.reports, r.errors) for r in ReportSource.select()})
    assert set(looked) == {ok, again, other, tls, broken}
    assert looked[ok][0] == 1 and looked[again][0] == 0      # the same report sent twice counts once
    assert looked[broken][0] == 0 and [e["code"] for e in looked[broken][1]] == ["corrupt_archive"]
    assert looked[broken][1][0]["part"] == "broken.zip"
    assert ordinary not in looked
    assert await s.db.read(report_rows.unread, 10) == []
    # the broken report is still ordinary mail
    assert s.db.write_sync(messages.get, broken) is not None

    out = await report_service.dmarc(s, OPERATOR, include_errors=True)
    assert [(r["org_name"], r["domain"], r["source_ip"], r["messages"], r["spf_pass"], r["spf_fail"], r["dkim_pass"],
             r["dkim_fail"], r["dmarc_pass"], r["dmarc_fail"]) for r in out["data"]] == [
        ("google.com", "a.test", "192.0.2.1", 5, 5, 0, 5, 0, 5, 0),
        ("google.com", "a.test", "198.51.100.7", 3, 0, 3, 0, 3, 0, 3),
        ("yahoo.com", "b.test", "203.0.113.5", 7, 7, 0, 0, 7, 7, 0)]
    assert out["data"][0]["begin"].startswith("2026-01-01")
    assert [e["message_id"] for e in out["report_errors"]] == [broken]

    # an organisation's admin sees its own domains' reports (and errors) only
    mine = await report_service.dmarc(s, ADMIN_A, include_errors=True)
    assert {r["domain"] for r in mine["data"]} == {"a.test"} and len(mine["report_errors"]) == 1
    theirs = await report_service.dmarc(s, ADMIN_B, include_errors=True)
    assert {r["domain"] for r in theirs["data"]} == {"b.test"} and theirs["report_errors"] == []
    assert (await report_service.dmarc(s, OPERATOR, domain="b.test"))["data"][0]["org_name"] == "yahoo.com"
    assert (await report_service.dmarc(s, OPERATOR, since=1767312000.0))["data"] == []
    assert len((await report_service.dmarc(s, OPERATOR, until=1767312000.0))["data"]) == 3

    [t] = (await report_service.tls(s, ADMIN_A))["data"]
    assert (t["org_name"], t["policy_domain"], t["policy_type"], t["successful"], t["failed"]) == (
        "Company-X", "a.test", "sts", 5326, 303)
    assert t["failure_types"] == {"certificate-expired": 100, "starttls-not-supported": 200, "validation-failure": 3}
    assert (await report_service.tls(s, ADMIN_B))["data"] == []


async def test_quarantined_report_waits_for_release(services: Services) -> None:  # noqa: F811
    s = services
    msg_id = _deliver_raw(s, "postmaster@a.test", report_mail("postmaster@a.test", dmarc_xml(), "r.xml", "text/xml"))
    from mxd.store.models import Message
    s.db.write_sync(lambda: Message.update(quarantine=[{"code": "spam", "detail": ""}]).where(
        Message.id == msg_id).execute())
    assert await s.db.read(report_rows.unread, 10) == []
    s.db.write_sync(lambda: Message.update(quarantine=None).where(Message.id == msg_id).execute())
    [(found, _)] = await s.db.read(report_rows.unread, 10)
    assert found == msg_id


# ---------------------------------------------------------------- end to end: SMTP to a running daemon
@pytest.mark.slow
def test_reports_delivered_by_smtp_reach_the_api(tmp_path: Path) -> None:
    proc = start_daemon(tmp_path / "data")
    try:
        to = "postmaster@example.test"
        mails = [
            report_mail(to, zipped(("google.com!example.test!1!2.xml", dmarc_xml("example.test"))), "r.zip",
                        "application/zip"),
            report_mail(to, gzip.compress(dmarc_xml("example.test", org="yahoo.com", report_id="y1",
                                                    rows=(("203.0.113.9", 4, "pass", "fail"),))),
                        "r.xml.gz", "application/gzip"),
            report_mail(to, gzip.compress(tls_json("example.test")), "t.json.gz", "application/tlsrpt+gzip"),
            report_mail(to, tls_json("example.test", org="Other", report_id="t2"), "t.json", "application/tlsrpt+json"),
            report_mail(to, b"PK\x03\x04 this is not a zip", "corrupt.zip", "application/zip"),
        ]
        with smtplib.SMTP(proc.host, proc.mx_port, timeout=30) as smtp:
            for raw in mails:
                smtp.sendmail("noreply@reporter.example", [to], raw)

        def dmarc() -> list[dict]:
            r = proc.api("GET", "/api/reports/dmarc?include=errors")
            assert r.status_code == 200, r.text
            body = r.json()
            return body if len(body["data"]) == 3 and body["report_errors"] else []
        body = wait_for(dmarc, timeout=60)
        assert body, proc.api("GET", "/api/reports/dmarc?include=errors").text
        assert [(r["org_name"], r["source_ip"], r["messages"], r["dmarc_pass"]) for r in body["data"]] == [
            ("google.com", "192.0.2.1", 5, 5), ("google.com", "198.51.100.7", 3, 0), ("yahoo.com", "203.0.113.9", 4, 4)]
        [flagged] = body["report_errors"]
        assert [e["code"] for e in flagged["errors"]] == ["corrupt_archive"]
        # the corrupt report is kept as ordinary mail
        r = proc.api("GET", f"/api/messages/{flagged['message_id']}")
        assert r.status_code == 200 and r.json()["subject"].startswith("Report Domain")

        tls = proc.api("GET", "/api/reports/tls?domain=example.test").json()["data"]
        assert sorted((t["org_name"], t["successful"], t["failed"]) for t in tls) == [
            ("Company-X", 5326, 303), ("Other", 5326, 303)]
        assert proc.api("GET", "/api/reports/dmarc?domain=other.test").json()["data"] == []
        assert proc.api("GET", "/api/reports/dmarc?since=not-a-time").status_code == 400

        # the CLI shows the same
        env = dict(proc.env, MXD_URL=proc.url(""), MXD_TOKEN=proc.admin_token)
        cli = [sys.executable, "-m", "mxd.cli", "reports"]
        out = subprocess.run([*cli, "dmarc", "--domain", "example.test", "--json"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert [r["source_ip"] for r in json.loads(out.stdout)] == ["192.0.2.1", "198.51.100.7", "203.0.113.9"]
        out = subprocess.run([*cli, "tls"], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "certificate-expired 100" in out.stdout, out.stderr
        out = subprocess.run([*cli, "errors"], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "corrupt.zip: corrupt_archive" in out.stdout, out.stderr
    finally:
        proc.stop()



def test_dns_plan_sends_both_kinds_of_report_to_the_address_the_reader_reads() -> None:
    from mxd import dnsrecords
    plan = {p.kind: p.record for p in dnsrecords.plan("Example.TEST", "mx.example.test", [])}
    assert plan["dmarc"].value.endswith("; rua=mailto:postmaster@example.test")
    assert (plan["tls-rpt"].name, plan["tls-rpt"].value) == ("_smtp._tls.example.test",
                                                             "v=TLSRPTv1; rua=mailto:postmaster@example.test")
    assert dnsrecords.report_address("Example.TEST") == "postmaster@example.test"


def test_absurd_numbers_stay_in_range() -> None:
    doc = json.loads(tls_json())
    doc["policies"][0]["summary"]["total-successful-session-count"] = 10**30
    doc["policies"][0]["summary"]["total-failure-session-count"] = -5
    doc["date-range"]["start-datetime"] = "not a date"
    [rep] = reports.parse_file(json.dumps(doc).encode(), MB)
    assert (rep.policies[0].successful, rep.policies[0].failed, rep.begin) == (2**31 - 1, 0, 0.0)
    [dmarc] = reports.parse_file(dmarc_xml(rows=(("192.0.2.1", 10**20, "pass", "pass"),)), MB)
    assert dmarc.rows[0].count == 2**31 - 1
    doc["policies"][0]["summary"]["total-failure-session-count"] = "many"
    with pytest.raises(reports.ReportError) as e:
        reports.parse_file(json.dumps(doc).encode(), MB)
    assert e.value.code == "invalid_report"
