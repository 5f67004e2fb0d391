"""The SMTP client owns one outgoing SMTP session to one host (connect, EHLO, STARTTLS, AUTH, then messages with per-recipient results); it knows nothing of the queue.

Replies become data: every refusal carries its code, enhanced status code (RFC
3463) and text, and is permanent for 5xx, temporary for 4xx. A session that
breaks (refused, reset, timed out, malformed reply) raises DeliveryError with
permanent=False and the stage it broke in; the Connection is then closed.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
import os
import re
import socket
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Callable

import aiosmtplib
from aiosmtplib.errors import (
    SMTPAuthenticationError,
    SMTPConnectResponseError,
    SMTPException,
    SMTPHeloError,
    SMTPResponseException,
)

TLS_MODES = ("opportunistic", "required", "none", "implicit")
STAGES = ("connect", "ehlo", "starttls", "auth", "mail", "rcpt", "data")

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_BROKEN = (SMTPException, OSError, asyncio.TimeoutError, EOFError)   # what a broken session raises


@dataclass(eq=False)
class DeliveryError(Exception):
    """A session-level failure: nothing more can be sent on this connection."""
    permanent: bool
    code: int | None = None
    enhanced: str | None = None
    text: str = ""
    host: str | None = None
    stage: str = "connect"   # one of STAGES; NoRoute/NullMX in mxd.delivery.mxhosts use "dns"
    tls_result: str = ""     # RFC 8460 4.3 result type when TLS failed a policy (mxd.delivery.tlspolicy)

    def __str__(self) -> str:
        reply = " ".join(str(x) for x in (self.code, self.enhanced) if x)
        kind = "permanent" if self.permanent else "temporary"
        return f"{self.stage} {self.host or '-'}: {reply + ' ' if reply else ''}{self.text} ({kind})"


@dataclass
class RcptResult:
    recipient: str
    ok: bool
    code: int
    enhanced: str | None
    text: str
    permanent: bool          # a refusal that will not change on retry (5xx); False when ok


def split_reply(code: int, message: str) -> tuple[str | None, str]:
    """(enhanced status code, text without it) of a reply; lines of a multi-line reply are joined by spaces.

    The enhanced code counts only when its class matches the reply's first digit
    (RFC 3463 2, RFC 2034 4).
    """
    enhanced: str | None = None
    texts = []
    for line in message.split("\n"):
        line = line.strip()
        m = _ENHANCED.match(line)
        if m and str(code)[:1] == m.group(1):
            enhanced = enhanced or m.group(0)
            line = line[m.end():].strip()
        if line:
            texts.append(line)
    return enhanced, " ".join(texts)


@functools.lru_cache(maxsize=2)
def _tls_context(verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not verify:
        # RFC 7435 opportunistic security: encrypt without authenticating the server
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _result_type(verify_code: int | None) -> str:
    """RFC 8460 4.3's result type for a refused handshake (OpenSSL's X509_V_ERR_* code when a certificate was)."""
    if verify_code == 10:           # X509_V_ERR_CERT_HAS_EXPIRED
        return "certificate-expired"
    if verify_code == 62:           # X509_V_ERR_HOSTNAME_MISMATCH
        return "certificate-host-mismatch"
    if verify_code is not None:
        return "certificate-not-trusted"
    return "validation-failure"


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


async def _tcp(ip: str, port: int, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (ip, port)), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


def _describe(exc: BaseException) -> str:
    """A short reason for a broken connection: "Connection refused", "timed out", ..."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve host name: {cause.strerror}"
        if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
            return os.strerror(cause.errno)
        if isinstance(cause, TimeoutError):
            return "timed out"
        cause = cause.__cause__
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


class _TLSFailed(Exception):
    """STARTTLS was answered 220 but no working TLS session came of it."""

    def __init__(self, text: str, verify_code: int | None = None) -> None:
        super().__init__(text)
        self.verify_code = verify_code     # OpenSSL's X509_V_ERR_* when the certificate was refused


