"""The platform's /api routes against a real daemon: bootstrap, mailbox retention, inbound simulate and SES,
and the organisation-aware directory (an organisation's admin manages its own objects and sees no others)."""
from __future__ import annotations

import base64
import json
import time
from email.message import EmailMessage

import httpx
import pytest

from tests.support.daemon import running_daemon, wait_for
from tests.support.tenants import org_admin_token


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("platform") / "data", mailboxes=["agent@example.test"]) as proc:
        yield proc


# ---------------------------------------------------------------- bootstrap
def test_bootstrap_for_the_operator_and_for_an_agent(server):
    proc = server
    assert httpx.get(proc.url("/api/bootstrap")).status_code == 401
    body = proc.api("GET", "/api/bootstrap").json()
    assert body["server"]["hostname"] == "mx.example.test" and body["server"]["version"]
    assert body["principal"]["operator"] is True and body["principal"]["scopes"] == ["admin"]
    assert body["ports"] == {"mx": proc.mx_port, "submission": proc.submission_port,
                             "submissions": proc.submissions_port, "http": proc.http_port}
    [domain] = body["domains"]
    assert domain["name"] == "example.test" and domain["ready"] is False
    assert domain["dns_plan"] == "/api/domains/example.test/dns-plan"
    assert "agent@example.test" in [b["address"] for b in body["mailboxes"]]
    assert any(s.startswith("Publish DNS for example.test") for s in body["next_steps"])

    agent = proc.token(["read"], ["agent@example.test"], name="bootstrap-agent")
    body = proc.api("GET", "/api/bootstrap", token=agent).json()
    assert body["principal"]["operator"] is False and body["principal"]["mailboxes"] == ["agent@example.test"]
    assert [b["address"] for b in body["mailboxes"]] == ["agent@example.test"]
    assert any("cannot send" in s for s in body["next_steps"])


# ---------------------------------------------------------------- retention settings
def test_mailbox_retention_get_and_put(server):
    proc = server
    r = proc.api("GET", "/api/mailboxes/agent@example.test/retention").json()
    assert (r["retention_days"], r["effective_retention_days"], r["source"]) == (None, 7, "default")
    r = proc.api("PUT", "/api/mailboxes/agent@example.test/retention", json={"retention_days": 30})
    assert r.status_code == 200 and r.json()["effective_retention_days"] == 30 and r.json()["source"] == "mailbox"
    assert proc.api("GET", "/api/mailboxes/agent@example.test").json()["effective_retention_days"] == 30
    r = proc.api("PUT", "/api/mailboxes/agent@example.test/retention", json={"retention_days": 0})
    assert r.json()["retention_days"] is None and r.json()["effective_retention_days"] == 7
    for bad in ({"retention_days": -1}, {"retention_days": "7"}, {"retention_days": True}, {}):
        assert proc.api("PUT", "/api/mailboxes/agent@example.test/retention", json=bad).status_code == 400, bad
    reader = proc.token(["read"], name="retention-reader")
    assert proc.api("GET", "/api/mailboxes/agent@example.test/retention", token=reader).status_code == 200
    assert proc.api("PUT", "/api/mailboxes/agent@example.test/retention", token=reader,
                    json={"retention_days": 3}).status_code == 403
    assert proc.api("GET", "/api/mailboxes/nobody@example.test/retention").status_code == 404


