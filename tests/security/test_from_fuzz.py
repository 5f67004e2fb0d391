"""Threat: a From header that two readers in the chain read differently. mxd's From check decides which
mailboxes a send token must own; the parser decides what is stored and shown, DKIM signing what is
vouched for, DMARC which domain is evaluated, and a recipient's verifier (dkimpy here, or any MUA) what
the signature covers. Whenever the check accepts a header, all of them must see the same From fields
and the check's authors must be the parser's."""
from __future__ import annotations

import email
import email.policy

import dkim
from hypothesis import given, note, settings
from hypothesis import strategies as st

from mxd import dkimsign
from mxd.authn.dmarc import author_domain, normalize_domain
from mxd.mime.header import split
from mxd.mime.parse import parse
from mxd.sending import authors_of

_ADDRESSES = st.sampled_from([
    "alice@sec.test", "ceo@sec.test", "a.b@sec.test", '"a b"@sec.test', "a(c)@sec.test", "a . b @ sec.test",
    "<@route,@other:ceo@sec.test>", "ceo@[127.0.0.1]", '"ceo@sec.test"@evil.test', "ceo@sec.test.",
    "CEO@SEC.TEST", "alice+tag@sec.test",
])
_PIECES = st.sampled_from([
    " ", "\t", "\r\n ", "\r\n\t", "\r\n  \t", "(comment)", "(ceo@sec.test)", "(nested (c) x)", '"', '"ceo@sec.test"',
    "<", ">", ",", ";", ":", "undisclosed:", "group: ", "=?utf-8?q?ceo=40sec.test?=", "=?utf-8?b?Y2VvQHNlYy50ZXN0?=",
    "=?iso-8859-1?q?=E9?=", "\\", "\\\"", "Alice", "Alice Smith", "@", ".", "é", "[", "]", "Alice <", "alice@sec.test>",
])
_VALUES = st.lists(st.one_of(_ADDRESSES, _PIECES), max_size=12).map("".join)
_NAMES = st.sampled_from(["From", "FROM", "from", "fRoM", "From ", "From\t", " From", "From  ", "Sender", "Reply-To",
                          "To", "Subject", "X-From", "From-", "Resent-From"])
_LINES = st.one_of(
    st.builds(lambda n, v: f"{n}:{v}", _NAMES, _VALUES),
    st.builds(lambda n, v: f"{n}: {v}", _NAMES, _VALUES),
    st.sampled_from(["From ceo@sec.test Mon Dec  1 00:00:00 2026", "From x", " folded", "\tfolded", "no colon here",
                     ":empty name", "From:", "From: ", ">From ceo@sec.test"]),
)


@st.composite
def headers(draw) -> bytes:
    lines = draw(st.lists(_LINES, max_size=5))
    lines.insert(draw(st.integers(0, len(lines))), "From: " + draw(_VALUES))
    text = "\r\n".join(lines) + "\r\nSubject: s\r\n\r\nbody\r\n"
    return text.encode("utf-8")


def _froms_dkimpy(message: bytes) -> list[bytes]:
    fields, _ = dkim.rfc822_parse(message)
    return [bytes(v) for n, v in fields if n.lower() == b"from"]


@settings(max_examples=2000, deadline=None)
@given(headers())
def test_whenever_the_check_accepts_every_reader_sees_the_same_from(message):
    note(repr(message))
    try:
        authors = authors_of(message)
    except ValueError:
        return                                      # refused with a 5xx before anything is stored
    assert authors == [a.address for a in parse(message).from_]
    ours = [b"".join(line + b"\r\n" for line in lines) for lines in split(message).values(b"from")]
    signed = [v for n, v in dkimsign._split(message)[0] if n.lower() == b"from"]
    assert signed == ours
    assert _froms_dkimpy(message) == ours           # a recipient's DKIM verifier
    stdlib = email.message_from_bytes(message, policy=email.policy.compat32).get_all("From") or []
    assert len(stdlib) == len(ours)                 # a recipient's MUA
    domains = {normalize_domain(a.rpartition("@")[2]) for a in authors if a}
    domain, why = author_domain(message)            # DMARC evaluates one of the authors' domains, or none
    if len(ours) == 1 and authors and all(authors) and len(domains) == 1 and "" not in domains:
        assert (domain, why) == (next(iter(domains)), "")
    if domain:
        assert domains == {domain}


def test_the_audit_payloads_are_refused():
    for message in (b"From : ceo@sec.test\r\nFrom: alice@sec.test\r\n\r\nbody\r\n",
                    b"From: alice@sec.test\r\nFrom ceo@sec.test Mon Dec  1 00:00:00 2026\r\n"
                    b"From: ceo@sec.test\r\n\r\nx\r\n"):
        try:
            authors_of(message)
        except ValueError:
            continue
        raise AssertionError(f"accepted: {message!r}")
