"""mxd.mime.compose: literal output, refusals, and round trips through mxd.mime.parse."""
from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxd.mime.compose import (
    ComposeError,
    Draft,
    OutAttachment,
    compose,
    envelope_recipients,
    reply_headers,
    reply_subject,
)
from mxd.mime.parse import attachment, parse

NOW = datetime(2024, 3, 1, 12, 30, 0, tzinfo=timezone.utc)


def _draft(**kw) -> Draft:
    base = dict(from_addr="agent@example.com", to=["bob@example.org"], subject="Hello", text="Hi Bob\n")
    base.update(kw)
    return Draft(**base)


def _compose(**kw) -> tuple[bytes, str]:
    return compose(_draft(**kw), message_id_domain="example.com", now=NOW)


def _head(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


# --- literal output ------------------------------------------------------------

def test_text_only_literal() -> None:
    raw, mid = _compose(from_name="Agent Smith", cc=["Carol <carol@example.net>"])
    assert re.fullmatch(r"[0-9a-f]{32}@example\.com", mid)
    assert raw == (
        b"Date: Fri, 01 Mar 2024 12:30:00 +0000\r\n"
        b"From: Agent Smith <agent@example.com>\r\n"
        b"To: bob@example.org\r\n"
        b"Cc: Carol <carol@example.net>\r\n"
        b"Subject: Hello\r\n"
        b"Message-ID: <" + mid.encode() + b">\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n"
        b"\r\n"
        b"Hi Bob\r\n"
    )


def test_message_id_and_date_are_made_here() -> None:
    raw1, mid1 = _compose(headers={"X-Trace": "1"})
    raw2, mid2 = _compose()
    assert mid1 != mid2
    assert raw1.count(b"Message-ID:") == 1 and raw1.count(b"Date:") == 1
    for name in ("Message-ID", "Date", "message-id", "From", "Bcc", "DKIM-Signature", "Received",
                 "Content-Type", "content-transfer-encoding", "MIME-Version", "Return-Path", "Sender",
                 "To", "Cc", "Subject", "References", "Resent-From"):
        with pytest.raises(ComposeError) as e:
            _compose(headers={name: "x"})
        assert (e.value.code, e.value.field) == ("bad_request", f"headers.{name}")


def test_bad_header_names_refused() -> None:
    for name in ("X Space", "X:Colon", "", "X-\u00e9"):
        with pytest.raises(ComposeError) as e:
            _compose(headers={name: "v"})
        assert e.value.code == "bad_request"


def test_custom_headers_written_as_given() -> None:
    raw, _ = _compose(headers={"List-Unsubscribe": "<https://x.example/u?a=?b?=>", "X-Tag": "Grüße"})
    head = _head(raw)
    assert b"List-Unsubscribe: <https://x.example/u?a=?b?=>" in head
    assert b"X-Tag: =?utf-8?b?R3LDvMOfZQ==?=" in head


def test_bcc_never_written_but_in_envelope() -> None:
    d = _draft(to=["Bob <Bob@Example.org>"], cc=["carol@example.net", "bob@example.org"],
               bcc=["secret@hidden.example", "CAROL@example.net"])
    raw, _ = compose(d, message_id_domain="example.com", now=NOW)
    assert b"secret" not in raw and b"hidden.example" not in raw and b"Bcc" not in raw
    assert envelope_recipients(d) == ["Bob@example.org", "carol@example.net", "secret@hidden.example"]


def test_bcc_only_gets_undisclosed_recipients() -> None:
    raw, _ = _compose(to=[], bcc=["x@example.org"])
    assert b"To: undisclosed-recipients:;" in _head(raw)
    assert b"x@example.org" not in raw


def test_no_recipients_refused() -> None:
    with pytest.raises(ComposeError) as e:
        _compose(to=[])
    assert (e.value.code, e.value.field) == ("bad_request", "to")


def test_invalid_addresses() -> None:
    for kw, where in ((dict(to=["not-an-address"]), "to[0]"), (dict(cc=["a@b@c.example"]), "cc[0]"),
                      (dict(from_addr="nobody"), "from_addr"), (dict(reply_to=["x@-bad-.example"]), "reply_to[0]"),
                      (dict(bcc=["a b@example.com"]), "bcc[0]")):
        with pytest.raises(ComposeError) as e:
            _compose(**kw)
        assert (e.value.code, e.value.field) == ("invalid_address", where)


def test_idna_domain_and_utf8_names() -> None:
    raw, _ = _compose(from_name="Zoë Ångström", to=["Jürgen Müller <jürgen@bücher.example>"],
                      subject="Grüße aus Köln")
    head = _head(raw)
    assert b"From: =?utf-8?b?Wm/DqyDDhW5nc3Ryw7Zt?= <agent@example.com>" in head
    assert "To: =?utf-8?b?SsO8cmdlbiBNw7xsbGVy?= <jürgen@xn--bcher-kva.example>".encode() in head
    assert b"Subject: =?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?=" in head
    p = parse(raw)
    assert p.subject == "Grüße aus Köln"
    assert (p.from_[0].name, p.from_[0].address) == ("Zoë Ångström", "agent@example.com")
    assert (p.to[0].name, p.to[0].address) == ("Jürgen Müller", "jürgen@xn--bcher-kva.example")


def test_quoted_display_names() -> None:
    raw, _ = _compose(to=['"Smith, John" <j@example.org>', 'Ann "The Boss" <a@example.org>'])
    assert b'To: "Smith, John" <j@example.org>, "Ann \\"The Boss\\"" <a@example.org>' in _head(raw)
    p = parse(raw)
    assert [(a.name, a.address) for a in p.to] == [("Smith, John", "j@example.org"),
                                                   ('Ann "The Boss"', "a@example.org")]


def test_long_subject_folds_and_round_trips() -> None:
    subject = " ".join(f"word{i}" for i in range(60))
    raw, _ = _compose(subject=subject)
    head = _head(raw)
    assert all(len(line) <= 78 for line in head)
    assert parse(raw).subject == subject
    long_word = "x" * 2000
    raw, _ = _compose(subject=long_word)
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert parse(raw).subject == long_word


def test_encoded_word_lookalike_subject_is_encoded() -> None:
    raw, _ = _compose(subject="=?utf-8?q?not_really?=")
    assert b"Subject: =?utf-8?b?PT91dGYtOD9xP25vdF9yZWFsbHk/PQ==?=" in _head(raw)
    assert parse(raw).subject == "=?utf-8?q?not_really?="


def test_html_only_and_alternative() -> None:
    raw, _ = _compose(text=None, html="<p>Hi</p>")
    assert b"Content-Type: text/html; charset=utf-8" in _head(raw)
    p = parse(raw)
    assert (p.html, p.text) == ("<p>Hi</p>\n", p.text)
    raw, _ = _compose(text="plain", html="<b>rich</b>")
    assert re.search(rb'^Content-Type: multipart/alternative; boundary="=_mxd_[0-9a-f]{24}"\r$', raw, re.M)
    p = parse(raw)
    assert (p.text, p.html, p.attachments) == ("plain\n", "<b>rich</b>\n", [])


def test_empty_body_allowed() -> None:
    raw, _ = _compose(text=None)
    assert raw.endswith(b"Content-Transfer-Encoding: 7bit\r\n\r\n")
    assert parse(raw).text == ""


def test_attachments_round_trip_same_bytes() -> None:
    png = bytes(range(256)) * 10
    pdf = b"%PDF-1.4\r\n\x00\xff binary"
    raw, _ = _compose(html='<img src="cid:logo@x">', text="see logo",
                      attachments=[OutAttachment("logo.png", "image/png", png, content_id="logo@x", inline=True),
                                   OutAttachment("Prüfbericht 2024 – endgültig und sehr lang benannt.pdf",
                                                 "application/pdf", pdf),
                                   OutAttachment("notes.txt", "text/plain; charset=iso-8859-1", b"caf\xe9\n")])
    assert b"Content-Type: multipart/mixed;" in _head(raw)[-1] or b"multipart/mixed" in raw.split(b"\r\n\r\n")[0]
    assert b'Content-Type: multipart/related; type="text/html";' in raw
    assert b"Content-Type: text/plain; charset=iso-8859-1; name=\"notes.txt\"" in raw
    p = parse(raw)
    assert (p.text, p.html) == ("see logo\n", '<img src="cid:logo@x">\n')
    got = {a.filename: (a, attachment(raw, a.index)[1]) for a in p.attachments}
    assert set(got) == {"logo.png", "Prüfbericht 2024 – endgültig und sehr lang benannt.pdf", "notes.txt"}
    logo, data = got["logo.png"]
    assert (logo.content_type, logo.content_id, logo.disposition, data) == ("image/png", "logo@x", "inline", png)
    pdf_att, data = got["Prüfbericht 2024 – endgültig und sehr lang benannt.pdf"]
    assert (pdf_att.content_type, pdf_att.disposition, data) == ("application/pdf", "attachment", pdf)
    assert got["notes.txt"][1] == b"caf\xe9\n"


def test_attachment_without_body_and_bad_types() -> None:
    raw, _ = _compose(text=None, attachments=[OutAttachment("a.bin", "application/octet-stream", b"\x00\x01")])
    p = parse(raw)
    assert [(a.filename, a.size) for a in p.attachments] == [("a.bin", 2)]
    for ctype in ("multipart/mixed", "text", "text/plain; charset=\"a\nb\"", "image/png; x"):
        with pytest.raises(ComposeError) as e:
            _compose(attachments=[OutAttachment("a", ctype, b"x")])
        assert e.value.field == "attachments[0].content_type"


def test_message_rfc822_attachment_is_not_base64() -> None:
    inner = b"From: a@example.org\nSubject: inner\n\nbody\n"
    raw, _ = _compose(attachments=[OutAttachment("fwd.eml", "message/rfc822", inner)])
    assert b"Content-Type: message/rfc822; name=\"fwd.eml\"\r\nContent-Transfer-Encoding: 7bit" in raw
    assert b"From: a@example.org\r\nSubject: inner\r\n\r\nbody\r\n" in raw


def test_lines_within_limits_and_crlf() -> None:
    text = ("é" * 3000 + "\n") + ("a" * 5000 + "  \n") + "tail"
    raw, _ = _compose(text=text, subject="s" * 1500, from_name="n" * 900)
    assert raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert parse(raw).text == text + "\n"


def test_qp_keeps_trailing_spaces() -> None:
    raw, _ = _compose(text="caf\u00e9 au lait  \nnext\tline\t\n")
    assert b"Content-Transfer-Encoding: quoted-printable" in raw
    assert b"caf=C3=A9 au lait =20\r\nnext\tline=09\r\n" in raw
    assert parse(raw).text == "caf\u00e9 au lait  \nnext\tline\t\n"


def test_reply_fields_written() -> None:
    raw, _ = _compose(in_reply_to="<parent@example.org>", references=["root@example.org", "parent@example.org"])
    head = _head(raw)
    assert b"In-Reply-To: <parent@example.org>" in head
    assert b"References: <root@example.org> <parent@example.org>" in head
    p = parse(raw)
    assert (p.in_reply_to, p.references) == (["parent@example.org"], ["root@example.org", "parent@example.org"])
    for bad in ("has space@x", "a<b@x", ""):
        with pytest.raises(ComposeError) as e:
            _compose(references=[bad])
        assert (e.value.code, e.value.field) == ("bad_request", "references[0]")


# --- header injection: every field ---------------------------------------------

INJECTIONS = ["x\r\nBcc: evil@example.org", "x\nX-Evil: 1", "x\rX-Evil: 1", "x\x00y"]
FIELDS = [
    ("from_addr", lambda v: dict(from_addr=f"agent{v}@example.com")),
    ("from_name", lambda v: dict(from_name=v)),
    ("to[0]", lambda v: dict(to=[f"{v} <bob@example.org>"])),
    ("to[1]", lambda v: dict(to=["bob@example.org", f"b{v}@example.org"])),
    ("cc[0]", lambda v: dict(cc=[f"{v} <c@example.org>"])),
    ("bcc[0]", lambda v: dict(bcc=[f"{v}@example.org"])),
    ("reply_to[0]", lambda v: dict(reply_to=[f"{v} <r@example.org>"])),
    ("subject", lambda v: dict(subject=v)),
    ("headers.X-Ok", lambda v: dict(headers={"X-Ok": v})),
    ("in_reply_to", lambda v: dict(in_reply_to=f"a{v}@b")),
    ("references[0]", lambda v: dict(references=[f"a{v}@b"])),
    ("attachments[0].filename", lambda v: dict(attachments=[OutAttachment(v, "text/plain", b"x")])),
    ("attachments[0].content_type", lambda v: dict(attachments=[OutAttachment("a", f"text/plain{v}", b"x")])),
    ("attachments[0].content_id", lambda v: dict(attachments=[OutAttachment("a", "image/png", b"x", v, True)])),
]


@pytest.mark.parametrize("where,make", FIELDS, ids=[f[0] for f in FIELDS])
@pytest.mark.parametrize("value", INJECTIONS, ids=["crlf", "lf", "cr", "nul"])
def test_header_injection_refused(where, make, value) -> None:
    with pytest.raises(ComposeError) as e:
        _compose(**make(value))
    assert (e.value.code, e.value.field) == ("header_injection", where)


def test_header_injection_in_header_name() -> None:
    with pytest.raises(ComposeError) as e:
        _compose(headers={"X-A\r\nBcc": "v"})
    assert e.value.code == "header_injection"


def test_nul_in_body_refused_and_surrogates() -> None:
    with pytest.raises(ComposeError) as e:
        _compose(text="a\x00b")
    assert (e.value.code, e.value.field) == ("bad_request", "text")
    with pytest.raises(ComposeError) as e:
        _compose(subject="bad \udc80")
    assert (e.value.code, e.value.field) == ("bad_request", "subject")


# --- replies -----------------------------------------------------------------------

def test_reply_headers_rfc5322_3_6_4() -> None:
    assert reply_headers("p@x", ["a@x", "b@x"], ["b@x"]) == ("p@x", ["a@x", "b@x", "p@x"])
    assert reply_headers("<p@x>", [], ["<b@x>"]) == ("p@x", ["b@x", "p@x"])
    assert reply_headers("p@x", [], ["b@x", "c@x"]) == ("p@x", ["p@x"])
    assert reply_headers(None, [], []) == (None, [])
    assert reply_headers(None, ["a@x"], []) == (None, ["a@x"])
    assert reply_headers("p@x", ["a@x", "p@x", "a@x", "bad id"], []) == ("p@x", ["a@x", "p@x"])
    refs = [f"r{i}@x" for i in range(50)]
    irt, out = reply_headers("p@x", refs, [])
    assert len(out) == 20 and out[0] == "r0@x" and out[-2:] == ["r49@x", "p@x"] and out[1] == "r32@x"


def test_reply_subject() -> None:
    assert reply_subject("Hello") == "Re: Hello"
    assert reply_subject("Re: Hello") == "Re: Hello"
    assert reply_subject("RE: re[2]: AW: Hello") == "Re: Hello"
    assert reply_subject("  re :Hello") == "Re: Hello"
    assert reply_subject("Fwd: Hello") == "Re: Fwd: Hello"
    assert reply_subject("Ready") == "Re: Ready"
    assert reply_subject("") == "Re: "


def test_reply_round_trip_through_parse() -> None:
    parent_raw, parent_id = _compose(subject="Plan", references=["root@example.org"])
    parent = parse(parent_raw)
    irt, refs = reply_headers(parent.message_id, parent.references, parent.in_reply_to)
    raw, _ = _compose(subject=reply_subject(parent.subject), in_reply_to=irt, references=refs)
    p = parse(raw)
    assert (p.subject, p.in_reply_to, p.references) == ("Re: Plan", [parent_id], ["root@example.org", parent_id])


# --- property: random field strings ---------------------------------------------------

KNOWN = {b"Date", b"From", b"To", b"Cc", b"Reply-To", b"Subject", b"Message-ID", b"MIME-Version",
         b"Content-Type", b"Content-Transfer-Encoding", b"X-Note"}
_local = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._+-", min_size=1, max_size=12).filter(
    lambda s: not s.startswith(".") and not s.endswith(".") and ".." not in s)


