"""Trust signals and quarantine decided by the inbound pipeline: rows stored through the pipeline's writer
step on a real store, and end to end through a running daemon with a DNS server on loopback."""
from __future__ import annotations

import base64
import concurrent.futures
import json
import smtplib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from mxd import config, pipeline
from mxd.authn import AuthResults
from mxd.db import Database, execute
from mxd.ingest import Envelope, InboundRow, Recipient, as_row, store
from mxd.store import correspondents, directory, open_store
from mxd.store.models import MailboxPolicy
from tests.support.daemon import MxdProcess, running_daemon
from tests.support.dnsserver import DNSServer
from tests.support.store import sqlite_url

AGENT = "agent@example.com"


@dataclass
class CheckedRow(InboundRow):
    """An inbound row with the MX's findings, as the MX hands them to the pipeline."""
    checks: dict | None = None


def auth(dmarc: str = "pass", domain: str = "partner.org") -> AuthResults:
    return AuthResults("pass" if dmarc == "pass" else "fail", domain, [], dmarc, None, domain, "mx; none")


class World:
    def __init__(self, db: Database, cfg: config.Config) -> None:
        self.db, self.cfg = db, cfg
        self.box = db.write_sync(lambda: (directory.create_domain("example.com"),
                                          directory.create_mailbox(AGENT)[0])[1])
        self.pipe = pipeline.Pipeline(cfg, db, concurrent.futures.ThreadPoolExecutor(1))

    def deliver(self, raw: bytes, authn: AuthResults | None = None, checks: dict | None = None,
                mail_from: str = "alice@partner.org", source: str = "smtp") -> dict:
        """Store one message for the agent through the pipeline's analysis and writer steps; its row."""
        env = Envelope(mail_from=mail_from, rcpts=[Recipient(AGENT, (self.box.id,))], data=raw, source=source)
        self.db.write_sync(store, env)
        base = as_row(env)
        row = CheckedRow(*(getattr(base, f) for f in InboundRow.__dataclass_fields__), checks=checks)
        [(parsed, _, trace, facts)] = pipeline.analyse([(row.id, row.data, "", "", mail_from, source, "")],
                                                      False, "mx.example.com")
        self.db.write_sync(self.pipe._store, [row], [(parsed, authn, trace, facts)], True)
        return self.message(row.id)

    def message(self, inbound_id: str) -> dict:
        def read() -> dict:
            r = execute('SELECT "id", "thread_id", "trust", "quarantine", "quarantined_at" FROM "message" '
                        'WHERE "inbound_id" = ?', (inbound_id,)).fetchone()
            events = [(t, json.loads(d)) for t, d in execute(
                'SELECT "type", "data" FROM "event" WHERE "message_id" = ?', (r[0],)).fetchall()]
            found = None
            if self.db.url.startswith("sqlite"):
                found = execute('SELECT count(*) FROM message_fts WHERE message_id = ?', (r[0],)).fetchone()[0] == 1
            return {"id": r[0], "thread_id": r[1], "trust": json.loads(r[2]) if r[2] else None,
                    "quarantine": json.loads(r[3]) if r[3] else None, "quarantined_at": r[4], "events": events,
                    "indexed": found}
        return self.db.write_sync(read)

    def set_policy(self, **inbound: object) -> None:
        from mxd import mailpolicy
        doc = mailpolicy.normalise({"inbound": inbound})
        self.db.write_sync(lambda: MailboxPolicy.insert(mailbox=self.box.id, policy=doc).on_conflict(
            conflict_target=[MailboxPolicy.mailbox], update={MailboxPolicy.policy: doc}).execute())


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    cfg = config.load(None, {"MXD_DATA_DIR": str(tmp_path), "MXD_HOSTNAME": "mx.example.com"})
    database = open_store(sqlite_url(tmp_path))
    try:
        yield World(database, cfg)
    finally:
        database.close()


@pytest.fixture
def pg_world(tmp_path: Path) -> Iterator[World]:
    from tests.support.pg import fresh_database
    cfg = config.load(None, {"MXD_DATA_DIR": str(tmp_path), "MXD_HOSTNAME": "mx.example.com"})
    with fresh_database("mxd_trust") as url:
        database = open_store(url)
        try:
            yield World(database, cfg)
        finally:
            database.close()


