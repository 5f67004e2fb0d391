"""The inbound MX: an aiosmtpd server that accepts mail for mxd's own domains and nothing else.

Recipients are checked at RCPT against the directory snapshot (no relay, from
any address); DATA is answered 250 only once `ingest` has committed the raw
message; session limits (connections per IP, recipients, errors) hold.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import Any, Callable

from aiosmtpd.smtp import SMTP, Envelope as SmtpEnvelope, Session

from mxd.smtpserver.fast import FastSMTP

from mxd import address as addr
from mxd import outqueue
from mxd import smtpcodes as codes
from mxd.config import Config
from mxd.db import Database
from mxd.ingest import Envelope, Recipient, has_bare_line_endings, ingest, received_header
from mxd.store.directory import Directory

log = logging.getLogger("mxd.mx")
logging.getLogger("mail.log").setLevel(logging.WARNING)   # aiosmtpd logs every command at INFO


class Limits:
    """Connections in flight, in all and per client IP."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total, self.per_ip = total, per_ip
        self.by_ip: dict[str, int] = {}
        self.count = 0

    def enter(self, ip: str) -> bool:
        if self.count >= self.total or self.by_ip.get(ip, 0) >= self.per_ip:
            return False
        self.count += 1
        self.by_ip[ip] = self.by_ip.get(ip, 0) + 1
        return True

    def leave(self, ip: str) -> None:
        self.count -= 1
        left = self.by_ip.get(ip, 1) - 1
        if left:
            self.by_ip[ip] = left
        else:
            self.by_ip.pop(ip, None)


