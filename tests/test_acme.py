"""ACME certificates against a real Pebble: issuance with HTTP-01 and TLS-ALPN-01, what the listeners then
present (verified by Python's default SSL context and swaks against Pebble's CA), renewal that swaps the
certificate under an open SMTP session, and failures (Pebble down, validation refused, a broken ACME
server) that keep the old certificate, record an event and retry."""
from __future__ import annotations

import json
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509

from mxd.certs import acme
from tests.support.daemon import wait_for
from tests.support.inprocess import InProcessDaemon
from tests.support.peers.pebble import HTTP_PORT, TLS_PORT, PebblePeer, pebble  # noqa: F401  (fixture)

HOST = "mx.example.test"
STS = "mta-sts.example.test"


@pytest.fixture(scope="module", autouse=True)
def names(pebble: PebblePeer) -> None:  # noqa: F811
    for name in (HOST, STS):
        pebble.dns.set(name, "A", ["127.0.0.1"])


def acme_env(pebble: PebblePeer, challenge: str = "http-01", **extra: str) -> dict[str, str]:  # noqa: F811
    env = {"MXD_ACME": "true", "MXD_ACME_DIRECTORY": pebble.directory, "MXD_ACME_CA_FILE": str(pebble.ca_file),
           "MXD_ACME_CHALLENGE": challenge, "MXD_ACME_HTTP_LISTEN": f"127.0.0.1:{HTTP_PORT}",
           "MXD_HTTPS_LISTEN": f"127.0.0.1:{TLS_PORT}", "MXD_ACME_EMAIL": "postmaster@example.test",
           "MXD_TLS_WATCH_INTERVAL": "0"}
    env.update(extra)
    return env


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator:
    started: list[InProcessDaemon] = []

    def make(env: dict[str, str], wait_issued: bool = True) -> InProcessDaemon:
        proc = InProcessDaemon(tmp_path / f"data{len(started)}", env=env, hostname=HOST)
        proc.init()
        started.append(proc)
        proc.start()
        if wait_issued:
            assert wait_for(lambda: proc.daemon.renewal.serving is not None, timeout=60), events(proc)
        return proc
    yield make
    for proc in started:
        proc.stop()


def events(proc: InProcessDaemon, type_: str = "certificate.%") -> list[dict]:
    rows = proc.sql('SELECT "type", "data" FROM "event" WHERE "type" LIKE ? ORDER BY "created_at"', (type_,))
    return [dict(json.loads(data), type=t) for t, data in rows]


def trusting(roots: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(roots))
    return ctx


def leaf(ctx: ssl.SSLContext, port: int, starttls: bool, implicit: bool = False) -> x509.Certificate:
    """The certificate a listener presents, verified by `ctx` for HOST (raises when it does not verify)."""
    if implicit:
        with smtplib.SMTP_SSL("127.0.0.1", port, context=_for_host(ctx), timeout=10) as smtp:
            der = smtp.sock.getpeercert(binary_form=True)
    else:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp._host = HOST
            smtp.starttls(context=ctx)
            der = smtp.sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


def _for_host(ctx: ssl.SSLContext) -> ssl.SSLContext:
    return ctx


class _HostSMTP_SSL(smtplib.SMTP_SSL):
    pass


def sans(cert: x509.Certificate) -> set[str]:
    return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))


def test_http01_issues_for_the_hostname_and_mta_sts_and_every_listener_presents_it(pebble: PebblePeer, daemon_factory,  # noqa: F811
                                                                                   tmp_path: Path) -> None:
    proc = daemon_factory(acme_env(pebble))
    roots = pebble.write_roots(tmp_path / "roots.pem")
    ctx = trusting(roots)
    for port in (proc.mx_port, proc.submission_port):
        cert = leaf(ctx, port, starttls=True)
        assert sans(cert) == {HOST, STS}
    got = events(proc)
    assert [e["type"] for e in got] == ["certificate.renewed"]
    assert got[0]["names"] == [HOST, STS]
