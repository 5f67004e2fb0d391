"""Outbound through a smart host (for networks that block port 25): STARTTLS required, AUTH, no MX lookup."""
from __future__ import annotations

import time
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from mxd import keys
from mxd.certs.contexts import ServerTLS
from mxd.config import Config
from tests.support.daemon import MxdProcess, free_port


class Relay:
    def __init__(self) -> None:
        self.seen: list[dict] = []

    async def handle_DATA(self, server, session, envelope):
        self.seen.append({"user": session.auth_data, "tls": session.ssl is not None,
                          "mail_from": envelope.mail_from, "rcpt": list(envelope.rcpt_tos),
                          "data": envelope.original_content})
        return "250 2.0.0 relayed"


def _auth(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"relay-user" and auth_data.password == b"s3cret"
    return AuthResult(success=ok, auth_data=auth_data.login.decode() if ok else None)


def test_mail_goes_through_the_smart_host_with_tls_and_auth(tmp_path: Path):
    keys.ensure_self_signed_cert(tmp_path / "cert.pem", tmp_path / "key.pem", "relay.test")
    relay = Relay()
    port = free_port("127.0.0.4")
    controller = Controller(relay, hostname="127.0.0.4", port=port, authenticator=_auth, auth_require_tls=True,
                            tls_context=ServerTLS(Config()).build("submission", tmp_path / "cert.pem", tmp_path / "key.pem"),
                            require_starttls=True)
    controller.start()
    proc = MxdProcess(tmp_path / "data", env={
        "MXD_SMART_HOST": f"127.0.0.4:{port}", "MXD_SMART_HOST_TLS": "required",
        "MXD_SMART_HOST_USERNAME": "relay-user", "MXD_SMART_HOST_PASSWORD": "s3cret"})
    proc.init()
    proc.start()
    try:
        assert proc.api("POST", "/api/mailboxes", json={"address": "agent@example.test"}).status_code == 201
        assert proc.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
        r = proc.api("POST", "/api/send", json={"from": "agent@example.test", "to": "someone@nowhere.invalid",
                                                "subject": "via relay", "text": "hello"})
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 20
        while not relay.seen and time.monotonic() < deadline:
            time.sleep(0.1)
        [got] = relay.seen
        assert got["user"] == "relay-user" and got["tls"] is True
        assert got["rcpt"] == ["someone@nowhere.invalid"] and got["mail_from"].startswith("bounces+q_")
        assert b"Subject: via relay" in got["data"] and b"DKIM-Signature:" in got["data"]
        detail = proc.api("GET", f"/api/messages/{r.json()['id']}").json()
        deadline = time.monotonic() + 10
        while detail["delivery"][0]["status"] != "sent" and time.monotonic() < deadline:
            time.sleep(0.1)
            detail = proc.api("GET", f"/api/messages/{r.json()['id']}").json()
        assert detail["delivery"][0]["status"] == "sent"        # the relay took it; final delivery is its job
        assert "relayed" in detail["delivery"][0]["last_reply"]
    finally:
        proc.stop()
        controller.stop()
