"""The inbound MX: an aiosmtpd server that accepts mail for mxd's own domains and nothing else.

Recipients are checked at RCPT against the directory snapshot (no relay, from
any address); DATA is answered 250 only once `ingest` has committed the raw
message; session limits (connections per IP, recipients, errors) hold. The inbound
defences (`mxd.defences.gate`: DNS lists looked up from connect, per-client limits at
MAIL and RCPT, authentication and the spam engine at DATA) may refuse first; what they
found is stored with the message.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Callable

from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session

from mxd import address as addr
from mxd import smtpcodes as codes
from mxd.config import Config
from mxd.db import Database
from mxd.defences import counters
from mxd.defences.dnsbl import ClientVerdict
from mxd.defences.gate import Gate
from mxd.ingest import (
    Envelope,
    Recipient,
    has_bare_line_endings,
    ingest_once,
    normalize_line_endings,
    received_header,
    remove_auth_results,
)
from mxd.smtpserver.base import Listener, ListenerSMTP
from mxd.store import events
from mxd.store import queue as outqueue
from mxd.store.directory import Directory

log = logging.getLogger("mxd.mx")
logging.getLogger("mail.log").setLevel(logging.WARNING)   # aiosmtpd logs every command at INFO


class MxEnvelope(SmtpEnvelope):
    """One MX transaction: aiosmtpd's envelope and the recipients as resolved at RCPT.

    `mail_from` is "<>" for the null sender (aiosmtpd takes an empty one for "no MAIL yet")."""

    mxd_rcpts: list[Recipient]

    def __init__(self) -> None:
        super().__init__()
        self.mxd_rcpts = []


class Refused(Exception):
    """The checks before the 250 refused the message: `reply` is the SMTP answer."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class MxSession(Session):
    """One MX connection: the DNS list lookups started at connect, and what they concluded."""

    lookup: "asyncio.Task[ClientVerdict] | None"
    client_checked: bool
    client_refusal: str | None     # the 554 every RCPT of a listed client gets
    notes: list[str]               # what the lookups recorded (timeouts, error answers), carried with each message
    close_after: bool              # a reply that ends the session (421) was given

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.lookup, self.client_checked, self.client_refusal = None, False, None
        self.notes = []
        self.close_after = False


class MxSMTP(ListenerSMTP):
    session_class = MxSession
    envelope_class = MxEnvelope
    offers_auth = False       # the MX takes no logins (submission does, on its own ports): see smtp_AUTH

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        gate: Gate | None = getattr(self.event_handler, "gate", None)
        fresh = self.transport is None
        if fresh and gate is not None:
            peer = transport.get_extra_info("peername") or ("", 0)
            refusal = gate.at_connect(str(peer[0]))
            if refusal is not None:            # a client known bad already: refused before the banner
                transport.write(refusal.encode() + b"\r\n")
                transport.close()
                return
        super().connection_made(transport)
        if fresh and gate is not None and self.admitted and isinstance(self.session, MxSession):
            self.session.lookup = gate.start_lookup(self.peer_ip)

    def connection_lost(self, error: Exception | None) -> None:
        session = self.session
        if isinstance(session, MxSession) and session.lookup is not None and not session.lookup.done():
            session.lookup.cancel()
        super().connection_lost(error)

    async def smtp_MAIL(self, arg: str | None) -> None:
        await super().smtp_MAIL(arg)
        await self._close_if_asked()

    async def smtp_RCPT(self, arg: str | None) -> None:
        # aiosmtpd drops a source route (<@a:b@c>) and keeps b@c; mxd refuses it outright
        # (RFC 5321 4.1.1.3 and C.: routes are obsolete and a relay trick).
        if arg and arg.upper().startswith("TO:") and arg[3:].lstrip().startswith("<@"):
            await self.push(codes.RELAY_DENIED)
            return
        await super().smtp_RCPT(arg)
        await self._close_if_asked()

    async def _close_if_asked(self) -> None:
        if isinstance(self.session, MxSession) and self.session.close_after and self.transport is not None:
            self.transport.close()

    async def smtp_AUTH(self, arg: str) -> None:
        await self.push("502 5.5.1 AUTH is not offered here; submit mail on the submission port")