def mail(from_: str = "Alice <alice@partner.org>", subject: str = "Hello", extra: str = "", body: str = "Hi.\r\n") -> bytes:
    return (f"From: {from_}\r\nTo: {AGENT}\r\nSubject: {subject}\r\nMessage-ID: <{time.time_ns()}@x>\r\n{extra}\r\n"
            f"{body}").encode()


def with_files(*names: str) -> bytes:
    parts = "".join(f"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
                    f"filename=\"{n}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{base64.b64encode(b'MZ').decode()}\r\n"
                    for n in names)
    return mail(extra="MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n",
                body=f"--b\r\nContent-Type: text/plain\r\n\r\nfiles\r\n{parts}--b--\r\n")


def types(m: dict) -> list[str]:
    return [t for t, _ in m["events"]]


# ---------------------------------------------------------------- through the pipeline's writer step
def test_a_clean_authenticated_message_is_delivered_with_its_signals(world):
    m = world.deliver(mail(), auth())
    assert m["trust"]["verdict"] == "unverified" and m["trust"]["first_contact"] == {"address": True, "domain": True}
    assert m["quarantine"] is None and m["thread_id"] and types(m) == ["message.inbound"]
    again = world.deliver(mail(), auth())         # authenticated: now a known correspondent
    assert again["trust"]["first_contact"] == {"address": False, "domain": False}
    assert again["trust"]["verdict"] == "trusted"


def test_a_forged_sender_does_not_become_known(world):
    world.deliver(mail(), auth("fail"))
    m = world.deliver(mail(), auth("fail"))
    assert m["trust"]["first_contact"]["address"] is True and m["trust"]["verdict"] == "suspicious"


@pytest.mark.parametrize("from_, code", [
    ("Boss <boss@examp1e.com>", "lookalike"),
    ("Boss <boss@exarnple.com>", "lookalike"),
    ("Boss <boss@xn--exmple-4nf.com>", "lookalike"),
    ('"ceo@example.com" <x@partner.org>', "display_name_spoof"),
])
def test_suspicious_authors_are_flagged_but_delivered(world, from_, code):
    m = world.deliver(mail(from_), auth())
    assert m["trust"]["verdict"] == "suspicious" and m["trust"]["reasons"][0]["code"] == code
    assert m["quarantine"] is None and types(m) == ["message.inbound"]


def test_reply_to_mismatch_is_recorded(world):
    m = world.deliver(mail(extra="Reply-To: pay@elsewhere.net\r\n"), auth())
    assert m["trust"]["reply_to_mismatch"]["reply_to"] == ["elsewhere.net"]


def test_a_mailbox_without_a_policy_quarantines_default_blocked_types(world):
    m = world.deliver(with_files("invoice.pdf.exe", "notes.txt"), auth())
    assert m["trust"]["risky_attachments"] == [{"name": "invoice.pdf.exe", "why": "double extension .pdf.exe"}]
    assert [r["code"] for r in m["quarantine"]] == ["blocked_attachment"]
    assert m["thread_id"] is None and m["quarantined_at"] and m["indexed"]
    assert types(m) == ["message.quarantined"] and m["events"][0][1]["reasons"] == m["quarantine"]


def test_a_policy_with_no_blocked_types_lets_attachments_through_flagged(world):
    world.set_policy(blocked_attachments=[])
    m = world.deliver(with_files("tool.exe"), auth())
    assert m["quarantine"] is None and m["trust"]["risky_attachments"] == []
    assert m["trust"]["verdict"] == "unverified"


@pytest.mark.parametrize("rules, raw, authn, code", [
    ({"block_senders": ["partner.org"]}, mail(), auth(), "sender_blocked"),
    ({"allow_senders": ["friend.org"]}, mail(), auth(), "sender_not_allowed"),
    ({"require_authenticated": True}, mail(), auth("fail"), "unauthenticated"),
    ({"require_authenticated": True}, mail(), None, "unauthenticated"),
    ({"blocked_attachments": ["txt"]}, with_files("notes.txt"), auth(), "blocked_attachment"),
    ({"max_message_size": 50}, mail(), auth(), "too_large"),
])
def test_each_policy_rule_quarantines_with_its_reason(world, rules, raw, authn, code):
    world.set_policy(**rules)
    m = world.deliver(raw, authn)
    assert [r["code"] for r in m["quarantine"]] == [code]
    assert types(m) == ["message.quarantined"] and m["thread_id"] is None


