"""mxd.smtpclient against real aiosmtpd servers on loopback addresses."""
from __future__ import annotations

import socket
import ssl
import threading
from typing import Iterator

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as Server
from aiosmtpd.smtp import AuthResult

from mxd.smtpclient import Connection, DeliveryError, RcptResult, split_reply

MSG = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: t\r\n\r\nhello\r\n"


class Handler:
    """Records what arrived; replies can be scripted per recipient, for MAIL and for DATA."""

    def __init__(self, rcpt: dict[str, str] | None = None, mail: str | None = None, data: str | None = None) -> None:
        self.rcpt = rcpt or {}
        self.mail, self.data = mail, data
        self.peers: list[tuple[str, int]] = []          # one entry per MAIL, the client's (ip, port)
        self.messages: list[dict] = []

    async def handle_MAIL(self, server, session, envelope, address, mail_options) -> str:
        self.peers.append(session.peer)
        if self.mail:
            return self.mail
        envelope.mail_from, envelope.mail_options = address, list(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        if address in self.rcpt:
            return self.rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        if self.data:
            return self.data
        self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "options": envelope.mail_options,
                              "content": envelope.content, "tls": session.ssl is not None})
        return "250 2.0.0 OK queued as Q1"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.example.test").configure_cert(ctx)
    return ctx


class BrokenTLSServer(Server):
    """Offers STARTTLS, answers 220, then speaks plaintext garbage instead of a TLS handshake."""

    async def smtp_STARTTLS(self, arg: str) -> None:
        await self.push("220 2.0.0 Ready to start TLS")
        self.transport.write(b"this is no TLS record\r\n" * 8)
        self.transport.close()


class BrokenTLSController(Controller):
    def factory(self) -> Server:
        return BrokenTLSServer(self.handler, **self.SMTP_kwargs)


_hosts = iter(f"127.0.0.{n}" for n in range(40, 250))


@pytest.fixture
def serve() -> Iterator:
    started: list[Controller] = []

    def start(handler: Handler, cls: type[Controller] = Controller, **kw) -> tuple[str, int]:
        host = next(_hosts)
        port = _free_port(host)
        c = cls(handler, hostname=host, port=port, **kw)
        c.start()
        started.append(c)
        return host, port

    yield start
    for c in started:
        c.stop()


async def _open(host: str, port: int, **kw) -> Connection:
    kw.setdefault("timeout", 10)
    return await Connection.open(host, port, helo_name="out.example.com", **kw)


# --- replies ---------------------------------------------------------------------

def test_split_reply() -> None:
    assert split_reply(550, "5.1.1 No such user") == ("5.1.1", "No such user")
    assert split_reply(550, "5.1.1 The account\n5.1.1 does not exist") == ("5.1.1", "The account does not exist")
    assert split_reply(451, "5.1.1 mismatched class") == (None, "5.1.1 mismatched class")
    assert split_reply(250, "OK") == (None, "OK")
    assert split_reply(452, "4.5.3 Too many recipients") == ("4.5.3", "Too many recipients")


# --- delivery ------------------------------------------------------------------------

async def test_success_with_per_recipient_results(serve) -> None:
    h = Handler()
    host, port = serve(h)
    conn = await _open(host, port)
    assert conn.server_banner.startswith("220 ")
    results = await conn.send("a@example.com", ["b@example.org", "c@example.org"], MSG)
    await conn.close()
    assert results == [RcptResult("b@example.org", True, 250, "2.0.0", "OK queued as Q1", False),
                       RcptResult("c@example.org", True, 250, "2.0.0", "OK queued as Q1", False)]
    assert conn.last_reply == "250 2.0.0 OK queued as Q1"
    (m,) = h.messages
    assert (m["from"], m["to"], m["content"]) == ("a@example.com", ["b@example.org", "c@example.org"], MSG)
    assert m["options"] == [f"SIZE={len(MSG)}"]


