"""mxd.service.mail and mxd.service.send on an in-process store: pages and details kept to the caller's
organisation, drafts round-trip, a reply's context from its parent."""
from __future__ import annotations

import asyncio

import pytest

from mxd.errors import MxdError
from mxd.service import mail, send
from mxd.store.models import Message
from tests.support.tenants import ADMIN_A, ADMIN_B, ONE_A, OPERATOR, deliver, services  # noqa: F401  (fixture)


def run(coro):
    return asyncio.run(coro)


def test_message_pages_and_details_stay_in_the_organisation(services):
    s = services
    msg_a = deliver(s.db, "one@a.test", "For A")
    msg_b = deliver(s.db, "one@b.test", "For B")
    assert [m["id"] for m in run(mail.message_page(s, ADMIN_A))["data"]] == [msg_a]
    assert {m["id"] for m in run(mail.message_page(s, OPERATOR))["data"]} == {msg_a, msg_b}
    detail = run(mail.message_detail(s, ADMIN_A, msg_a))
    assert detail["subject"] == "For A" and detail["mailbox"] == "one@a.test" and "delivery" not in detail
    assert detail["attachments"] == [] and "text" in detail
    for call in (mail.message_detail(s, ADMIN_A, msg_b), mail.raw(s, ADMIN_A, msg_b),
                 mail.message_page(s, ADMIN_A, mailbox="one@b.test")):
        with pytest.raises(MxdError) as err:
            run(call)
        assert err.value.code == "not_found"
    thread_b = s.db.write_sync(lambda: Message.get_by_id(msg_b).thread_id)
    with pytest.raises(MxdError):
        run(mail.thread_detail(s, ADMIN_A, thread_b))
    thread = run(mail.thread_detail(s, ADMIN_B, thread_b))
    assert [m["id"] for m in thread["messages"]] == [msg_b] and thread["messages"][0]["text"]
    assert b"Subject: For B" in run(mail.raw(s, OPERATOR, msg_b))


def test_a_page_carries_a_cursor_until_the_last_one(services):
    s = services
    ids = [deliver(s.db, "one@a.test", f"Number {i}") for i in range(3)]
    first = run(mail.message_page(s, ADMIN_A, limit=2))
    assert [m["id"] for m in first["data"]] == ids[:0:-1] and first["next_cursor"] == ids[1]
    rest = run(mail.message_page(s, ADMIN_A, limit=2, cursor=first["next_cursor"]))
    assert [m["id"] for m in rest["data"]] == [ids[0]] and rest["next_cursor"] is None


def test_inbox_and_acknowledgement(services):
    s = services
    msg = deliver(s.db, "one@a.test")
    polled = run(mail.inbox(s, ONE_A, "one@a.test", 10))
    assert [m["id"] for m in polled["data"]] == [msg] and not polled["has_more"]
    assert run(mail.acknowledge(s, ONE_A, "one@a.test", [msg, "msg_nope"]))["not_found"] == ["msg_nope"]
    assert run(mail.inbox(s, ONE_A, "one@a.test", 10))["data"] == []
    with pytest.raises(MxdError):
        run(mail.inbox(s, ONE_A, "two@a.test", 10))


def test_reply_context_from_the_parent(services):
    s = services
    msg = deliver(s.db, "one@a.test", "Question", extra="Cc: two@a.test, other@remote.example\r\n")
    rc = run(send.reply_context_of(s, ADMIN_A, msg))
    assert rc.mailbox == "one@a.test" and rc.to == ["sender@remote.example"] and rc.subject == "Re: Question"
    assert rc.in_reply_to == "Question.one@a.test@remote.example" and rc.references == [rc.in_reply_to]
    assert rc.cc == ["two@a.test", "other@remote.example"]
    letter = send.reply_letter(send.Letter(None, text="Answer"), rc, reply_all=True)
    assert letter.from_addr == "one@a.test" and letter.to == rc.to and letter.subject == "Re: Question"
    assert letter.cc == rc.cc
    draft = send.compose_draft(letter)
    assert draft.in_reply_to == rc.in_reply_to and draft.from_addr == "one@a.test"
    with pytest.raises(MxdError) as err:
        run(send.reply_context_of(s, ADMIN_B, msg))
    assert err.value.code == "not_found"


def test_a_letter_is_checked_field_by_field():
    assert send.compose_draft(send.Letter("a@x.test", to="b@y.test")).to == ["b@y.test"]
    for letter, words in ((send.Letter(None, to=["b@y.test"]), "from"),
                          (send.Letter("a@x.test", to=5), "to must be"),
                          (send.Letter("a@x.test", subject=["x"]), "subject must be a string"),
                          (send.Letter("a@x.test", headers={"X": 1}), "headers"),
                          (send.Letter("a@x.test", attachments=[{"filename": "a", "content": "%%"}]), "base64")):
        with pytest.raises(MxdError) as err:
            send.compose_draft(letter)
        assert err.value.code == "bad_request" and words in err.value.message


def test_a_draft_round_trip(services):
    s = services
    letter = send.Letter("one@a.test", to=["friend@remote.example"], subject="Plan", text="Draft text")
    saved = run(send.save_draft(s, ONE_A, letter))
    assert saved["mailbox"] == "one@a.test" and saved["subject"] == "Plan" and saved["from"] == "one@a.test"
    assert run(send.get_draft(s, ONE_A, saved["id"])) == saved
    assert [d["id"] for d in run(send.draft_page(s, ADMIN_A))["data"]] == [saved["id"]]
    assert run(send.draft_page(s, ADMIN_B))["data"] == []
    with pytest.raises(MxdError) as err:
        run(send.get_draft(s, ADMIN_B, saved["id"]))
    assert err.value.code == "not_found"
    stored = run(send.stored_draft(s, ONE_A, saved["id"]))
    draft = stored.to_send()
    assert stored.mailbox == "one@a.test" and draft.subject == "Plan" and draft.to == ["friend@remote.example"]
    stored.sent_message_id = "msg_sent"
    with pytest.raises(MxdError) as err:                # sent once
        stored.to_send()
    assert err.value.code == "conflict"
    with pytest.raises(MxdError) as err:               # a mailbox the token may not use
        run(send.save_draft(s, ONE_A, send.Letter("two@a.test", to=["x@remote.example"])))
    assert err.value.code == "not_found"


def test_a_reply_draft_takes_the_parents_mailbox_and_thread(services):
    s = services
    msg = deliver(s.db, "one@a.test", "Thread start")
    thread_id = s.db.write_sync(lambda: Message.get_by_id(msg).thread_id)
    saved = run(send.save_draft(s, ADMIN_A, send.Letter(None, text="Reply"), reply_to_thread=thread_id))
    assert saved["mailbox"] == "one@a.test" and saved["thread_id"] == thread_id
    assert saved["subject"] == "Re: Thread start" and saved["to"] == ["sender@remote.example"]
    assert saved["in_reply_to"] == "Thread.start.one@a.test@remote.example"