def test_the_mx_quarantine_reasons_come_first(world):
    checks = {"quarantine": [{"code": "dmarc_quarantine", "detail": "p=quarantine"}],
              "spam": {"action": "accept", "score": 1.5, "symbols": {"X": 1.5}}}
    world.set_policy(max_message_size=50)
    m = world.deliver(mail(), auth("fail"), checks=checks)
    assert [r["code"] for r in m["quarantine"]] == ["dmarc_quarantine", "too_large"]
    assert m["trust"]["spam"]["score"] == 1.5


def test_a_policy_mailbox_passes_allowed_mail(world):
    world.set_policy(allow_senders=["partner.org"], require_authenticated=True)
    m = world.deliver(mail(), auth())
    assert m["quarantine"] is None and types(m) == ["message.inbound"]


def test_a_thousand_attachments_are_stored_and_flagged(world):
    started = time.monotonic()
    m = world.deliver(with_files(*[f"f{i}.scr" for i in range(1000)]), auth())
    assert m["trust"]["verdict"] == "suspicious" and m["trust"]["risky_count"] >= 990
    assert [r["code"] for r in m["quarantine"]] == ["blocked_attachment"]
    assert time.monotonic() - started < 60          # bounded work: no stall (a generous limit, not a timing)


def test_an_unparseable_message_is_still_stored(world):
    m = world.deliver(b"\xff\xfe garbage with no header at all", None)
    assert m["id"] and m["trust"]["verdict"] in ("unverified", "suspicious")


def test_sent_mail_makes_its_recipients_known(world):
    from mxd import sending
    row = InboundRow("inb_sent", time.time(), "outbound", AGENT, [{"address": AGENT, "mailbox_ids": [world.box.id],
                     "send": {"message_id": "msg_sent1", "mailbox_id": world.box.id, "domain": "example.com",
                              "remote": ["bob@friend.org"], "hold": None, "local": [], "actor": "mxd",
                              "org_id": None, "mailbox": AGENT, "source": "api"}}], "", "", mail(), "")

    def send() -> None:
        store(Envelope(mail_from=AGENT, rcpts=[], data=row.data, source="outbound", id=row.id))
        sending.complete(world.cfg, row, "", None)
    world.db.write_sync(send)
    assert world.db.write_sync(correspondents.known, world.box.id, "bob@friend.org", "friend.org") == (True, True)
    m = world.deliver(mail("Bob <bob@friend.org>"), auth(domain="friend.org"), mail_from="bob@friend.org")
    assert m["trust"]["first_contact"] == {"address": False, "domain": False} and m["trust"]["verdict"] == "trusted"
    # and a lookalike of that correspondent's domain is caught
    look = world.deliver(mail("Bob <bob@frlend.org>"), auth(domain="frlend.org"), mail_from="bob@frlend.org")
    assert look["trust"]["lookalike"]["resembles"] == "friend.org"


# ---------------------------------------------------------------- end to end: a daemon, real DNS, SMTP and the API
@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    base = tmp_path_factory.mktemp("trust")
    zone = {
        "partner.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"], "A": ["127.0.0.1"]},
        "_dmarc.partner.test": {"TXT": ["v=DMARC1; p=none"]},
        "examp1e.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
        "exarnple.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
        "xn--exmple-4nf.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
    }
    with DNSServer(zone) as dns, running_daemon(base / "data", mailboxes=["agent@example.test"], ready=["example.test"],
                                                env={"MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2"}) as proc:
        yield proc


def smtp_deliver(proc: MxdProcess, mail_from: str, raw: bytes, subject: str) -> dict:
    with smtplib.SMTP("127.0.0.1", proc.mx_port) as s:
        s.sendmail(mail_from, ["agent@example.test"], raw)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = proc.sql('SELECT "id", "trust", "quarantine", "thread_id" FROM "message" WHERE "subject" = ?', (subject,))
        if rows:
            r = rows[0]
            events = [t for (t,) in proc.sql('SELECT "type" FROM "event" WHERE "message_id" = ?', (r[0],))]
            return {"id": r[0], "trust": json.loads(r[1]) if r[1] else None,
                    "quarantine": json.loads(r[2]) if r[2] else None, "thread_id": r[3], "events": events}
        time.sleep(0.1)
    raise AssertionError("message not processed")


