"""Server TLS owns the certificate every listener presents (MX, submission, HTTPS) and swapping it
without a restart: each listener keeps one base context for its life, whose SNI callback hands every
new handshake the context of the certificate loaded last. Sessions already open keep theirs.

The certificate comes from tls_cert/tls_key (re-read on SIGHUP and when the files change, so certbot
or another tool can own them) or from ACME (mxd.certs.acme, which calls `load`).
"""
from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
import weakref
from pathlib import Path
from typing import Any, Callable

from mxd.certs import clienthello
from mxd.config import Config

log = logging.getLogger("mxd.tls")

KINDS = ("mx", "submission", "https")
# TLS 1.2 suites with forward secrecy and AEAD only (Mozilla's "intermediate"); TLS 1.3 keeps OpenSSL's.
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"

# A TLS-ALPN-01 responder (mxd.certs.acme): given the handshake and the name asked for, the context to
# answer with instead of the certificate's, or None.
ChallengeHook = Callable[[ssl.SSLObject, str | None], "ssl.SSLContext | None"]


def _stamp(*paths: Path) -> tuple:
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class ServerTLS:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.cert_path, self.key_path = Path(cfg.tls_cert_path), Path(cfg.tls_key_path)
        self._current: dict[str, ssl.SSLContext] = {}
        self._base: dict[str, ssl.SSLContext] = {}
        self._stamp: tuple | None = None
        self.challenge: ChallengeHook | None = None
        self._hellos: weakref.WeakKeyDictionary[Any, clienthello.Hello] = weakref.WeakKeyDictionary()
        self._watching = False
        self.loaded_at = 0.0
        self.generation = 0                   # how many certificates have been loaded

    # ------------------------------------------------------------ contexts
    def build(self, kind: str, cert_path: Path, key_path: Path) -> ssl.SSLContext:
        """A server context for one listener kind, with the certificate loaded (raises on a bad pair)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
        if kind == "mx":
            # RFC 7435: STARTTLS on the MX is opportunistic; any encryption a peer has beats plain text
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        else:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if self.cfg.tls_min_version == "1.3" else ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers(MODERN_CIPHERS)
        if kind == "https":
            ctx.set_alpn_protocols(["http/1.1"])
        ctx.load_cert_chain(str(cert_path), str(key_path))
        return ctx

    def context(self, kind: str) -> ssl.SSLContext:
        """The context a listener of this kind is started with; it serves whatever is loaded at each handshake."""
        assert kind in KINDS, kind
        base = self._base.get(kind)
        if base is None:
            base = self._base[kind] = self.build(kind, self.cert_path, self.key_path)

            def swap(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext, kind: str = kind) -> None:
                hook = self.challenge
                if hook is not None:
                    answer = hook(sslobj, server_name)
                    if answer is not None:
                        sslobj.context = answer
                        return
                current = self._current.get(kind)
                if current is not None:
                    sslobj.context = current
            base.sni_callback = swap
            if kind == "https" and self._watching:
                base._msg_callback = self._note_hello     # type: ignore[attr-defined]
        return base

    # ------------------------------------------------------------ TLS-ALPN-01 (RFC 8737)
    def watch_hellos(self, on: bool) -> None:
        """Read the ClientHello of every new HTTPS handshake (its ALPN list) while `on`: the SNI callback
        cannot see ALPN, and only a client that offered acme-tls/1 may get a challenge certificate.
        OpenSSL's message callback (Python's private `_msg_callback`) runs on the ClientHello before the
        SNI callback; it is set only while a challenge is pending, so handshakes cost nothing otherwise."""
        self._watching = on
        base = self._base.get("https")
        if base is not None:
            base._msg_callback = self._note_hello if on else None     # type: ignore[attr-defined]
        if not on:
            self._hellos = weakref.WeakKeyDictionary()  # rebound, not cleared: the loop thread may be writing to it

    def hello(self, sslobj: Any) -> clienthello.Hello:
        """What this handshake's ClientHello offered (empty unless watched)."""
        try:
            return self._hellos.get(sslobj) or clienthello.Hello()
        except TypeError:
            return clienthello.Hello()

    def _note_hello(self, conn: Any, direction: str, version: Any, content_type: Any, msg_type: Any,
                    data: bytes) -> None:
        try:
            if direction == "read" and int(content_type) == 22 and int(msg_type) == clienthello.CLIENT_HELLO:
                self._hellos[conn] = clienthello.parse(data)
        except Exception:                       # never fail a handshake over what it offered
            pass

    def load(self, cert_path: Path, key_path: Path) -> None:
        """Serve this certificate from the next handshake on; raises (and keeps the old one) when it cannot be used."""
        fresh = {kind: self.build(kind, cert_path, key_path) for kind in KINDS}
        self.cert_path, self.key_path = Path(cert_path), Path(key_path)
        self._current = fresh
        self._stamp = _stamp(self.cert_path, self.key_path)
        self.loaded_at = time.time()
        self.generation += 1

    # ------------------------------------------------------------ reload from files
    def changed(self) -> bool:
        try:
            return _stamp(self.cert_path, self.key_path) != self._stamp
        except OSError:
            return False                      # mid-replacement, or gone: keep serving the last good pair

    def reload(self, force: bool = False) -> bool:
        """Load the files again when they changed (or with force); True when a new certificate is served.
        A pair that does not load (half-written, key not matching) is logged and the old one kept."""
        if not force and not self.changed():
            return False
        try:
            self.load(self.cert_path, self.key_path)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning("the certificate in %s could not be loaded, the previous one is kept: %s", self.cert_path, exc)
            return False
        log.info("certificate reloaded from %s", self.cert_path)
        return True

    async def watch(self, interval: float) -> None:
        """Reload whenever the files change (certbot's renewal), every `interval` seconds."""
        while True:
            await asyncio.sleep(interval)
            self.reload()
