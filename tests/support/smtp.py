"""A raw SMTP client for tests that must send what a polite client never would."""
from __future__ import annotations

import socket
import ssl


def insecure_tls() -> ssl.SSLContext:
    """A client context that accepts mxd's self-signed test certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def greets(host: str, port: int) -> bool:
    """Whether an SMTP server on host:port answers a connection with its 220 banner (one try)."""
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.settimeout(5)
            return s.recv(512).startswith(b"220")
    except OSError:
        return False


class RawSMTP:
    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.banner = self.reply()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; partial {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> str:
        """One whole (possibly multi-line) reply, lines joined by newlines."""
        lines = []
        while True:
            line = self._line().decode("utf-8", "replace")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    def cmd(self, line: str) -> str:
        self.send(line + "\r\n")
        return self.reply()

    def starttls(self, hostname: str = "mx.example.test") -> None:
        self.sock = insecure_tls().wrap_socket(self.sock, server_hostname=hostname)
        self.buf = b""

    def closed(self) -> bool:
        try:
            self.sock.settimeout(2)
            return self.sock.recv(1) == b""
        except (ConnectionError, OSError):
            return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