def letter(from_: str, subject: str, extra: str = "") -> bytes:
    return (f"From: {from_}\r\nTo: agent@example.test\r\nSubject: {subject}\r\n{extra}\r\nHello.\r\n").encode()


@pytest.mark.slow
@pytest.mark.parametrize("domain", ["examp1e.test", "exarnple.test", "xn--exmple-4nf.test"])
def test_smtp_lookalikes_of_the_own_domain_are_suspicious(daemon, domain):
    subject = f"lookalike {domain}"
    m = smtp_deliver(daemon, f"boss@{domain}", letter(f"Boss <boss@{domain}>", subject), subject)
    assert m["trust"]["lookalike"] == {"domain": domain, "resembles": "example.test", "how": "homoglyph"}
    assert m["trust"]["authenticated"] is True and m["trust"]["authentication"]["how"] == "spf"
    assert m["trust"]["verdict"] == "suspicious" and m["events"] == ["message.inbound"]


@pytest.mark.slow
def test_smtp_first_contact_then_a_correspondent_written_to_is_known(daemon):
    first = smtp_deliver(daemon, "carol@partner.test", letter("Carol <carol@partner.test>", "first"), "first")
    assert first["trust"]["first_contact"] == {"address": True, "domain": True}
    assert first["trust"]["verdict"] == "unverified"
    r = daemon.api("POST", "/api/send", json={"from": "agent@example.test", "to": ["dave@partner.test"],
                                              "subject": "hello dave", "text": "hi"})
    assert r.status_code in (200, 202), r.text
    reply = smtp_deliver(daemon, "dave@partner.test", letter("Dave <dave@partner.test>", "from dave"), "from dave")
    assert reply["trust"]["first_contact"] == {"address": False, "domain": False}
    assert reply["trust"]["verdict"] == "trusted"


@pytest.mark.slow
def test_smtp_spoof_and_reply_to_and_risky_attachments(daemon):
    spoof = smtp_deliver(daemon, "eve@partner.test", letter('"agent@example.test" <eve@partner.test>', "spoof"), "spoof")
    assert spoof["trust"]["display_name_spoof"] and spoof["trust"]["verdict"] == "suspicious"
    mismatch = smtp_deliver(daemon, "carol@partner.test",
                            letter("Carol <carol@partner.test>", "mismatch", "Reply-To: x@elsewhere.test\r\n"), "mismatch")
    assert mismatch["trust"]["reply_to_mismatch"]["reply_to"] == ["elsewhere.test"]
    files = (b"From: Carol <carol@partner.test>\r\nTo: agent@example.test\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee\r\n"
             b"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"a.pdf.exe\"\r\n"
             b"\r\nMZ\r\n--b--\r\n")
    m = smtp_deliver(daemon, "carol@partner.test", files, "files")
    assert m["trust"]["risky_attachments"][0]["why"] == "double extension .pdf.exe"
    assert [r["code"] for r in m["quarantine"]] == ["blocked_attachment"]
    assert m["thread_id"] is None and m["events"] == ["message.quarantined"]


@pytest.mark.slow
def test_smtp_a_policy_quarantines_with_its_reason(daemon):
    box = daemon.sql('SELECT "id" FROM "mailbox" WHERE "address" = ?', ("agent@example.test",))[0][0]
    doc = {"outbound": {"allow": [], "otherwise": "refuse"},
           "inbound": {"allow_senders": [], "block_senders": ["blocked.test"], "require_authenticated": False,
                       "blocked_attachments": "default", "max_message_size": None}}
    daemon.sql('INSERT INTO "mailbox_policy" ("mailbox_id", "policy", "updated_at") VALUES (?, ?, ?)',
               (box, json.dumps(doc), time.time()))
    try:
        m = smtp_deliver(daemon, "x@blocked.test", letter("X <x@blocked.test>", "blocked one"), "blocked one")
        assert [r["code"] for r in m["quarantine"]] == ["sender_blocked"]
        assert m["events"] == ["message.quarantined"]
    finally:
        daemon.sql('DELETE FROM "mailbox_policy" WHERE "mailbox_id" = ?', (box,))


