"""SMTP submission for agents and scripts: port 587 (STARTTLS before AUTH, RFC 6409/3207) and 465 (implicit TLS, RFC 8314).

AUTH PLAIN or LOGIN with a mailbox address and a token holding `send` for it.
The envelope sender and every From address must be mailboxes the token may
send as (550 5.7.1 otherwise); the message then takes the one send path
(`mxd.sending.submit`: 250 once it and the preflight's decision are committed).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope as SmtpEnvelope, LoginPassword, Session

from mxd import address as addr
from mxd import smtpcodes as codes
from mxd import tokens
from mxd.config import Config
from mxd.db import Database, execute
from mxd.errors import MxdError
from mxd.sending import Outgoing, submit
from mxd.smtpserver.fast import FastSMTP

log = logging.getLogger("mxd.submission")

NOT_ALLOWED = "550 5.7.1 Sender address not allowed for this token"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"


class SubmissionHandler:
    def __init__(self, cfg: Config, db: Database, on_accepted: Any) -> None:
        # on_accepted wakes the pipeline, which signs, files and queues (and then wakes delivery)
        self.cfg, self.db, self.on_accepted = cfg, db, on_accepted

    # aiosmtpd calls the authenticator synchronously on the event loop; the lookup is one indexed row.
    def authenticator(self, server: SMTP, session: Session, envelope: SmtpEnvelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        username = auth_data.login.decode("utf-8", "replace")
        secret = auth_data.password.decode("utf-8", "replace")
        try:
            box = addr.parse(username)
        except addr.AddressError:
            return AuthResult(success=False, handled=False)
        self.db.db.connect(reuse_if_open=True)
        row = tokens.lookup(secret)
        if row is None:
            return AuthResult(success=False, handled=False)
        principal = tokens.principal(row)
        if not principal.has("send") or not self._may_send_as(principal, box.base_key):
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=principal)

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: SmtpEnvelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return responses[:-1] + ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    def _may_send_as(self, principal: object, text: str) -> bool:
        parsed = addr.try_parse(text)
        if not isinstance(principal, tokens.Principal) or parsed is None:
            return False
        self.db.db.connect(reuse_if_open=True)
        row = execute('SELECT "address", "org_id" FROM "mailbox" WHERE "address" = ?', (parsed.base_key,)).fetchone()
        return row is not None and principal.sees(row[0], row[1])

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str,
                          mail_options: list[str]) -> str:
        # The answer for one address holds for the session (its token is fixed after AUTH); the send
        # path's preflight checks the sender again in the transaction that queues the message.
        allowed = session.__dict__.setdefault("mxd_send_as", {})
        ok = allowed.get(address)
        if ok is None:
            ok = allowed[address] = self._may_send_as(session.auth_data, address)
        if not ok:
            return NOT_ALLOWED
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return codes.SENDER_OK

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.cfg.max_recipients_per_send:
            return codes.TOO_MANY_RECIPIENTS
        if addr.try_parse(address) is None:
            return codes.BAD_ADDRESS
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return codes.RECIPIENT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        peer = session.peer or ("", 0)
        out = Outgoing(mail_from=envelope.mail_from, recipients=list(envelope.rcpt_tos),
                       data=envelope.original_content or b"", source="submission", remote_ip=str(peer[0]))
        try:
            result = await submit(self.cfg, self.db, session.auth_data, out)
        except MxdError as exc:
            return f"{exc.smtp} ({exc.code}: {exc.message})"[:500]
        except Exception:
            log.exception("submission failed")
            return codes.TEMP_FAILURE
        self.on_accepted()
        return codes.QUEUED.format(result["id"])


class SubmissionServer:
    def __init__(self, cfg: Config, handler: SubmissionHandler, tls_context: ssl.SSLContext) -> None:
        self.cfg, self.handler, self.tls = cfg, handler, tls_context
        self.servers: list[asyncio.base_events.Server] = []

    def _protocol(self, implicit: bool) -> SMTP:
        return FastSMTP(self.handler, data_size_limit=self.cfg.max_message_size, enable_SMTPUTF8=True,
                    decode_data=False, hostname=self.cfg.hostname, ident="mxd ESMTP submission",
                    tls_context=None if implicit else self.tls, require_starttls=not implicit,
                    auth_required=True, auth_require_tls=not implicit,
                    authenticator=self.handler.authenticator, timeout=self.cfg.smtp_timeout,
                    loop=asyncio.get_running_loop())

    async def start_on(self, starttls_sock: socket.socket | None, implicit_sock: socket.socket | None) -> None:
        loop = asyncio.get_running_loop()
        if starttls_sock is not None:
            self.servers.append(await loop.create_server(lambda: self._protocol(False), sock=starttls_sock))
        if implicit_sock is not None:
            self.servers.append(await loop.create_server(lambda: self._protocol(True), sock=implicit_sock,
                                                         ssl=self.tls))

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
