"""Send limits answer 429 with Retry-After over HTTP and 451 4.7.1 over SMTP; the daily cap; AUTH LOGIN works."""
from __future__ import annotations

import smtplib

import pytest

from tests.support.daemon import MxdProcess
from tests.support.smtp import insecure_tls


@pytest.fixture
def limited(tmp_path):
    proc = MxdProcess(tmp_path / "data", env={"MXD_RATE_PER_RECIPIENT_PER_HOUR": "1", "MXD_DAILY_SEND_CAP": "3",
                                              "MXD_OUTBOUND_MX_PORT": "1"})
    proc.init()
    proc.start()
    assert proc.api("POST", "/api/mailboxes", json={"address": "agent@example.test"}).status_code == 201
    assert proc.api("PUT", "/api/domains/example.test/readiness", json={"ready": True}).status_code == 200
    yield proc
    proc.stop()


def _send(proc: MxdProcess, to: str):
    return proc.api("POST", "/api/send", json={"from": "agent@example.test", "to": to, "subject": "s", "text": "t"})


def test_rate_limit_is_429_with_retry_after_and_451_over_smtp(limited):
    assert _send(limited, "bob@remote.test").status_code == 202
    r = _send(limited, "bob@remote.test")
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited" and r.json()["error"]["hard_stop"] is False
    assert int(r.headers["Retry-After"]) > 0 and r.json()["error"]["retry_after"] == int(r.headers["Retry-After"])
    token = limited.token(["send"], ["agent@example.test"])
    with smtplib.SMTP("127.0.0.1", limited.submission_port, timeout=10) as s:
        s.starttls(context=insecure_tls())
        s.ehlo()
        s.user, s.password = "agent@example.test", token
        code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        assert code == 235
        with pytest.raises(smtplib.SMTPDataError) as err:
            s.sendmail("agent@example.test", ["bob@remote.test"],
                       b"From: agent@example.test\r\nTo: bob@remote.test\r\nSubject: again\r\n\r\nx\r\n")
        assert err.value.smtp_code == 451 and b"4.7.1" in err.value.smtp_error


def test_daily_cap(limited):
    for i in range(3):
        assert _send(limited, f"r{i}@remote.test").status_code == 202
    r = _send(limited, "r9@remote.test")
    assert r.status_code == 429 and r.json()["error"]["code"] == "daily_cap_reached"
    assert int(r.headers["Retry-After"]) > 0
