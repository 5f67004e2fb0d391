"""Fuzzing every parser that sees outside input: SMTP commands and DATA, API bodies, addresses, line endings."""
from __future__ import annotations

import json
import smtplib
import socket
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxd import address
from mxd.ingest import has_bare_line_endings, normalize_line_endings
from tests.support.daemon import MxdProcess

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = MxdProcess(tmp_path_factory.mktemp("fuzz") / "data", env={"MXD_MAX_ERRORS": "1000"})
    proc.init()
    proc.start()
    assert proc.api("POST", "/api/mailboxes", json={"address": "agent@example.test"}).status_code == 201
    yield proc
    assert proc.proc.poll() is None, "the daemon died during fuzzing"
    proc.stop()


@given(st.text(min_size=1, max_size=300))
@FUZZ
def test_address_parse_never_raises_anything_else(text):
    try:
        parsed = address.parse(text)
    except address.AddressError:
        return
    assert "@" in str(parsed) and parsed.domain == parsed.domain.lower()
    assert not any(c in str(parsed) for c in "\r\n\0 ")


@given(st.binary(max_size=2000))
@FUZZ
def test_normalised_data_has_no_bare_line_endings(data):
    out = normalize_line_endings(data)
    assert not has_bare_line_endings(out)
    assert out.replace(b"\r\n", b"") == data.replace(b"\r\n", b"").replace(b"\r", b"").replace(b"\n", b"").replace(
        b"\0", b"")


COMMANDS = st.sampled_from([b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"VRFY",
                            b"STARTTLS", b"AUTH PLAIN", b"BDAT", b"XCLIENT", b""])


@given(st.lists(st.tuples(COMMANDS, st.binary(max_size=120)), min_size=1, max_size=12))
@FUZZ
def test_hostile_smtp_sessions_never_crash_the_daemon(server, session):
    with socket.create_connection(("127.0.0.1", server.mx_port), timeout=5) as s:
        s.recv(1024)
        payload = b"".join(cmd + b" " + arg.replace(b"\n", b"") + b"\r\n" for cmd, arg in session)
        try:
            s.sendall(payload + b"\r\n.\r\nQUIT\r\n")
            s.settimeout(2)
            while s.recv(65536):
                pass
        except (ConnectionError, socket.timeout, OSError):
            pass
    # Whatever that session did, the daemon is alive and greets the next client.
    assert server.proc.poll() is None
    with socket.create_connection(("127.0.0.1", server.mx_port), timeout=5) as fresh:
        assert fresh.recv(1024).startswith(b"220 ")


@given(st.binary(max_size=3000))
@FUZZ
def test_hostile_data_is_stored_or_refused_cleanly(server, data):
    try:
        with smtplib.SMTP("127.0.0.1", server.mx_port, timeout=10) as s:
            s.sendmail("x@remote.test", ["agent@example.test"], data)
    except smtplib.SMTPDataError as exc:
        assert exc.smtp_code in (500, 552)             # an over-long line or size, nothing else


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=50),
                    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
                    max_leaves=20)
ROUTES = ["/api/mailboxes", "/api/domains", "/api/aliases", "/api/tokens"]


@given(st.sampled_from(ROUTES), JSON | st.dictionaries(st.sampled_from(
    ["address", "domain", "name", "scopes", "mailboxes", "targets", "display_name", "retention_days"]), JSON))
@FUZZ
def test_hostile_api_bodies_get_structured_errors(server, route, body):
    r = server.api("POST", route, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert {"code", "message", "fix", "hard_stop"} <= set(r.json()["error"])


def test_daemon_still_serves_after_fuzzing(server):
    with smtplib.SMTP("127.0.0.1", server.mx_port, timeout=10) as s:
        s.sendmail("x@remote.test", ["agent@example.test"], b"Subject: after fuzz\r\n\r\nstill here\r\n")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(m["subject"] == "after fuzz" for m in server.messages("agent@example.test")):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("message after fuzzing not stored")
    assert httpx.get(server.url("/api/health")).status_code == 200
