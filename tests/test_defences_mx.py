"""The MX's checks before the 250, end to end: a real daemon, a real DNS server on loopback, clients
connecting from their own loopback addresses (127.0.0.1 alone is trusted here), smtplib and swaks.

Refused mail is answered before the 250 and nothing of it is stored; accepted mail carries what the
checks found in `Inbound.checks`; problems (timeouts, a blocklist's error answers) show in health.
"""
from __future__ import annotations

import json
import smtplib
import subprocess
import time

import pytest

from tests.support.daemon import MxdProcess, running_daemon, wait_for
from tests.support.dnsserver import DNSServer

MAILBOX = "agent@example.test"

ZONE = {
    # DNS lists: 127.0.0.N is asked as N.0.0.127.<zone>
    "1.0.0.127.bl.test": {"A": ["127.0.0.2"]},                 # the trusted client: listed, never asked
    "66.0.0.127.bl.test": {"A": ["127.0.0.2"]},
    "67.0.0.127.bl.test": {"A": ["127.255.255.254"]},          # Spamhaus: "you ask through a public resolver"
    "68.0.0.127.bl.test": {"A": ["10.9.9.9"]},                 # outside 127/8: a broken or hijacked zone
    "69.0.0.127.bl.test": "SERVFAIL",
    "70.0.0.127.bl.test": "TIMEOUT",
    "71.0.0.127.bl.test": {"A": ["127.0.0.2"]},
    "71.0.0.127.wl.test": {"A": ["127.0.10.2"]},
    # senders
    "pass.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
    "_dmarc.pass.test": {"TXT": ["v=DMARC1; p=reject"]},
    "reject.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.reject.test": {"TXT": ["v=DMARC1; p=reject"]},
    "quar.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.quar.test": {"TXT": ["v=DMARC1; p=quarantine"]},
    "nodmarc.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "broken.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.broken.test": {"TXT": ["v=DMARC1; p=bogus; this is not a record"]},
    "slowdmarc.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
    "_dmarc.slowdmarc.test": "TIMEOUT",
}


@pytest.fixture(scope="module")
def dns():
    with DNSServer(ZONE) as server:
        yield server


