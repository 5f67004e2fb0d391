"""ACME certificates against a real Pebble: issuance with HTTP-01 and TLS-ALPN-01, what the listeners then
present (verified by Python's default SSL context and swaks against Pebble's CA), renewal that swaps the
certificate under an open SMTP session, and failures (Pebble down, validation refused, a broken ACME
server) that keep the old certificate, record an event and retry."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from mxd.certs.renewal import CertificateRenewal
from tests.support.daemon import MxdProcess, wait_for
from tests.support.inprocess import InProcessDaemon
from tests.support.peers.pebble import HTTP_PORT, TLS_PORT, PebblePeer, TamperingProxy, pebble  # noqa: F401  (fixture)

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
    """Python's default client context (verification and host name checks on), trusting Pebble's root."""
    return ssl.create_default_context(cafile=str(roots))


class _SMTP_SSL(smtplib.SMTP_SSL):
    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((host, port), timeout)
        return self.context.wrap_socket(sock, server_hostname=HOST)


def leaf(ctx: ssl.SSLContext, port: int, implicit: bool = False) -> x509.Certificate:
    """The certificate a listener presents, verified by `ctx` for HOST (raises when it does not verify)."""
    if implicit:
        with _SMTP_SSL("127.0.0.1", port, context=ctx, timeout=10) as smtp:
            der = smtp.sock.getpeercert(binary_form=True)
    else:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp._host = HOST                      # the name STARTTLS verifies
            smtp.starttls(context=ctx)
            der = smtp.sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


def sans(cert: x509.Certificate) -> set[str]:
    return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))


def swaks_verifies(port: int, roots: Path, implicit: bool = False) -> subprocess.CompletedProcess:
    args = ["swaks", "--server", "127.0.0.1", "--port", str(port), "--quit-after", "EHLO", "--tls-verify",
            "--tls-ca-path", str(roots), "--tls-sni", HOST, "--timeout", "10"]
    args += ["--tlsc"] if implicit else ["--tls"]
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


def test_http01_issues_for_the_hostname_and_mta_sts_and_every_listener_presents_it(
        pebble: PebblePeer, daemon_factory, tmp_path: Path) -> None:  # noqa: F811
    proc = daemon_factory(acme_env(pebble))
    roots = pebble.write_roots(tmp_path / "roots.pem")
    ctx = trusting(roots)
    presented = {leaf(ctx, proc.mx_port).serial_number, leaf(ctx, proc.submission_port).serial_number,
                 leaf(ctx, proc.submissions_port, implicit=True).serial_number}
    assert len(presented) == 1
    assert sans(leaf(ctx, proc.mx_port)) == {HOST, STS}
    for port, implicit in ((proc.mx_port, False), (proc.submission_port, False), (proc.submissions_port, True)):
        out = swaks_verifies(port, roots, implicit)
        assert out.returncode == 0, out.stdout + out.stderr
    # the HTTPS listener presents it too, and serves the domain's MTA-STS policy under it
    with socket.create_connection(("127.0.0.1", TLS_PORT), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname=STS) as tls:
        assert x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number in presented
    with httpx.Client(verify=ctx, timeout=10) as client:
        r = client.get(f"https://127.0.0.1:{TLS_PORT}/.well-known/mta-sts.txt", headers={"Host": STS},
                       extensions={"sni_hostname": STS})
    assert r.status_code == 200 and r.text.startswith("version: STSv1\r\nmode: testing\r\nmx: mx.example.test\r\n"), r.text
    got = events(proc)
    assert [e["type"] for e in got] == ["certificate.renewed"]
    assert got[0]["names"] == [HOST, STS]
    rows = proc.sql('SELECT "actor", "action", "result" FROM "audit" WHERE "action" = ?', ("certificate.renew",))
    assert rows == [("system", "certificate.renew", "ok")]
    folder = proc.data_dir / "acme"
    assert folder.stat().st_mode & 0o777 == 0o700
    for name in ("account.pem", "account.json", "privkey.pem", "fullchain.pem"):
        assert (folder / name).stat().st_mode & 0o777 == 0o600, name
    assert json.loads((folder / "account.json").read_text())["uri"].startswith("https://127.0.0.1:")


def test_the_http01_listener_redirects_and_shrugs_off_garbage(pebble: PebblePeer, daemon_factory) -> None:  # noqa: F811
    daemon_factory(acme_env(pebble), wait_issued=False)
    for junk in (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 5000 + b"\r\n"):
        with socket.create_connection(("127.0.0.1", HTTP_PORT), timeout=10) as sock:
            try:
                sock.sendall(junk)
                answer = sock.recv(64)
            except ConnectionResetError:
                answer = b""
            assert answer == b"" or answer.startswith((b"HTTP/1.1 4", b"HTTP/1.1 301")), answer
    r = httpx.get(f"http://127.0.0.1:{HTTP_PORT}/api/health?x=1", headers={"Host": STS}, timeout=10)
    assert (r.status_code, r.headers["location"]) == (301, f"https://{STS}:{TLS_PORT}/api/health?x=1")
    assert httpx.get(f"http://127.0.0.1:{HTTP_PORT}/.well-known/acme-challenge/nothing", timeout=10).status_code == 404


def test_tls_alpn01_issues_through_the_https_context(pebble: PebblePeer, daemon_factory, monkeypatch,  # noqa: F811
                                                     tmp_path: Path) -> None:
    """TLS-ALPN-01 is answered by whatever listens with ServerTLS's "https" context on https_listen: the
    daemon's HTTPS listener, or when the daemon has none there, one the test starts with that context."""
    monkeypatch.setattr(CertificateRenewal, "retry_first", 0.2)
    proc = daemon_factory(acme_env(pebble, "tls-alpn-01", MXD_ACME_HTTP_LISTEN=""), wait_issued=False)
    daemon = proc.daemon

    async def listen() -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()
        return await asyncio.start_server(handle, "127.0.0.1", TLS_PORT, ssl=daemon.tls.context("https"))
    try:
        socket.create_connection(("127.0.0.1", TLS_PORT), timeout=2).close()
        server = None                                # the daemon's own HTTPS listener is there
    except OSError:
        server = proc.run(listen())
    try:
        assert wait_for(lambda: daemon.renewal.serving is not None, timeout=60), events(proc)
    finally:
        if server is not None:
            server.close()
    ctx = trusting(pebble.write_roots(tmp_path / "roots.pem"))
    assert sans(leaf(ctx, proc.mx_port)) == {HOST, STS}
    assert events(proc)[-1]["type"] == "certificate.renewed"


