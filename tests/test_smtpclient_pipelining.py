"""mxd.smtpclient with servers that offer PIPELINING (RFC 2920): the message phase sends MAIL, RCPT and
DATA as one group and reads the replies in order.

Every delivery test of tests/test_smtpclient.py runs again here against aiosmtpd servers that
advertise PIPELINING, so per-recipient 4xx/5xx, refused MAIL and DATA, RSET between messages,
SMTPUTF8, SIZE, 421 and STARTTLS hold on the pipelined path too. A scripted server checks that the
commands really arrive as one group and that replies split across reads are put together.
"""
from __future__ import annotations

import asyncio
import socket

import pytest

import tests.test_smtpclient as base
from mxd.smtpclient import Connection, DeliveryError, _wire_body
from tests.test_smtpclient import (  # noqa: F401 - fixtures and the delivery tests, collected again here
    MSG,
    _open,
    ca,
    serve,
    server_tls,
    test_421_closes_the_session,
    test_all_rcpt_refused_sends_no_data_and_resets,
    test_auth_after_starttls,
    test_data_4xx_is_temporary,
    test_data_5xx_applies_to_all_accepted,
    test_mail_from_refused_applies_to_all,
    test_no_smtputf8_at_server_is_permanent,
    test_null_reverse_path,
    test_opportunistic_starttls_used,
    test_rcpt_4xx_and_5xx,
    test_several_messages_one_connection,
    test_size_limit_respected,
    test_smtputf8_used_when_needed,
    test_success_with_per_recipient_results,
)


class PipeliningHandler(base.Handler):
    async def handle_EHLO(self, server, session, envelope, hostname, responses) -> list[str]:
        session.host_name = hostname
        return responses[:-1] + ["250-PIPELINING", responses[-1]]


@pytest.fixture(autouse=True)
def pipelining(monkeypatch) -> None:
    """The delivery tests above build their servers from base.Handler: make it offer PIPELINING, and
    check that every connection they open takes the pipelined path."""
    monkeypatch.setattr(base, "Handler", PipeliningHandler)
    real_open = Connection.open.__func__

    async def open_checked(cls, *args, **kwargs) -> Connection:
        conn = await real_open(cls, *args, **kwargs)
        assert conn.pipelining, "the server offers PIPELINING but the connection does not use it"
        return conn
    monkeypatch.setattr(Connection, "open", classmethod(open_checked))


def test_wire_body() -> None:
    assert _wire_body(b"a\r\n.b\r\n..c\r\n") == b"a\r\n..b\r\n...c\r\n.\r\n"
    assert _wire_body(b".x") == b"..x\r\n.\r\n"
    assert _wire_body(b"a\nb\rc\r\n") == b"a\r\nb\r\nc\r\n.\r\n"
    assert _wire_body(b"") == b"\r\n.\r\n"


# --- a scripted server: what arrives in which read, replies written in pieces ------------------------
class Scripted:
    """Greets, offers PIPELINING, then for each transaction records the bytes of the command group as
    one read, answers it (split across several writes) and takes the message."""

    def __init__(self, rcpt_reply: bytes = b"250 2.1.5 ok\r\n") -> None:
        self.rcpt_reply = rcpt_reply
        self.groups: list[bytes] = []
        self.bodies: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        await reader.readline()                                   # EHLO
        writer.write(b"250-scripted\r\n250-PIPELINING\r\n250 SIZE 100000\r\n")
        while True:
            group = b""
            while not (group.endswith(b"DATA\r\n") or group.startswith((b"QUIT", b"RSET"))):
                chunk = await reader.read(65536)
                if not chunk:
                    return
                group += chunk
            self.groups.append(group)
            if group.startswith(b"QUIT"):
                writer.write(b"221 bye\r\n")
                await writer.drain()
                writer.close()
                return
            if group.startswith(b"RSET"):
                writer.write(b"250 reset\r\n")
                continue
            rcpts = group.count(b"RCPT TO:")
            answer = b"250 2.1.0 ok\r\n" + self.rcpt_reply * rcpts
            ok = self.rcpt_reply.startswith(b"2")
            answer += b"354 go ahead\r\n" if ok else b"554 5.5.1 no valid recipients\r\n"
            for i in range(0, len(answer), 7):                   # replies in pieces, across reads
                writer.write(answer[i:i + 7])
                await writer.drain()
                await asyncio.sleep(0.001)
            if not ok:
                continue
            body = await reader.readuntil(b"\r\n.\r\n")
            self.bodies.append(body)
            writer.write(b"250-2.0.0 queued\r\n250 2.0.0 as Q1\r\n")


async def _scripted(script: Scripted) -> tuple[asyncio.base_events.Server, int]:
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0, family=socket.AF_INET)
    return server, server.sockets[0].getsockname()[1]