async def test_rcpt_4xx_and_5xx(serve) -> None:
    h = Handler(rcpt={"full@example.org": "452 4.2.2 Mailbox full",
                      "gone@example.org": "550 5.1.1 No such user here"})
    host, port = serve(h)
    async with await _open(host, port) as conn:
        results = await conn.send("a@example.com", ["full@example.org", "ok@example.org", "gone@example.org"], MSG)
    assert results == [RcptResult("full@example.org", False, 452, "4.2.2", "Mailbox full", False),
                       RcptResult("ok@example.org", True, 250, "2.0.0", "OK queued as Q1", False),
                       RcptResult("gone@example.org", False, 550, "5.1.1", "No such user here", True)]
    assert h.messages[0]["to"] == ["ok@example.org"]


async def test_all_rcpt_refused_sends_no_data_and_resets(serve) -> None:
    h = Handler(rcpt={"gone@example.org": "550 5.1.1 No such user here"})
    host, port = serve(h)
    async with await _open(host, port) as conn:
        r1 = await conn.send("a@example.com", ["gone@example.org"], MSG)
        r2 = await conn.send("a@example.com", ["ok@example.org"], MSG)
    assert [(r.ok, r.code, r.permanent) for r in r1] == [(False, 550, True)]
    assert [(r.ok, r.code) for r in r2] == [(True, 250)]
    assert len(h.messages) == 1 and h.messages[0]["to"] == ["ok@example.org"]


async def test_data_5xx_applies_to_all_accepted(serve) -> None:
    h = Handler(rcpt={"gone@example.org": "550 5.1.1 No such user here"}, data="554 5.7.1 Message rejected as spam")
    host, port = serve(h)
    async with await _open(host, port) as conn:
        results = await conn.send("a@example.com", ["b@example.org", "gone@example.org", "c@example.org"], MSG)
    assert results == [RcptResult("b@example.org", False, 554, "5.7.1", "Message rejected as spam", True),
                       RcptResult("gone@example.org", False, 550, "5.1.1", "No such user here", True),
                       RcptResult("c@example.org", False, 554, "5.7.1", "Message rejected as spam", True)]


async def test_data_4xx_is_temporary(serve) -> None:
    host, port = serve(Handler(data="451 4.7.1 Greylisted, try again later"))
    async with await _open(host, port) as conn:
        results = await conn.send("a@example.com", ["b@example.org"], MSG)
    assert results == [RcptResult("b@example.org", False, 451, "4.7.1", "Greylisted, try again later", False)]


async def test_mail_from_refused_applies_to_all(serve) -> None:
    host, port = serve(Handler(mail="553 5.1.8 Sender domain does not exist"))
    async with await _open(host, port) as conn:
        results = await conn.send("a@nowhere.example", ["b@example.org", "c@example.org"], MSG)
    assert [(r.recipient, r.ok, r.code, r.enhanced, r.text, r.permanent) for r in results] == [
        ("b@example.org", False, 553, "5.1.8", "Sender domain does not exist", True),
        ("c@example.org", False, 553, "5.1.8", "Sender domain does not exist", True)]


async def test_null_reverse_path(serve) -> None:
    h = Handler()
    host, port = serve(h)
    async with await _open(host, port) as conn:
        results = await conn.send("", ["b@example.org"], MSG)
    assert results[0].ok and h.messages[0]["from"] == "<>"


async def test_several_messages_one_connection(serve) -> None:
    h = Handler(rcpt={"gone@example.org": "550 5.1.1 No such user here"})
    host, port = serve(h)
    conn = await _open(host, port)
    for i in range(5):
        results = await conn.send("a@example.com", ["b@example.org", "gone@example.org"],
                                  MSG.replace(b"hello", f"message {i}".encode()))
        assert [r.ok for r in results] == [True, False]
    await conn.close()
    assert len(h.messages) == 5 and conn.messages_sent == 5
    assert len(set(h.peers)) == 1 and len(h.peers) == 5
    assert [m["content"].split(b"\r\n\r\n")[1] for m in h.messages] == [f"message {i}\r\n".encode() for i in range(5)]
    with pytest.raises(DeliveryError) as e:
        await conn.send("a@example.com", ["b@example.org"], MSG)
    assert (e.value.permanent, e.value.stage) == (False, "mail")


async def test_connection_refused() -> None:
    host = next(_hosts)
    port = _free_port(host)
    with pytest.raises(DeliveryError) as e:
        await _open(host, port)
    assert (e.value.permanent, e.value.stage, e.value.host, e.value.code) == (False, "connect", host, None)
    assert e.value.text == f"{host} port {port}: Connection refused"


