"""Threat: public sign-up turned into a weapon against the operator and against strangers.

POST /v1/auth/signup needs no token and makes mxd mail a code to any address, DKIM-signed from
postmaster@ of the server's domain. Before: that mail counted against the operator's daily cap
(a few sign-ups stopped the operator's own outbound mail); the only limit was per client address
(any number of addresses got round it); the mail carried the organisation name the stranger typed
and a link built from the request's Host header, so mxd signed and sent the attacker's words and
URL; and signing up again reset the count of wrong codes, so a code could be guessed at five tries
a minute for ever.

Now: mxd's own mail has its own budget (`system_mail_daily_cap`) and counters; sign-ups have a
limit for all clients together (`signup_rate_per_hour`) besides the per-address one; the mail holds
only mxd's words and links from the configured `public_url`; wrong codes add up across new codes
and each round of five locks the sign-up, for longer each time.
"""
from __future__ import annotations

import sqlite3
import time
from typing import Any

import httpx
import pytest

from tests.support.daemon import wait_for
from tests.support.sink import DOMAIN, World, body_text, code_in, platform_world

PUBLIC_URL = "https://mail.agents.test"
OPERATOR_BOX = f"ops@{DOMAIN}"


def _world(tmp_path_factory, name: str, **env: str) -> World:
    w = platform_world(tmp_path_factory.mktemp(name) / "data", signup=True, env=env)
    assert w.mxd.api("POST", "/api/mailboxes", json={"address": OPERATOR_BOX}).status_code == 201
    return w


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Any:
    w = _world(tmp_path_factory, "signup", MXD_SIGNUP_RATE_PER_HOUR="50", MXD_PUBLIC_URL=PUBLIC_URL)
    yield w
    w.stop()


def _signup(w: World, email: str, name: str = "Acme", slug: str | None = None, source: str = "127.0.0.1",
            **kw: Any) -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=30) as client:
        return client.post(w.mxd.url("/v1/auth/signup"), **kw,
                           json={"email": email, "organization_name": name, "slug": slug or email.split("@")[0]})


def _verify(w: World, email: str, code: str) -> httpx.Response:
    return httpx.post(w.mxd.url("/v1/auth/signup/verify"), json={"email": email, "verification_token": code},
                      timeout=30)


def _sql(w: World, statement: str, *args: Any) -> None:
    con = sqlite3.connect(w.mxd.data_dir / "mxd.db", timeout=60)
    try:
        con.execute(statement, args)
        con.commit()
    finally:
        con.close()


# ---------------------------------------------------------------- the operator's mail
def test_signup_mail_does_not_use_up_the_operators_daily_cap(tmp_path_factory):
    w = _world(tmp_path_factory, "signup-budget", MXD_DAILY_SEND_CAP="3")
    try:
        for i in range(4):                               # more than the operator's daily cap of 3
            r = _signup(w, f"budget{i}@example.com")
            assert r.status_code == 201, r.text
            w.sink.wait(f"budget{i}@example.com", "verification code")
        r = w.mxd.api("POST", "/api/send", json={"from": OPERATOR_BOX, "to": "customer@example.com",
                                                 "subject": "invoice", "text": "the operator's own mail"})
        assert r.status_code == 202, r.text
        w.sink.wait("customer@example.com", "invoice")
    finally:
        w.stop()


# ---------------------------------------------------------------- what the mail says
def test_the_mail_carries_no_stranger_text_and_no_link_from_the_host_header(world):
    email = "target@example.com"
    r = _signup(world, email, name="URGENT claim your refund at http://refund.evil.example now",
                slug="refund-evil-example", headers={"Host": "login.evil.example"})
    assert r.status_code == 201, r.text
    [mail] = world.sink.wait(email, "verification code")
    text = body_text(mail)
    for stranger in ("evil", "refund", "URGENT", email):
        assert stranger not in text and stranger not in str(mail["Subject"]), (stranger, text)
    assert f"POST {PUBLIC_URL}/v1/auth/signup/verify" in text

    r = _verify(world, email, code_in(mail))
    assert r.status_code == 201, r.text
    [welcome] = world.sink.wait(email, "Welcome")
    text = body_text(welcome)
    assert "evil" not in text and "refund" not in text.lower() and "URGENT" not in text
    assert f"{PUBLIC_URL}/llms.txt" in text and "127.0.0.1" not in text


# ---------------------------------------------------------------- guessing the code
def test_signing_up_again_does_not_give_more_guesses(world):
    email = "guessed@example.com"
    assert _signup(world, email).status_code == 201
    code = code_in(world.sink.wait(email, "verification code")[-1])
    wrong = f"{(int(code) + 1) % 10 ** 6:06d}"
    for left in (4, 3, 2, 1, 0):
        r = _verify(world, email, wrong)
        assert r.status_code == 422 and f"({left} attempts left)" in r.json()["error"]["message"], r.text
    # A minute later (past the resend interval) the same stranger asks for a new code: refused, locked.
    _sql(world, 'UPDATE "organization" SET "code_expires_at" = "code_expires_at" - 120 WHERE "owner_email" = ?', email)
    r = _signup(world, email)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
    assert 3000 < int(r.headers["retry-after"]) <= 3601
    r = _verify(world, email, code)
    assert r.status_code == 403 and r.json()["error"]["code"] == "too_many_attempts"
    assert len(world.sink.find(email, "verification code")) == 1

    # Once the lock has run out a new code comes, but the next round of wrong codes locks for longer.
    _sql(world, 'UPDATE "organization" SET "code_locked_until" = ? WHERE "owner_email" = ?', time.time() - 1, email)
    assert _signup(world, email).status_code == 200
    fresh = code_in(world.sink.wait(email, "verification code", count=2)[-1])
    wrong = f"{(int(fresh) + 1) % 10 ** 6:06d}"
    for left in (4, 3, 2, 1, 0):
        r = _verify(world, email, wrong)
        assert r.status_code == 422 and f"({left} attempts left)" in r.json()["error"]["message"], r.text
    _sql(world, 'UPDATE "organization" SET "code_expires_at" = "code_expires_at" - 120 WHERE "owner_email" = ?', email)
    r = _signup(world, email)
    assert r.status_code == 429 and 7000 < int(r.headers["retry-after"]) <= 7201, r.text


# ---------------------------------------------------------------- many client addresses
def test_a_limit_for_all_clients_together(tmp_path_factory):
    w = _world(tmp_path_factory, "signup-global", MXD_SIGNUP_RATE_PER_HOUR="3")
    try:
        for i in range(3):
            r = _signup(w, f"spread{i}@example.com", source=f"127.0.0.{10 + i}")
            assert r.status_code == 201, r.text
        r = _signup(w, "spread3@example.com", source="127.0.0.13")          # a fourth address, never seen
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
        time.sleep(0.5)
        assert w.sink.find("spread3@example.com") == []
        # The operator may still sign organisations up.
        r = httpx.post(w.mxd.url("/v1/auth/signup"), timeout=30, headers={"Authorization": f"Bearer {w.mxd.admin_token}"},
                       json={"email": "invited@example.com", "organization_name": "Invited", "slug": "invited"})
        assert r.status_code == 201, r.text
        assert wait_for(lambda: w.sink.find("invited@example.com", "verification code"), 30)
    finally:
        w.stop()
