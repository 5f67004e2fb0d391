"""Tests of mxd.mime.parse on real corpus mail, synthetic header and MIME mess, and fuzzed input."""
from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxd.mime.parse import MAX_DEPTH, MAX_PARTS, Address, Attachment, Parsed, attachment, html_to_text, parse
from tests.support.corpora import CPYTHON_EMAIL, corpus_files, corpus_message

UTC = timezone.utc
ALL_FILES = corpus_files("") + sorted(CPYTHON_EMAIL.glob("msg_*.txt"))


def internal(p: Parsed) -> list[str]:
    return [e for e in p.errors if e.startswith("internal error")]


# --- real messages, literal values ---------------------------------------------

def test_plain_message() -> None:
    p = parse(corpus_message("default/01:2,"))
    assert p.message_id == "1258471718-6781-1-git-send-email-dottedmag@dottedmag.net"
    assert p.subject == "[notmuch] [PATCH 1/2] Close message file after parsing message headers"   # folded in the file
    assert p.from_ == [Address("Mikhail Gusarov", "dottedmag@dottedmag.net")]
    assert p.to == [Address("", "notmuch@notmuchmail.org")]
    assert p.cc == [] and p.reply_to == []
    assert p.date == datetime(2009, 11, 17, 15, 28, 37, tzinfo=UTC)
    assert p.text.startswith('Keeping unused files open helps to see "Too many open files" often.\n\nSigned-off-by:')
    assert p.html is None
    assert p.attachments == []
    assert p.in_reply_to == [] and p.references == []
    assert p.headers[:2] == [("From", '"Mikhail Gusarov" <dottedmag@dottedmag.net>'), ("To", "notmuch@notmuchmail.org")]
    assert p.errors == []


def test_rfc2047_subject_and_quoted_printable_latin1_body() -> None:
    p = parse(corpus_message("default/cur/53:2,"))          # Subject: Essai =?iso-8859-1?Q?accentu=E9?=
    assert p.subject == "Essai accentué"
    assert p.text.startswith("Du texte accentué pour ça ...\n\nà la bonne heure !\n")
    assert ("Subject", "Essai accentué") in p.headers
    assert p.errors == []


def test_rfc2047_quoted_display_name_and_thread_ids() -> None:
    p = parse(corpus_message("default/cur/52:2,"))          # From: "=?ISO-8859-1?Q?Fran=E7ois_Boulogne?=" <...>
    assert p.from_ == [Address("François Boulogne", "boulogne.f@gmail.com")]
    assert p.to == [Address("Allan McRae", "allan@archlinux.org"),
                    Address("Discussion about the Arch User Repository (AUR)", "aur-general@archlinux.org")]
    assert p.in_reply_to == ["4EFC3D62.4030202@archlinux.org"]
    assert p.references == ["4EFC3931.6030007@april.org", "4EFC3D62.4030202@archlinux.org"]
    assert p.text.startswith("Le 29/12/2011 11:13, Allan McRae a écrit :\n")


def test_html_only_message_renders_text_without_attribute_values() -> None:
    p = parse(corpus_message("html/attribute-text"))         # <input value="a>swordfish"> ... hunter2
    assert p.html == '<html>\n  <body>\n    <input value="a>swordfish">\n  </body>\n  hunter2\n</html>\n'
    assert p.text == "hunter2"
    assert p.attachments == []                               # inline; filename=test.html is still the body
    assert p.errors == []


def test_multipart_alternative_with_encoded_words() -> None:
    p = parse(corpus_message("html/embedded-image"))
    assert p.subject == "Tack alla trafikanter och fotgängare!"
    assert p.from_ == [Address("malmoborg", "daemon@lublin.se")]
    assert p.to == [Address("boende.malmoborg", "daemon@lublin.se")]
    assert p.text.startswith("<http://malmoborg.se/2016/07/tack-alla-trafikanter-och-fotgangare/>\n\nMalmö 2016-07-09\n")
    assert p.html.startswith('<table border="1" width="100%"')
    assert "Förvaltnings AB Malmöborg" in p.html
    assert p.attachments == []
    assert p.errors == []