def test_forced_renewal_swaps_the_certificate_under_an_open_session(pebble: PebblePeer, daemon_factory,  # noqa: F811
                                                                    tmp_path: Path) -> None:
    proc = daemon_factory(acme_env(pebble))
    ctx = trusting(pebble.write_roots(tmp_path / "roots.pem"))
    first = leaf(ctx, proc.mx_port)
    with smtplib.SMTP("127.0.0.1", proc.mx_port, timeout=10) as smtp:
        smtp._host = HOST
        smtp.starttls(context=ctx)
        smtp.ehlo("client.example.test")
        generation = proc.daemon.tls.generation
        proc.call(proc.daemon.renew_certificate)
        assert wait_for(lambda: proc.daemon.tls.generation > generation, timeout=60), events(proc)
        second = leaf(ctx, proc.mx_port)                     # a new handshake gets the new certificate
        assert second.serial_number != first.serial_number
        assert sans(second) == {HOST, STS}
        # the session opened before the swap goes on, on its own certificate
        assert x509.load_der_x509_certificate(smtp.sock.getpeercert(binary_form=True)).serial_number == first.serial_number
        assert smtp.noop()[0] == 250
        smtp.sendmail("someone@client.example.test", ["postmaster@example.test"],
                      b"From: someone@client.example.test\r\nTo: postmaster@example.test\r\nSubject: still here\r\n\r\nhi\r\n")
    assert [e["type"] for e in events(proc)] == ["certificate.renewed", "certificate.renewed"]


def test_pebble_down_keeps_the_certificate_records_the_failure_and_retries(
        pebble: PebblePeer, daemon_factory, monkeypatch, tmp_path: Path) -> None:  # noqa: F811
    monkeypatch.setattr(CertificateRenewal, "retry_first", 0.3)
    proc = daemon_factory(acme_env(pebble))
    ctx = trusting(pebble.write_roots(tmp_path / "roots.pem"))
    first = leaf(ctx, proc.mx_port)
    pebble.stop()
    try:
        proc.call(proc.daemon.renew_certificate)
        assert wait_for(lambda: len(events(proc, "certificate.renewal_failed")) >= 2, timeout=30), events(proc)
        failed = events(proc, "certificate.renewal_failed")
        assert failed[0]["names"] == [HOST, STS] and failed[0]["error"]
        assert failed[1]["failures"] == 2 and failed[1]["retry_in"] >= failed[0]["retry_in"]
        assert leaf(ctx, proc.mx_port).serial_number == first.serial_number      # the old one is still served
    finally:
        pebble.start()                      # a new CA, which has never seen our account
    assert wait_for(lambda: len(events(proc, "certificate.renewed")) == 2, timeout=60), events(proc)
    renewed = leaf(trusting(pebble.write_roots(tmp_path / "roots2.pem")), proc.mx_port)
    assert renewed.serial_number != first.serial_number
    assert proc.daemon.renewal.failures == 0