def _bad(value: str) -> bool:
    if any(c in value for c in "\r\n\x00"):
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _expected_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text + "\n" if text and not text.endswith("\n") else text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=st.text(max_size=300), name=st.text(max_size=80), to_name=st.text(max_size=40),
       text=st.text(max_size=400), note=st.text(max_size=200), local=_local)
def test_random_fields_compose_or_refuse(subject, name, to_name, text, note, local) -> None:
    d = Draft(from_addr=f"{local}@example.com", from_name=name, to=[f"{to_name} <{local}@example.org>"],
              subject=subject, text=text, headers={"X-Note": note})
    try:
        raw, mid = compose(d, message_id_domain="example.com")
    except ComposeError as e:
        assert e.code in ("header_injection", "bad_request", "invalid_address")
        if e.code == "header_injection":
            assert any(any(c in v for c in "\r\n\x00") for v in (subject, name, to_name, note))
        elif e.code == "bad_request":
            assert any(_bad(v) for v in (subject, name, to_name, note, text))
        else:   # only a display name that itself looks like "<addr>" can change the address
            assert "<" in to_name or ">" in to_name or '"' in to_name
        return
    assert not any(_bad(v) for v in (subject, name, to_name, note)) and "\x00" not in text
    head = _head(raw)
    for line in head:
        assert line[:1] in (b" ", b"\t") or line.split(b":", 1)[0] in KNOWN, line
    assert len([line for line in head if not line[:1].isspace()]) == 9
    lines = raw.split(b"\r\n")
    assert max(map(len, lines)) <= 998 and raw.endswith(b"\r\n")
    p = parse(raw)
    assert p.errors == []
    assert p.subject == subject.strip()
    assert p.text == _expected_text(text)
    assert p.message_id == mid
    assert [a.address for a in p.to] == [f"{local}@example.org"]
    assert p.from_[0].name == name.strip()


@settings(max_examples=300, deadline=None)
@given(filename=st.text(max_size=150), data=st.binary(max_size=64), cid=st.text(max_size=20))
def test_random_attachment_names_compose_or_refuse(filename, data, cid) -> None:
    d = _draft(html="<p>x</p>", attachments=[OutAttachment(filename, "application/octet-stream", data),
                                             OutAttachment("i.png", "image/png", b"1", cid or None, True)])
    try:
        raw, _ = compose(d, message_id_domain="example.com")
    except ComposeError as e:
        assert e.code in ("header_injection", "bad_request")
        assert _bad(filename) or _bad(cid) or e.field == "attachments[1].content_id"
        return
    p = parse(raw)
    assert p.errors == []
    (att,) = [a for a in p.attachments if a.content_type == "application/octet-stream"]
    # mxd.mime.parse drops control characters and surrounding spaces from file names
    assert att.filename == ("".join(c for c in filename if c >= " " and c != "\x7f").strip() or None)
    assert attachment(raw, att.index)[1] == data
