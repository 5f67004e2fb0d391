"""Threat: a refused send leaks into the organisation it tried to impersonate.

A send from another organisation's mailbox is refused (`sender_not_allowed`), but the refusal was
recorded against the mailbox it named: an audit row in that organisation's log and a `message.blocked`
event for its webhooks. Any tenant could so write into another's audit trail and webhooks at will (and
learn, from what they receive, that a mailbox exists). The refusal belongs to the caller: its
organisation's log and webhooks only.
"""
from __future__ import annotations

import smtplib

import pytest

from tests.security.tenant_world import SHARED, start
from tests.support.daemon import wait_for
from tests.support.smtp import insecure_tls

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = start(tmp_path_factory.mktemp("refused-send") / "data")
    yield w
    w.stop()


def test_a_send_refused_as_another_organisations_mailbox_is_recorded_for_the_caller_only(world):
    attacker, victim = world.organisation("org_attacker"), world.organisation("org_victim")
    mine = world.agent_mailbox(attacker, "attacker-bot").json()
    theirs = world.agent_mailbox(victim, "victim-bot").json()
    r = world.call("POST", "/api/webhooks", victim, json={"url": "http://127.0.0.1:9/victim-hook",
                                                          "event_types": ["message.blocked"]})
    assert r.status_code == 201, r.text
    hook = r.json()["id"]

    # Over the API, with the attacker's admin key ...
    r = world.call("POST", "/api/send", attacker, json={"from": theirs["address"], "to": ["x@remote.test"],
                                                         "subject": "s", "text": "t"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "sender_not_allowed", r.text
    # ... and over SMTP submission, logged in as its own mailbox: as the envelope sender, and in From.
    sender = world.call("POST", "/api/tokens", attacker, json={"name": "bot", "scopes": ["send"],
                                                                "mailboxes": [mine["address"]]}).json()["token"]
    with smtplib.SMTP_SSL("127.0.0.1", world.mxd.submissions_port, timeout=30, context=insecure_tls()) as s:
        s.login(mine["address"], sender)
        with pytest.raises(smtplib.SMTPSenderRefused):
            s.sendmail(theirs["address"], ["x@remote.test"], b"From: x\r\nSubject: s\r\n\r\nt\r\n")
    with smtplib.SMTP_SSL("127.0.0.1", world.mxd.submissions_port, timeout=30, context=insecure_tls()) as s:
        s.login(mine["address"], sender)
        with pytest.raises(smtplib.SMTPDataError):
            s.sendmail(mine["address"], ["x@remote.test"],
                       f"From: {theirs['address']}\r\nSubject: s\r\n\r\nt\r\n".encode())

    def blocked() -> list[tuple]:
        return world.sql('SELECT "id", "mailbox_id", "fanned_out" FROM "event" WHERE "type" = \'message.blocked\'')
    assert wait_for(lambda: len(blocked()) >= 1 and all(e[2] for e in blocked()), timeout=30)
    assert all(e[1] != theirs["id"] for e in blocked())
    assert world.sql('SELECT count(*) FROM "webhook_delivery" WHERE "webhook_id" = ?', (hook,)) == [(0,)]
    assert world.call("GET", f"/api/webhooks/{hook}/attempts", victim).json()["data"] == []

    # The victim's audit trail holds nothing of it; the attacker's holds them.
    rows = world.call("GET", "/api/audit", victim, params={"action": "send"}).json()["data"]
    assert rows == [], rows
    intruder = {world.call("GET", "/api/bootstrap", t).json()["principal"]["token_id"] for t in (attacker, sender)}
    assert [r for r in world.call("GET", "/api/audit", victim).json()["data"] if r["actor"] in intruder] == []
    rows = world.call("GET", "/api/audit", attacker, params={"action": "send"}).json()["data"]
    assert rows and {r["detail"]["code"] for r in rows} == {"sender_not_allowed"}
    assert {r["org_id"] for r in rows} == {"org_attacker"}
    # The victim's own refused send is still its own.
    r = world.call("POST", "/api/send", victim, json={"from": theirs["address"], "to": ["x@remote.test"],
                                                       "subject": "s", "text": "t"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "domain_not_ready"
    assert wait_for(lambda: world.sql('SELECT count(*) FROM "webhook_delivery" WHERE "webhook_id" = ?', (hook,))
                    == [(1,)], timeout=30)
