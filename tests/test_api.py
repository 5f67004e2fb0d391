"""The read API over HTTP against a real daemon: messages, threads and scoped tokens on delivered mail (tokens
and directory CRUD, which need no mail, are in tests/test_api_admin.py, on the API in process)."""
from __future__ import annotations

import smtplib
from email.message import EmailMessage

import pytest

from tests.support.daemon import MxdProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = MxdProcess(tmp_path_factory.mktemp("api") / "data", domains=["example.test"])
    proc.init()
    proc.start()
    for address in ("agent@example.test", "other@example.test"):
        assert proc.api("POST", "/api/mailboxes", json={"address": address}).status_code == 201
    with smtplib.SMTP("127.0.0.1", proc.mx_port) as s:
        for i in range(7):
            for box in ("agent", "other"):
                m = EmailMessage()
                m["From"], m["To"], m["Subject"] = "x@remote.test", f"{box}@example.test", f"{box} note {i}"
                m.set_content(f"body {i} for {box} pelican")
                s.send_message(m)
    assert len(proc.wait_messages(14)) == 14
    yield proc
    proc.stop()


def test_pagination_walks_every_message_once(server):
    seen, cursor = [], None
    while True:
        params = {"limit": 3, "mailbox": "agent@example.test"}
        if cursor:
            params["cursor"] = cursor
        body = server.api("GET", "/api/messages", params=params).json()
        seen += [m["id"] for m in body["data"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 7 == len(set(seen))
    assert seen == sorted(seen, reverse=True)
    assert server.api("GET", "/api/messages", params={"limit": 0}).status_code == 400
    assert server.api("GET", "/api/messages", params={"limit": "x"}).status_code == 400


def test_scoped_token_sees_only_its_mailbox(server):
    token = server.token(["read", "search"], ["agent@example.test"])
    mine = server.api("GET", "/api/messages", token=token, params={"limit": 100}).json()["data"]
    assert {m["mailbox"] for m in mine} == {"agent@example.test"} and len(mine) == 7
    assert server.api("GET", "/api/messages", token=token, params={"mailbox": "other@example.test"}).status_code == 404
    theirs = server.api("GET", "/api/messages", params={"mailbox": "other@example.test"}).json()["data"][0]
    assert server.api("GET", f"/api/messages/{theirs['id']}", token=token).status_code == 404
    assert server.api("GET", f"/api/messages/{theirs['id']}/raw", token=token).status_code == 404
    assert server.api("GET", f"/api/threads/{theirs['thread_id']}", token=token).status_code == 404
    found = server.api("GET", "/api/messages/search", token=token, params={"q": "pelican"}).json()["data"]
    assert len(found) == 7 and {m["mailbox"] for m in found} == {"agent@example.test"}
    boxes = server.api("GET", "/api/mailboxes", token=token).json()["data"]
    assert [b["address"] for b in boxes] == ["agent@example.test"]
    assert server.api("GET", "/api/mailboxes/other@example.test", token=token).status_code == 404


def test_new_mailbox_receives_without_restart(server):
    assert server.api("POST", "/api/mailboxes", json={"address": "fresh@example.test"}).status_code == 201
    with smtplib.SMTP("127.0.0.1", server.mx_port) as s:
        s.sendmail("x@remote.test", ["fresh@example.test"], b"Subject: fresh\r\n\r\nhi\r\n")
    assert len(server.wait_messages(1, "fresh@example.test")) == 1


def test_threads_list_and_unknown_routes(server):
    body = server.api("GET", "/api/threads", params={"mailbox": "agent@example.test", "limit": 100}).json()
    assert len(body["data"]) == 7 and body["next_cursor"] is None
    r = server.api("GET", "/api/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert server.api("GET", "/api/messages/msg_doesnotexist").status_code == 404
