"""What a TLS ClientHello offers: the ALPN protocols (RFC 7301) and the server name (RFC 6066 3).

Python's SNI callback cannot see the client's ALPN list, and TLS-ALPN-01 (RFC 8737) must answer with the
challenge certificate only to a client that offered `acme-tls/1`; mxd.certs.contexts reads the raw
ClientHello handshake message (through the context's message callback, which runs before the SNI
callback) and asks this module. Input is whatever a peer sent: anything malformed gives an empty result.
"""
from __future__ import annotations

from dataclasses import dataclass

CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16


@dataclass(frozen=True)
class Hello:
    alpn: tuple[str, ...] = ()
    server_name: str | None = None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.int(length_bytes))


def parse(message: bytes) -> Hello:
    """The ALPN list and server name of a ClientHello handshake message (type, 3-byte length, body);
    Hello() when it is not one or is malformed."""
    try:
        return _parse(bytes(message))
    except ValueError:
        return Hello()


def _parse(message: bytes) -> Hello:
    r = _Reader(message)
    if r.int(1) != CLIENT_HELLO:
        return Hello()
    body = _Reader(r.vector(3))
    body.take(2 + 32)                     # legacy_version, random
    body.vector(1)                        # legacy_session_id
    body.vector(2)                        # cipher_suites
    body.vector(1)                        # legacy_compression_methods
    if body.pos == len(body.data):
        return Hello()                    # no extensions at all
    exts = _Reader(body.vector(2))
    alpn: tuple[str, ...] = ()
    server_name: str | None = None
    while exts.pos < len(exts.data):
        kind, data = exts.int(2), exts.vector(2)
        if kind == EXT_ALPN:
            names = _Reader(_Reader(data).vector(2))
            found = []
            while names.pos < len(names.data):
                found.append(names.vector(1).decode("latin-1"))
            alpn = tuple(found)
        elif kind == EXT_SERVER_NAME:
            entries = _Reader(_Reader(data).vector(2))
            while entries.pos < len(entries.data):
                name_type, name = entries.int(1), entries.vector(2)
                if name_type == 0 and server_name is None:       # host_name
                    server_name = name.decode("ascii", "replace").lower().rstrip(".")
    return Hello(alpn=alpn, server_name=server_name)