class MxHandler:
    """aiosmtpd handler hooks: each returns the full reply line."""

    def __init__(self, cfg: Config, db: Database, directory: Directory, on_ingest: Callable[[], None],
                 gate: Gate | None = None) -> None:
        self.cfg, self.db, self.directory, self.on_ingest = cfg, db, directory, on_ingest
        self.gate = gate

    async def _client(self, session: MxSession) -> str | None:
        """The DNS lists' answer about the client, waited for once (at the first MAIL): a 554 or None."""
        if not session.client_checked:
            session.client_checked = True
            lookup, session.lookup = session.lookup, None
            if lookup is not None and self.gate is not None:
                try:
                    verdict = await lookup
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("DNS list lookups failed for %s", session.peer)
                else:
                    session.notes = verdict.notes
                    if verdict.allowed_by:
                        session.notes.append(f"dnswl: listed by {verdict.allowed_by}")
                    session.client_refusal = self.gate.client_verdict(str((session.peer or ("",))[0]), verdict)
        return session.client_refusal

    async def handle_MAIL(self, server: MxSMTP, session: MxSession, envelope: MxEnvelope, address: str,
                          mail_options: list[str]) -> str:
        if address not in ("", "<>") and addr.try_parse(address) is None and "@" not in address:
            return codes.BAD_SENDER
        if self.gate is not None:
            await self._client(session)
            over = self.gate.at_mail(server.peer_ip)
            if over is not None:
                return over
        # aiosmtpd treats an empty mail_from as "no MAIL yet"; keep a marker for the null sender.
        envelope.mail_from = address or "<>"
        envelope.mail_options.extend(mail_options)
        return codes.SENDER_OK

    async def handle_RCPT(self, server: MxSMTP, session: MxSession, envelope: MxEnvelope, address: str,
                          rcpt_options: list[str]) -> str:
        rcpts = envelope.mxd_rcpts
        if len(rcpts) >= self.cfg.max_recipients:
            return codes.TOO_MANY_RECIPIENTS
        if self.gate is not None:
            listed = await self._client(session)
            if listed is not None:
                counters.refused("dnsbl")
                return listed
        reply, found = await self._recipient(address)
        if self.gate is not None:
            if reply == codes.UNKNOWN_USER:
                harvest = self.gate.at_rcpt_unknown(server.peer_ip)
                if harvest is not None:
                    session.close_after = True
                    return harvest
            elif found is not None:
                over = self.gate.at_rcpt_accepted(server.peer_ip)
                if over is not None:
                    return over
        if found is not None:
            rcpts.append(found)
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def _recipient(self, address: str) -> tuple[str, Recipient | None]:
        """The reply to RCPT TO:<address>, and the recipient when it is one of ours."""
        try:
            parsed = addr.parse(address)
        except addr.AddressError:
            # Source routes, %-hacks, quoted local parts and literals never relay (RFC 5321 3.6).
            return (codes.RELAY_DENIED if ("%" in address or ":" in address or "!" in address
                                           or '"' in address or "[" in address) else codes.BAD_ADDRESS), None
        if self.directory.stale():
            await self.db.read(self.directory.refresh)
        # A bounce coming back to a VERP return path reaches the sender's mailbox; a made-up, stale or
        # untagged one is no one's (never plus-addressed to a mailbox called bounces).
        verp = parsed.domain in self.directory.domains and outqueue.is_return_path(parsed.local)
        target = await self.db.read(outqueue.bounce_target, parsed.local, parsed.domain) if verp else None
        found = self.directory.resolve(parsed)
        if target is not None:
            return codes.RECIPIENT_OK, Recipient(address, (target[1],), None, bounce_entry=target[0])
        if verp:
            return codes.UNKNOWN_USER, None
        if found.kind == "foreign":
            return codes.RELAY_DENIED, None
        if found.kind == "unknown":
            return codes.UNKNOWN_USER, None
        return codes.RECIPIENT_OK, Recipient(address, found.mailbox_ids, found.tag)

    async def handle_DATA(self, server: MxSMTP, session: Session, envelope: MxEnvelope) -> str:
        data: bytes = envelope.original_content or b""
        if self.cfg.data_line_endings == "reject" and has_bare_line_endings(data):
            return codes.BAD_LINE_ENDINGS
        peer = session.peer or ("", 0)
        rcpts = envelope.mxd_rcpts
        tls = session.ssl is not None
        protocol = ("UTF8" if envelope.smtp_utf8 else "") + "ESMTP" + ("S" if tls else "")
        env = Envelope(
            mail_from="" if envelope.mail_from == "<>" else envelope.mail_from, rcpts=rcpts, data=data,
            remote_ip=str(peer[0]), helo=session.host_name or "", tls=tls, source="smtp",
        )
        env.received = received_header(helo=env.helo, remote_ip=env.remote_ip, hostname=self.cfg.hostname,
                                       protocol=protocol, rcpt=rcpts[0].address if len(rcpts) == 1 else None,
                                       queue_id=env.id, when=env.received_at)
        # The checks and the commit run to their end whatever becomes of the session (a message received
        # whole is kept unless refused, so the client's retry is recognised), and wake the pipeline.
        notes = session.notes if isinstance(session, MxSession) else []
        commit = asyncio.ensure_future(self._check_and_commit(env, notes))
        try:
            inbound_id, _ = await asyncio.shield(commit)
        except asyncio.CancelledError:          # the connection was reset while the commit ran
            commit.add_done_callback(lambda done: self._unacknowledged(done, env))
            raise
        except Refused as refusal:              # refused before the 250: nothing is stored
            return refusal.reply
        except Exception:
            log.exception("could not store a message from %s", env.remote_ip)
            return codes.TEMP_FAILURE
        if not server.connected:
            self._unacknowledged(commit, env)
        return codes.QUEUED.format(inbound_id)

    async def _check_and_commit(self, env: Envelope, notes: list[str]) -> tuple[str, bool]:
        """The defences' checks at DATA (`Refused` when they refuse), then the commit."""
        if self.gate is not None:
            # What is checked is what is stored: own Authentication-Results fields gone, line ends CRLF.
            env.data = normalize_line_endings(remove_auth_results(env.data, self.cfg.hostname))
            outcome = await self.gate.at_data(env.data, ip=env.remote_ip, helo=env.helo, mail_from=env.mail_from,
                                              rcpts=[r.address for r in env.rcpts], queue_id=env.id, notes=notes)
            if outcome.reply is not None:
                log.info("%s: refused a message from <%s>: %s", env.remote_ip, env.mail_from, outcome.reply)
                raise Refused(outcome.reply)
            env.checks, env.auth_results = outcome.checks, outcome.auth_results
        return await self._commit(env)

    async def _commit(self, env: Envelope) -> tuple[str, bool]:
        inbound_id, repeat = await ingest_once(self.db, env, self.cfg.seconds("duplicate_window"),
                                               authserv_id=self.cfg.hostname)   # RFC 8601 5: no forged verdict of ours
        if repeat:
            log.info("%s sent %s again (a retry after a lost reply?): answered 250, not stored twice",
                     env.remote_ip, inbound_id)
        else:
            self.on_ingest()
        return inbound_id, repeat

    def _unacknowledged(self, commit: "asyncio.Future[tuple[str, bool]]", env: Envelope) -> None:
        """The message is stored but its 250 could not be sent: the client will likely send it again
        (and `ingest_once` will know it). Logged, and recorded as an event for the operator."""
        if commit.cancelled() or commit.exception() is not None:
            return
        inbound_id, repeat = commit.result()
        log.warning("%s: stored %s but the connection was gone before its 250", env.remote_ip, inbound_id)

        def record() -> None:
            events.emit("inbound.unacknowledged", inbound_id=inbound_id, remote_ip=env.remote_ip,
                        mail_from=env.mail_from, rcpts=[r.address for r in env.rcpts], repeat=repeat)
        asyncio.ensure_future(self.db.write(record))


class MxServer(Listener):
    """Owns the listening socket and the live sessions."""

    def __init__(self, cfg: Config, handler: MxHandler, tls_context: ssl.SSLContext | None) -> None:
        super().__init__(cfg)
        self.handler, self.tls_context = handler, tls_context

    def _protocol(self) -> MxSMTP:
        return MxSMTP(self.handler, self, ident="mxd ESMTP", tls_context=self.tls_context)

    async def start_on(self, sock: "socket.socket") -> None:
        await self.listen(self._protocol, sock)