async def test_connect_timeout() -> None:
    # a listening socket that never accepts: the kernel completes the handshake, no banner ever comes
    host = next(_hosts)
    with socket.socket() as s:
        s.bind((host, 0))
        s.listen(1)
        with pytest.raises(DeliveryError) as e:
            await Connection.open(host, s.getsockname()[1], helo_name="out.example.com", timeout=0.5)
    assert (e.value.permanent, e.value.stage) == (False, "connect")


async def test_unresolvable_host_name() -> None:
    with pytest.raises(DeliveryError) as e:
        await Connection.open("no-such-host.invalid", 25, helo_name="out.example.com", timeout=5)
    assert (e.value.permanent, e.value.stage) == (False, "connect")


async def test_5xx_banner_is_temporary() -> None:
    host = next(_hosts)
    with socket.socket() as listener:
        listener.bind((host, 0))
        listener.listen(1)

        def greet() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"554 5.7.1 No SMTP service here\r\n")

        thread = threading.Thread(target=greet, daemon=True)
        thread.start()
        with pytest.raises(DeliveryError) as e:
            await _open(host, listener.getsockname()[1])
        thread.join(5)
    assert (e.value.permanent, e.value.stage, e.value.code, e.value.enhanced, e.value.text) == (
        False, "connect", 554, "5.7.1", "No SMTP service here")


# --- TLS ---------------------------------------------------------------------------------

async def test_opportunistic_starttls_used(serve, server_tls) -> None:
    h = Handler()
    host, port = serve(h, tls_context=server_tls)
    conn = await _open(host, port)
    assert conn.tls_active and not conn.tls_fallback
    results = await conn.send("a@example.com", ["b@example.org"], MSG)
    await conn.close()
    assert results[0].ok and h.messages[0]["tls"] is True


async def test_no_starttls_offered_stays_plain(serve) -> None:
    h = Handler()
    host, port = serve(h)
    async with await _open(host, port) as conn:
        assert not conn.tls_active
        assert (await conn.send("a@example.com", ["b@example.org"], MSG))[0].ok
    assert h.messages[0]["tls"] is False


async def test_broken_starttls_falls_back_to_plaintext(serve, server_tls) -> None:
    h = Handler()
    host, port = serve(h, BrokenTLSController, tls_context=server_tls)
    conn = await _open(host, port)
    assert (conn.tls_active, conn.tls_fallback) == (False, True)
    results = await conn.send("a@example.com", ["b@example.org"], MSG)
    await conn.close()
    assert results[0].ok
    assert h.messages[0]["tls"] is False and h.messages[0]["content"] == MSG


async def test_broken_starttls_required_fails(serve, server_tls) -> None:
    host, port = serve(Handler(), BrokenTLSController, tls_context=server_tls)
    with pytest.raises(DeliveryError) as e:
        await _open(host, port, tls="required")
    assert (e.value.permanent, e.value.stage) == (False, "starttls")


async def test_required_tls_not_offered(serve) -> None:
    host, port = serve(Handler())
    with pytest.raises(DeliveryError) as e:
        await _open(host, port, tls="required")
    assert (e.value.permanent, e.value.stage, e.value.text) == (False, "starttls", "STARTTLS not offered")


async def test_tls_none_ignores_starttls(serve, server_tls) -> None:
    h = Handler()
    host, port = serve(h, tls_context=server_tls)
    async with await _open(host, port, tls="none") as conn:
        assert not conn.tls_active
        assert (await conn.send("a@example.com", ["b@example.org"], MSG))[0].ok


async def test_verified_tls_by_name_with_ip_for_connect(serve, ca, server_tls) -> None:
    host, port = serve(Handler(), tls_context=server_tls)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    conn = await Connection.open("mx.example.test", port, helo_name="out.example.com", ip_for_connect=host,
                                 tls="required", tls_verify=True, tls_context=client, timeout=10)
    assert conn.tls_active
    await conn.close()
    with pytest.raises(DeliveryError) as e:   # the certificate is for mx.example.test, not for this name
        await Connection.open("wrong.example.test", port, helo_name="out.example.com", ip_for_connect=host,
                              tls="required", tls_verify=True, tls_context=client, timeout=10)
    assert (e.value.permanent, e.value.stage) == (False, "starttls")


