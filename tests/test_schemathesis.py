"""schemathesis against a real daemon: every operation of /openapi.json, with generated valid and invalid
requests and the operator's admin token, answers without a 5xx and as the document describes it (status code,
content type, response schema).

/mcp is left out: it speaks MCP (JSON-RPC over streamable HTTP), whose messages the document does not model;
tests/test_mcp.py covers it.
"""
from __future__ import annotations

import os
import re
import smtplib
from email.message import EmailMessage
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from mxd.api import openapi
from tests.support.daemon import MxdProcess, wait_for

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Per operation: bounded for a loaded 2-core machine, and the same examples every run. For a deeper search:
# MXD_SCHEMATHESIS_EXAMPLES=200 MXD_SCHEMATHESIS_RANDOM=1 python -m pytest tests/test_schemathesis.py
EXAMPLES = int(os.environ.get("MXD_SCHEMATHESIS_EXAMPLES", "20"))
RANDOM = bool(os.environ.get("MXD_SCHEMATHESIS_RANDOM"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    proc = MxdProcess(tmp_path_factory.mktemp("schemathesis") / "data", env={"MXD_WEBHOOK_ALLOW_PRIVATE": "true"})
    proc.init()
    proc.start()
    try:
        assert proc.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
        for box in ("agent", "other"):
            assert proc.api("POST", "/api/mailboxes", json={"address": f"{box}@example.test"}).status_code == 201
        m = EmailMessage()
        m["From"], m["To"], m["Subject"] = "someone@remote.test", "agent@example.test", "hello"
        m.set_content("a message for the read routes")
        with smtplib.SMTP("127.0.0.1", proc.mx_port, timeout=30) as s:
            s.send_message(m)
        assert proc.wait_messages(1)
    except BaseException:
        proc.stop()
        raise
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api_schema(daemon):
    return schemathesis.openapi.from_url(daemon.url("/openapi.json"))


schema = schemathesis.pytest.from_fixture("api_schema").exclude(path="/mcp")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_api_answers_as_described(case, daemon):
    response = case.call(headers={"Authorization": f"Bearer {daemon.admin_token}"}, timeout=60)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])
    case.validate_response(response, checks=CHECKS)      # raises on a status, type or schema the document denies


# ---------------------------------------------------------------- every operation on real objects
NOT_2XX = {("POST", "/v1/auth/signup/verify")}      # the example's code is not the one mailed


def _ok(r: Any, what: str) -> dict:
    assert r.status_code < 300, (what, r.status_code, r.text)
    return r.json() if r.content else {}


@pytest.fixture(scope="module")
def real(daemon) -> dict[str, str]:
    """Objects of every kind, and a throwaway one of each kind a DELETE route removes."""
    proc = daemon
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "someone@remote.test", "agent@example.test", "with attachment"
    m.set_content("see the attachment")
    m.add_attachment(b"%PDF-1.4 not really", maintype="application", subtype="pdf", filename="a.pdf")
    with smtplib.SMTP("127.0.0.1", proc.mx_port, timeout=30) as s:
        s.send_message(m)
    found = wait_for(lambda: [x for x in proc.messages("agent@example.test") if x["subject"] == "with attachment"],
                     timeout=60)
    assert found, "the message with an attachment never arrived"
    msg = _ok(proc.api("GET", f"/api/messages/{found[0]['id']}"), "message")
    for subject in ("held", "gone held"):             # an executable: quarantined by the mailbox's default policy
        q = EmailMessage()
        q["From"], q["To"], q["Subject"] = "someone@remote.test", "agent@example.test", subject
        q.set_content("run it")
        q.add_attachment(b"MZ", maintype="application", subtype="octet-stream", filename="invoice.pdf.exe")
        with smtplib.SMTP("127.0.0.1", proc.mx_port, timeout=30) as s:
            s.send_message(q)
    held = wait_for(lambda: {x["subject"]: x["id"] for x in proc.api("GET", "/api/quarantine").json()["data"]}
                    if len(proc.api("GET", "/api/quarantine").json()["data"]) == 2 else None, timeout=60)
    assert held, "the quarantined messages never arrived"
    sent = _ok(proc.api("POST", "/api/send", json={"from": "agent@example.test", "to": ["x@remote.test"],
                                                    "subject": "queued", "text": "t"}), "send")
    gone_sent = _ok(proc.api("POST", "/api/send", json={"from": "agent@example.test", "to": ["y@remote.test"],
                                                         "subject": "dropped", "text": "t"}), "send")
    agent = _ok(proc.api("POST", "/v1/agents", json={"name": "Support", "slug": "support"}), "agent")
    box = _ok(proc.api("POST", f"/v1/agents/{agent['id']}/mailboxes", json={"local_part": "support"}), "v1 mailbox")
    hook = {"url": "http://127.0.0.1:9/hook", "event_types": ["message.inbound"]}
    values = {
        "msg": msg["id"], "thr": msg["thread_id"], "att": msg["attachments"][0]["id"],
        "held": held["held"], "gone_held": held["gone held"],
        "drf": _ok(proc.api("POST", "/api/drafts", json={"from": "agent@example.test", "to": ["x@remote.test"],
                                                         "subject": "d", "text": "d"}), "draft")["id"],
        "queue": sent["recipients"][0]["queue_id"], "gone_queue": gone_sent["recipients"][0]["queue_id"],
        "agent": agent["id"], "v1box": box["id"],
        "domain_id": _ok(proc.api("GET", "/api/domains/example.test"), "domain")["id"],
        "whk": _ok(proc.api("POST", "/api/webhooks", json=hook), "webhook")["id"],
        "gone_whk": _ok(proc.api("POST", "/api/webhooks", json=hook), "webhook")["id"],
        "gone_tok": _ok(proc.api("POST", "/api/tokens", json={"name": "gone", "scopes": ["read"]}), "token")["id"],
        "alias": _ok(proc.api("POST", "/api/aliases", json={"address": "gone-alias@example.test",
                                                           "targets": ["agent@example.test"]}), "alias")["address"],
        "suppressed": _ok(proc.api("POST", "/api/suppressions", json={"address": "gone@remote.test"}),
                          "suppression")["address"],
    }
    _ok(proc.api("POST", "/api/domains", json={"domain": "throwaway.test"}), "domain")
    _ok(proc.api("POST", "/api/mailboxes", json={"address": "throwaway@example.test"}), "mailbox")
    return values