def test_attachment_message() -> None:
    raw = corpus_message("attachment/x-gtar-compressed.eml")
    p = parse(raw)
    assert p.from_ == [Address("Antoine Beaupré", "anarcat@orangeseeds.org")]
    assert p.text == "And obviously I forget the frigging attachment.\n\n"
    assert p.attachments == [
        Attachment(2, "zendesk-email-loop2.tgz", "application/x-gtar-compressed", 5368, None, "attachment"),
        Attachment(3, None, "text/plain", 137, None, "inline"),
    ]
    found = attachment(raw, 2)
    assert found is not None
    att, data = found
    assert att == p.attachments[0]
    assert len(data) == 5368 and data[:2] == b"\x1f\x8b"      # gzip magic
    assert attachment(raw, 0) is None                         # the multipart container
    assert attachment(raw, 1) is None                         # the text body
    assert attachment(raw, 99) is None
    assert attachment(raw, 3)[1].startswith(b"\nPS: don't we have")


def test_calendar_attachment_and_yearless_date() -> None:
    raw = corpus_message("attachment/text-calendar.eml")
    p = parse(raw)
    assert p.message_id == "YT3PR01MB10572EFC9F7C81F9446214768CEF72@YT3PR01MB10572.CANPRD01.PROD.OUTLOOK.COM"
    assert p.to == [Address("david@tethera.net", "david@tethera.net")]
    assert p.text == "This meeting will could have been an email\n\n"
    assert p.attachments == [Attachment(2, None, "text/calendar", 1685, None, "inline")]
    assert attachment(raw, 2)[1].startswith(b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\n")
    assert p.date is None                                     # "Thu Jan 01 00:00:10 +0000" has no year
    assert p.errors == ["Date: unparseable 'Thu Jan 01 00:00:10 +0000'"]


def test_broken_two_cc_fields_are_merged() -> None:
    p = parse(corpus_message("broken/broken-cc"))
    assert p.cc == [Address("Bob", "bob@example.org"), Address("Charles", "charles@example.org")]
    assert [h for h in p.headers if h[0].lower() == "cc"] == [("Cc", "Bob <bob@example.org>"),
                                                              ("cc", "Charles <charles@example.org>")]


def test_broken_empty_rfc822_part() -> None:
    p = parse(corpus_message("broken/empty-part"))
    assert p.subject == "Post to freebsd-hackers@FreeBSD.org denied: Re: rcd(8) - new service manager daemon"
    assert p.reply_to == [Address("", "freebsd-hackers+subrelease-0d41b2c07ac29c45@FreeBSD.org")]
    assert p.text.startswith("Hi, this is the Mlmmj program managing the <freebsd-hackers@FreeBSD.org>\nmailing list.")
    assert p.attachments == [Attachment(2, "message.eml", "message/rfc822", 0, None, "inline")]
    assert p.errors == []


def test_mangled_pgp_message() -> None:
    p = parse(corpus_message("mangling/mixed-up.eml"))
    assert p.text == ""
    assert [(a.index, a.content_type, a.size) for a in p.attachments] == [
        (2, "application/pgp-encrypted", 12), (3, "application/octet-stream", 229)]


def test_thread_headers_of_the_threading_corpus() -> None:
    p = parse(corpus_message("threading/ghost-root/fake-root"))
    assert p.in_reply_to == ["nonexistent-message@example.org"]
    assert p.references == ["000-real-root@example.org", "001-child@example.org", "nonexistent-message@example.org"]
    p = parse(corpus_message("threading/parent-priority/cur/child"))
    assert p.in_reply_to == ["B00-root@example.org"]
    assert p.references == ["B00--root@example.org"]
    p = parse(corpus_message("duplicate/msg-2-2:2,"))          # the same id twice in References
    assert p.references == ["87vcch7hxy.fsf@naesten.dyndns.org"]


def test_cpython_digest_and_no_message_id() -> None:
    p = parse((CPYTHON_EMAIL / "msg_02.txt").read_bytes())
    assert p.message_id is None
    assert p.subject == "Ppp digest, Vol 1 #2 - 5 msgs"
    assert [a.content_type for a in p.attachments].count("message/rfc822") == 5   # RFC 2046 5.1.5 digest default


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_every_corpus_file_parses(path) -> None:
    raw = path.read_bytes()
    p = parse(raw)
    assert isinstance(p, Parsed)
    assert internal(p) == []
    for a in p.attachments:                                   # attachment() round-trip
        assert attachment(raw, a.index) == (a, attachment(raw, a.index)[1])
        assert len(attachment(raw, a.index)[1]) == a.size
    if p.date is not None:
        assert p.date.tzinfo is not None and p.date.utcoffset().total_seconds() == 0


# --- header mess ------------------------------------------------------------------

def msg(headers: str, body: str = "hello\n") -> bytes:
    return (headers.strip("\n") + "\n\n" + body).encode("utf-8")


@pytest.mark.parametrize("value, expected", [
    ("<a@b>", "a@b"),
    ("  < a@b >  ", "a@b"),
    ("a@b", "a@b"),                                           # no brackets
    ("<a@b> (added by postmaster@x)", "a@b"),
    ("<first@x> <second@x>", "first@x"),
    ("<folded\n @x>", "folded@x"),
    ("garbage", None),
    ("", None),
])
def test_message_id_forms(value: str, expected: str | None) -> None:
    p = parse(msg(f"Message-ID: {value}\nSubject: x"))
    assert p.message_id == expected


def test_references_and_in_reply_to_mess() -> None:
    p = parse(msg(
        "In-Reply-To: Your message of \"Mon, 1 Jan 2001\" <p@x>\n"
        "References: <a@x> junk <b@x>\n <c@x>,<a@x> (comment)\n"
    ))
    assert p.in_reply_to == ["p@x"]
    assert p.references == ["a@x", "b@x", "c@x"]
    p = parse(msg("In-Reply-To: p@x (Jane's message)\nReferences: a@x b@x"))
    assert p.in_reply_to == ["p@x"]
    assert p.references == ["a@x", "b@x"]


def test_encoded_words_split_inside_a_character() -> None:
    # "é" is C3 A9 in UTF-8; the two bytes sit in two adjacent encoded words (RFC 2047 6.2 joins them)
    p = parse(msg("Subject: =?utf-8?q?caf=C3?= =?utf-8?q?=A9?= ok"))
    assert p.subject == "café ok"
    assert p.errors == []


def test_unknown_and_lying_charsets() -> None:
    p = parse(msg("Subject: =?x-no-such?q?caf=E9?=\nContent-Type: text/plain; charset=us-ascii",
                  "naïve\n"))
    assert p.subject == "café"                                # unknown charset: Latin-1
    assert p.text == "naïve\n"                                # declared ASCII, is UTF-8
    assert p.errors == ["Subject: unknown charset 'x-no-such'",
                        "part 0 (text/plain): not valid us-ascii; read as UTF-8"]
    raw = b"Subject: x\nContent-Type: text/plain; charset=utf-8\n\ncaf\xe9 \xff\n"
    p = parse(raw)
    assert p.text == "caf\ufffd \ufffd\n"
    assert p.errors == ["part 0 (text/plain): not valid utf-8; undecodable bytes replaced"]


def test_codec_names_that_are_not_charsets() -> None:
    p = parse(b"Subject: x\nContent-Type: text/plain; charset=zlib\n\nx\x9c\xcbH\xcd\xc9\xc9\x07\x00\x06,\x02\x15\n")
    assert p.errors[0] == "part 0 (text/plain): unknown charset 'zlib'"
    assert "hello" not in p.text


def test_8bit_headers() -> None:
    p = parse("Subject: Grüße\nFrom: Jörg <jörg@exämple.de>\n\nhi\n".encode("utf-8"))   # RFC 6532
    assert p.subject == "Grüße"
    assert p.from_ == [Address("Jörg", "jörg@exämple.de")]
    assert p.errors == []
    p = parse(b"Subject: Gr\xfc\xdfe\n\nhi\n")                 # not UTF-8
    assert p.subject == "Grüße"
    assert p.errors == ["Subject: 8-bit header field is not UTF-8; read as Latin-1"]


def test_addresses_groups_and_garbage() -> None:
    p = parse(msg("To: undisclosed-recipients:;\nCc: Team: a@x, \"B, b\" <b@x>;\nReply-To: foo"))
    assert p.to == []
    assert p.cc == [Address("", "a@x"), Address("B, b", "b@x")]
    assert p.reply_to == [Address("foo", "")]
    assert p.errors == ["Reply-To: unparseable address 'foo'"]


def test_date_is_utc() -> None:
    assert parse(msg("Date: Tue, 17 Nov 2009 21:28:37 +0600")).date == datetime(2009, 11, 17, 15, 28, 37, tzinfo=UTC)
    p = parse(msg("Date: yesterday"))
    assert p.date is None and p.errors == ["Date: unparseable 'yesterday'"]


def test_crlf_and_bare_cr_line_ends() -> None:
    crlf = parse(b"Subject: a\r\n b\r\nMessage-ID: <x@y>\r\n\r\nline1\r\nline2\r\n")
    assert (crlf.subject, crlf.message_id, crlf.text) == ("a b", "x@y", "line1\nline2\n")
    cr = parse(b"Subject: old mac\rMessage-ID: <m@y>\r\rbody\r")
    assert (cr.subject, cr.message_id, cr.text) == ("old mac", "m@y", "body\n")


def test_missing_header_body_separator() -> None:
    p = parse(b"Subject: x\nthis is body text\nmore\n")
    assert p.subject == "x"
    assert p.text == "this is body text\nmore\n"
    assert p.errors == ["part 0: header section not ended by an empty line"]


# --- MIME structure ------------------------------------------------------------------

def multipart(parts: list[str], boundary: str = "b1", subtype: str = "mixed", close: bool = True) -> bytes:
    body = "".join(f"--{boundary}\n{p}\n" for p in parts) + (f"--{boundary}--\n" if close else "")
    return msg(f"Subject: m\nContent-Type: multipart/{subtype}; boundary=\"{boundary}\"", "preamble\n" + body)


def test_rfc2231_filename_and_content_id() -> None:
    raw = multipart([
        "Content-Type: text/plain\n\nbody",
        "Content-Type: application/pdf\nContent-Disposition: attachment;\n filename*0*=utf-8''R%C3%A9sum;\n"
        " filename*1=\"e.pdf\"\nContent-Transfer-Encoding: base64\n\nJVBERi0xLjQK",
        "Content-Type: image/png; name=\"=?utf-8?q?b=C3=A9b=C3=A9.png?=\"\nContent-ID: <img1@x>\n"
        "Content-Transfer-Encoding: base64\n\niVBORw0KGgo=",
    ], subtype="related")
    p = parse(raw)
    assert p.text == "body"
    assert p.attachments == [
        Attachment(2, "Résume.pdf", "application/pdf", 9, None, "attachment"),
        Attachment(3, "bébé.png", "image/png", 8, "img1@x", "inline"),
    ]
    assert attachment(raw, 2)[1] == b"%PDF-1.4\n"
    assert attachment(raw, 3)[1] == b"\x89PNG\r\n\x1a\n"
    assert p.errors == []


def test_bad_base64_is_decoded_as_far_as_possible() -> None:
    raw = multipart(["Content-Type: text/plain\n\nbody",
                     "Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\naGVsbG8gd29ybGQ"])
    p = parse(raw)
    assert attachment(raw, 2)[1] == b"hello world"
    assert p.errors == ["part 2: invalid base64"]


def test_missing_close_delimiter_and_bogus_boundary() -> None:
    p = parse(multipart(["Content-Type: text/plain\n\none", "Content-Type: text/html\n\n<p>two</p>"], close=False))
    assert p.text == "one"
    assert p.html == "<p>two</p>\n"
    assert p.errors == ["part 0: multipart has no close delimiter"]
    raw = msg("Subject: m\nContent-Type: multipart/mixed; boundary=nowhere", "just text\n")
    p = parse(raw)
    assert p.text == "just text\n"
    assert p.errors == ["part 0: boundary 'nowhere' not found; read as text/plain"]
    p = parse(msg("Subject: m\nContent-Type: multipart/mixed", "text\n"))
    assert p.text == "text\n"
    assert p.errors == ["part 0: multipart/mixed without boundary; read as text/plain"]


def test_boundary_must_start_a_line_and_end_it() -> None:
    raw = multipart(["Content-Type: text/plain\n\nsee --b1 here\n--b1x is not a delimiter\n--b1 \t"])
    p = parse(raw)
    assert p.text == "see --b1 here\n--b1x is not a delimiter"
    assert p.errors == []


def test_deep_nesting_is_capped() -> None:
    depth = 5000
    head = "".join(f"Content-Type: multipart/mixed; boundary=\"d{i}\"\n\n--d{i}\n" for i in range(depth))
    tail = "".join(f"\n--d{i}--\n" for i in reversed(range(depth)))
    raw = ("Subject: deep\n" + head + "Content-Type: text/plain\n\ninnermost\n" + tail).encode()
    start = time.perf_counter()
    p = parse(raw)
    assert time.perf_counter() - start < 2.0
    assert p.subject == "deep"
    assert f"part {MAX_DEPTH}: MIME nesting deeper than {MAX_DEPTH}; not descended" in p.errors
    assert [a.index for a in p.attachments] == [MAX_DEPTH]    # the rest stays one opaque part
    assert attachment(raw, MAX_DEPTH)[0].content_type == "multipart/mixed"
    assert internal(p) == []


def test_part_count_is_capped() -> None:
    raw = multipart(["Content-Type: text/plain\n\nx"] * (MAX_PARTS + 500))
    p = parse(raw)
    assert len(p.attachments) == MAX_PARTS - 2              # root and the body are not attachments
    assert f"more than {MAX_PARTS} MIME parts; the rest is not split" in p.errors


def test_errors_are_bounded() -> None:
    raw = msg("\n".join(f"X-H{i}: =?bogus{i}?q?x?=" for i in range(500)))
    p = parse(raw)
    assert len(p.errors) == 51 and p.errors[-1] == "further defects not recorded"


def test_html_to_text() -> None:
    source = ("<html><head><title>T</title><style>p{}</style></head><body><!-- hidden -->"
              "<p>One &amp; two</p><div>three<br>four</div><script>alert(1)</script>"
              "<table><tr><td>a</td><td>b</td></tr></table>caf&eacute;&nbsp;x</body></html>")
    assert html_to_text(source) == "One & two\n\nthree\nfour\n\na b\n\ncafé x"
    assert html_to_text("<p>unclosed <!-- comment") == "unclosed"
    assert html_to_text("a < b and c > d") == "a < b and c > d"


def test_plain_message_parses_fast() -> None:
    raw = corpus_message("default/cur/32:2,")                # 5.9 KB plain text
    assert 5000 < len(raw) < 7000
    runs = 200
    best = min(_timed(raw, runs) for _ in range(3)) / runs
    assert best < 0.0005                                     # measured ~50 us on the dev box


def _timed(raw: bytes, runs: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        parse(raw)
    return time.perf_counter() - start


# --- fuzzing -------------------------------------------------------------------------

SEED = corpus_message("attachment/x-gtar-compressed.eml")
SEEDS = [SEED, corpus_message("html/embedded-image"), corpus_message("broken/empty-part"),
         (CPYTHON_EMAIL / "msg_07.txt").read_bytes()]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000))