async def test_one_group_per_message_and_split_replies() -> None:
    script = Scripted()
    server, port = await _scripted(script)
    async with server:
        conn = await Connection.open("127.0.0.1", port, helo_name="out.example.com", timeout=10)
        assert conn.pipelining
        for i in range(3):
            results = await conn.send("a@example.com", ["b@example.org", "c@example.org"], b"Subject: %d\r\n\r\n.dot\r\n" % i)
            assert [(r.ok, r.code, r.text) for r in results] == [(True, 250, "queued as Q1")] * 2
        await conn.close()
    assert script.groups[:3] == [b"MAIL FROM:<a@example.com> SIZE=%d\r\nRCPT TO:<b@example.org>\r\n"
                                 b"RCPT TO:<c@example.org>\r\nDATA\r\n" % len(b"Subject: 0\r\n\r\n.dot\r\n")] * 3
    assert script.groups[3] == b"QUIT\r\n"
    assert script.bodies == [b"Subject: %d\r\n\r\n..dot\r\n.\r\n" % i for i in range(3)]
    assert conn.messages_sent == 3


async def test_refused_recipients_then_rset_before_the_next_message() -> None:
    script = Scripted(rcpt_reply=b"550 5.1.1 no such user\r\n")
    server, port = await _scripted(script)
    async with server:
        conn = await Connection.open("127.0.0.1", port, helo_name="out.example.com", timeout=10)
        results = await conn.send("a@example.com", ["gone@example.org"], MSG)
        assert [(r.ok, r.code, r.enhanced, r.permanent) for r in results] == [(False, 550, "5.1.1", True)]
        script.rcpt_reply = b"250 ok\r\n"
        results = await conn.send("a@example.com", ["b@example.org"], MSG)
        assert [r.ok for r in results] == [True]
        await conn.close()
    assert script.groups[1] == b"RSET\r\n" and script.groups[2].startswith(b"MAIL FROM:<a@example.com>")


async def test_server_gone_mid_session_is_a_broken_connection() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 x\r\n")
        await reader.readline()
        writer.write(b"250-x\r\n250 PIPELINING\r\n")
        await reader.readuntil(b"DATA\r\n")
        writer.write(b"250 ok\r\n")                             # then nothing more: the connection ends
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0, family=socket.AF_INET)
    async with server:
        port = server.sockets[0].getsockname()[1]
        conn = await Connection.open("127.0.0.1", port, helo_name="out.example.com", timeout=10)
        with pytest.raises(DeliveryError) as e:
            await conn.send("a@example.com", ["b@example.org"], MSG)
        assert (e.value.permanent, e.value.stage) == (False, "mail")
        assert not conn.is_open
        await conn.close()


async def test_silent_server_times_out() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 x\r\n")
        await reader.readline()
        writer.write(b"250-x\r\n250 PIPELINING\r\n")
        await reader.readuntil(b"DATA\r\n")
        await asyncio.sleep(30)                                 # no reply to the group
    server = await asyncio.start_server(handle, "127.0.0.1", 0, family=socket.AF_INET)
    async with server:
        port = server.sockets[0].getsockname()[1]
        conn = await Connection.open("127.0.0.1", port, helo_name="out.example.com", timeout=1)
        with pytest.raises(DeliveryError) as e:
            await conn.send("a@example.com", ["b@example.org"], MSG)
        assert (e.value.permanent, e.value.stage, e.value.text) == (False, "mail", "timed out")
        assert not conn.is_open
        await conn.close()


async def test_a_server_closing_an_idle_session_is_seen_as_closed() -> None:
    """A server's parting 421 while the connection waits for mail is not read as the next reply."""
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 x\r\n")
        await reader.readline()
        writer.write(b"250-x\r\n250 PIPELINING\r\n")
        await reader.readuntil(b"DATA\r\n")
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await reader.readuntil(b"\r\n.\r\n")
        writer.write(b"250 queued\r\n")
        await asyncio.sleep(0.2)
        writer.write(b"421 4.4.2 idle too long, closing\r\n")    # unsolicited, then the end
        await writer.drain()
        writer.close()
        closed.set()
    server = await asyncio.start_server(handle, "127.0.0.1", 0, family=socket.AF_INET)
    async with server:
        port = server.sockets[0].getsockname()[1]
        conn = await Connection.open("127.0.0.1", port, helo_name="out.example.com", timeout=10)
        assert [r.ok for r in await conn.send("a@example.com", ["b@example.org"], MSG)] == [True]
        await asyncio.wait_for(closed.wait(), 10)
        for _ in range(100):
            if not conn.is_open:
                break
            await asyncio.sleep(0.02)
        assert not conn.is_open
        with pytest.raises(DeliveryError) as e:
            await conn.send("a@example.com", ["c@example.org"], MSG)
        assert (e.value.permanent, e.value.stage) == (False, "mail")
        await conn.close()
