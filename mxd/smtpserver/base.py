"""What the MX and submission listeners share: connection limits (in all and per client IP), the error
budget, the EHLO reply and its extensions, the envelope as a declared type, graceful 421 shutdown, and a
client's half-close treated as the end of its input, not the end of the session.

RFC 5321 lets a client pipeline QUIT behind the final dot of DATA and stop sending (Exim does, then
shuts down its side of the TCP connection, and over TLS sends close_notify first). The server still
owes a reply to every command it received: the 250 once the message is durable, then the 221. So an
EOF only ends reading; the session answers what it has read, in order, and then closes. A connection
that is really gone (reset, or a failing write) still ends the session at once.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from asyncio import sslproto
from typing import Any, Callable

from aiosmtpd.smtp import Envelope, Session, TLSSetupException

from mxd import smtpcodes as codes
from mxd.config import Config
from mxd.smtpserver.fast import FastSMTP

log = logging.getLogger("mxd.smtp")


class HalfCloseSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS layer, with the peer's half-close passed on as the end of input only.

    asyncio shuts a TLS connection down as soon as the peer sends close_notify or a TCP FIN, dropping
    every reply the application has not written yet. Here either one ends the application's input
    (eof_received), and the shutdown starts when the application closes the transport (TLS 1.3 and
    TCP both allow writing after the peer's half-close).
    """

    _peer_done = False

    def eof_received(self) -> bool | None:            # the TCP FIN
        if self._state != sslproto.SSLProtocolState.WRAPPED:
            return super().eof_received()
        self._eof_received = True                      # no close_notify exchange left to wait for at shutdown
        if not self._peer_done:
            self._do_read()                            # what is still buffered (it may end with close_notify)
        if not self._peer_done:
            self._call_eof_received()
        return True

    def _call_eof_received(self) -> None:             # close_notify, or the FIN above
        self._peer_done = True
        super()._call_eof_received()

    def _start_shutdown(self) -> None:
        app = self._app_transport
        if self._peer_done and app is not None and not app._closed:
            return                                      # the application closes once it has answered
        super()._start_shutdown()


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