def test_fuzz_random_bytes(raw: bytes) -> None:
    p = parse(raw)
    assert isinstance(p, Parsed)
    assert internal(p) == []


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["truncate", "insert", "boundary", "delete", "dup"]))
        pos = draw(st.integers(0, len(raw)))
        if op == "truncate":
            del raw[pos:]
        elif op == "insert":
            raw[pos:pos] = draw(st.sampled_from([b"\r", b"\n", b"\x00", b"\r\n\r\n", b"=?", b"--", b"\xff\xfe",
                                                 b"\n--=-=-=\n", b"\n--=-=-=--\n", b"Content-Type: multipart/mixed\n"]))
        elif op == "boundary":
            raw = bytearray(bytes(raw).replace(b"=-=-=", draw(st.sampled_from([b"", b"x", b"=-=", b"--", b"=-=-=-="]))))
        elif op == "delete":
            del raw[pos:pos + draw(st.integers(1, 200))]
        else:
            raw[pos:pos] = raw[pos:pos + draw(st.integers(1, 300))]
    return bytes(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_real_messages(raw: bytes) -> None:
    p = parse(raw)
    assert isinstance(p, Parsed)
    assert internal(p) == []
    for a in p.attachments:
        found = attachment(raw, a.index)
        assert found is not None and found[0] == a and len(found[1]) == a.size


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["Content-Type: multipart/mixed; boundary=a\n\n", "--a\n", "--a--\n",
                                 "Content-Type: text/plain\n\n", "x\n", "\n", "Content-Type: message/rfc822\n\n",
                                 "Content-Transfer-Encoding: base64\n", "=?utf-8?b?w6k=?=\n", "\r"]), max_size=60))
def test_fuzz_mime_shaped_input(chunks: list[str]) -> None:
    p = parse("".join(chunks).encode())
    assert internal(p) == []
