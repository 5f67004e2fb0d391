"""The HTTP connection: uvicorn's h11 protocol with the read deadlines it lacks.

uvicorn closes an idle keep-alive connection `timeout_keep_alive` seconds after an answer, but a
connection that never sends a byte, that sends its request head a byte at a time, or that stops half-way
through a body is held for as long as the client likes (a slowloris: a few hundred such sockets hold the
server's file descriptors). Here the whole request head must arrive within `header_timeout` of the
connection (or of the first byte after a kept-alive answer), and while a body is owed, a silence longer
than `header_timeout` closes the connection. A pause that is mxd's own (reading paused because the
application has not consumed the body yet) does not count.

Over TLS (the HTTPS listener), closing a connection politely sends close_notify and then waits for the
peer's (asyncio holds the socket up to 30 s for it); an idle client never answers, which would hold the
descriptor and a graceful stop for that long. A TLS connection mxd closes is therefore dropped
`TLS_CLOSE_GRACE` seconds after the close if the peer has not finished it by then.
"""
from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_TIMEOUT_ANSWER = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
TLS_CLOSE_GRACE = 1.0


class GuardedH11Protocol(H11Protocol):
    header_timeout: float = 10.0          # set per server by `protocol(header_timeout)`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0              # bytes of the request head received so far
        self._lost = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()                       # a connection that says nothing at all is not kept either

    def data_received(self, data: bytes) -> None:
        owed_head = self.conn.their_state is h11.IDLE
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE:             # the head is still incomplete: the deadline runs from its first byte
            self._head_bytes += len(data) if owed_head else 0
            if self._deadline is None:
                self._arm()
        elif state is h11.SEND_BODY:      # a body is owed: each chunk restarts the silence allowed
            self._head_bytes = 0
            self._arm()
        else:
            self._head_bytes = 0
            self._cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel()
        super().connection_lost(exc)

    def shutdown(self) -> None:           # the server stops: idle connections are closed now
        super().shutdown()
        self._reap()

    def timeout_keep_alive_handler(self) -> None:
        super().timeout_keep_alive_handler()
        self._reap()

    def _reap(self) -> None:
        """After mxd closed a TLS connection: drop it if the peer has not finished the close in a moment."""
        if self.transport.is_closing() and self.transport.get_extra_info("sslcontext") is not None:
            self.loop.call_later(TLS_CLOSE_GRACE, self._drop)

    def _drop(self) -> None:
        if not self._lost:
            self.transport.abort()

    def _arm(self) -> None:
        self._cancel()
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY and self.flow.read_paused:
            self._arm()                   # the application, not the client, is slow
            return
        if state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            if self._head_bytes:
                self.transport.write(_TIMEOUT_ANSWER)
            self.transport.close()
            self._reap()
        elif state is h11.SEND_BODY:
            self.transport.close()        # the application sees a disconnect
            self._reap()


def protocol(header_timeout: float) -> type[GuardedH11Protocol]:
    """The protocol class for uvicorn.Config(http=...), with this server's header timeout."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout": header_timeout})
