"""Threat: stored mail served as something a browser renders, or a file name that breaks the answer.

Attachments and raw messages are bytes from outside senders. Served with the sender's declared type, a
`text/html` attachment is a page on the API's origin (scripts, forms, phishing under mxd's name); a file
name with characters outside Latin-1 made the answer a 500, and one ending in a backslash a malformed
Content-Disposition. Every download of stored mail (/api/messages/{id}/attachments/{att} and
/api/messages/{id}/raw; /v1 and MCP serve message content only inside JSON) is now a file: `application/octet-stream` (raw: message/rfc822),
`Content-Disposition: attachment` with an ASCII `filename` and the exact name in RFC 6266 `filename*`,
`X-Content-Type-Options: nosniff` and `Content-Security-Policy: sandbox`; every other answer says nosniff.
"""
from __future__ import annotations

import smtplib
import urllib.parse
from email.message import EmailMessage

import pytest

from tests.support.daemon import MxdProcess

AGENT = "agent@example.test"
FILES = {                                  # file name -> (type, bytes)
    "日本語のレポート €.txt": ("text/plain", "non-Latin-1 name\n".encode()),
    "a\\": ("application/octet-stream", b"backslash at the end"),
    'quote"and;semi.txt': ("text/plain", b"quote and semicolon"),
    "page.html": ("text/html", b"<html><script>alert(document.domain)</script></html>"),
    "image.svg": ("image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    proc = MxdProcess(tmp_path_factory.mktemp("downloads") / "data")
    proc.init()
    proc.start()
    assert proc.api("POST", "/api/mailboxes", json={"address": AGENT}).status_code == 201
    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Message-ID"] = "eve@elsewhere.test", AGENT, "files", "<files@elsewhere.test>"
    m.set_content("see the files")
    for name, (ctype, data) in FILES.items():
        maintype, subtype = ctype.split("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    with smtplib.SMTP("127.0.0.1", proc.mx_port, timeout=30) as s:
        s.send_message(m)
    [summary] = proc.wait_messages(1, AGENT, timeout=60)
    detail = proc.api("GET", f"/api/messages/{summary['id']}").json()
    yield {"mxd": proc, "message": detail}
    proc.stop()


def _filename(disposition: str) -> str:
    """The name a browser saves the file as (RFC 6266 4.3: filename* wins)."""
    assert disposition.startswith("attachment;"), disposition
    params = {}
    for part in disposition.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        params.setdefault(key.lower(), value)
    if "filename*" in params:
        charset, _, encoded = params["filename*"].partition("''")
        assert charset.lower() == "utf-8"
        return urllib.parse.unquote(encoded, errors="strict")
    return params["filename"].strip('"')


def _assert_download(r) -> None:
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in r.headers["content-security-policy"]
    disposition = r.headers["content-disposition"]
    assert disposition.isascii() and "\\" not in disposition and "\r" not in disposition and "\n" not in disposition


def test_attachments_are_files_never_pages(world):
    proc, msg = world["mxd"], world["message"]
    by_name = {a["filename"]: a for a in msg["attachments"]}
    assert set(by_name) == set(FILES)
    for name, (ctype, data) in FILES.items():
        att = by_name[name]
        assert att["content_type"] == ctype                     # the declared type is in the metadata
        r = proc.api("GET", att["url"])
        assert r.status_code == 200, (name, r.text)
        assert r.content == data
        assert r.headers["content-type"] == "application/octet-stream"
        _assert_download(r)
        assert _filename(r.headers["content-disposition"]) == name, r.headers["content-disposition"]


def test_the_raw_message_is_a_download(world):
    proc, msg = world["mxd"], world["message"]
    r = proc.api("GET", f"/api/messages/{msg['id']}/raw")
    assert r.status_code == 200 and r.headers["content-type"] == "message/rfc822"
    _assert_download(r)
    assert _filename(r.headers["content-disposition"]) == f"{msg['id']}.eml"


def test_every_answer_says_nosniff(world):
    proc = world["mxd"]
    for path in ("/api/health", "/llms.txt", "/openapi.json", "/api/messages", "/nope"):
        assert proc.api("GET", path).headers["x-content-type-options"] == "nosniff", path


def test_the_cli_saves_under_the_exact_name():
    """`mxd messages attachment` reads the name back from filename* (its file then lands under Path(name).name)."""
    from mxd.api.http import content_disposition
    from mxd.cli.mail import _suggested_name
    for name in FILES:
        assert _suggested_name(content_disposition(name)) == name
    assert _suggested_name('attachment; filename="plain.txt"') == "plain.txt"
