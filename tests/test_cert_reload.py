"""Certificate files owned by another tool (certbot), without ACME: a pair replaced on disk is served from the
next handshake on, found by the file watch or on SIGHUP, without a restart and without closing sessions;
a broken new pair leaves the previous certificate in service. The daemon runs as a subprocess (signals)."""
from __future__ import annotations

import os
import signal
import smtplib
import ssl
from pathlib import Path
from typing import Iterator

import pytest
import trustme
from cryptography import x509

from tests.support.daemon import MxdProcess, wait_for

HOST = "mx.example.test"


class Certbot:
    """Files laid out as certbot does: live/<name>/{fullchain,privkey}.pem are symlinks to
    archive/<name>/{fullchain,privkey}N.pem, and a renewal writes N+1 and swaps the links atomically."""

    def __init__(self, root: Path, ca: trustme.CA) -> None:
        self.ca = ca
        self.archive, self.live = root / "archive" / HOST, root / "live" / HOST
        self.archive.mkdir(parents=True)
        self.live.mkdir(parents=True)
        self.n = 0
        self.serials: list[int] = []

    @property
    def cert(self) -> Path:
        return self.live / "fullchain.pem"

    @property
    def key(self) -> Path:
        return self.live / "privkey.pem"

    def renew(self, cert_pem: bytes | None = None, key_pem: bytes | None = None) -> int:
        self.n += 1
        issued = self.ca.issue_cert(HOST)
        chain = cert_pem if cert_pem is not None else b"".join(b.bytes() for b in issued.cert_chain_pems)
        key = key_pem if key_pem is not None else issued.private_key_pem.bytes()
        for name, data in (("privkey", key), ("fullchain", chain)):
            target = self.archive / f"{name}{self.n}.pem"
            target.write_bytes(data)
            os.chmod(target, 0o600)
            link = self.live / f".{name}.tmp"
            link.symlink_to(os.path.relpath(target, self.live))
            os.replace(link, self.live / f"{name}.pem")          # rename over: atomic
        serial = x509.load_pem_x509_certificate(chain).serial_number if cert_pem is None else -1
        self.serials.append(serial)
        return serial


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certbot(tmp_path: Path, ca: trustme.CA) -> Certbot:
    bot = Certbot(tmp_path / "letsencrypt", ca)
    bot.renew()
    return bot


def start(tmp_path: Path, certbot: Certbot, watch: str) -> MxdProcess:
    proc = MxdProcess(tmp_path / "data", hostname=HOST, env={
        "MXD_TLS_CERT": str(certbot.cert), "MXD_TLS_KEY": str(certbot.key), "MXD_TLS_WATCH_INTERVAL": watch})
    proc.init()
    proc.start()
    return proc


@pytest.fixture
def watched(tmp_path: Path, certbot: Certbot) -> Iterator[MxdProcess]:
    proc = start(tmp_path, certbot, "0.1")
    yield proc
    proc.stop()


@pytest.fixture
def hup_only(tmp_path: Path, certbot: Certbot) -> Iterator[MxdProcess]:
    proc = start(tmp_path, certbot, "0")
    yield proc
    proc.stop()


def serial(ca: trustme.CA, port: int) -> int:
    """The serial number of the certificate the submission port presents, verified for HOST."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp._host = HOST
        smtp.starttls(context=ctx)
        return x509.load_der_x509_certificate(smtp.sock.getpeercert(binary_form=True)).serial_number


def test_the_watch_serves_a_renewed_pair_and_open_sessions_go_on(watched: MxdProcess, certbot: Certbot,
                                                                 ca: trustme.CA) -> None:
    first = certbot.serials[0]
    assert serial(ca, watched.submission_port) == first
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with smtplib.SMTP("127.0.0.1", watched.mx_port, timeout=10) as smtp:
        smtp._host = HOST
        smtp.starttls(context=ctx)
        second = certbot.renew()
        assert wait_for(lambda: serial(ca, watched.submission_port) == second, timeout=15)
        assert serial(ca, watched.mx_port) == second
        assert smtp.noop()[0] == 250          # the session opened on the old certificate is still usable
        smtp.sendmail("a@client.example.test", ["postmaster@example.test"],
                      b"From: a@client.example.test\r\nTo: postmaster@example.test\r\nSubject: x\r\n\r\nx\r\n")


def test_sighup_reloads_when_the_watch_is_off_and_a_broken_pair_is_refused(hup_only: MxdProcess, certbot: Certbot, ca: trustme.CA) -> None:
    first = certbot.serials[0]
    second = certbot.renew()
    assert serial(ca, hup_only.submission_port) == first        # no watch: nothing read yet
    hup_only.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: serial(ca, hup_only.submission_port) == second, timeout=15)

    # a broken pair then keeps the previous certificate in service
    log = hup_only.data_dir / "mxd.log"
    broken = (dict(key_pem=ca.issue_cert(HOST).private_key_pem.bytes()),       # a chain with somebody else's key
              dict(cert_pem=b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"),
              dict(cert_pem=b"", key_pem=b""))                                # empty files, as a half-done copy leaves them
    for n, files in enumerate(broken, 1):
        certbot.renew(**files)
        hup_only.proc.send_signal(signal.SIGHUP)                   # one at a time: signals close together coalesce
        assert wait_for(lambda: log.read_text().count("previous one is kept") >= n, timeout=15), log.read_text()
    assert serial(ca, hup_only.submission_port) == second
    assert hup_only.proc.poll() is None
    good = certbot.renew()                                  # and the next good pair is taken
    hup_only.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: serial(ca, hup_only.submission_port) == good, timeout=15)