@pytest.mark.slow
def test_smtp_a_thousand_attachments_are_stored_flagged_and_quarantined(daemon):
    parts = b"".join(b"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
                     b"filename=\"f%d.exe\"\r\n\r\nMZ\r\n" % i for i in range(1000))
    raw = (b"From: Carol <carol@partner.test>\r\nTo: agent@example.test\r\nSubject: thousand\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + parts + b"--b--\r\n")
    m = smtp_deliver(daemon, "carol@partner.test", raw, "thousand")
    assert m["trust"]["verdict"] == "suspicious" and m["trust"]["risky_count"] >= 990
    assert [r["code"] for r in m["quarantine"]] == ["blocked_attachment"]
    later = smtp_deliver(daemon, "carol@partner.test", letter("Carol <carol@partner.test>", "after"), "after")
    assert later["events"] == ["message.inbound"]          # the pipeline goes on


def test_a_suspicious_authenticated_author_does_not_become_known(world):
    world.deliver(mail("Boss <boss@examp1e.com>"), auth(domain="examp1e.com"), mail_from="boss@examp1e.com")
    m = world.deliver(mail("Boss <boss@examp1e.com>"), auth(domain="examp1e.com"), mail_from="boss@examp1e.com")
    assert m["trust"]["first_contact"]["address"] is True and m["trust"]["verdict"] == "suspicious"
    assert m["trust"]["lookalike"]["resembles"] == "example.com"


@pytest.mark.parametrize("checks", [{"quarantine": 5}, {"quarantine": "dmarc"}, {"quarantine": [None, 3, {"x": 1}]},
                                    {"spam": "high"}, {"spam": {"symbols": 5}}, "not json", ["a list"]])
def test_malformed_checks_never_cost_the_message(world, checks):
    m = world.deliver(mail(), auth(), checks=checks)
    assert m["id"] and m["quarantine"] is None and m["trust"]["verdict"] == "unverified"


@pytest.mark.slow
def test_smtp_a_correspondent_written_to_through_submission_is_known(daemon):
    from tests.support.smtp import insecure_tls
    token = daemon.token(["send"], ["agent@example.test"], name="submission")
    with smtplib.SMTP("127.0.0.1", daemon.submission_port, timeout=15) as s:
        s.starttls(context=insecure_tls())
        s.login("agent@example.test", token)
        s.sendmail("agent@example.test", ["erin@partner.test"],
                   b"From: agent@example.test\r\nTo: erin@partner.test\r\nSubject: to erin\r\n\r\nhello\r\n")
    deadline = time.monotonic() + 30
    while not daemon.sql('SELECT 1 FROM "correspondent" WHERE "value" = ?', ("erin@partner.test",)):
        assert time.monotonic() < deadline, "the sent copy was not completed"
        time.sleep(0.1)
    m = smtp_deliver(daemon, "erin@partner.test", letter("Erin <erin@partner.test>", "from erin"), "from erin")
    assert m["trust"]["first_contact"] == {"address": False, "domain": False}


def test_correspondents_keep_their_first_time_and_read_domains_newest_first(world):
    box = world.box.id
    world.db.write_sync(correspondents.record, box, ["Bob@Friend.ORG", "not an address", "x@bücher.example"], 100.0)
    world.db.write_sync(correspondents.record, box, ["bob@friend.org", "amy@later.org"], 200.0)
    assert world.db.write_sync(correspondents.known, box, "bob@friend.org", "friend.org") == (True, True)
    assert world.db.write_sync(correspondents.known, box, "x@xn--bcher-kva.example", "xn--bcher-kva.example") == \
        (True, True)
    assert world.db.write_sync(correspondents.domains, box)[0] == "later.org"
    first = world.db.write_sync(lambda: execute('SELECT "first_at" FROM "correspondent" WHERE "value" = ?',
                                                ("bob@friend.org",)).fetchone()[0])
    assert first == 100.0


@pytest.mark.slow
def test_on_postgresql_correspondents_and_policy_quarantine(pg_world):
    first = pg_world.deliver(mail(), auth())
    assert first["trust"]["first_contact"] == {"address": True, "domain": True}
    again = pg_world.deliver(mail(), auth())
    assert again["trust"]["verdict"] == "trusted"
    pg_world.set_policy(block_senders=["partner.org"])
    blocked = pg_world.deliver(mail(), auth())
    assert [r["code"] for r in blocked["quarantine"]] == ["sender_blocked"]
    assert types(blocked) == ["message.quarantined"] and blocked["thread_id"] is None