def peer_chain(smtp: aiosmtplib.SMTP) -> list[bytes]:
    """The certificates the server presented (DER, leaf first); [] without TLS."""
    transport = smtp.transport
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    if sslobj is None:
        return []
    inner = getattr(sslobj, "_sslobj", None)
    getter = getattr(inner, "get_unverified_chain", None)     # public from Python 3.13
    if getter is not None:
        chain = getter() or []
        return [c.public_bytes(ssl._ssl.ENCODING_DER) if hasattr(c, "public_bytes") else bytes(c) for c in chain]
    leaf = sslobj.getpeercert(binary_form=True)
    return [leaf] if leaf else []


class _Pipe(asyncio.Protocol):
    """The message phase of a session whose server offers PIPELINING (RFC 2920): replies are parsed
    as they arrive and queued, so that a group of commands is written at once and its replies read
    in order. It takes over the session's transport (plain or TLS) from aiosmtplib after EHLO."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._buf = bytearray()
        self._replies: collections.deque[tuple[int, str]] = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._want = 0
        self._error: BaseException | None = None

    @property
    def is_open(self) -> bool:
        return self._error is None and not self.transport.is_closing()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        start = reply_start = 0
        lines: list[bytes] = []
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buf[start:end]).rstrip(b"\r")
            if not lines:
                reply_start = start
            start = end + 1
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                self._fail(EOFError(f"malformed reply line {line[:80]!r}"))
                return
            lines.append(line)
            if line[3:4] != b"-":                # the last line of a reply
                text = "\n".join(x[4:].decode("utf-8", "surrogateescape").strip() for x in lines)
                self._replies.append((int(line[:3]), text))
                lines = []
        del buf[:reply_start if lines else start]   # a multi-line reply still coming stays whole
        if len(buf) > 65536:
            self._fail(EOFError("reply too long"))
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done() and (self._error is not None or len(self._replies) >= self._want):
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self.transport.close()
        self._wake()

    def eof_received(self) -> bool:
        self._fail(EOFError("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or EOFError("the connection was closed"))

    async def replies(self, count: int, timeout: float) -> list[tuple[int, str]]:
        """The next `count` replies, in order; raises when the session breaks or times out."""
        if len(self._replies) < count and self._error is None:
            loop = asyncio.get_running_loop()
            self._want = count
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout, self._timed_out, waiter)   # lighter than asyncio.wait_for
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        if len(self._replies) < count:
            raise self._error or EOFError("the connection was closed")
        return [self._replies.popleft() for _ in range(count)]

    def discard_unsolicited(self) -> None:
        """Forget replies that no command asked for (a server's parting 421, a stray line), so they
        cannot be taken for the answers to the next group."""
        self._replies.clear()

    @staticmethod
    def _timed_out(waiter: asyncio.Future) -> None:
        if not waiter.done():
            waiter.set_exception(asyncio.TimeoutError())

    def write(self, data: bytes) -> None:
        if not self.is_open:
            raise self._error or EOFError("the connection was closed")
        self.transport.write(data)


_BAD_PATH = re.compile(r"[\x00-\x20<>\x7f]")
_BARE_EOL = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")


def _wire_body(message: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends, a final CRLF, leading dots doubled
    (RFC 5321 4.5.2), then the terminating ".CRLF"."""
    pairs = message.count(b"\r\n")
    if message.count(b"\n") != pairs or message.count(b"\r") != pairs:     # a bare CR or LF somewhere
        message = _BARE_EOL.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b".") or b"\n." in message:
        message = _LEADING_DOT.sub(b"..", message)
    return message + b".\r\n"