class ListenerSMTP(FastSMTP):
    """aiosmtpd's SMTP with connection limits, an error budget, one EHLO reply, typed session and envelope
    state, graceful shutdown and half-close.

    A listener's state lives in the classes aiosmtpd creates for it (`_create_session` and
    `_create_envelope` return `session_class()` and `envelope_class()`): a subclass declares what it keeps
    per session or per transaction there, and aiosmtpd resets it at RSET, EHLO and after DATA as usual.
    """

    session_class: type[Session] = Session
    envelope_class: type[Envelope] = Envelope
    offers_auth = True                                # False: AUTH is left out of the EHLO reply

    def __init__(self, handler: Any, listener: "Listener", **kwargs: Any) -> None:
        cfg = listener.cfg
        # SIZE, 8BITMIME and SMTPUTF8 are advertised by aiosmtpd from these (RFC 1870, 6152, 6531).
        super().__init__(handler, data_size_limit=cfg.max_message_size, enable_SMTPUTF8=True, decode_data=False,
                         hostname=cfg.hostname, timeout=cfg.smtp_timeout, loop=asyncio.get_running_loop(),
                         **kwargs)
        self.limits, self.live, self.max_errors = listener.limits, listener.live, cfg.max_errors
        self.errors = 0
        self.peer_ip = ""
        self.admitted = False
        self.closing = False
        self.input_ended = False
        # The EHLO reply is the listener's, whatever the handler: aiosmtpd builds it, then calls this hook
        # with the lines so far (its "new", five-argument hook form).
        self._handle_hooks["EHLO"] = self._ehlo_reply
        self._ehlo_hook_ver = "new"

    def _create_session(self) -> Session:
        return self.session_class(self.loop)

    def _create_envelope(self) -> Envelope:
        return self.envelope_class()

    async def _ehlo_reply(self, server: "ListenerSMTP", session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        kept = responses[:-1]
        if not self.offers_auth:
            kept = [r for r in kept if not r[4:].upper().startswith("AUTH")]
        # aiosmtpd does not advertise these itself; both are honoured (RFC 2920, RFC 2034).
        return kept + ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    # ------------------------------------------------------------------ connection
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
        """The client stopped sending: end its input, keep the session to answer what it sent.

        aiosmtpd cancels the session here, which abandons a DATA reply waiting for the durable commit
        and the QUIT pipelined behind it. The reader gets EOF instead; the command loop ends at the
        first read that finds nothing more (`handle_exception`).
        """
        if not self.admitted:
            return False
        self.input_ended = True
        # The reader gets EOF; over TCP, True keeps the transport open for the replies still owed (over
        # TLS the answer means nothing: HalfCloseSSLProtocol keeps the connection).
        if self.session is not None and self.session.ssl is not None:
            asyncio.StreamReaderProtocol.eof_received(self)
            return False
        return asyncio.StreamReaderProtocol.eof_received(self)

    async def handle_exception(self, error: Exception) -> str | None:   # type: ignore[override]
        if isinstance(error, asyncio.IncompleteReadError) and self.input_ended:
            # Every command received has been answered: close (what is written is flushed first).
            transport, self.transport = self.transport, None
            if transport is not None:
                transport.close()
            return None
        return await super().handle_exception(error)

    async def push(self, status: Any) -> None:
        if status is None or self._writer.transport.is_closing():
            return
        await super().push(status)
        text = status if isinstance(status, str) else status.decode("latin-1")
        if text[:1] in ("4", "5") and not text.startswith("421") and self.transport is not None:
            self.errors += 1
            if self.errors >= self.max_errors:
                await super().push(codes.TOO_MANY_ERRORS)
                self.transport.close()

    @property
    def connected(self) -> bool:
        """The connection can still carry a reply (the client may have half-closed)."""
        return self.transport is not None and not self._writer.transport.is_closing()

    # ------------------------------------------------------------------ TLS
    async def smtp_STARTTLS(self, arg: str) -> None:
        """aiosmtpd's STARTTLS (RFC 3207) with HalfCloseSSLProtocol as the TLS layer."""
        if arg:
            await self.push("501 Syntax: STARTTLS")
            return
        if not self.tls_context:
            await self.push("454 TLS not available")
            return
        await self.push("220 Ready to start TLS")
        waiter = self.loop.create_future()
        self._tls_protocol = HalfCloseSSLProtocol(self.loop, self, self.tls_context, waiter, server_side=True)
        self._original_transport = self.transport
        assert self._original_transport is not None
        self._original_transport.set_protocol(self._tls_protocol)
        self.transport = self._tls_protocol._app_transport
        self._tls_protocol.connection_made(self._original_transport)
        try:
            await waiter
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise TLSSetupException() from error

    # ------------------------------------------------------------------ shutdown
    @property
    def in_transaction(self) -> bool:
        return bool(self.envelope is not None and self.envelope.mail_from)

    def close_idle(self) -> None:
        """Shutdown: say 421 to a session that is not inside a mail transaction."""
        if self.transport is not None and not self.in_transaction:
            self._writer.write(codes.SHUTTING_DOWN.encode() + b"\r\n")
            self.transport.close()


class Listener:
    """The listening sockets of one kind of session, with their connection limits (one budget for all of
    its ports), the live sessions, and the graceful shutdown."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.limits = Limits(cfg.max_connections, cfg.max_connections_per_ip)
        self.live: set[ListenerSMTP] = set()
        self.servers: list[asyncio.base_events.Server] = []

    async def listen(self, protocol: Callable[[], asyncio.Protocol], sock: socket.socket) -> None:
        self.servers.append(await asyncio.get_running_loop().create_server(protocol, sock=sock))

    @property
    def port(self) -> int:
        """The port of the first listening socket."""
        return self.servers[0].sockets[0].getsockname()[1]

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let open transactions finish (up to grace seconds), close the rest."""
        for server in self.servers:
            server.close()
        await stop_sessions(self.live, grace)


def implicit_tls(loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol,
                 context: ssl.SSLContext) -> asyncio.Protocol:
    """The protocol stack of one implicit-TLS connection (RFC 8314): HalfCloseSSLProtocol around protocol."""
    return HalfCloseSSLProtocol(loop, protocol, context, None, server_side=True)


async def stop_sessions(live: set[ListenerSMTP], grace: float) -> None:
    """Let open transactions finish (up to grace seconds): idle sessions get 421 at once, the rest later."""
    deadline = time.monotonic() + grace
    while True:
        for session in list(live):
            session.closing = True
            session.close_idle()
        if not live or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    for session in list(live):
        if session.transport is not None:
            session.transport.close()
    await asyncio.sleep(0)