def _env(dns: DNSServer, **settings: str) -> dict[str, str]:
    env = {"MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "1", "MXD_TRUSTED_NETWORKS": "127.0.0.1/32"}
    env.update({f"MXD_{k.upper()}": v for k, v in settings.items()})
    return env


@pytest.fixture(scope="module")
def mxd(dns, tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("defences") / "data", mailboxes=[MAILBOX],
                        env=_env(dns, dnsbl_zones="bl.test", dnswl_zones="wl.test")) as proc:
        yield proc


@pytest.fixture(scope="module")
def lenient(dns, tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("lenient") / "data", mailboxes=[MAILBOX],
                        env=_env(dns, dmarc_reject="false", spf_fail_reject="false")) as proc:
        yield proc


@pytest.fixture(scope="module")
def limited(dns, tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("limited") / "data", mailboxes=[MAILBOX],
                        env=_env(dns, client_messages_per_minute="2", client_recipients_per_minute="3",
                                 unknown_recipients_per_ip="2", harvest_pause="10m")) as proc:
        yield proc


def _message(author: str, subject: str) -> bytes:
    return (f"From: <{author}>\r\nTo: <{MAILBOX}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}.{time.time_ns()}@test>\r\n\r\nhello\r\n").encode()


def transact(proc: MxdProcess, ip: str, mail_from: str, rcpts: list[str], data: bytes) -> tuple[str, int, str]:
    """One transaction from `ip`: (the step that ended it, its code, its text)."""
    try:
        s = smtplib.SMTP(proc.host, proc.mx_port, source_address=(ip, 0), timeout=30)
    except smtplib.SMTPConnectError as e:
        return "CONNECT", e.smtp_code, e.smtp_error.decode()
    with s:
        s.ehlo("client.test")
        code, text = s.mail(mail_from)
        if code != 250:
            return "MAIL", code, text.decode()
        for rcpt in rcpts:
            code, text = s.rcpt(rcpt)
            if code != 250:
                return "RCPT", code, text.decode()
        try:
            code, text = s.data(data)
        except smtplib.SMTPDataError as e:
            return "DATA", e.smtp_code, e.smtp_error.decode()
        return "DATA", code, text.decode()


def _send(proc: MxdProcess, ip: str, author: str, subject: str, mail_from: str | None = None) -> tuple[str, int, str]:
    return transact(proc, ip, mail_from or author, [MAILBOX], _message(author, subject))


def _checks(proc: MxdProcess, reply: str) -> dict:
    inbound_id = reply.rsplit(" ", 1)[-1]
    rows = proc.sql('SELECT "checks" FROM "inbound" WHERE "id" = ?', (inbound_id,))
    assert rows, reply
    return json.loads(rows[0][0])


def _stored(proc: MxdProcess, subject: str) -> int:
    return proc.sql("SELECT COUNT(*) FROM inbound WHERE CAST(data AS TEXT) LIKE ?", (f"%{subject}%",))[0][0]


def _health(proc: MxdProcess) -> dict:
    r = proc.get("/api/health")
    assert r.status_code == 200
    return r.json()["defences"]


# ---------------------------------------------------------------- DNS lists
def test_listed_client_refused_with_the_zone_named(mxd):
    step, code, text = _send(mxd, "127.0.0.66", "a@pass.test", "from a listed client")
    assert (step, code) == ("RCPT", 554)
    assert text.startswith("5.7.1 ") and "listed by bl.test" in text and "[127.0.0.66]" in text
    # its next connection is refused at once, with the zone named
    step, code, text = _send(mxd, "127.0.0.66", "a@pass.test", "from a listed client")
    assert (step, code) == ("CONNECT", 554) and "listed by bl.test" in text
    assert _stored(mxd, "from a listed client") == 0
    assert _health(mxd)["refusals"]["dnsbl"] >= 2


@pytest.mark.parametrize("ip, note", [("127.0.0.71", "dnswl: listed by wl.test"), ("127.0.0.1", None)])
def test_allow_listed_and_trusted_clients_pass(mxd, ip, note):
    step, code, text = _send(mxd, ip, "a@pass.test", f"allowed {ip}")
    assert (step, code) == ("DATA", 250), text
    notes = _checks(mxd, text)["notes"]
    assert (note in notes) if note else notes == []


@pytest.mark.parametrize("ip, status", [("127.0.0.70", "timeout"), ("127.0.0.69", "servfail"),
                                        ("127.0.0.67", "error"), ("127.0.0.68", "error")])
def test_list_problems_accept_and_are_recorded(mxd, ip, status):
    step, code, text = _send(mxd, ip, "a@pass.test", f"problem {ip}")
    assert (step, code) == ("DATA", 250), text
    assert any(n.startswith(f"dnsbl bl.test {status}") for n in _checks(mxd, text)["notes"])
    problems = {p["key"]: p for p in _health(mxd)["problems"]}
    assert problems[f"dnsbl bl.test {status}"]["count"] >= 1
    assert problems[f"dnsbl bl.test {status}"]["last_seen"]


def test_health_says_what_is_configured(mxd):
    defences = _health(mxd)
    assert defences["spam_engine"]["name"] == "none" and "own signals" in defences["spam_engine"]["note"]
    assert (defences["dnsbl_zones"], defences["dnswl_zones"]) == (["bl.test"], ["wl.test"])
    assert defences["check_time"]["count"] >= 1


# ---------------------------------------------------------------- authentication before the 250
def test_dmarc_reject_refused_before_the_250_and_nothing_stored(mxd):
    step, code, text = _send(mxd, "127.0.0.5", "ceo@reject.test", "forged ceo")
    assert (step, code) == ("DATA", 550)
    assert text.startswith("5.7.1 ") and "reject.test" in text and "DMARC" in text
    assert _stored(mxd, "forged ceo") == 0
    assert _health(mxd)["refusals"]["dmarc_reject"] >= 1


def test_dmarc_reject_refused_with_swaks(mxd, tmp_path):
    body = tmp_path / "m.eml"
    body.write_bytes(_message("ceo@reject.test", "swaks forgery"))
    out = subprocess.run(["swaks", "--server", mxd.host, "--port", str(mxd.mx_port), "--local-interface", "127.0.0.6",
                          "--from", "ceo@reject.test", "--to", MAILBOX, "--data", f"@{body}", "--timeout", "30"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "<** 550 5.7.1 " in out.stdout and "reject.test" in out.stdout, out.stdout
    assert _stored(mxd, "swaks forgery") == 0


def test_dmarc_quarantine_accepted_with_its_reason(mxd):
    step, code, text = _send(mxd, "127.0.0.5", "ceo@quar.test", "doubtful ceo")
    assert (step, code) == ("DATA", 250), text
    checks = _checks(mxd, text)
    assert [q["code"] for q in checks["quarantine"]] == ["dmarc_quarantine"]
    assert checks["auth"]["dmarc"] == "fail" and checks["auth"]["dmarc_policy"] == "quarantine"
    # ... and the pipeline holds it: in the quarantine with its reason, not in the mailbox's list
    held = wait_for(lambda: [m for m in mxd.api("GET", "/api/quarantine").json()["data"]
                             if m["subject"] == "doubtful ceo"])
    assert [q["code"] for q in held[0]["quarantine"]] == ["dmarc_quarantine"]
    assert held[0]["verdict"] == "suspicious"
    assert not [m for m in mxd.messages(MAILBOX) if m["subject"] == "doubtful ceo"]


def test_passing_mail_delivered_authenticated_once(mxd):
    step, code, text = _send(mxd, "127.0.0.5", "alice@pass.test", "honest alice")
    assert (step, code) == ("DATA", 250), text
    checks = _checks(mxd, text)
    assert checks["auth"]["dmarc"] == "pass" and checks["quarantine"] == []
    found = wait_for(lambda: [m for m in mxd.messages(MAILBOX) if m["subject"] == "honest alice"])
    assert found
    detail = mxd.api("GET", f"/api/messages/{found[0]['id']}").json()
    assert detail["auth"]["dmarc"] == "pass" and detail["auth"]["spf"] == "pass"
    assert "dmarc=pass" in detail["authentication_results"]
    raw = mxd.api("GET", f"/api/messages/{found[0]['id']}/raw").content
    assert raw.startswith(b"Authentication-Results: mx.example.test;")
    assert raw.count(b"Authentication-Results:") == 1         # not checked twice


def test_spf_fail_without_dmarc_refused(mxd):
    step, code, text = _send(mxd, "127.0.0.5", "x@nodmarc.test", "spf fail no dmarc")
    assert (step, code) == ("DATA", 550) and text.startswith("5.7.1 SPF fail") and "nodmarc.test" in text
    assert _stored(mxd, "spf fail no dmarc") == 0


def test_dmarc_record_that_does_not_parse_is_accepted_and_recorded(mxd):
    step, code, text = _send(mxd, "127.0.0.5", "x@broken.test", "broken dmarc")
    assert (step, code) == ("DATA", 250), text
    checks = _checks(mxd, text)
    assert checks["auth"]["dmarc"] == "permerror" and checks["quarantine"] == []
    assert any(n.startswith("dmarc permerror") for n in checks["notes"])


def test_dns_timeout_on_dmarc_accepts_and_records(mxd):
    step, code, text = _send(mxd, "127.0.0.5", "x@slowdmarc.test", "dmarc lookup times out")
    assert (step, code) == ("DATA", 250), text
    checks = _checks(mxd, text)
    assert checks["auth"]["dmarc"] == "temperror"
    assert any(n.startswith("dmarc temperror") for n in checks["notes"])


def test_one_answer_for_several_recipients(mxd):
    step, code, text = transact(mxd, "127.0.0.5", "ceo@reject.test", [MAILBOX, "agent+two@example.test"],
                                _message("ceo@reject.test", "two recipients forged"))
    assert (step, code) == ("DATA", 550)
    assert _stored(mxd, "two recipients forged") == 0


def test_dmarc_reject_off_quarantines_and_spf_rule_off_accepts(lenient):
    step, code, text = _send(lenient, "127.0.0.5", "ceo@reject.test", "forged but kept")
    assert (step, code) == ("DATA", 250), text
    assert [q["code"] for q in _checks(lenient, text)["quarantine"]] == ["dmarc_reject"]
    held = wait_for(lambda: [m for m in lenient.api("GET", "/api/quarantine").json()["data"]
                             if m["subject"] == "forged but kept"])
    assert [q["code"] for q in held[0]["quarantine"]] == ["dmarc_reject"]
    step, code, text = _send(lenient, "127.0.0.5", "x@nodmarc.test", "spf fail kept")
    assert (step, code) == ("DATA", 250), text
    assert _checks(lenient, text)["auth"]["spf"] == "fail"


# ---------------------------------------------------------------- per-client limits
def _connection(proc: MxdProcess, ip: str) -> smtplib.SMTP:
    s = smtplib.SMTP(proc.host, proc.mx_port, source_address=(ip, 0), timeout=30)
    s.ehlo("client.test")
    return s


def test_messages_per_minute(limited):
    with _connection(limited, "127.0.0.20") as s:
        replies = []
        for _ in range(3):
            replies.append(s.mail("a@pass.test"))
            s.rset()
    assert [r[0] for r in replies] == [250, 250, 451]
    assert replies[2][1].startswith(b"4.7.1 ")


def test_recipients_per_minute(limited):
    with _connection(limited, "127.0.0.21") as s:
        assert s.mail("a@pass.test")[0] == 250
        codes = [s.rcpt(f"agent+{i}@example.test") for i in range(4)]
    assert [c[0] for c in codes] == [250, 250, 250, 452]
    assert codes[3][1].startswith(b"4.5.3 ")


def test_harvesting_closes_the_connection_then_pauses_the_client(limited):
    with _connection(limited, "127.0.0.23") as s:
        assert s.mail("a@pass.test")[0] == 250
        codes = [s.rcpt(f"nobody{i}@example.test") for i in range(3)]
        assert [c[0] for c in codes] == [550, 550, 421]
        assert codes[2][1].startswith(b"4.7.1 ")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.noop()
    step, code, text = _send(limited, "127.0.0.23", "a@pass.test", "after harvesting")
    assert (step, code) == ("CONNECT", 421) and text.startswith("4.7.1 ")
    assert _send(limited, "127.0.0.24", "a@pass.test", "another client")[1] == 250
    refusals = _health(limited)["refusals"]
    assert refusals["harvest"] == 1 and refusals["harvest_pause"] == 1


def test_trusted_networks_skip_limits(limited):
    with _connection(limited, "127.0.0.1") as s:
        for _ in range(5):
            assert s.mail("a@pass.test")[0] == 250
            assert [s.rcpt(f"agent+{i}@example.test")[0] for i in range(5)] == [250] * 5
            s.rset()
        assert [s.rcpt(f"nobody{i}@example.test")[0] for i in range(5)] == [503] * 5   # no MAIL: not harvesting
    with _connection(limited, "127.0.0.1") as s:
        s.mail("a@pass.test")
        assert [s.rcpt(f"nobody{i}@example.test")[0] for i in range(5)] == [550] * 5