def _path_parameters(op: openapi.Op, v: dict[str, str]) -> dict[str, str]:
    gone = op.method == "DELETE"
    by_id = {"/api/messages/": v["msg"], "/api/threads/": v["thr"], "/api/drafts/": v["drf"],
             "/api/tokens/": v["gone_tok"], "/api/queue/": v["gone_queue"] if gone else v["queue"],
             "/api/webhooks/": v["gone_whk"] if gone else v["whk"], "/v1/webhooks/": v["whk"],
             "/api/quarantine/": v["gone_held"] if gone else v["held"]}
    named = {"domain": "throwaway.test" if gone else "example.test",
             "mailbox": "throwaway@example.test" if gone else "agent@example.test", "alias": v["alias"],
             "address": v["suppressed"], "att": v["att"], "agent_id": v["agent"], "domain_id": v["domain_id"],
             "mailbox_id": v["v1box"], "message_id": v["msg"]}
    out = {}
    for name in re.findall(r"{([^}]+)}", op.path):
        if name == "id":
            out[name] = next(value for prefix, value in by_id.items() if op.path.startswith(prefix))
        else:
            out[name] = named[name]
    return out


def _body(op: openapi.Op, v: dict[str, str]) -> Any:
    body = dict(op.example) if op.example is not None else None
    if body is not None and "mailbox_id" in body:
        body["mailbox_id"] = v["v1box"]
    if body is not None and "message_ids" in body:
        body["message_ids"] = [v["msg"]]
    if body is not None and "url" in body:
        body["url"] = "http://127.0.0.1:9/hook"          # hooks.example.org does not resolve here
    return body


def test_every_operation_on_real_objects_answers_as_described(api_schema, daemon, real):
    """The generated requests above rarely name an object that exists; these do, so the success answers of
    every operation are checked against the document too."""
    ops = [op for op in openapi.OPS if not op.path.startswith("/mcp")]
    ops.sort(key=lambda op: op.method == "DELETE")          # destroy last
    failures = []
    for op in ops:
        kwargs: dict[str, Any] = {"path_parameters": _path_parameters(op, real)}
        body = _body(op, real)
        if body is not None:
            kwargs["body"], kwargs["media_type"] = body, "application/json"
        if "q" in op.query:
            kwargs["query"] = {"q": "attachment"}
        case = api_schema[op.path][op.method].Case(**kwargs)
        try:
            r = case.call_and_validate(headers={"Authorization": f"Bearer {daemon.admin_token}"}, checks=CHECKS,
                                       timeout=60)
        except (Exception, BaseExceptionGroup) as exc:     # a FailureGroup names every failed check
            failures.append(f"{op.method} {op.path}: {exc}")
            continue
        if (r.status_code >= 300) != (op.key in NOT_2XX):
            failures.append(f"{op.method} {op.path}: {r.status_code} {r.text[:300]}")
    assert failures == [], "\n\n".join(failures)
