"""A recipient's MX for tests (an aiosmtpd sink that keeps every message) and a daemon wired to reach it.

`platform_world` starts a loopback DNS server whose example.com MX points at the sink on 127.0.0.2,
and an mxd daemon serving agents.test (ready for outbound, public sign-up on) that resolves through it,
so mail mxd sends to anyone@example.com (sign-up codes, welcome notices, agent mail) lands in the sink.
"""
from __future__ import annotations

import email
import email.policy
import re
import ssl
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.daemon import MxdProcess, free_port, wait_for
from tests.support.dnsserver import DNSServer

SINK_IP = "127.0.0.2"
DOMAIN = "agents.test"


class MailSink:
    """Accepts every message; keeps (recipients, parsed message). With tls_context it offers STARTTLS
    and notes, per message, whether it came over TLS (`plaintext` counts MAIL commands seen in clear)."""

    def __init__(self, ip: str = SINK_IP, port: int | None = None, tls_context: ssl.SSLContext | None = None) -> None:
        self.ip, self.port = ip, port or free_port(ip)
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.tls_flags: list[bool] = []          # per message: did it come over TLS
        self.plaintext = 0                       # MAIL FROM commands received without TLS
        self.lock = threading.Lock()
        kwargs: dict[str, Any] = {"tls_context": tls_context, "require_starttls": False} if tls_context else {}
        self.controller = Controller(self, hostname=ip, port=self.port, **kwargs)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if session.ssl is None:
            with self.lock:
                self.plaintext += 1
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(([r.lower() for r in envelope.rcpt_tos], msg))
            self.tls_flags.append(session.ssl is not None)
        return "250 2.0.0 OK"

    def start(self) -> "MailSink":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def find(self, rcpt: str, subject_part: str = "") -> list[EmailMessage]:
        with self.lock:
            return [m for rcpts, m in self.messages if rcpt.lower() in rcpts and subject_part in str(m["subject"])]

    def wait(self, rcpt: str, subject_part: str = "", count: int = 1, timeout: float = 60.0) -> list[EmailMessage]:
        found = wait_for(lambda: (lambda f: f if len(f) >= count else None)(self.find(rcpt, subject_part)),
                         timeout=timeout)
        assert found, f"no message to {rcpt} with {subject_part!r} in the subject"
        return found


def body_text(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    return part.get_content() if part is not None else ""


def code_in(msg: EmailMessage) -> str:
    found = re.search(r"\b(\d{6})\b", body_text(msg))
    assert found, body_text(msg)
    return found.group(1)


@dataclass
class World:
    mxd: MxdProcess
    dns: DNSServer
    sink: MailSink

    def stop(self) -> None:
        self.mxd.stop()
        self.sink.stop()
        self.dns.stop()


def platform_world(data_dir: Path, signup: bool = True, env: dict[str, str] | None = None) -> World:
    sink = MailSink().start()
    dns = DNSServer({
        "example.com": {"MX": [(10, "mx.example.com")], "A": [SINK_IP]},
        "mx.example.com": {"A": [SINK_IP]},
        "example.org": {"MX": [(10, "mx.example.com")], "A": [SINK_IP]},
    })
    dns.start()
    settings = {"MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2",
                "MXD_OUTBOUND_MX_PORT": str(sink.port), "MXD_WEBHOOK_ALLOW_PRIVATE": "true"}
    if signup:
        settings["MXD_SIGNUP_ENABLED"] = "true"
    settings.update(env or {})
    proc = MxdProcess(data_dir, domains=[DOMAIN], env=settings, hostname=f"mx.{DOMAIN}")
    proc.init()
    proc.start()
    r = proc.api("PUT", f"/api/domains/{DOMAIN}/readiness", json={"ready": True})
    assert r.status_code == 200, r.text
    return World(proc, dns, sink)


def signup_org(world: World, email_addr: str, slug: str) -> dict:
    """Sign up and verify an organisation through the API and the mailed code; returns the verify answer."""
    import httpx
    r = httpx.post(world.mxd.url("/v1/auth/signup"), timeout=30,
                   json={"email": email_addr, "organization_name": slug.title(), "slug": slug})
    assert r.status_code == 201, r.text
    code = code_in(world.sink.wait(email_addr, "verification code")[-1])
    r = httpx.post(world.mxd.url("/v1/auth/signup/verify"), timeout=30,
                   json={"email": email_addr, "verification_token": code})
    assert r.status_code == 201, r.text
    return r.json()