class Connection:
    """One SMTP session to one host that carries several messages, one at a time."""

    def __init__(self, host: str, port: int, *, helo_name: str, ip_for_connect: str | None, tls: str,
                 tls_verify: bool, timeout: float, data_timeout: float, username: str | None,
                 password: str | None, tls_context: ssl.SSLContext | None,
                 check_tls: "Callable[[list[bytes]], object | None] | None" = None) -> None:
        self.host, self.port, self.helo_name = host, port, helo_name
        self.ip = ip_for_connect
        self.tls_mode, self.tls_verify = tls, tls_verify
        self.timeout, self.data_timeout = timeout, data_timeout
        self._username, self._password = username, password
        self._ctx = tls_context or _tls_context(tls_verify)
        self._smtp: aiosmtplib.SMTP | None = None
        self._pipe: _Pipe | None = None          # the message phase when the server offers PIPELINING
        self._tls = False
        self._enforce_check = True
        self._dirty = False                 # a transaction was begun and not completed: RSET first
        self._lock = asyncio.Lock()
        self.server_banner = ""
        self.last_reply = ""
        self.tls_fallback = False           # STARTTLS failed and the session was redone in plaintext
        self._check_tls = check_tls          # a policy's check of the presented chain (DANE)
        self.tls_failure: object | None = None   # what check_tls said of the chain, when anything
        self.tls_version = ""
        self.messages_sent = 0

    @classmethod
    async def open(cls, host: str, port: int, *, helo_name: str, ip_for_connect: str | None = None,
                   tls: str = "opportunistic", tls_verify: bool = False, timeout: float = 60,
                   username: str | None = None, password: str | None = None,
                   data_timeout: float = 600, tls_context: ssl.SSLContext | None = None,
                   check_tls: "Callable[[list[bytes]], object | None] | None" = None,
                   enforce_check: bool = True) -> "Connection":
        """Connect to host (at ip_for_connect when given, else host), greet, secure and authenticate.

        tls: "opportunistic" uses STARTTLS when offered and, if the handshake fails,
        reconnects once without TLS (Postfix smtp_tls_security_level=may);
        "required" fails instead; "none" never uses TLS; "implicit" is TLS from the
        first byte (RFC 8314, port 465). `host` is the TLS server name; certificates
        are checked only with tls_verify (or a tls_context that checks them).
        check_tls is called with the presented chain (DER, leaf first) after the
        handshake; what it returns (a failure, or None) is kept in `tls_failure`, and
        with enforce_check a failure ends the session (stage "starttls", never a
        fallback to plaintext). Its `text` and `result_type` are used when present.
        data_timeout bounds the wait for the reply to the end of data
        (RFC 5321 4.5.3.2.6 suggests 10 minutes), timeout every other step.
        """
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {TLS_MODES}")
        conn = cls(host, port, helo_name=helo_name, ip_for_connect=ip_for_connect, tls=tls,
                   tls_verify=tls_verify, timeout=timeout, data_timeout=data_timeout,
                   username=username, password=password, tls_context=tls_context, check_tls=check_tls)
        conn._enforce_check = enforce_check
        try:
            await conn._start(starttls=tls in ("opportunistic", "required"))
        except _TLSFailed as exc:
            conn._drop()
            if tls == "required":
                raise DeliveryError(False, None, None, f"TLS handshake failed: {exc}", host, "starttls",
                                    tls_result=_result_type(exc.verify_code)) from None
            conn.tls_fallback = True
            await conn._start(starttls=False)
        smtp = conn._smtp
        if smtp is not None and smtp.supports_extension("pipelining") and smtp.protocol is not None:
            transport = smtp.protocol.transport
            if transport is not None and not transport.is_closing():
                conn._pipe = _Pipe(transport)
                transport.set_protocol(conn._pipe)
        return conn

    # --- session set-up ---
    async def _start(self, *, starttls: bool) -> None:
        addr = self.ip or self.host
        implicit = self.tls_mode == "implicit"
        try:
            kwargs = dict(local_hostname=self.helo_name, timeout=self.timeout, start_tls=False,
                          use_tls=implicit, tls_context=self._ctx if implicit else None)
            if _is_ip(addr):   # our own socket, so that `host` stays the TLS server name
                smtp = aiosmtplib.SMTP(hostname=self.host, sock=await _tcp(addr, self.port, self.timeout), **kwargs)
            else:
                smtp = aiosmtplib.SMTP(hostname=addr, port=self.port, **kwargs)
            banner = await smtp.connect()
        except SMTPConnectResponseError as exc:
            # a 5xx greeting is skipped like an unreachable host (Postfix smtp_skip_5xx_greeting=yes)
            enhanced, text = split_reply(exc.code, exc.message)
            self.server_banner = self.last_reply = f"{exc.code} {exc.message}"
            raise DeliveryError(False, exc.code, enhanced, text, self.host, "connect") from None
        except _BROKEN as exc:
            raise DeliveryError(False, None, None, f"{addr} port {self.port}: {_describe(exc)}",
                                self.host, "connect") from None
        self._smtp = smtp
        self._tls = implicit
        self.server_banner = self.last_reply = f"{banner.code} {banner.message}"
        try:
            await self._greet()
            if starttls and smtp.supports_extension("starttls"):
                await self._starttls()
            elif self.tls_mode == "required":
                raise DeliveryError(False, None, None, "STARTTLS not offered", self.host, "starttls",
                                    tls_result="starttls-not-supported")
            if self._username is not None:
                await self._auth()
        except BaseException:
            self._drop()
            raise

    async def _greet(self) -> None:
        smtp = self._smtp
        assert smtp is not None
        try:
            self._note(await smtp.ehlo())
        except SMTPHeloError as exc:
            self._note_exc(exc)
            if exc.code < 500 or not smtp.is_connected:
                raise self._refused(exc, "ehlo") from None
            try:   # RFC 5321 4.1.1.1: a server that does not know EHLO still knows HELO
                self._note(await smtp.helo())
            except SMTPResponseException as exc2:
                raise self._refused(exc2, "ehlo") from None
            except _BROKEN as exc2:
                raise self._lost(exc2, "ehlo") from None
        except _BROKEN as exc:
            raise self._lost(exc, "ehlo") from None

    async def _starttls(self) -> None:
        smtp = self._smtp
        assert smtp is not None
        try:
            self._note(await smtp.starttls(server_hostname=self.host, tls_context=self._ctx, timeout=self.timeout))
        except SMTPResponseException as exc:
            self._note_exc(exc)
            if exc.code < 200:
                raise _TLSFailed(exc.message) from None
            # RFC 3207 4: after a refused STARTTLS (454) the client decides; opportunistic goes on in plaintext
            if self.tls_mode == "required":
                error = self._refused(exc, "starttls", permanent=False)
                error.tls_result = "starttls-not-supported"
                raise error from None
            return
        except ssl.SSLCertVerificationError as exc:
            raise _TLSFailed(f"certificate refused: {exc.verify_message}", exc.verify_code) from None
        except (ssl.SSLError, *_BROKEN) as exc:
            raise _TLSFailed(f"{type(exc).__name__}: {exc}") from None
        self._tls = True
        sslobj = smtp.transport.get_extra_info("ssl_object") if smtp.transport is not None else None
        self.tls_version = (sslobj.version() or "") if sslobj is not None else ""
        if self._check_tls is not None:
            failure = self._check_tls(peer_chain(smtp))
            self.tls_failure = failure
            if failure is not None and self._enforce_check:
                text = str(getattr(failure, "text", failure))
                raise DeliveryError(False, None, None, f"TLS policy not met: {text}", self.host, "starttls",
                                    tls_result=str(getattr(failure, "result_type", "validation-failure")))
        try:
            self._note(await smtp.ehlo())   # RFC 3207 4.2: forget what was learnt before TLS, greet again
        except (ssl.SSLError, *_BROKEN) as exc:
            # a server that fails the session right after the handshake (e.g. a refused client certificate)
            raise _TLSFailed(f"after handshake: {type(exc).__name__}: {exc}") from None

    async def _auth(self) -> None:
        smtp = self._smtp
        assert smtp is not None
        if not self._tls and self.tls_mode != "none":
            raise DeliveryError(False, None, None, "not sending credentials without TLS", self.host, "auth")
        try:
            self._note(await smtp.login(self._username or "", self._password or ""))
        except SMTPAuthenticationError as exc:
            # a refused login defers rather than bounces (Postfix smtp_sasl_auth_soft_bounce=yes)
            self._note_exc(exc)
            raise self._refused(exc, "auth", permanent=False) from None
        except SMTPResponseException as exc:
            self._note_exc(exc)
            raise self._refused(exc, "auth", permanent=False) from None
        except _BROKEN as exc:
            raise DeliveryError(False, None, None, f"{type(exc).__name__}: {exc}", self.host, "auth") from None

    # --- state ---
    @property
    def tls_active(self) -> bool:
        return self._tls and self.is_open

    @property
    def extensions(self) -> dict[str, str]:
        """ESMTP keywords (lower case) and their parameters from the last EHLO reply."""
        return dict(self._smtp.esmtp_extensions) if self._smtp is not None else {}

    @property
    def is_open(self) -> bool:
        if self._pipe is not None:
            return self._pipe.is_open
        return self._smtp is not None and self._smtp.is_connected

    @property
    def pipelining(self) -> bool:
        """True while messages go out in RFC 2920 command groups."""
        return self._pipe is not None

    def _note(self, resp: aiosmtplib.SMTPResponse) -> None:
        self.last_reply = f"{resp.code} {resp.message}".replace("\n", " / ")

    def _note_exc(self, exc: SMTPResponseException) -> None:
        self.last_reply = f"{exc.code} {exc.message}".replace("\n", " / ")

    def _refused(self, exc: SMTPResponseException, stage: str, permanent: bool | None = None) -> DeliveryError:
        if exc.code < 200:                  # aiosmtplib's -1: the reply could not be read
            return self._lost(exc, stage)
        enhanced, text = split_reply(exc.code, exc.message)
        if permanent is None:
            permanent = 500 <= exc.code < 600
        return DeliveryError(permanent, exc.code, enhanced, text, self.host, stage)

    def _lost(self, exc: BaseException, stage: str) -> DeliveryError:
        self._drop()
        return DeliveryError(False, None, None, _describe(exc), self.host, stage)

    def _drop(self) -> None:
        if self._pipe is not None:
            self._pipe.transport.close()
            self._pipe = None
        if self._smtp is not None:
            self._smtp.close()
        self._smtp = None
        self._tls = False

    # --- messages ---
    async def send(self, mail_from: str, recipients: list[str], message: bytes) -> list[RcptResult]:
        """Send one message; one result per recipient, in order.

        A refused MAIL FROM or DATA is every (accepted) recipient's result; an
        empty mail_from sends the null reverse-path <> (bounces). Raises
        DeliveryError when the session breaks (nothing can be said per recipient).
        """
        async with self._lock:
            smtp = self._smtp
            if smtp is None or not self.is_open:
                raise DeliveryError(False, None, None, "connection is closed", self.host, "mail")
            if self._dirty and self._pipe is not None:
                await self._pipe_rset()
            elif self._dirty:
                try:   # RFC 5321 4.1.1.5: abort the unfinished transaction before the next one
                    self._note(await smtp.rset())
                except SMTPResponseException as exc:
                    self._note_exc(exc)
                    raise self._lost(exc, "mail") from None
                except _BROKEN as exc:
                    raise self._lost(exc, "mail") from None
                self._dirty = False

            options: list[str] = []
            head = re.split(rb"\r?\n\r?\n", message, maxsplit=1)[0]
            ascii_envelope = mail_from.isascii() and all(r.isascii() for r in recipients)
            if not ascii_envelope or not head.isascii():
                if not smtp.supports_extension("smtputf8"):
                    # RFC 6531 3.2: without SMTPUTF8 at the server the message must not be sent
                    if not ascii_envelope:
                        return self._all(recipients, 553, "5.6.7", "non-ASCII address and the server does not offer SMTPUTF8")
                    return self._all(recipients, 554, "5.6.9", "UTF-8 header fields and the server does not offer SMTPUTF8")
                options.append("SMTPUTF8")                       # RFC 6531 3.4
            if not message.isascii() and smtp.supports_extension("8bitmime"):
                # RFC 6152 2; without 8BITMIME an 8-bit body still goes as is (no downgrade that
                # would break DKIM), as most MTAs do; compose() writes 7-bit bodies anyway
                options.append("BODY=8BITMIME")
            if smtp.supports_extension("size"):
                limit = smtp.esmtp_extensions.get("size", "").strip()
                if limit.isdigit() and 0 < int(limit) < len(message):
                    # RFC 1870 6: do not send what the server said it will not take
                    return self._all(recipients, 552, "5.3.4", f"message size {len(message)} exceeds the server's limit {limit}")
                options.append(f"SIZE={len(message)}")          # RFC 1870 3
            encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
            if self._pipe is not None:
                return await self._send_pipelined(mail_from, recipients, message, options, encoding)

            self._dirty = True
            try:
                self._note(await smtp.mail(mail_from, options=options, encoding=encoding))
            except SMTPResponseException as exc:
                return self._refused_all(exc, recipients, "mail")
            except _BROKEN as exc:
                raise self._lost(exc, "mail") from None

            results: list[RcptResult] = []
            accepted: list[int] = []
            for i, rcpt in enumerate(recipients):
                try:
                    resp = await smtp.rcpt(rcpt, encoding=encoding)
                except SMTPResponseException as exc:
                    if exc.code == 421:      # the whole transaction is gone, accepted recipients too
                        return self._refused_all(exc, recipients, "rcpt")
                    if exc.code < 200:
                        raise self._lost(exc, "rcpt") from None
                    self._note_exc(exc)
                    results.append(self._result(rcpt, exc.code, exc.message))
                    continue
                except _BROKEN as exc:
                    raise self._lost(exc, "rcpt") from None
                self._note(resp)
                results.append(self._result(rcpt, resp.code, resp.message))
                accepted.append(i)
            if not accepted:
                return results   # RFC 5321 3.3: no DATA without an accepted recipient; RSET comes next time

            try:
                resp = await smtp.data(message, timeout=self.data_timeout)
            except SMTPResponseException as exc:
                failed = self._refused_all(exc, [recipients[i] for i in accepted], "data")
                for i, res in zip(accepted, failed):
                    results[i] = res
                return results
            except _BROKEN as exc:
                raise self._lost(exc, "data") from None
            self._note(resp)
            self._dirty = False
            self.messages_sent += 1
            for i in accepted:
                results[i] = self._result(recipients[i], resp.code, resp.message)
            return results

    async def _pipe_rset(self) -> None:
        pipe = self._pipe
        assert pipe is not None
        pipe.discard_unsolicited()
        try:   # RFC 5321 4.1.1.5: abort the unfinished transaction before the next one
            pipe.write(b"RSET\r\n")
            [(code, text)] = await pipe.replies(1, self.timeout)
        except _BROKEN as exc:
            raise self._lost(exc, "mail") from None
        self.last_reply = f"{code} {text}".replace("\n", " / ")
        if not 200 <= code < 300:
            raise self._lost(EOFError(f"RSET answered {code} {text}"), "mail")
        self._dirty = False

    async def _send_pipelined(self, mail_from: str, recipients: list[str], message: bytes, options: list[str],
                              encoding: str) -> list[RcptResult]:
        """RFC 2920: MAIL, every RCPT and DATA in one group, their replies read in order; after a 354
        the message, then its reply. Two round trips per message instead of 3 + recipients."""
        pipe = self._pipe
        assert pipe is not None
        paths = [mail_from, *recipients]
        if any(_BAD_PATH.search(p) for p in paths):
            return self._all(recipients, 501, "5.1.3", "an address with a control character, a space or <>")
        group = [f"MAIL FROM:<{mail_from}>{''.join(' ' + o for o in options)}\r\n"]
        group += [f"RCPT TO:<{r}>\r\n" for r in recipients]
        group.append("DATA\r\n")
        try:
            wire = "".join(group).encode(encoding)
        except UnicodeEncodeError:
            return self._all(recipients, 553, "5.6.7", "non-ASCII address and the server does not offer SMTPUTF8")
        self._dirty = True
        stage = "mail"
        pipe.discard_unsolicited()
        try:
            pipe.write(wire)
            replies = await pipe.replies(len(group), self.timeout)
            (mail_code, mail_text), rcpt_replies, (data_code, data_text) = replies[0], replies[1:-1], replies[-1]
            self._note_pipe(mail_code, mail_text)
            if data_code == 354:
                # a server that took DATA although MAIL or every RCPT failed gets an empty message,
                # which it must refuse for want of a valid transaction (RFC 2920 3.1)
                ok_rcpts = [i for i, (code, _) in enumerate(rcpt_replies) if 200 <= code < 300]
                if not 200 <= mail_code < 300 or not ok_rcpts:
                    pipe.write(b".\r\n")
                    await pipe.replies(1, self.timeout)
                    data_code, data_text = 554, "5.5.1 no valid recipients"
            if not 200 <= mail_code < 300:
                if mail_code == 421:
                    self._drop()     # RFC 5321 3.8: 421 means the server is closing the channel
                return [self._result(r, mail_code, mail_text) for r in recipients]
            stage = "rcpt"
            results: list[RcptResult] = []
            accepted: list[int] = []
            for i, (rcpt, (code, text)) in enumerate(zip(recipients, rcpt_replies)):
                if code == 421:      # the whole transaction is gone, accepted recipients too
                    self._note_pipe(code, text)
                    self._drop()
                    return [self._result(r, code, text) for r in recipients]
                self._note_pipe(code, text)
                results.append(self._result(rcpt, code, text))
                if 200 <= code < 300:
                    accepted.append(i)
            if not accepted:
                return results   # RFC 5321 3.3: no DATA without an accepted recipient; RSET comes next time
            stage = "data"
            if data_code != 354:
                self._note_pipe(data_code, data_text)
                if data_code == 421:
                    self._drop()
                for i in accepted:
                    results[i] = self._result(recipients[i], data_code, data_text)
                return results
            pipe.write(_wire_body(message))
            [(code, text)] = await pipe.replies(1, self.data_timeout)
        except _BROKEN as exc:
            raise self._lost(exc, stage) from None
        self._note_pipe(code, text)
        if code == 421:
            self._drop()
        else:
            self._dirty = False
        if 200 <= code < 300:
            self.messages_sent += 1
        for i in accepted:
            results[i] = self._result(recipients[i], code, text)
        return results

    def _note_pipe(self, code: int, text: str) -> None:
        self.last_reply = f"{code} {text}".replace("\n", " / ")

    def _result(self, rcpt: str, code: int, message: str) -> RcptResult:
        enhanced, text = split_reply(code, message)
        ok = 200 <= code < 300
        return RcptResult(rcpt, ok, code, enhanced, text, permanent=not ok and 500 <= code < 600)

    def _refused_all(self, exc: SMTPResponseException, recipients: list[str], stage: str) -> list[RcptResult]:
        if exc.code < 200:
            raise self._lost(exc, stage)
        self._note_exc(exc)
        if exc.code == 421:
            self._drop()     # RFC 5321 3.8: 421 means the server is closing the channel
        return [self._result(r, exc.code, exc.message) for r in recipients]

    def _all(self, recipients: list[str], code: int, enhanced: str, text: str) -> list[RcptResult]:
        return [RcptResult(r, False, code, enhanced, text, permanent=code >= 500) for r in recipients]

    async def close(self) -> None:
        """QUIT (RFC 5321 4.1.1.10) and close; never raises."""
        smtp, pipe = self._smtp, self._pipe
        if pipe is not None and pipe.is_open:
            try:
                pipe.write(b"QUIT\r\n")
                await pipe.replies(1, min(self.timeout, 10))
            except (*_BROKEN, ssl.SSLError):
                pass
        elif smtp is not None and smtp.is_connected:
            try:
                await smtp.quit(timeout=min(self.timeout, 10))
            except (*_BROKEN, ssl.SSLError):
                pass
        self._drop()

    async def __aenter__(self) -> "Connection":
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
