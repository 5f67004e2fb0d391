"""mxd.service.send.Letter: a field the caller gave as null is kept apart from one not given, so a reply does
not fill it in from its parent and a stored draft keeps it."""
from __future__ import annotations

from mxd.service import send

RC = send.ReplyContext(mailbox="one@a.test", thread_id="thr_1", to=["alice@remote.test"],
                       cc=["dave@remote.test"], subject="Re: Hello", in_reply_to="<p@remote.test>",
                       references=["<p@remote.test>"])


def test_a_letter_from_a_body_knows_its_nulls():
    letter = send.letter_from_body({"to": None, "text": "x"})
    assert letter.has("to") and letter.has("text") and not letter.has("subject") and not letter.has("from")
    assert letter.as_body() == {"to": None, "text": "x"}


def test_a_letter_made_in_code_has_no_nulls():
    letter = send.Letter(None, text="x")
    assert not letter.has("to") and not letter.has("from") and letter.as_body() == {"text": "x"}


def test_a_reply_fills_in_only_what_was_not_given():
    filled = send.reply_letter(send.letter_from_body({"text": "x"}), RC, reply_all=True)
    assert (filled.from_addr, filled.to, filled.cc, filled.subject) == \
        ("one@a.test", ["alice@remote.test"], ["dave@remote.test"], "Re: Hello")
    kept = send.reply_letter(send.letter_from_body({"from": None, "to": None, "cc": None, "subject": None}), RC,
                             reply_all=True)
    assert (kept.from_addr, kept.to, kept.cc, kept.subject) == (None, None, None, None)
    assert kept.in_reply_to == "<p@remote.test>" and kept.references == ["<p@remote.test>"]


def test_the_body_keeps_the_callers_order_then_what_was_filled_in():
    letter = send.letter_from_body({"text": "x", "custom": 1, "subject": None})
    body = send.reply_letter(letter, RC).as_body()
    assert list(body) == ["text", "custom", "subject", "from", "to", "in_reply_to", "references"]
    assert body["subject"] is None and body["to"] == ["alice@remote.test"] and body["custom"] == 1
