"""Quarantine through every door: held mail is kept out of message lists, searches, inbox polls and
acknowledgements, threads, MCP and webhooks unless asked for (include=quarantined); the quarantine API lists,
shows, releases (then it appears everywhere exactly once, as if just arrived) and deletes it, audited, within
one organisation; retention removes old held mail. Held messages are stored as the pipeline stores them
(tests.support.quarantine.hold)."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from mxd.api import mcp as mcp_api
from mxd.cli import mail as mail_cli
from mxd.cli import quarantine as quarantine_cli
from mxd.client import Client
from mxd.db import proxy
from mxd.retention import run as retention_run
from mxd.secretbox import SecretBox
from mxd.store import acks, directory, messages, quarantine, search, tokens, webhook_rows
from mxd.store.models import Event, Inbound, Message, Organization
from tests.support.asgi import InProcessApi, in_process_api
from tests.support.pg import fresh_database
from tests.support.quarantine import hold
from tests.support.store import sqlite_url, started_store
from tests.support.tenants import OPERATOR, deliver

BOX, OTHER_ORG_BOX = "agent@example.test", "one@b.test"
BOX_A = "one@a.test"
HELD_WORD = "zebracrossing"
SECRETS = SecretBox(os.urandom(32))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with in_process_api(tmp_path / "data") as api:
        def build() -> dict[str, str]:
            for org in ("a", "b"):
                Organization.create(id=f"org_{org}", name=org.upper(), slug=org, owner_email=f"o@{org}.example")
                directory.create_domain(f"{org}.test", f"org_{org}", "mx.example.test")
                directory.create_mailbox(f"one@{org}.test", "", None, f"org_{org}")
            directory.create_mailbox(BOX)
            return {"admin_a": tokens.create("a", ["admin"], None, "org_a")[1],
                    "admin_b": tokens.create("b", ["admin"], None, "org_b")[1]}
        secrets = api.db.write_sync(build)
        secrets["reader"] = api.token(["read", "search"], [BOX], name="reader")
        yield {"api": api, **secrets}


def held_and_plain(api: InProcessApi) -> tuple[str, str]:
    plain = deliver(api.db, BOX, "plain hello")
    held = hold(api.db, BOX, f"urgent {HELD_WORD}", body=f"wire it now {HELD_WORD}")
    return plain, held


def get(api: InProcessApi, path: str, token: str | None = None, **params: Any) -> Any:
    r = api.api("GET", path, token, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def ids(page: dict) -> list[str]:
    return [m["id"] for m in page["data"]]


# ---------------------------------------------------------------- MCP in process
@pytest.fixture
def mcp(world: dict[str, Any]) -> Iterator[Any]:
    api: InProcessApi = world["api"]
    portal = api.client.portal
    service = portal.call(mcp_api.start, api.client.app)
    counter = iter(range(1, 10_000))

    def call(tool: str, token: str | None = None, **arguments: Any) -> dict:
        r = api.api("POST", "/mcp", token, headers={"Accept": "application/json, text/event-stream"},
                    json={"jsonrpc": "2.0", "id": next(counter), "method": "tools/call",
                          "params": {"name": tool, "arguments": arguments}})
        assert r.status_code == 200, r.text
        result = r.json()["result"]
        return dict(result["structuredContent"], is_error=result.get("isError", False))
    yield call
    portal.call(service.stop)


# ---------------------------------------------------------------- webhooks in process
def webhook_bodies(api: InProcessApi, types: list[str]) -> list[dict]:
    """A webhook of the operator on BOX for `types`; every event so far fanned out; the bodies owed to it."""
    box = SECRETS

    def work() -> list[str]:
        hook, _ = webhook_rows.create(OPERATOR, "https://hooks.example.test/in", types, BOX, box=box)
        while webhook_rows.fan_out():
            pass
        jobs, _gone = webhook_rows.due(time.time() + 1, 100, 10, box=box)
        return [j.body for j in jobs if j.webhook_id == hook.id]
    return [json.loads(b) for b in api.db.write_sync(work)]


def inbound_events(api: InProcessApi, message_id: str) -> int:
    return api.db.write_sync(lambda: Event.select().where((Event.type == "message.inbound")
                                                          & (Event.message_id == message_id)).count())


# ---------------------------------------------------------------- readers
def test_held_mail_is_left_out_of_every_reader_unless_asked(world, mcp):
    api: InProcessApi = world["api"]
    plain, held = held_and_plain(api)
    box_id = api.db.write_sync(lambda: directory.get_mailbox(BOX).id)

    listed = get(api, "/api/messages", mailbox=BOX)
    assert ids(listed) == [plain]
    assert listed["data"][0]["quarantined"] is False
    both = get(api, "/api/messages", mailbox=BOX, include="quarantined")
    assert ids(both) == [held, plain]
    assert both["data"][0]["quarantined"] is True and both["data"][0]["verdict"] == "suspicious"

    assert ids(get(api, "/api/messages/search", q=HELD_WORD)) == []
    assert ids(get(api, "/api/messages/search", q=HELD_WORD, include="quarantined")) == [held]
    assert ids(get(api, "/api/messages/search", q="wire", include="quarantined,attachments")) == [held]

    assert api.api("GET", f"/api/messages/{held}").status_code == 404
    assert api.api("GET", f"/api/messages/{held}/raw").status_code == 404
    assert api.api("GET", f"/v1/messages/{held}").status_code == 404
    shown = get(api, f"/api/messages/{held}", include="quarantined")
    assert shown["quarantine"] == [{"code": "dmarc_quarantine", "detail": "p=quarantine"}]
    assert shown["trust"]["verdict"] == "suspicious" and shown["quarantined_at"] is not None
    assert shown["thread_id"] is None
    assert HELD_WORD.encode() in api.api("GET", f"/api/messages/{held}/raw",
                                         params={"include": "quarantined"}).content
    plain_detail = get(api, f"/api/messages/{plain}")
    assert plain_detail["quarantine"] is None and plain_detail["quarantined"] is False

    poll = get(api, f"/v1/mailboxes/{box_id}/inbox")
    assert ids(poll) == [plain] and poll["count"] == 1
    assert ids(get(api, f"/v1/mailboxes/{box_id}/inbox", include="quarantined")) == [plain, held]
    ack = api.api("POST", f"/v1/mailboxes/{box_id}/inbox/ack", json={"message_ids": [held]}).json()
    assert ack["not_found"] == [held] and ack["acknowledged"] == []

    threads = get(api, "/api/threads", mailbox=BOX)["data"]
    assert len(threads) == 1 and threads[0]["message_count"] == 1
    assert [m["id"] for m in get(api, f"/api/threads/{threads[0]['id']}")["messages"]] == [plain]

    # the token that reads this mailbox sees the same
    assert ids(get(api, "/api/messages", world["reader"])) == [plain]

    assert [m["id"] for m in mcp("list_messages", mailbox=BOX)["data"]] == [plain]
    held_meta = mcp("list_messages", mailbox=BOX, include_quarantined=True)["data"][0]
    assert held_meta["id"] == held and held_meta["quarantined"] is True and held_meta["verdict"] == "suspicious"
    assert held_meta["quarantine"][0]["code"] == "dmarc_quarantine"
    assert mcp("search_messages", query=HELD_WORD)["data"] == []
    assert [m["id"] for m in mcp("search_messages", query=HELD_WORD, include_quarantined=True)["data"]] == [held]
    assert [m["id"] for m in mcp("poll_inbox", mailbox=BOX)["data"]] == [plain]
    refused = mcp("get_message", message_id=held)
    assert refused["is_error"] and refused["error"]["code"] == "not_found"
    read = mcp("get_message", message_id=held, include_quarantined=True)
    assert read["trust"]["verdict"] == "suspicious" and HELD_WORD in read["untrusted_content"]["text"]
    assert mcp("list_attachments", message_id=held)["is_error"]
    assert mcp("list_attachments", message_id=held, include_quarantined=True)["attachments"] == []

    bodies = webhook_bodies(api, ["message.inbound", "message.quarantined"])
    by_type = {(b["type"], b["data"]["message_id"]) for b in bodies}
    assert by_type == {("message.inbound", plain), ("message.quarantined", held)}
    q = next(b["data"] for b in bodies if b["type"] == "message.quarantined")
    assert q["reasons"] == [{"code": "dmarc_quarantine", "detail": "p=quarantine"}]
    assert q["subject"] == f"urgent {HELD_WORD}" and q["from"]["address"] == "ceo@examp1e.test"
    assert q["trust"]["verdict"] == "suspicious" and "untrusted" in q["content_notice"]


def test_message_quarantined_is_a_subscribable_event_type():
    assert "message.quarantined" in webhook_rows.EVENT_TYPES
    assert webhook_rows.validate_event_types(["message.quarantined"]) == ["message.quarantined"]


# ---------------------------------------------------------------- release and delete
def test_released_mail_appears_everywhere_exactly_once(world, mcp):
    api: InProcessApi = world["api"]
    plain, held = held_and_plain(api)
    box_id = api.db.write_sync(lambda: directory.get_mailbox(BOX).id)
    received = api.db.write_sync(lambda: Message.get_by_id(held).received_at)
    assert inbound_events(api, held) == 0

    listed = get(api, "/api/quarantine")
    assert ids(listed) == [held]
    assert listed["data"][0]["quarantine"][0]["code"] == "dmarc_quarantine"
    assert get(api, f"/api/quarantine/{held}")["quarantine"][0]["code"] == "dmarc_quarantine"
    assert api.api("GET", f"/api/quarantine/{plain}").status_code == 404

    r = api.api("POST", f"/api/quarantine/{held}/release")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["quarantine"] is None and out["quarantined"] is False and out["thread_id"]
    assert api.db.write_sync(lambda: Message.get_by_id(held).received_at) == received    # its original time

    again = api.api("POST", f"/api/quarantine/{held}/release")
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    assert ids(get(api, "/api/quarantine")) == []

    assert ids(get(api, "/api/messages", mailbox=BOX)) == [held, plain]
    assert ids(get(api, "/api/messages", mailbox=BOX, include="quarantined")) == [held, plain]
    assert ids(get(api, "/api/messages/search", q=HELD_WORD)) == [held]
    assert ids(get(api, f"/v1/mailboxes/{box_id}/inbox")) == [plain, held]
    assert get(api, f"/api/messages/{held}")["id"] == held
    threads = get(api, "/api/threads", mailbox=BOX)["data"]
    assert sorted(t["message_count"] for t in threads) == [1, 1]
    assert out["thread_id"] in {t["id"] for t in threads}
    assert [m["id"] for m in get(api, f"/api/threads/{out['thread_id']}")["messages"]] == [held]
    assert [m["id"] for m in mcp("poll_inbox", mailbox=BOX)["data"]] == [plain, held]

    assert inbound_events(api, held) == 1
    bodies = webhook_bodies(api, ["message.inbound"])
    assert sorted(b["data"]["message_id"] for b in bodies) == sorted([plain, held])
    released = next(b["data"] for b in bodies if b["data"]["message_id"] == held)
    assert released["thread_id"] == out["thread_id"] and released["trust"]["verdict"] == "suspicious"

    rows = get(api, "/api/audit", action="POST /api/quarantine/{id}/release")["data"]
    assert [(a["target"], a["result"]) for a in rows] == [(f"/api/quarantine/{held}/release", "conflict"),
                                                         (f"/api/quarantine/{held}/release", "ok")]
    assert rows[1]["mailbox"] == BOX and rows[1]["detail"]["reasons"] == ["dmarc_quarantine"]


def test_delete_removes_held_mail_and_is_audited(world):
    api: InProcessApi = world["api"]
    plain, held = held_and_plain(api)
    inbound_id = api.db.write_sync(lambda: Message.get_by_id(held).inbound_id)

    assert api.api("DELETE", f"/api/quarantine/{plain}").status_code == 409      # not held: not deleted here
    r = api.api("DELETE", f"/api/quarantine/{held}")
    assert r.status_code == 200, r.text
    assert r.json()["deleted"] is True and r.json()["quarantine"][0]["code"] == "dmarc_quarantine"
    assert api.api("GET", f"/api/messages/{held}", params={"include": "quarantined"}).status_code == 404
    assert ids(get(api, "/api/messages/search", q=HELD_WORD, include="quarantined")) == []
    assert api.db.write_sync(lambda: Inbound.get_or_none(Inbound.id == inbound_id)) is None
    assert ids(get(api, "/api/messages", mailbox=BOX, include="quarantined")) == [plain]
    assert api.api("DELETE", f"/api/quarantine/{held}").status_code == 404

    rows = get(api, "/api/audit", action="DELETE /api/quarantine/{id}")["data"]
    assert [(a["target"], a["result"]) for a in rows] == [
        (f"/api/quarantine/{held}", "not_found"), (f"/api/quarantine/{held}", "ok"),
        (f"/api/quarantine/{plain}", "conflict")]
    assert rows[1]["mailbox"] == BOX and rows[1]["detail"]["reasons"] == ["dmarc_quarantine"]


# ---------------------------------------------------------------- who may
def test_an_organisation_admin_sees_only_its_own_quarantine(world):
    api: InProcessApi = world["api"]
    held_a = hold(api.db, BOX_A, "for a")
    held_b = hold(api.db, OTHER_ORG_BOX, "for b", [{"code": "spam", "detail": "score 12"}])
    held_op = hold(api.db, BOX, "for the operator")
    a = world["admin_a"]

    assert ids(get(api, "/api/quarantine", a)) == [held_a]
    assert ids(get(api, "/api/quarantine")) == [held_op, held_b, held_a]          # the operator: every one
    assert api.api("GET", "/api/quarantine", a, params={"mailbox": OTHER_ORG_BOX}).status_code == 404
    for method, path in (("GET", f"/api/quarantine/{held_b}"), ("POST", f"/api/quarantine/{held_b}/release"),
                         ("DELETE", f"/api/quarantine/{held_b}"), ("GET", f"/api/quarantine/{held_op}")):
        r = api.api(method, path, a)
        assert r.status_code == 404, (method, path, r.text)
    assert api.db.write_sync(lambda: Message.get_by_id(held_b).quarantined_at) is not None
    assert api.api("POST", f"/api/quarantine/{held_a}/release", a).status_code == 200

    assert api.api("GET", "/api/quarantine", world["reader"]).status_code == 403
    assert api.api("POST", f"/api/quarantine/{held_op}/release", world["reader"]).status_code == 403
    assert api.api("DELETE", f"/api/quarantine/{held_op}", world["reader"]).status_code == 403
    assert api.db.write_sync(lambda: Message.get_by_id(held_op).quarantined_at) is not None


def test_list_filters_by_mailbox_and_reason_and_pages(world):
    api: InProcessApi = world["api"]
    spam = [hold(api.db, BOX, f"spam {i}", [{"code": "spam", "detail": "score 9"}]) for i in range(3)]
    dmarc = hold(api.db, BOX, "dmarc", [{"code": "dmarc_quarantine", "detail": ""},
                                        {"code": "unauthenticated", "detail": ""}])
    other = hold(api.db, BOX_A, "elsewhere", [{"code": "spam", "detail": ""}])

    assert ids(get(api, "/api/quarantine", reason="spam", mailbox=BOX)) == spam[::-1]
    assert ids(get(api, "/api/quarantine", reason="unauthenticated")) == [dmarc]
    assert ids(get(api, "/api/quarantine", reason="spam")) == [other, *spam[::-1]]
    first = get(api, "/api/quarantine", mailbox=BOX, limit=2)
    assert ids(first) == [dmarc, spam[2]] and first["next_cursor"] == spam[2]
    second = get(api, "/api/quarantine", mailbox=BOX, limit=2, cursor=first["next_cursor"])
    assert ids(second) == [spam[1], spam[0]]
    paged = get(api, "/api/quarantine", reason="spam", limit=1, cursor=spam[2])
    assert ids(paged) == [spam[1]]
    bad = api.api("GET", "/api/quarantine", params={"reason": "nonsense"})
    assert bad.status_code == 400 and "spam" in bad.json()["error"]["fix"]


# ---------------------------------------------------------------- retention, CLI
def test_retention_removes_old_held_mail(world):
    api: InProcessApi = world["api"]
    api.api("PUT", f"/api/mailboxes/{BOX}/retention", json={"retention_days": 7})
    old = hold(api.db, BOX, "old and held", received_at=time.time() - 30 * 86400)
    young = hold(api.db, BOX, "young and held")
    report = api.client.portal.call(retention_run, api.cfg, api.db)
    assert report["messages"] == 1 and report["search_entries"] == 1
    assert ids(get(api, "/api/quarantine")) == [young]
    assert api.db.write_sync(lambda: Message.get_or_none(Message.id == old)) is None


def test_cli_lists_releases_and_deletes(world, capsys):
    api: InProcessApi = world["api"]
    first = hold(api.db, BOX, "first held", [{"code": "spam", "detail": "score 15"}])
    second = hold(api.db, BOX, "second held")
    client = Client(api.url(""), api.admin_token)
    client._http = api.client                     # the API in process, not over a socket

    def run(*argv: str) -> tuple[int, str]:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers(dest="command")
        quarantine_cli.register(sub)
        mail_cli.register(sub)
        args = parser.parse_args(list(argv) if argv[0] == "messages" else ["quarantine", *argv])
        code = args.api_func(args, client)
        return code, capsys.readouterr().out

    code, out = run("list", "--reason", "spam")
    assert code == 0 and first in out and second not in out and "spam" in out
    assert first not in run("messages", "list", "--mailbox", BOX)[1]
    assert first in run("messages", "list", "--mailbox", BOX, "--include-quarantined")[1]
    code, out = run("messages", "show", first, "--include-quarantined")
    assert code == 0 and "quarantine" in out and "spam: score 15" in out and "suspicious" in out
    code, out = run("release", first)
    assert code == 0 and f"released {first} into {BOX}" in out
    code, out = run("delete", second)
    assert code == 0 and f"deleted {second}" in out
    code, out = run("list")
    assert "(nothing in quarantine)" in out


# ---------------------------------------------------------------- the same rule on PostgreSQL
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_store_rule_on_both_databases(tmp_path, backend):
    with contextlib.ExitStack() as stack:
        url = sqlite_url(tmp_path) if backend == "sqlite" else stack.enter_context(fresh_database("mxd_quarantine"))
        db = stack.enter_context(started_store(url))
        db.write_sync(lambda: directory.create_domain("example.test")
                      and directory.create_mailbox(BOX))
        box_id = db.write_sync(lambda: directory.get_mailbox(BOX).id)
        plain = deliver(db, BOX, "plain hello")
        held = hold(db, BOX, f"urgent {HELD_WORD}", body=f"wire it now {HELD_WORD}")

        def reads(include: bool) -> tuple[list, list, list]:
            rows = messages.list_messages([box_id], 10, None, include_quarantined=include)
            found = search.search(proxy.obj, HELD_WORD, [box_id], 10, None, include_quarantined=include)
            polled = acks.poll(box_id, 10, include_quarantined=include)
            return [(r.id, (r.trust or {}).get("verdict")) for r in rows], found, [m.id for m in polled]

        assert db.write_sync(reads, False) == ([(plain, None)], [], [plain])
        assert db.write_sync(reads, True) == ([(held, "suspicious"), (plain, None)], [held], [plain, held])
        assert [m.id for m in db.write_sync(quarantine.held, [box_id], 10, None, "dmarc_quarantine")] == [held]

        # more quarantined matches than a page: the page still holds what is shown, in order
        older = deliver(db, BOX, "plain lighthouse")
        hidden = [hold(db, BOX, f"held lighthouse {i}") for i in range(5)]
        newer = deliver(db, BOX, "plain lighthouse again")
        for scope in ([box_id], None):
            pages = [db.write_sync(search.search, proxy.obj, "lighthouse", scope, 2, before)
                     for before in (None, newer)]
            assert pages == [[newer, older], [older]]
            assert db.write_sync(search.search, proxy.obj, "lighthouse", scope, 3, None, True) == [
                newer, hidden[4], hidden[3]]
        msg, thread_id = db.write_sync(quarantine.release, held, 86400.0)
        assert msg.quarantined_at is None and thread_id
        assert db.write_sync(reads, False)[1] == [held]


def test_held_mail_cannot_be_replied_to_until_released(world):
    """A reply names its parent: a quarantined parent is not there (404 on both dialects), a released one is."""
    api: InProcessApi = world["api"]
    _, held = held_and_plain(api)
    box_id = api.db.write_sync(lambda: directory.get_mailbox(BOX).id)
    r = api.api("POST", f"/api/messages/{held}/reply", json={"text": "on it"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    r = api.api("POST", "/v1/messages", json={"mailbox_id": box_id, "in_reply_to": held, "text": "on it"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    assert api.api("POST", f"/api/quarantine/{held}/release").status_code == 200
    r = api.api("POST", f"/api/messages/{held}/reply", json={"text": "on it"})
    assert r.status_code != 404, r.text
