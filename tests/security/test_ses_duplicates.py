"""Threat: one organisation makes another's inbound SES mail vanish as "duplicates".

POST /api/inbound/ses stores an SES message once per `mail.messageId`, because SNS delivers at
least once. The id is whatever the caller puts in the notification. Before: the key was global, so
an organisation that posted a notification with another organisation's (or a predictable) id made
that organisation's real notification an acknowledged "duplicate" that was never stored. Now the
key is scoped to the caller's organisation (the operator's own calls have a scope of their own).
"""
from __future__ import annotations

import base64
import json
import sqlite3
import time
from email.message import EmailMessage
from typing import Any

import httpx
import pytest

from tests.support.daemon import MxdProcess, running_daemon, wait_for

SES_ID = "0100018c-shared-ses-message-id"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Any:
    with running_daemon(tmp_path_factory.mktemp("ses-scope") / "data", mailboxes=["agent@example.test"]) as proc:
        yield proc


def _org(proc: MxdProcess, org_id: str) -> tuple[str, str]:
    """An organisation with an agent mailbox on the shared domain: (its admin key, the mailbox address)."""
    con = sqlite3.connect(proc.data_dir / "mxd.db", timeout=60)
    try:
        con.execute('INSERT INTO "organization" ("id", "name", "slug", "owner_email", "created_at", "code_attempts") '
                    "VALUES (?, ?, ?, 'owner@remote.test', ?, 0)", (org_id, org_id, org_id.replace("_", "-"),
                                                                    time.time()))
        con.commit()
    finally:
        con.close()
    r = proc.api("POST", "/api/tokens", json={"name": f"{org_id} admin", "scopes": ["admin"], "org_id": org_id})
    assert r.status_code == 201, r.text
    key = r.json()["token"]
    slug = org_id.replace("_", "-")
    r = proc.api("POST", "/v1/agents", key, json={"name": slug, "slug": slug})
    assert r.status_code == 201, r.text
    r = proc.api("POST", f"/v1/agents/{r.json()['id']}/mailboxes", key, json={"local_part": f"{slug}-inbox"})
    assert r.status_code == 201, r.text
    return key, r.json()["address"]


def _notification(to: str, subject: str) -> dict:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "carol@remote.test", to, subject
    m.set_content(f"{subject} body")
    raw = m.as_bytes(policy=m.policy.clone(linesep="\r\n"))
    inner = {"notificationType": "Received",
             "mail": {"source": "carol@remote.test", "messageId": SES_ID, "destination": [to]},
             "receipt": {"recipients": [to], "action": {"type": "SNS", "encoding": "BASE64"}},
             "content": base64.b64encode(raw).decode()}
    return {"Type": "Notification", "MessageId": "sns-1", "Message": json.dumps(inner)}


def test_an_ses_message_id_is_a_duplicate_only_within_one_organisation(server):
    key_a, box_a = _org(server, "org_first")
    key_b, box_b = _org(server, "org_second")

    # The first organisation posts a notification under an id it chose (or guessed).
    r = server.api("POST", "/api/inbound/ses", key_a, json=_notification(box_a, "squatted"))
    assert r.status_code == 202 and r.json()["duplicate"] is False, r.text
    # The second organisation's real message with that id is stored, not waved through as a duplicate.
    real = server.api("POST", "/api/inbound/ses", key_b, json=_notification(box_b, "real mail"))
    assert real.status_code == 202 and real.json()["duplicate"] is False, real.text
    assert wait_for(lambda: [m["subject"] for m in server.messages(box_b, key_b)] == ["real mail"], 15)
    # So is the operator's own.
    r = server.api("POST", "/api/inbound/ses", json=_notification("agent@example.test", "operator mail"))
    assert r.status_code == 202 and r.json()["duplicate"] is False, r.text

    # Within one organisation SNS's second delivery is still a duplicate.
    again = server.api("POST", "/api/inbound/ses", key_b, json=_notification(box_b, "real mail"))
    assert again.status_code == 202 and again.json()["duplicate"] is True
    assert again.json()["inbound_id"] == real.json()["inbound_id"]
    time.sleep(0.5)
    assert [m["subject"] for m in server.messages(box_b, key_b)] == ["real mail"]