def test_a_name_that_fails_validation_ends_in_an_event_and_a_retry(pebble: PebblePeer, daemon_factory, monkeypatch,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(CertificateRenewal, "retry_first", 0.3)
    pebble.dns.delete(STS)
    try:
        proc = daemon_factory(acme_env(pebble), wait_issued=False)
        assert wait_for(lambda: len(events(proc, "certificate.renewal_failed")) >= 2, timeout=60), events(proc)
        error = events(proc, "certificate.renewal_failed")[0]["error"]
        assert STS in error
        assert proc.daemon.renewal.serving is None
        # meanwhile the self-signed certificate is served and the MX works
        with smtplib.SMTP("127.0.0.1", proc.mx_port, timeout=10) as smtp:
            assert smtp.noop()[0] == 250
    finally:
        pebble.dns.set(STS, "A", ["127.0.0.1"])
    assert wait_for(lambda: proc.daemon.renewal.serving is not None, timeout=60), events(proc)


@pytest.mark.parametrize("path", ["/roots/0", "/nope"])
def test_a_broken_acme_server_ends_in_events_and_retries_never_a_crash(pebble: PebblePeer, daemon_factory,  # noqa: F811
                                                                      monkeypatch, path: str, tmp_path: Path) -> None:
    """Pebble's management port answers PEM text where JSON is expected, and 404 for an unknown path."""
    monkeypatch.setattr(CertificateRenewal, "retry_first", 0.2)
    directory = f"https://127.0.0.1:{pebble.management_port}{path}"
    proc = daemon_factory(acme_env(pebble, MXD_ACME_DIRECTORY=directory), wait_issued=False)
    assert wait_for(lambda: len(events(proc, "certificate.renewal_failed")) >= 2, timeout=30), events(proc)
    assert proc.daemon.renewal.serving is None
    with smtplib.SMTP("127.0.0.1", proc.submission_port, timeout=10) as smtp:
        assert smtp.ehlo()[0] == 250
    # the self-signed certificate served meanwhile: the checks that pass above refuse it
    roots = pebble.write_roots(tmp_path / "roots.pem")
    with pytest.raises(ssl.SSLCertVerificationError):
        leaf(trusting(roots), proc.submission_port)
    assert swaks_verifies(proc.submission_port, roots).returncode != 0


def test_a_short_lived_certificate_is_renewed_when_a_third_of_its_lifetime_is_left(tmp_path: Path, daemon_factory,
                                                                                    pebble: PebblePeer) -> None:  # noqa: F811
    """A second Pebble issuing 12-second certificates: the worker sleeps until 8 s, then renews unasked."""
    short = PebblePeer(tmp_path / "short", pebble.dns, port=26010, management_port=26011, http_port=26012,
                       tls_port=26013, validity=12).start()
    try:
        proc = daemon_factory(acme_env(pebble, MXD_ACME_DIRECTORY=short.directory, MXD_ACME_CA_FILE=str(short.ca_file),
                                       MXD_ACME_HTTP_LISTEN="127.0.0.1:26012", MXD_HTTPS_LISTEN="127.0.0.1:26013"))
        first = proc.daemon.renewal.serving
        assert first is not None and first.not_after - first.not_before == pytest.approx(12, abs=2)
        assert wait_for(lambda: len(events(proc, "certificate.renewed")) >= 2, timeout=30), events(proc)
        second = proc.daemon.renewal.serving
        assert second.not_before >= first.renew_at - 1           # not before a third of the lifetime was left
        assert second.not_after > first.not_after
        assert events(proc, "certificate.renewal_failed") == []
    finally:
        short.stop()


def test_a_domain_turning_mta_sts_on_adds_its_name_at_sighup(pebble: PebblePeer, daemon_factory,  # noqa: F811
                                                             tmp_path: Path) -> None:
    proc = daemon_factory(acme_env(pebble))
    pebble.dns.set("mta-sts.other.test", "A", ["127.0.0.1"])
    r = proc.api("POST", "/api/domains", json={"domain": "other.test"})
    assert r.status_code == 201, r.text
    proc.call(proc.daemon.reload)                          # SIGHUP: the names are read again at once
    assert wait_for(lambda: len(events(proc, "certificate.renewed")) == 2, timeout=60), events(proc)
    ctx = trusting(pebble.write_roots(tmp_path / "roots.pem"))
    assert sans(leaf(ctx, proc.mx_port)) == {HOST, STS, "mta-sts.other.test"}
    # a domain turning it off needs no new certificate: the one served still covers every name
    proc.sql("UPDATE \"domain\" SET \"mta_sts_mode\" = 'off' WHERE \"name\" = 'other.test'")
    renewal = proc.daemon.renewal
    attempts, passes = renewal.attempts, renewal.passes
    proc.call(proc.daemon.reload)
    assert wait_for(lambda: renewal.passes > passes, timeout=10)
    assert renewal.attempts == attempts
    assert len(events(proc, "certificate.renewed")) == 2


def test_mxd_serve_renews_on_sigusr1(pebble: PebblePeer, tmp_path: Path) -> None:  # noqa: F811
    """`mxd serve` as operators run it: ACME from its settings, and SIGUSR1 (systemctl kill -s USR1 mxd)
    renews at once."""
    proc = MxdProcess(tmp_path / "data", hostname=HOST, env=acme_env(pebble))
    proc.init()
    proc.start()
    try:
        assert wait_for(lambda: len(events(proc, "certificate.renewed")) == 1, timeout=60), events(proc)
        ctx = trusting(pebble.write_roots(tmp_path / "roots.pem"))
        first = leaf(ctx, proc.submissions_port, implicit=True)
        proc.proc.send_signal(signal.SIGUSR1)
        assert wait_for(lambda: len(events(proc, "certificate.renewed")) == 2, timeout=60), events(proc)
        assert wait_for(lambda: leaf(ctx, proc.submissions_port, implicit=True).serial_number != first.serial_number,
                        timeout=10)
    finally:
        proc.stop()


def test_a_certificate_for_other_names_is_refused_recorded_and_retried(pebble: PebblePeer, daemon_factory,  # noqa: F811
                                                                      monkeypatch) -> None:
    """An ACME server that hands out a certificate for other names (or garbage): never served, an event, a retry."""
    monkeypatch.setattr(CertificateRenewal, "retry_first", 0.2)
    def other_names(real: bytes) -> bytes:
        """The certificate Pebble made for our key, re-made for another name (signed by a CA of its own)."""
        leaf = x509.load_pem_x509_certificates(real)[0]
        ca = trustme.CA()
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca._certificate.subject)
                .public_key(leaf.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=90))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("elsewhere.test")]), critical=False)
                .sign(ca._private_key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem.bytes()

    with TamperingProxy(pebble, 26004) as proxy:
        proxy.tamper = other_names
        proc = daemon_factory(acme_env(pebble, MXD_ACME_DIRECTORY=proxy.directory), wait_issued=False)
        assert wait_for(lambda: len(events(proc, "certificate.renewal_failed")) >= 1, timeout=60), events(proc)
        proxy.tamper = lambda real: b"<html>502 Bad Gateway</html>"
        assert wait_for(lambda: len(events(proc, "certificate.renewal_failed")) >= 2, timeout=60), events(proc)
        errors = [e["error"] for e in events(proc, "certificate.renewal_failed")]
        assert "does not cover mx.example.test, mta-sts.example.test" in errors[0], errors
        assert "does not parse" in errors[1], errors
        assert proc.daemon.renewal.serving is None and proxy.downloads >= 2
        assert not (proc.data_dir / "acme" / "fullchain.pem").exists()
        proxy.tamper = None                                   # the server mends its ways: the retry gets it
        assert wait_for(lambda: proc.daemon.renewal.serving is not None, timeout=60), events(proc)
        assert proc.daemon.renewal.serving.names == {HOST, STS}


def test_a_silent_acme_server_holds_up_neither_the_listeners_nor_the_exit(pebble: PebblePeer,  # noqa: F811
                                                                           tmp_path: Path) -> None:
    """An ACME server that accepts the connection and never answers: the daemon serves meanwhile, and SIGTERM
    ends it at once rather than after the order's network timeouts."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 26005))
    silent.listen(16)
    silent.settimeout(30)
    proc = MxdProcess(tmp_path / "data", hostname=HOST,
                      env=acme_env(pebble, MXD_ACME_DIRECTORY="https://127.0.0.1:26005/dir"))
    try:
        proc.init()
        proc.start()
        held = silent.accept()                       # the order is under way, and stuck (the socket kept open)
        with smtplib.SMTP("127.0.0.1", proc.mx_port, timeout=10) as smtp:
            assert smtp.noop()[0] == 250
        began = time.monotonic()
        assert proc.stop(timeout=60) == 0
        assert time.monotonic() - began < 20
        held[0].close()
    finally:
        proc.stop()
        silent.close()


def test_a_restart_serves_the_kept_certificate_without_a_new_order(pebble: PebblePeer, daemon_factory,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    proc = daemon_factory(acme_env(pebble))
    ctx = trusting(pebble.write_roots(tmp_path / "roots.pem"))
    first = leaf(ctx, proc.mx_port)
    proc.stop()
    again = InProcessDaemon(proc.data_dir, env=acme_env(pebble), hostname=HOST)
    again.admin_token = proc.admin_token
    again.start()
    try:
        assert leaf(ctx, again.mx_port).serial_number == first.serial_number   # from the first handshake on
        assert wait_for(lambda: again.daemon.renewal.serving is not None, timeout=30)
        assert again.daemon.renewal.attempts == 0
    finally:
        again.stop()
