"""Pebble (Debian's `pebble` 2.4), Let's Encrypt's test ACME server, as a test peer.

Each PebblePeer owns a directory with its config and its HTTPS certificate (made by trustme: `ca_file`
is what a client trusts to talk to Pebble's own API), asks the loopback DNSServer it is given for every
name it validates (so the names a test orders must resolve there, to 127.0.0.1), and validates HTTP-01
on `http_port` and TLS-ALPN-01 on `tls_port` of that address. Validation is immediate
(PEBBLE_VA_NOSLEEP), no nonce is rejected at random, and no authorization is reused (every order is
validated again). Its issuing CA is new at every start: `roots_pem()` fetches the current root from the
management port. `stop()` and `start()` take it down and bring it back (a new CA, accounts forgotten).

The module fixture `pebble` starts one peer (ports 26000-26003 by default) with its own DNSServer;
it skips when pebble is not installed, unless the CI environment variable is set: then it fails.
"""
from __future__ import annotations

import http.server
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
import trustme

from tests.support.dnsserver import DNSServer

PEBBLE = shutil.which("pebble") or ("/usr/bin/pebble" if os.path.exists("/usr/bin/pebble") else None)

LISTEN_PORT, MANAGEMENT_PORT, HTTP_PORT, TLS_PORT = 26000, 26001, 26002, 26003


def skip_unless_available() -> None:
    """pytest.skip with the reason when pebble is missing; under CI (the CI variable set) fail instead."""
    if PEBBLE is not None:
        return
    why = "pebble is not installed (apt-get install pebble; see tests/run.sh)"
    if os.environ.get("CI"):
        pytest.fail(why + ", and CI requires the ACME tests to run")
    pytest.skip(why)


class PebblePeer:
    def __init__(self, workdir: Path, dns: DNSServer, *, port: int = LISTEN_PORT,
                 management_port: int = MANAGEMENT_PORT, http_port: int = HTTP_PORT, tls_port: int = TLS_PORT,
                 validity: int = 0) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dns = dns
        self.port, self.management_port = port, management_port
        self.http_port, self.tls_port = http_port, tls_port
        self.validity = validity               # seconds a certificate is valid; 0: Pebble's default (5 years)
        self.proc: subprocess.Popen | None = None
        ca = self.ca = trustme.CA()
        self.ca_file = self.workdir / "pebble-https-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        leaf.cert_chain_pems[0].write_to_path(str(self.workdir / "pebble-cert.pem"))
        leaf.private_key_pem.write_to_path(str(self.workdir / "pebble-key.pem"))

    def _verify(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def _config(self) -> Path:
        conf: dict = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self.workdir / "pebble-cert.pem"),
            "privateKey": str(self.workdir / "pebble-key.pem"),
            "httpPort": self.http_port, "tlsPort": self.tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }
        if self.validity:
            conf["certificateValidityPeriod"] = self.validity
        path = self.workdir / "pebble.json"
        path.write_text(json.dumps({"pebble": conf}))
        return path

    def start(self, timeout: float = 15.0) -> "PebblePeer":
        assert PEBBLE is not None
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        self.log = open(self.workdir / "pebble.log", "ab")
        self.proc = subprocess.Popen([PEBBLE, "-config", str(self._config()), "-dnsserver", self.dns.nameserver,
                                      "-strict=false"], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pebble exited: {(self.workdir / 'pebble.log').read_text()[-2000:]}")
            try:
                if httpx.get(self.directory, verify=self._verify(), timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("pebble did not start in time")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self.log.close()

    def roots_pem(self) -> str:
        """The PEM of the root that signs what this Pebble issues now (new at every start)."""
        r = httpx.get(f"https://127.0.0.1:{self.management_port}/roots/0", verify=self._verify(), timeout=5)
        r.raise_for_status()
        return r.text

    def write_roots(self, path: Path) -> Path:
        Path(path).write_text(self.roots_pem())
        return Path(path)


class TamperingProxy:
    """An HTTPS proxy in front of a PebblePeer, for an ACME server that misbehaves: it passes every request
    through (keeping the Host header, so Pebble's URLs and the JWS `url` checks name the proxy), and while
    `tamper` is set, answers certificate downloads (/certZ/...) with what it makes of Pebble's PEM."""

    def __init__(self, peer: PebblePeer, port: int) -> None:
        self.peer, self.port = peer, port
        self.tamper: Callable[[bytes], bytes] | None = None
        self.downloads = 0
        proxy = self
        upstream = httpx.Client(base_url=f"https://127.0.0.1:{peer.port}", verify=peer._verify(), timeout=30)

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("content-length", "connection")}
                r = upstream.request(self.command, self.path, headers=headers, content=body)
                content = r.content
                if self.path.startswith("/certZ/") and r.status_code == 200:
                    proxy.downloads += 1
                    if proxy.tamper is not None:
                        content = proxy.tamper(content)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(peer.workdir / "pebble-cert.pem"), str(peer.workdir / "pebble-key.pem"))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def __enter__(self) -> "TamperingProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def pebble() -> Iterator[PebblePeer]:
    """A running Pebble with its own loopback DNS server (`pebble.dns`), for the module."""
    skip_unless_available()
    workdir = Path(tempfile.mkdtemp(prefix="mxd-pebble-"))
    dns = DNSServer({}).start()
    peer = PebblePeer(workdir, dns)
    try:
        peer.start()
        yield peer
    finally:
        peer.stop()
        dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)