async def test_implicit_tls(serve, ca, server_tls) -> None:
    h = Handler()
    host, port = serve(h, ssl_context=server_tls)
    async with await _open(host, port, tls="implicit") as conn:
        assert conn.tls_active
        assert (await conn.send("a@example.com", ["b@example.org"], MSG))[0].ok
    assert h.messages[0]["content"] == MSG


# --- AUTH, SMTPUTF8, SIZE ---------------------------------------------------------------------

def _authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = (auth_data.login, auth_data.password) == (b"relay", b"s3cret")
    return AuthResult(success=ok, handled=False)


async def test_auth_after_starttls(serve, server_tls) -> None:
    h = Handler()
    host, port = serve(h, tls_context=server_tls, authenticator=_authenticator, auth_require_tls=True)
    async with await _open(host, port, username="relay", password="s3cret") as conn:
        assert conn.tls_active
        assert (await conn.send("a@example.com", ["b@example.org"], MSG))[0].ok
    with pytest.raises(DeliveryError) as e:
        await _open(host, port, username="relay", password="wrong")
    assert (e.value.permanent, e.value.stage, e.value.code) == (False, "auth", 535)


async def test_auth_refused_without_tls(serve) -> None:
    host, port = serve(Handler(), authenticator=_authenticator, auth_require_tls=False)
    with pytest.raises(DeliveryError) as e:
        await _open(host, port, username="relay", password="s3cret")
    assert (e.value.permanent, e.value.stage) == (False, "auth")


async def test_smtputf8_used_when_needed(serve) -> None:
    h = Handler()
    host, port = serve(h)
    msg = "From: jörg@example.com\r\nTo: zoë@example.org\r\n\r\nhi\r\n".encode()
    async with await _open(host, port) as conn:
        assert (await conn.send("jörg@example.com", ["zoë@example.org"], msg))[0].ok
        assert (await conn.send("a@example.com", ["b@example.org"], MSG))[0].ok
    assert h.messages[0]["options"] == ["SMTPUTF8", "BODY=8BITMIME", f"SIZE={len(msg)}"]
    assert (h.messages[0]["from"], h.messages[0]["to"]) == ("jörg@example.com", ["zoë@example.org"])
    assert h.messages[1]["options"] == [f"SIZE={len(MSG)}"]


async def test_no_smtputf8_at_server_is_permanent(serve) -> None:
    h = Handler()
    host, port = serve(h, enable_SMTPUTF8=False)
    async with await _open(host, port) as conn:
        results = await conn.send("a@example.com", ["zoë@example.org", "b@example.org"], MSG)
        utf8_head = await conn.send("a@example.com", ["b@example.org"], "Subject: ä\r\n\r\nx\r\n".encode())
        assert (await conn.send("a@example.com", ["b@example.org"], MSG))[0].ok
    assert [(r.ok, r.code, r.enhanced, r.permanent) for r in results] == [(False, 553, "5.6.7", True)] * 2
    assert [(r.ok, r.code, r.enhanced, r.permanent) for r in utf8_head] == [(False, 554, "5.6.9", True)]
    assert len(h.messages) == 1 and len(h.peers) == 1


async def test_size_limit_respected(serve) -> None:
    h = Handler()
    host, port = serve(h, data_size_limit=100)
    big = MSG + b"x" * 200 + b"\r\n"
    async with await _open(host, port) as conn:
        results = await conn.send("a@example.com", ["b@example.org"], big)
        assert (await conn.send("a@example.com", ["b@example.org"], MSG))[0].ok
    assert [(r.code, r.enhanced, r.permanent) for r in results] == [(552, "5.3.4", True)]
    assert len(h.messages) == 1


async def test_421_closes_the_session(serve) -> None:
    host, port = serve(Handler(data="421 4.3.2 Service shutting down"))
    conn = await _open(host, port)
    results = await conn.send("a@example.com", ["b@example.org"], MSG)
    assert [(r.ok, r.code, r.enhanced, r.permanent) for r in results] == [(False, 421, "4.3.2", False)]
    assert not conn.is_open
    with pytest.raises(DeliveryError) as e:
        await conn.send("a@example.com", ["b@example.org"], MSG)
    assert (e.value.permanent, e.value.stage) == (False, "mail")
    await conn.close()
