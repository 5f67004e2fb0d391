"""An in-process authoritative DNS server for tests: UDP and TCP on one port, answering from a zone dict.

The zone dict is the one `mxd.resolver.StaticResolver` reads:
    {"example.com": {"MX": [(10, "mx.example.com")], "TXT": ["v=spf1 -all"], "A": ["127.0.0.2"]},
     "broken.example": "SERVFAIL", "slow.example": "TIMEOUT"}
Unknown names get NXDOMAIN (NOERROR when they are empty non-terminals, RFC 8020),
known names without the type get NOERROR with no answer (NODATA, RFC 2308).
Long TXT strings are split into 255-byte character-strings (RFC 1035 3.3.14);
answers too big for UDP come back truncated (TC) so the client retries on TCP.
"""
from __future__ import annotations

import socket
import socketserver
import threading
from typing import Any, Iterator, Mapping

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.reversename
import dns.rrset
import pytest


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


def _txt_strings(value: Any) -> list[bytes]:
    if isinstance(value, (list, tuple)):
        return [p.encode() if isinstance(p, str) else bytes(p) for p in value] or [b""]
    data = value.encode() if isinstance(value, str) else bytes(value)
    return [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]


def _abs(host: str) -> str:
    return host if host.endswith(".") else host + "."


SENDING_DOMAIN: dict[str, Any] = {
    # example.test as the tests' daemon sends from it: its MX on loopback, SPF for 127/8, strict DMARC
    "example.test": {"MX": [(10, "mx.example.test")], "TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
    "mx.example.test": {"A": ["127.0.0.1"]},
    "_dmarc.example.test": {"TXT": ["v=DMARC1; p=reject; adkim=s; aspf=s"]},
}


class DNSServer:
    """Serve `zone` on host:port (port 0 = any free port) over UDP and TCP from daemon threads."""

    def __init__(self, zone: Mapping[str, Any] | None = None, host: str = "127.0.0.1",
                 port: int = 0, ttl: int = 0) -> None:
        self.host, self.port, self.ttl = host, port, ttl
        self._zone: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.queries: list[tuple[str, str, str]] = []  # (name, type, "udp"|"tcp")
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        for name, entry in (zone or {}).items():
            self._zone[_norm(name)] = entry if isinstance(entry, str) else dict(entry)

    # --- zone mutation, safe while running ---
    def set(self, name: str, rdtype: str, values: list | None = None) -> None:
        """Replace one RRset; set(name, "SERVFAIL") / set(name, "TIMEOUT") makes the whole name fail."""
        with self._lock:
            key = _norm(name)
            if rdtype in ("SERVFAIL", "TIMEOUT"):
                self._zone[key] = rdtype
                return
            entry = self._zone.get(key)
            if not isinstance(entry, dict):
                entry = self._zone[key] = {}
            if values is None:
                entry.pop(rdtype.upper(), None)
            else:
                entry[rdtype.upper()] = list(values)

    def servfail(self, name: str) -> None:
        self.set(name, "SERVFAIL")

    def delete(self, name: str) -> None:
        with self._lock:
            self._zone.pop(_norm(name), None)

    def set_ptr(self, ip: str, hosts: list[str]) -> None:
        self.set(dns.reversename.from_address(ip).to_text(), "PTR", hosts)

    @property
    def nameserver(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    # --- answering ---
    def _rdatas(self, rdtype: str, values: list) -> list[Any]:
        rdclass, rtype = dns.rdataclass.IN, dns.rdatatype.from_text(rdtype)
        out = []
        for v in values:
            if rdtype == "TXT":
                out.append(dns.rdtypes.ANY.TXT.TXT(rdclass, rtype, _txt_strings(v)))
            elif rdtype == "MX":
                pref, host = v
                out.append(dns.rdata.from_text(rdclass, rtype, f"{int(pref)} {_abs(host)}"))
            elif rdtype in ("PTR", "CNAME", "NS"):
                out.append(dns.rdata.from_text(rdclass, rtype, _abs(v)))
            else:
                out.append(dns.rdata.from_text(rdclass, rtype, str(v)))
        return out

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        q = query.question[0]
        qtype = dns.rdatatype.to_text(q.rdtype)
        name = _norm(".".join(label.decode("latin-1") for label in q.name.labels))
        self.queries.append((name, qtype, transport))
        with self._lock:
            for _ in range(9):  # follow CNAMEs inside the zone
                entry = self._zone.get(name)
                if entry == "TIMEOUT":
                    return None
                if entry == "SERVFAIL":
                    response.set_rcode(dns.rcode.SERVFAIL)
                    break
                if entry is None:
                    suffix = "." + name
                    if not any(k.endswith(suffix) for k in self._zone):
                        response.set_rcode(dns.rcode.NXDOMAIN)
                    break
                owner = q.name if not response.answer else dns.name.from_text(name)
                if qtype not in entry and "CNAME" in entry and qtype != "CNAME":
                    target = entry["CNAME"]
                    target = target[0] if isinstance(target, (list, tuple)) else target
                    rrset = dns.rrset.from_rdata_list(owner, self.ttl, self._rdatas("CNAME", [target]))
                    response.answer.append(rrset)
                    name = _norm(target)
                    continue
                values = entry.get(qtype) or []
                if values:
                    rrset = dns.rrset.from_rdata_list(owner, self.ttl, self._rdatas(qtype, values))
                    response.answer.append(rrset)
                break
        if not response.answer and response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            # RFC 2308 3: an SOA in the authority section sets the negative-caching TTL (self.ttl)
            soa = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SOA,
                                      f"ns.test. hostmaster.test. 1 3600 600 86400 {self.ttl}")
            response.authority.append(dns.rrset.from_rdata_list(dns.name.root, self.ttl, [soa]))
        limit = 65535 if transport == "tcp" else (query.payload if query.edns >= 0 else 512)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC  # RFC 1035 4.2.1, RFC 7766: the client retries over TCP
            return response.to_wire()

    # --- lifecycle ---
    def start(self) -> "DNSServer":
        dns_server = self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        class UDPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = dns_server.answer(data, "udp")
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class TCPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn = self.request
                conn.settimeout(5)
                try:
                    while True:
                        head = _recv(conn, 2)
                        if head is None:
                            return
                        data = _recv(conn, int.from_bytes(head, "big"))
                        if data is None:
                            return
                        reply = dns_server.answer(data, "tcp")
                        if reply is None:
                            return
                        conn.sendall(len(reply).to_bytes(2, "big") + reply)
                except OSError:
                    return

        class UDP(socketserver.ThreadingUDPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        class TCP(socketserver.ThreadingTCPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        for _ in range(20):  # port 0: take a free UDP port, then the same port for TCP
            udp = UDP((self.host, self.port), UDPHandler)
            port = udp.server_address[1]
            try:
                tcp = TCP((self.host, port), TCPHandler)
            except OSError:
                udp.server_close()
                if self.port:
                    raise
                continue
            break
        else:
            raise OSError("no free port for UDP and TCP")
        self.port = port
        self._servers = [udp, tcp]
        for srv in self._servers:
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                 name=f"dnsserver-{port}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        for t in self._threads:
            t.join(timeout=2)
        self._servers, self._threads = [], []

    def __enter__(self) -> "DNSServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _recv(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    """An empty DNSServer on 127.0.0.1 and a free port; fill it with server.set(...)."""
    with DNSServer({}) as server:
        yield server
