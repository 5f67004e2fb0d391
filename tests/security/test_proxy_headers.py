"""Threat: a client poses as another address through X-Forwarded-For.

Per-IP limits (sign-up, the anonymous audit budget) and the records that name a client (the audit trail,
the Received field of mail sent through the API) rely on the connecting address. uvicorn believes
X-Forwarded-For from any loopback peer by default, so any process on the host, or any proxy that passes
the header through, could choose the address it is counted and recorded as. mxd believes the header only
from the addresses in `trusted_proxies`, and none by default. (The audit side: test_audit_bounds.py.)
"""
from __future__ import annotations

import httpx
import pytest

from tests.support.daemon import MxdProcess, start_daemon, wait_for

SPOOFED = "203.0.113.9"


def _start(tmp_path_factory, name: str, env: dict[str, str] | None = None) -> MxdProcess:
    return start_daemon(tmp_path_factory.mktemp(name) / "data", env=env,
                        mailboxes=["agent@example.test", "other@example.test"], ready=["example.test"])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = _start(tmp_path_factory, "proxy-default")
    yield proc
    proc.stop()


def _received_by_other(proc: MxdProcess, subject: str) -> str:
    """Send agent -> other through POST /api/send with a forged X-Forwarded-For; the delivered copy's raw text."""
    r = proc.api("POST", "/api/send", headers={"X-Forwarded-For": SPOOFED, "X-Forwarded-Proto": "https"},
                 json={"from": "agent@example.test", "to": ["other@example.test"], "subject": subject, "text": "hi"})
    assert r.status_code == 202, r.text
    found = wait_for(lambda: [m for m in proc.messages("other@example.test") if m["subject"] == subject], timeout=30)
    assert found, "the local copy never arrived"
    return proc.api("GET", f"/api/messages/{found[0]['id']}/raw").text


def test_forwarded_for_from_loopback_is_not_believed(server):
    raw = _received_by_other(server, "spoof attempt")
    assert "[127.0.0.1]" in raw and SPOOFED not in raw


def test_forwarded_proto_from_loopback_does_not_change_links(server):
    r = httpx.get(server.url("/llms.txt"), headers={"X-Forwarded-Proto": "https"})
    assert r.status_code == 200 and f"http://127.0.0.1:{server.http_port}/install.sh" in r.text


def test_a_configured_proxy_is_believed(tmp_path_factory):
    proc = _start(tmp_path_factory, "proxy-trusted", env={"MXD_TRUSTED_PROXIES": "127.0.0.0/8,::1"})
    try:
        raw = _received_by_other(proc, "through the proxy")
        assert f"[{SPOOFED}]" in raw
    finally:
        proc.stop()