class MxSMTP(FastSMTP):
    """aiosmtpd's SMTP with connection limits, an error budget and graceful shutdown."""

    def __init__(self, handler: "MxHandler", *, limits: Limits, live: set, max_errors: int, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits, self.live, self.max_errors = limits, live, max_errors
        self.errors = 0
        self.peer_ip = ""
        self.admitted = False
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:                     # a new connection, not the STARTTLS upgrade
            peer = transport.get_extra_info("peername") or ("", 0)
            self.peer_ip = str(peer[0])
            if self.closing or not self.limits.enter(self.peer_ip):
                reply = codes.SHUTTING_DOWN if self.closing else codes.TOO_MANY_CONNECTIONS
                transport.write(reply.encode() + b"\r\n")
                transport.close()
                return
            self.admitted = True
            self.live.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.admitted:
            self.admitted = False
            self.limits.leave(self.peer_ip)
            self.live.discard(self)
            super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if not self.admitted:
            return False
        return super().eof_received()

    async def push(self, status: Any) -> None:
        await super().push(status)
        text = status if isinstance(status, str) else status.decode("latin-1")
        if text[:1] in ("4", "5") and not text.startswith("421") and self.transport is not None:
            self.errors += 1
            if self.errors >= self.max_errors:
                await super().push(codes.TOO_MANY_ERRORS)
                self.transport.close()

    async def smtp_RCPT(self, arg: str | None) -> None:
        # aiosmtpd drops a source route (<@a:b@c>) and keeps b@c; mxd refuses it outright
        # (RFC 5321 4.1.1.3 and C.: routes are obsolete and a relay trick).
        if arg and arg.upper().startswith("TO:") and arg[3:].lstrip().startswith("<@"):
            await self.push(codes.RELAY_DENIED)
            return
        await super().smtp_RCPT(arg)

    @property
    def in_transaction(self) -> bool:
        return bool(self.envelope is not None and self.envelope.mail_from)

    def close_idle(self) -> None:
        """Shutdown: say 421 to a session that is not inside a mail transaction."""
        if self.transport is not None and not self.in_transaction:
            self._writer.write(codes.SHUTTING_DOWN.encode() + b"\r\n")
            self.transport.close()


class MxHandler:
    """aiosmtpd handler hooks: each returns the full reply line."""

    def __init__(self, cfg: Config, db: Database, directory: Directory, on_ingest: Callable[[], None]) -> None:
        self.cfg, self.db, self.directory, self.on_ingest = cfg, db, directory, on_ingest

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: SmtpEnvelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        # aiosmtpd does not advertise these itself; both are honoured (RFC 2920, RFC 2034).
        return responses[:-1] + ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str,
                          mail_options: list[str]) -> str:
        if address not in ("", "<>") and addr.try_parse(address) is None and "@" not in address:
            return codes.BAD_SENDER
        envelope.mail_from = "" if address == "<>" else address
        envelope.mail_options.extend(mail_options)
        envelope.mxd_rcpts = []
        # aiosmtpd treats an empty mail_from as "no MAIL yet"; keep a marker for the null sender.
        envelope.mail_from = envelope.mail_from or "<>"
        return codes.SENDER_OK

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str,
                          rcpt_options: list[str]) -> str:
        rcpts: list[Recipient] = envelope.mxd_rcpts
        if len(rcpts) >= self.cfg.max_recipients:
            return codes.TOO_MANY_RECIPIENTS
        try:
            parsed = addr.parse(address)
        except addr.AddressError:
            # Source routes, %-hacks, quoted local parts and literals never relay (RFC 5321 3.6).
            return codes.RELAY_DENIED if ("%" in address or ":" in address or "!" in address
                                          or '"' in address or "[" in address) else codes.BAD_ADDRESS
        if self.directory.stale():
            await self.db.read(self.directory.refresh)
        # A bounce coming back to a VERP return path reaches the sender's mailbox; a made-up, stale or
        # untagged one is no one's (never plus-addressed to a mailbox called bounces).
        verp = parsed.domain in self.directory.domains and outqueue.is_return_path(parsed.local)
        target = await self.db.read(outqueue.bounce_target, parsed.local, parsed.domain) if verp else None
        found = self.directory.resolve(parsed)
        if target is not None:
            rcpts.append(Recipient(address, (target[1],), None, bounce_entry=target[0]))
        elif verp:
            return codes.UNKNOWN_USER
        elif found.kind == "foreign":
            return codes.RELAY_DENIED
        elif found.kind == "unknown":
            return codes.UNKNOWN_USER
        else:
            rcpts.append(Recipient(address, found.mailbox_ids, found.tag))
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return codes.RECIPIENT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        data: bytes = envelope.original_content or b""
        if self.cfg.data_line_endings == "reject" and has_bare_line_endings(data):
            return codes.BAD_LINE_ENDINGS
        peer = session.peer or ("", 0)
        rcpts: list[Recipient] = envelope.mxd_rcpts
        tls = session.ssl is not None
        protocol = ("UTF8" if envelope.smtp_utf8 else "") + "ESMTP" + ("S" if tls else "")
        env = Envelope(
            mail_from="" if envelope.mail_from == "<>" else envelope.mail_from, rcpts=rcpts, data=data,
            remote_ip=str(peer[0]), helo=session.host_name or "", tls=tls, source="smtp",
        )
        env.received = received_header(helo=env.helo, remote_ip=env.remote_ip, hostname=self.cfg.hostname,
                                       protocol=protocol, rcpt=rcpts[0].address if len(rcpts) == 1 else None,
                                       queue_id=env.id, when=env.received_at)
        try:
            await ingest(self.db, env)
        except Exception:
            log.exception("could not store a message from %s", env.remote_ip)
            return codes.TEMP_FAILURE
        self.on_ingest()
        return codes.QUEUED.format(env.id)


class MxServer:
    """Owns the listening socket and the live sessions."""

    def __init__(self, cfg: Config, handler: MxHandler, tls_context: ssl.SSLContext | None) -> None:
        self.cfg, self.handler, self.tls_context = cfg, handler, tls_context
        self.limits = Limits(cfg.max_connections, cfg.max_connections_per_ip)
        self.live: set[MxSMTP] = set()
        self.server: asyncio.base_events.Server | None = None

    def _protocol(self) -> MxSMTP:
        return MxSMTP(self.handler, limits=self.limits, live=self.live, max_errors=self.cfg.max_errors,
                      data_size_limit=self.cfg.max_message_size, enable_SMTPUTF8=True, decode_data=False,
                      hostname=self.cfg.hostname, ident="mxd ESMTP", tls_context=self.tls_context,
                      timeout=self.cfg.smtp_timeout, loop=asyncio.get_running_loop())

    async def start_on(self, sock: "socket.socket") -> None:
        self.server = await asyncio.get_running_loop().create_server(self._protocol, sock=sock)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let open transactions finish (up to grace seconds), close the rest."""
        if self.server is None:
            return
        self.server.close()
        deadline = time.monotonic() + grace
        while True:
            for session in list(self.live):
                session.closing = True
                session.close_idle()
            if not self.live or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        for session in list(self.live):
            if session.transport is not None:
                session.transport.close()
        await asyncio.sleep(0)
