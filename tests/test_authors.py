"""SMTP submission reads the From addresses from the header alone (`mxd.sending.authors_of`), with a
direct path for the everyday forms: whatever the field holds, the answer must be the full parser's,
because it decides which mailboxes the token must be allowed to send as."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxd.mime.parse import parse
from mxd.sending import authors_of


def _message(from_value: bytes, extra: bytes = b"") -> bytes:
    return b"From: " + from_value + b"\r\n" + extra + b"To: x@y.test\r\nSubject: s\r\n\r\nbody\r\n"


def _full(message: bytes) -> list[str]:
    return [a.address for a in parse(message).from_]


@pytest.mark.parametrize("value", [
    b"a@example.test", b"<a@example.test>", b"Agent <a@example.test>", b'"Agent, Smith" <a@example.test>',
    b"a@example.test, b@example.test", b"Agent <a@example.test> (comment)", b"=?utf-8?q?Ag=C3=A9nt?= <a@example.test>",
    b'"a@example.test" <b@example.test>', b"a@example.test <b@example.test>", b"Agent\r\n <a@example.test>",
    b"<a@example.test", b'Ag"ent <a@example.test>', b"a..b@example.test", b"undisclosed:;",
    b"A <a@example.test>, B <b@example.test>", b" a@example.test ", b"Agent<a@example.test>",
    b'"Agent \\" <other@example.test>" <a@example.test>', b"Agent <a@example.test>>", b"<<a@example.test>>",
    b"(c) a@example.test", b"a(c)@example.test", b"a@[127.0.0.1]", b"Agent <@route:a@example.test>",
    "Agënt <a@example.test>".encode(), b"Agent <a@example.test>\r\n\t(folded comment)",
])
def test_everyday_and_odd_forms_match_the_parser(value):
    message = _message(value)
    assert authors_of(message) == _full(message)


def test_two_from_fields_go_to_the_parser():
    message = _message(b"a@example.test", b"From: b@example.test\r\n")
    assert authors_of(message) == _full(message) == ["a@example.test", "b@example.test"]


def test_a_header_signing_cannot_parse_is_refused():
    with pytest.raises(ValueError):
        authors_of(b"From: a@example.test\r\nnot a field\r\n\r\nbody\r\n")


_PIECES = st.sampled_from(["a", "b", "@", ".", "example.test", " ", "\t", "<", ">", '"', "\\", ",", ";", ":",
                           "(", ")", "[", "]", "=?utf-8?q?x?=", "é", "\r\n ", "-", "+", "agent@example.test"])


@settings(max_examples=600, deadline=None)
@given(st.lists(_PIECES, max_size=14).map("".join))
def test_any_from_value_matches_the_parser(value):
    message = _message(value.encode("utf-8"))
    try:
        fast = authors_of(message)
    except ValueError:
        return                                  # refused before any 250: nothing to compare
    assert fast == _full(message)