# ---------------------------------------------------------------- inbound simulate
def test_simulate_goes_through_the_one_ingest_path(server):
    proc = server
    r = proc.api("POST", "/api/inbound/simulate", json={
        "to": ["agent@example.test"], "from": "Alice <alice@remote.test>", "subject": "simulated hello",
        "text": "a simulated body with kiwifruit", "html": "<p>kiwifruit</p>", "wait": True})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["inbound_id"].startswith("inb_") and len(body["message_ids"]) == 1
    msg = proc.api("GET", f"/api/messages/{body['message_ids'][0]}").json()
    assert msg["subject"] == "simulated hello" and msg["from"]["address"] == "alice@remote.test"
    assert msg["html"] and "kiwifruit" in msg["text"] and msg["envelope"]["mail_from"] == "alice@remote.test"
    listed = proc.messages("agent@example.test")
    assert body["message_ids"][0] in [m["id"] for m in listed]
    found = proc.api("GET", "/api/messages/search", params={"q": "kiwifruit"}).json()["data"]
    assert [m["id"] for m in found] == body["message_ids"]
    raw = proc.api("GET", f"/api/messages/{body['message_ids'][0]}/raw").content
    assert raw.startswith(b"Received: from api") and b"with HTTP id " + body["inbound_id"].encode() in raw

    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Message-ID"] = "bob@remote.test", "agent@example.test", "raw one", "<raw1@x>"
    m.set_content("raw body")
    r = proc.api("POST", "/api/inbound/simulate", json={
        "mailbox": "agent@example.test", "raw": base64.b64encode(m.as_bytes()).decode(), "wait": True})
    assert r.status_code == 202
    raw_msg = proc.api("GET", f"/api/messages/{r.json()['message_ids'][0]}").json()
    assert raw_msg["message_id"] == "raw1@x" and raw_msg["envelope"]["mail_from"] == "bob@remote.test"
    r = proc.api("POST", "/api/inbound/simulate", json={"mailbox": "agent@example.test", "wait": True,
                                                        "raw": "From: c@remote.test\r\nSubject: as text\r\n\r\nhi\r\n"})
    assert proc.api("GET", f"/api/messages/{r.json()['message_ids'][0]}").json()["subject"] == "as text"

    r = proc.api("POST", "/api/inbound/simulate", json={"to": ["nobody@example.test"], "text": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_recipient"
    r = proc.api("POST", "/api/inbound/simulate", json={"to": ["x@elsewhere.test"], "text": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "domain_not_served"
    assert proc.api("POST", "/api/inbound/simulate", json={"text": "no recipient"}).status_code == 400
    assert proc.api("POST", "/api/inbound/simulate", token=proc.token(["read", "send"], name="sim"),
                    json={"to": ["agent@example.test"]}).status_code == 403


# ---------------------------------------------------------------- inbound SES
def _ses(raw: bytes, destination: list[str], kind: str = "Notification") -> dict:
    notification = {
        "notificationType": "Received",
        "mail": {"timestamp": "2026-11-22T00:00:00.000Z", "source": "carol@remote.test",
                 "messageId": "o3vrnil0e2ic28trm7dfhrc2v0clambfgkhvb2g1", "destination": destination,
                 "headersTruncated": False, "commonHeaders": {"subject": "via ses"}},
        "receipt": {"recipients": destination, "spamVerdict": {"status": "PASS"},
                    "action": {"type": "SNS", "topicArn": "arn:aws:sns:us-east-1:123456789012:mxd",
                               "encoding": "BASE64"}},
        "content": base64.b64encode(raw).decode(),
    }
    return {"Type": kind, "MessageId": "5d1ee5d5-7f6b-5c5b-9b8c-0a1b2c3d4e5f",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:mxd", "Subject": "Amazon SES Email Receipt Notification",
            "Message": json.dumps(notification), "Timestamp": "2026-11-22T00:00:01.000Z", "SignatureVersion": "1"}


def test_ses_notification_is_ingested(server):
    proc = server
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "carol@remote.test", "agent@example.test", "via ses"
    m["Message-ID"] = "<ses1@remote.test>"
    m.set_content("delivered through amazon with papaya")
    raw = m.as_bytes(policy=m.policy.clone(linesep="\r\n"))
    r = httpx.post(proc.url("/api/inbound/ses"), content=json.dumps(_ses(raw, ["agent@example.test"])),
                   headers={"Authorization": f"Bearer {proc.admin_token}", "Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 202, r.text
    assert r.json()["recipients"] == ["agent@example.test"]
    found = wait_for(lambda: proc.api("GET", "/api/messages/search", params={"q": "papaya"}).json()["data"])
    assert [m["subject"] for m in found] == ["via ses"]
    detail = proc.api("GET", f"/api/messages/{found[0]['id']}").json()
    assert detail["envelope"]["mail_from"] == "carol@remote.test" and detail["message_id"] == "ses1@remote.test"

    # SNS can only carry HTTP Basic credentials (in the subscription URL): the password is the token.
    first_id = r.json()["inbound_id"]
    assert r.json()["duplicate"] is False
    basic = base64.b64encode(f"sns:{proc.admin_token}".encode()).decode()
    r = httpx.post(proc.url("/api/inbound/ses"), json=_ses(raw, ["agent@example.test"]),
                   headers={"Authorization": f"Basic {basic}"}, timeout=30)
    assert r.status_code == 202, r.text
    # SNS delivers at least once: the same SES message again is acknowledged and not stored twice
    assert r.json()["duplicate"] is True and r.json()["inbound_id"] == first_id
    other = _ses(raw, ["agent@example.test"])
    inner = json.loads(other["Message"])
    inner["mail"]["messageId"] = "another-ses-message"
    other["Message"] = json.dumps(inner)
    r = httpx.post(proc.url("/api/inbound/ses"), json=other, headers={"Authorization": f"Basic {basic}"}, timeout=30)
    assert r.status_code == 202 and r.json()["duplicate"] is False and r.json()["inbound_id"] != first_id
    wait_for(lambda: len(proc.api("GET", "/api/messages/search", params={"q": "papaya"}).json()["data"]) >= 2)
    time.sleep(0.5)
    assert len(proc.api("GET", "/api/messages/search", params={"q": "papaya"}).json()["data"]) == 2
    bad = base64.b64encode(b"sns:mxd_wrong").decode()
    assert httpx.post(proc.url("/api/inbound/ses"), json=_ses(raw, ["agent@example.test"]),
                      headers={"Authorization": f"Basic {bad}"}, timeout=30).status_code == 401
    assert httpx.post(proc.url("/api/inbound/ses"), json=_ses(raw, ["agent@example.test"]),
                      timeout=30).status_code == 401


def test_ses_refusals_and_subscription(server):
    proc = server
    raw = b"From: a@remote.test\r\nSubject: x\r\n\r\nbody\r\n"

    def post(body) -> httpx.Response:
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return httpx.post(proc.url("/api/inbound/ses"), content=content, timeout=30,
                          headers={"Authorization": f"Bearer {proc.admin_token}"})
    r = post({"Type": "SubscriptionConfirmation", "SubscribeURL": "https://sns.example/confirm?x=1",
              "Token": "abc", "TopicArn": "arn:aws:sns:us-east-1:1:mxd"})
    assert r.status_code == 200 and r.json()["status"] == "not_followed"
    assert r.json()["subscribe_url"] == "https://sns.example/confirm?x=1"

    for body in (b"not json", {"Type": "Bogus"}, {"Type": "Notification", "Message": "not json"},
                 {"Type": "Notification", "Message": json.dumps({"no": "mail"})},
                 dict(_ses(raw, ["agent@example.test"]), Message=json.dumps({"mail": {"destination": ["agent@example.test"]},
                                                                             "notificationType": "Received"}))):
        r = post(body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_notification", (body, r.text)
        assert r.json()["error"]["fix"]
    r = post(_ses(raw, ["x@elsewhere.test"]))
    assert r.status_code == 422 and r.json()["error"]["code"] == "domain_not_served"
    r = post(_ses(raw, ["nobody@example.test"]))
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_recipient"


# ---------------------------------------------------------------- organisations
def test_an_organisation_admin_manages_its_own_directory_only(server):
    proc = server
    org = org_admin_token(proc, "org_acme")
    other = org_admin_token(proc, "org_other")

    def call(method: str, path: str, token: str = org, **kw) -> httpx.Response:
        return proc.api(method, path, token=token, **kw)

    # Its own domain, mailbox, alias, catch-all.
    r = call("POST", "/api/domains", json={"domain": "acme.test"})
    assert r.status_code == 201 and r.json()["org_id"] == "org_acme" and r.json()["ready"] is False
    r = call("POST", "/api/mailboxes", json={"address": "bot@acme.test"})
    assert r.status_code == 201 and r.json()["org_id"] == "org_acme"
    assert call("POST", "/api/aliases", json={"address": "team@acme.test", "targets": ["bot@acme.test"]}).status_code == 201
    r = call("PUT", "/api/catchalls/acme.test", json={"target": "bot@acme.test"})
    assert r.status_code == 200 and r.json()["target"] == "bot@acme.test"
    assert call("GET", "/api/domains/acme.test/dns-plan").status_code == 200
    assert call("GET", "/api/domains/acme.test/status").json()["dns_ok"] is False
    assert call("POST", "/api/domains/acme.test/verify").json()["ready"] is False

    # Readiness is DNS's or the operator's to give.
    r = call("PUT", "/api/domains/acme.test/readiness", json={"ready": True})
    assert r.status_code == 403
    assert proc.api("PUT", "/api/domains/acme.test/readiness", json={"ready": True}).json()["ready"] is True

    # It sees only its own objects; the operator's and the other organisation's are not there (404).
    assert [d["name"] for d in call("GET", "/api/domains").json()["data"]] == ["acme.test"]
    assert {b["address"] for b in call("GET", "/api/mailboxes").json()["data"]} == {"bot@acme.test",
                                                                                     "postmaster@acme.test"}
    assert [a["address"] for a in call("GET", "/api/aliases").json()["data"]] == ["abuse@acme.test", "team@acme.test"]
    for method, path, body in (("GET", "/api/domains/example.test", None), ("GET", "/api/domains/acme.test", None),
                               ("GET", "/api/mailboxes/agent@example.test", None),
                               ("DELETE", "/api/mailboxes/agent@example.test", None),
                               ("DELETE", "/api/domains/example.test", None),
                               ("GET", "/api/catchalls/example.test", None),
                               ("PUT", "/api/catchalls/example.test", {"target": None}),
                               ("DELETE", "/api/aliases/abuse@example.test", None),
                               ("POST", "/api/domains/example.test/verify", None),
                               ("GET", "/api/mailboxes/agent@example.test/retention", None),
                               ("POST", "/api/retention/run", {"mailbox": "agent@example.test"})):
        token = other if path.startswith("/api/domains/acme.test") else org
        r = call(method, path, token=token, json=body)
        assert r.status_code == 404, (method, path, r.text)
    r = call("POST", "/api/mailboxes", json={"address": "intruder@example.test"})
    assert r.status_code == 404
    r = call("POST", "/api/aliases", json={"address": "x@acme.test", "targets": ["agent@example.test"]})
    assert r.status_code == 404
    r = call("POST", "/api/domains", token=other, json={"domain": "acme.test"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    assert proc.api("GET", "/api/mailboxes/agent@example.test").status_code == 200      # still there

    # Tokens no wider than its own, for its own organisation and mailboxes.
    r = call("POST", "/api/tokens", json={"name": "bot", "scopes": ["read", "send"], "mailboxes": ["bot@acme.test"]})
    assert r.status_code == 201 and r.json()["org_id"] == "org_acme"
    bot = r.json()["token"]
    assert call("POST", "/api/tokens", json={"name": "x", "scopes": ["read"],
                                             "mailboxes": ["agent@example.test"]}).status_code == 404
    assert call("POST", "/api/tokens", json={"name": "x", "scopes": ["read"], "org_id": "org_other"}).status_code == 404
    listed = call("GET", "/api/tokens").json()["data"]
    assert {t["org_id"] for t in listed} == {"org_acme"} and "bot" in {t["name"] for t in listed}
    assert all("token" not in t and "secret_hash" not in t for t in listed)
    everyone = proc.api("GET", "/api/tokens").json()["data"]
    assert {"org_acme", "org_other", None} <= {t["org_id"] for t in everyone}
    operator_token = next(t["id"] for t in everyone if t["org_id"] is None)
    assert call("DELETE", f"/api/tokens/{operator_token}").status_code == 404
    bot_id = next(t["id"] for t in listed if t["name"] == "bot")
    assert wait_for(lambda: proc.api("GET", "/api/bootstrap", token=bot).status_code == 200)
    used = next(t for t in call("GET", "/api/tokens").json()["data"] if t["id"] == bot_id)
    assert used["last_used_at"] is not None

    # Mail for its mailbox, simulated by its admin; the bot reads it, the other organisation cannot.
    r = call("POST", "/api/inbound/simulate", json={"to": ["team@acme.test"], "subject": "for the team",
                                                     "text": "hello acme", "wait": True})
    assert r.status_code == 202 and len(r.json()["message_ids"]) == 1
    msg_id = r.json()["message_ids"][0]
    assert proc.api("GET", f"/api/messages/{msg_id}", token=bot).status_code == 200
    assert proc.api("GET", f"/api/messages/{msg_id}", token=other).status_code == 404
    r = call("POST", "/api/inbound/simulate", json={"to": ["agent@example.test"], "text": "x"})
    assert r.status_code == 422
    r = call("PUT", "/api/mailboxes/bot@acme.test/retention", json={"retention_days": 3})
    assert r.status_code == 200 and r.json()["effective_retention_days"] == 3
    report = call("POST", "/api/retention/run", json={}).json()
    assert report["messages"] == 0 and set(report["mailboxes"]) <= {"bot@acme.test", "postmaster@acme.test"}

    # Revocation by its own admin.
    assert call("DELETE", f"/api/tokens/{bot_id}").status_code == 204
    assert proc.api("GET", "/api/bootstrap", token=bot).status_code == 401
    body = call("GET", "/api/bootstrap").json()
    assert body["organization"]["id"] == "org_acme" and [d["name"] for d in body["domains"]] == ["acme.test"]
    assert call("DELETE", "/api/domains/acme.test").status_code == 204
