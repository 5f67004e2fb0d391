"""A recipient domain's MTA-STS policy host for tests: a real HTTPS server on <ip>:443 (tests run as root
and give each policy host its own loopback address, resolved by the loopback DNS server), with a
trustme certificate for the mta-sts.<domain> names it serves. What it answers is set per host name:
a policy, another status, a redirect, a wrong content type, a body of any size. `SilentHost` is a
policy host that accepts connections and never says anything.
"""
from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trustme


def policy_text(mode: str, *mx: str, max_age: int = 86400) -> str:
    return "version: STSv1\r\nmode: %s\r\n%smax_age: %d\r\n" % (mode, "".join(f"mx: {m}\r\n" for m in mx), max_age)


@dataclass
class Answer:
    body: bytes
    status: int = 200
    content_type: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def do_GET(self) -> None:          # noqa: N802 (http.server's name)
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        owner = self.server.owner
        with owner.lock:
            owner.requests.append((host, self.path))
            answer = owner.answers.get(host) if self.path == "/.well-known/mta-sts.txt" else None
        if answer is None:
            answer = Answer(b"not found\n", 404)
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(answer.body)
        except OSError:
            pass                         # the client stopped reading (a size limit): fine

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: "PolicyServer"

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        # the handshake happens in the handler's thread, so a slow client holds up no one else
        return self.owner.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass                             # refused handshakes and dropped clients are the tests' point


class PolicyServer:
    """HTTPS on ip:port presenting a certificate from `ca` for `names` (mta-sts.<domain> ...)."""

    def __init__(self, ip: str, ca: trustme.CA, names: list[str], port: int = 443) -> None:
        self.ip, self.port = ip, port
        self.lock = threading.Lock()
        self.answers: dict[str, Answer] = {}
        self.requests: list[tuple[str, str]] = []
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*names).configure_cert(self.context)
        self._server = _Server((ip, port), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def serve(self, host: str, body: str | bytes, status: int = 200, content_type: str = "text/plain",
              headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        with self.lock:
            self.answers[host.lower()] = Answer(data, status, content_type, dict(headers or {}))

    def forget(self, host: str) -> None:
        with self.lock:
            self.answers.pop(host.lower(), None)

    def fetches(self, host: str) -> int:
        with self.lock:
            return sum(1 for h, _ in self.requests if h == host.lower())

    def start(self) -> "PolicyServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class SilentHost:
    """Listens on ip:port, takes every connection and never says anything; `count` is how many came."""

    def __init__(self, ip: str, port: int = 443) -> None:
        self.count = 0
        self.held: list[socket.socket] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(64)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            self.held.append(conn)

    def stop(self) -> None:
        _close_listener(self.sock)
        for conn in self.held:
            conn.close()


def _close_listener(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)          # wakes the thread blocked in accept()
    except OSError:
        pass
    sock.close()


class ConnectionCounter:
    """A TCP listener that counts the connections made to it and closes each at once: an MX host
    that must never be contacted."""

    def __init__(self, ip: str, port: int) -> None:
        self.count = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(16)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            conn.close()

    def stop(self) -> None:
        _close_listener(self.sock)
