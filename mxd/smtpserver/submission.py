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
import time
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope as SmtpEnvelope, LoginPassword, Session

from mxd import address as addr
from mxd.store import audit
from mxd import smtpcodes as codes
from mxd.store import tokens
from mxd.config import Config
from mxd.db import Database, execute
from mxd.errors import MxdError
from mxd.sending import Outgoing, submit
from mxd.smtpserver.base import Limits, ListenerSMTP, implicit_tls, stop_sessions

log = logging.getLogger("mxd.submission")

NOT_ALLOWED = "550 5.7.1 Sender address not allowed for this token"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
TOO_MANY_AUTH_FAILURES = "421 4.7.0 Too many failed authentications, closing connection"
AUTH_BLOCKED = "421 4.7.0 Too many failed authentications from your address, try again later"
AUTH_FAILURE_WINDOW = 600.0


class AuthFailures:
    """Failed AUTH attempts per client IP in the last AUTH_FAILURE_WINDOW seconds (a brute-force brake)."""

    def __init__(self, per_ip: int) -> None:
        self.per_ip = per_ip
        self.by_ip: dict[str, list[float]] = {}

    def _recent(self, ip: str, now: float) -> list[float]:
        times = [t for t in self.by_ip.get(ip, ()) if now - t < AUTH_FAILURE_WINDOW]
        if times:
            self.by_ip[ip] = times
        else:
            self.by_ip.pop(ip, None)
        return times

    def blocked(self, ip: str) -> bool:
        return len(self._recent(ip, time.monotonic())) >= self.per_ip

    def add(self, ip: str) -> None:
        now = time.monotonic()
        self.by_ip[ip] = self._recent(ip, now) + [now]
        if len(self.by_ip) > 100_000:           # bounded: forget the stalest addresses
            for stale in list(self.by_ip)[:10_000]:
                self._recent(stale, now + AUTH_FAILURE_WINDOW)


class SubmissionSMTP(ListenerSMTP):
    """A submission session: AUTH failures are limited per session and per client IP, and audited."""

    def __init__(self, handler: "SubmissionHandler", *, failures: AuthFailures, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.failures = failures
        self.auth_failures = 0
        self.auth_user = ""

    async def smtp_AUTH(self, arg: str) -> None:
        if self.failures.blocked(self.peer_ip):
            await self.push(AUTH_BLOCKED)
            if self.transport is not None:
                self.transport.close()
            return
        await super().smtp_AUTH(arg)

    async def push(self, status: Any) -> None:
        await super().push(status)
        if isinstance(status, str) and status.startswith("535"):
            self.auth_failures += 1
            self.failures.add(self.peer_ip)
            self.event_handler.audit_failure(self.peer_ip, self.auth_user)
            if self.auth_failures >= self.event_handler.cfg.max_auth_failures and self.transport is not None:
                await super().push(TOO_MANY_AUTH_FAILURES)
                self.transport.close()


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
        if isinstance(server, SubmissionSMTP):
            server.auth_user = username[:320]
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

    def audit_failure(self, remote_ip: str, username: str) -> None:
        """One audit row per failed AUTH (actor anonymous, result denied), written behind the session."""
        def record() -> None:
            audit.record("anonymous", "smtp.auth", target=username, result="denied",
                         detail={"remote_ip": remote_ip})
        task = asyncio.ensure_future(self.db.write(record))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

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
        # The accept runs to its end whatever becomes of the session, and wakes the pipeline itself.
        accept = asyncio.ensure_future(self._accept(session.auth_data, out))
        try:
            result = await asyncio.shield(accept)
        except asyncio.CancelledError:          # the connection was reset while the accept ran
            accept.add_done_callback(lambda done: done.cancelled() or done.exception() or log.warning(
                "%s: accepted %s but the connection was gone before its 250", out.remote_ip, done.result()["id"]))
            raise
        except MxdError as exc:
            return f"{exc.smtp} ({exc.code}: {exc.message})"[:500]
        except Exception:
            log.exception("submission failed")
            return codes.TEMP_FAILURE
        return codes.QUEUED.format(result["id"])

    async def _accept(self, principal: Any, out: Outgoing) -> dict:
        result = await submit(self.cfg, self.db, principal, out)
        self.on_accepted()
        return result


class SubmissionServer:
    """Ports 587 and 465, with the MX's connection limits (one budget for both ports) and shutdown."""

    def __init__(self, cfg: Config, handler: SubmissionHandler, tls_context: ssl.SSLContext) -> None:
        self.cfg, self.handler, self.tls = cfg, handler, tls_context
        self.servers: list[asyncio.base_events.Server] = []
        self.limits = Limits(cfg.max_connections, cfg.max_connections_per_ip)
        self.failures = AuthFailures(cfg.auth_failures_per_ip)
        self.live: set[ListenerSMTP] = set()

    def _protocol(self, implicit: bool) -> asyncio.Protocol:
        loop = asyncio.get_running_loop()
        session = SubmissionSMTP(
            self.handler, failures=self.failures, limits=self.limits, live=self.live,
            max_errors=self.cfg.max_errors, data_size_limit=self.cfg.max_message_size, enable_SMTPUTF8=True,
            decode_data=False, hostname=self.cfg.hostname, ident="mxd ESMTP submission",
            tls_context=None if implicit else self.tls, require_starttls=not implicit,
            auth_required=True, auth_require_tls=not implicit,
            authenticator=self.handler.authenticator, timeout=self.cfg.smtp_timeout, loop=loop)
        return implicit_tls(loop, session, self.tls) if implicit else session

    async def start_on(self, starttls_sock: socket.socket | None, implicit_sock: socket.socket | None) -> None:
        loop = asyncio.get_running_loop()
        if starttls_sock is not None:
            self.servers.append(await loop.create_server(lambda: self._protocol(False), sock=starttls_sock))
        if implicit_sock is not None:
            self.servers.append(await loop.create_server(lambda: self._protocol(True), sock=implicit_sock))

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let open transactions finish (up to grace seconds), close the rest."""
        for server in self.servers:
            server.close()
        await stop_sessions(self.live, grace)
