"""schemathesis against a real daemon: every operation of /openapi.json, with generated valid and invalid
requests and the operator's admin token, answers without a 5xx and as the document describes it (status code,
content type, response schema).

/mcp is left out: it speaks MCP (JSON-RPC over streamable HTTP), whose messages the document does not model;
tests/test_mcp.py covers it.
"""
from __future__ import annotations

import os
import smtplib
from email.message import EmailMessage

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from tests.daemon import MxdProcess

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Per operation: bounded for a loaded 2-core machine, and the same examples every run. For a deeper search:
# MXD_SCHEMATHESIS_EXAMPLES=200 MXD_SCHEMATHESIS_RANDOM=1 python -m pytest tests/test_schemathesis.py
EXAMPLES = int(os.environ.get("MXD_SCHEMATHESIS_EXAMPLES", "10"))
RANDOM = bool(os.environ.get("MXD_SCHEMATHESIS_RANDOM"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    proc = MxdProcess(tmp_path_factory.mktemp("schemathesis") / "data")
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
    case.call_and_validate(headers={"Authorization": f"Bearer {daemon.admin_token}"}, checks=CHECKS, timeout=60)
