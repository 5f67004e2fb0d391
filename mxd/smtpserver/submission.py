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
from typing import Any, NamedTuple

from aiosmtpd.smtp import AuthResult, LoginPassword, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from mxd import address as addr
from mxd import policy
from mxd import smtpcodes as codes
from mxd.config import Config
from mxd.db import Database, execute
from mxd.errors import MxdError
from mxd.sending import Outgoing, submit
from mxd.smtpserver.base import Listener, ListenerSMTP, implicit_tls
from mxd.store import audit, tokens

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


class SubmissionSession(Session):
    """A submission session: aiosmtpd's, and which sender addresses its token may use (asked once each)."""

    send_as: dict[str, bool]
    rules: dict[str, tuple[str, dict] | None]      # the sender mailbox's outbound allow-list (policy.sender_rule)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.send_as = {}
        self.rules = {}


class Credentials(NamedTuple):
    """A login and password as aiosmtpd's AUTH PLAIN or LOGIN decoded them, not yet checked."""
    mechanism: str
    auth_data: LoginPassword


class SubmissionSMTP(ListenerSMTP):
    """A submission session: AUTH failures are limited per session and per client IP, and audited.

    AUTH PLAIN and LOGIN are aiosmtpd's exchanges (challenges, base64, every 501); only the check of the
    credentials differs: aiosmtpd calls its authenticator synchronously, on the event loop, and the check
    reads the store, so here it is awaited (`SubmissionHandler.authenticate`, on the read pool).
    """

    session_class = SubmissionSession
    event_handler: "SubmissionHandler"

    def __init__(self, handler: "SubmissionHandler", listener: "SubmissionServer", **kwargs: Any) -> None:
        super().__init__(handler, listener, **kwargs)
        self.failures = listener.failures
        self.auth_failures = 0
        self.auth_user = ""

    def _authenticate(self, mechanism: str, auth_data: Any) -> Any:
        # Called by aiosmtpd's auth_PLAIN/auth_LOGIN once the exchange is decoded: the credentials go back
        # to auth_PLAIN/auth_LOGIN below, which check them without blocking the loop.
        return Credentials(mechanism, auth_data)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._checked(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._checked(await super().auth_LOGIN(_, args))

    async def _checked(self, result: Any) -> AuthResult:
        if isinstance(result, Credentials):
            return await self.event_handler.authenticate(self, result.auth_data)
        return result                                   # the exchange failed (aiosmtpd answered it)

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

    async def authenticate(self, server: SubmissionSMTP, credentials: LoginPassword) -> AuthResult:
        """A mailbox address and a token holding `send` for it; the token is looked up on the read pool."""
        username = credentials.login.decode("utf-8", "replace")
        secret = credentials.password.decode("utf-8", "replace")
        server.auth_user = username[:320]
        try:
            box = addr.parse(username)
        except addr.AddressError:
            return AuthResult(success=False, handled=False)
        principal = await self.db.read(_sender, secret, box.base_key)
        if principal is None:
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=principal)

    def audit_failure(self, remote_ip: str, username: str) -> None:
        """One audit row per failed AUTH (actor anonymous, result denied), written behind the session."""
        def record() -> None:
            audit.record("anonymous", "smtp.auth", target=username, result="denied",
                         detail={"remote_ip": remote_ip})
        task = asyncio.ensure_future(self.db.write(record))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def handle_MAIL(self, server: SubmissionSMTP, session: SubmissionSession, envelope: SmtpEnvelope,
                          address: str, mail_options: list[str]) -> str:
        # The answer for one address holds for the session (its token is fixed after AUTH); the send
        # path's preflight checks the sender again in the transaction that queues the message.
        ok = session.send_as.get(address)
        if ok is None:
            ok, session.rules[address] = await self.db.read(_sender_checks, session.auth_data, address)
            session.send_as[address] = ok
        if not ok:
            return NOT_ALLOWED
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return codes.SENDER_OK

    async def handle_RCPT(self, server: SubmissionSMTP, session: SubmissionSession, envelope: SmtpEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.cfg.max_recipients_per_send:
            return codes.TOO_MANY_RECIPIENTS
        if addr.try_parse(address) is None:
            return codes.BAD_ADDRESS
        refusal = policy.rcpt_refusal(session.rules.get(envelope.mail_from or ""), address)
        if refusal is not None:                 # the sending mailbox's outbound policy (the preflight's rule)
            return f"{refusal.smtp} ({refusal.code}: {refusal.message})"[:500]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return codes.RECIPIENT_OK

    async def handle_DATA(self, server: SubmissionSMTP, session: SubmissionSession, envelope: SmtpEnvelope) -> str:
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


def _sender(secret: str, address: str) -> tokens.Principal | None:
    """The principal of a live token that holds `send` and may send as address, or None (a store read)."""
    row = tokens.lookup(secret)
    if row is None:
        return None
    principal = tokens.principal(row)
    return principal if principal.has("send") and may_send_as(principal, address) else None


def _sender_checks(principal: object, address: str) -> tuple[bool, tuple[str, dict] | None]:
    """At MAIL, in one read: may the session's token send as `address`, and the mailbox's outbound allow-list
    (checked at each RCPT without the store; the preflight at DATA checks both again)."""
    ok = may_send_as(principal, address)
    return ok, policy.sender_rule(address) if ok else None


def may_send_as(principal: object, text: str) -> bool:
    """Whether principal sees the mailbox text names (a store read)."""
    parsed = addr.try_parse(text)
    if not isinstance(principal, tokens.Principal) or parsed is None:
        return False
    row = execute('SELECT "address", "org_id" FROM "mailbox" WHERE "address" = ?', (parsed.base_key,)).fetchone()
    return row is not None and principal.sees(row[0], row[1])


class SubmissionServer(Listener):
    """Ports 587 and 465, with the MX's connection limits (one budget for both ports) and shutdown."""

    def __init__(self, cfg: Config, handler: SubmissionHandler, tls_context: ssl.SSLContext) -> None:
        super().__init__(cfg)
        self.handler, self.tls = handler, tls_context
        self.failures = AuthFailures(cfg.auth_failures_per_ip)

    def _protocol(self, implicit: bool) -> asyncio.Protocol:
        session = SubmissionSMTP(
            self.handler, self, ident="mxd ESMTP submission", tls_context=None if implicit else self.tls,
            require_starttls=not implicit, auth_required=True, auth_require_tls=not implicit)
        return implicit_tls(session.loop, session, self.tls) if implicit else session

    async def start_on(self, starttls_sock: socket.socket | None, implicit_sock: socket.socket | None) -> None:
        if starttls_sock is not None:
            await self.listen(lambda: self._protocol(False), starttls_sock)
        if implicit_sock is not None:
            await self.listen(lambda: self._protocol(True), implicit_sock)
