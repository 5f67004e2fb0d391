"""The parts of ACME that need no ACME server: the TLS-ALPN-01 responder on real handshakes (only a client
offering acme-tls/1 for a pending name gets the challenge certificate), the ClientHello reader and the
HTTP-01 app under hostile input, and the checks on what a CA returns."""
from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ssl
import struct
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxd import keys
from mxd.certs import acme, clienthello
from mxd.certs.contexts import ServerTLS
from mxd.certs.http01 import ChallengeApp
from tests.support.asgi import api_config

HOST = "mx.example.test"


# ---------------------------------------------------------------- TLS-ALPN-01 on real handshakes
@pytest.fixture
def server_tls(tmp_path: Path) -> ServerTLS:
    cfg = api_config(tmp_path)
    keys.ensure_self_signed_cert(cfg.tls_cert_path, cfg.tls_key_path, HOST)
    tls = ServerTLS(cfg)
    tls.load(cfg.tls_cert_path, cfg.tls_key_path)
    return tls


def handshake(tls: ServerTLS, server_name: str, alpn: list[str] | None) -> tuple[x509.Certificate, str | None]:
    """One handshake with the "https" context: the certificate presented and the ALPN protocol chosen."""
    async def run() -> tuple[bytes, str | None]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls.context("https"))
        port = server.sockets[0].getsockname()[1]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        if alpn:
            ctx.set_alpn_protocols(alpn)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_name)
            sslobj = writer.get_extra_info("ssl_object")
            out = sslobj.getpeercert(binary_form=True), sslobj.selected_alpn_protocol()
            writer.close()
            return out
        finally:
            server.close()
    der, chosen = asyncio.run(run())
    return x509.load_der_x509_certificate(der), chosen


def acme_identifier(cert: x509.Certificate) -> x509.Extension | None:
    try:
        return cert.extensions.get_extension_for_oid(acme.ACME_IDENTIFIER)
    except x509.ExtensionNotFound:
        return None


def test_only_a_client_offering_acme_tls_1_for_a_pending_name_gets_the_challenge_certificate(server_tls: ServerTLS) -> None:
    pending = acme.Challenges()
    digest = hashlib.sha256(b"token.thumbprint").digest()
    pending.add_tls_alpn01(HOST, acme.challenge_context(HOST, digest))
    server_tls.challenge = acme.AlpnResponder(server_tls, pending)
    server_tls.watch_hellos(True)

    cert, chosen = handshake(server_tls, HOST, ["acme-tls/1"])
    ext = acme_identifier(cert)
    assert chosen == "acme-tls/1"
    assert ext is not None and ext.critical and ext.value.value == b"\x04\x20" + digest
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [HOST]

    for name, alpn in ((HOST, ["h2", "http/1.1"]), (HOST, None), ("other.example.test", ["acme-tls/1"])):
        cert, chosen = handshake(server_tls, name, alpn)
        assert acme_identifier(cert) is None, (name, alpn)
        assert chosen != "acme-tls/1"

    server_tls.watch_hellos(False)               # outside an order nobody gets it, whatever it offers
    cert, _ = handshake(server_tls, HOST, ["acme-tls/1"])
    assert acme_identifier(cert) is None


def test_the_hello_seen_is_what_the_client_offered(server_tls: ServerTLS) -> None:
    seen: list[clienthello.Hello] = []
    server_tls.challenge = lambda sslobj, name: seen.append(server_tls.hello(sslobj))   # type: ignore[func-returns-value]
    server_tls.watch_hellos(True)
    handshake(server_tls, HOST, ["h2", "acme-tls/1"])
    assert seen == [clienthello.Hello(alpn=("h2", "acme-tls/1"), server_name=HOST)]


# ---------------------------------------------------------------- the ClientHello reader
def client_hello(alpn: list[bytes], sni: bytes | None) -> bytes:
    exts = b""
    if sni is not None:
        entry = b"\x00" + struct.pack("!H", len(sni)) + sni
        exts += struct.pack("!HH", 0, len(entry) + 2) + struct.pack("!H", len(entry)) + entry
    if alpn:
        names = b"".join(bytes([len(p)]) + p for p in alpn)
        exts += struct.pack("!HH", 16, len(names) + 2) + struct.pack("!H", len(names)) + names
    body = b"\x03\x03" + b"r" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + struct.pack("!H", len(exts)) + exts
    return b"\x01" + len(body).to_bytes(3, "big") + body


protocol = st.binary(min_size=1, max_size=20).filter(lambda b: b.isascii())


@given(st.lists(protocol, max_size=5), st.one_of(st.none(), st.from_regex(r"[a-z0-9.-]{1,40}", fullmatch=True)))
def test_a_well_formed_hello_reads_back(alpn: list[bytes], sni: str | None) -> None:
    hello = clienthello.parse(client_hello(alpn, sni.encode() if sni else None))
    assert hello.alpn == tuple(p.decode() for p in alpn)
    assert hello.server_name == (sni.rstrip(".") if sni else None)


@given(st.binary(max_size=600))
def test_any_bytes_read_as_a_hello_or_nothing(data: bytes) -> None:
    assert isinstance(clienthello.parse(data), clienthello.Hello)


@given(st.integers(min_value=0, max_value=200), st.binary(max_size=8))
def test_a_cut_or_padded_hello_never_raises(cut: int, tail: bytes) -> None:
    whole = client_hello([b"acme-tls/1", b"h2"], b"mx.example.test")
    assert isinstance(clienthello.parse(whole[:cut] + tail), clienthello.Hello)
    if cut < len(whole):
        assert clienthello.parse(whole[:cut]) == clienthello.Hello()


# ---------------------------------------------------------------- the HTTP-01 app
@pytest.fixture
def http01() -> tuple[ChallengeApp, acme.Challenges]:
    pending = acme.Challenges()
    pending.add_http01("tok_EN-123", "tok_EN-123.thumb")
    return ChallengeApp(pending, HOST, https_port=8443), pending


def get(app: ChallengeApp, path: str, host: str = "mx.example.test") -> httpx.Response:
    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as client:
            return await client.get(path, headers={"host": host}, follow_redirects=False)
    return asyncio.run(run())


def test_http01_answers_pending_tokens_and_redirects_the_rest(http01: tuple[ChallengeApp, acme.Challenges]) -> None:
    app, pending = http01
    r = get(app, "/.well-known/acme-challenge/tok_EN-123")
    assert (r.status_code, r.text) == (200, "tok_EN-123.thumb")
    assert get(app, "/.well-known/acme-challenge/other").status_code == 404
    assert get(app, "/.well-known/acme-challenge/../x").status_code in (301, 404)
    r = get(app, "/api/health?x=1", host="mta-sts.example.test:80")
    assert (r.status_code, r.headers["location"]) == (301, "https://mta-sts.example.test:8443/api/health?x=1")
    r = get(app, "/", host="evil.test/@attacker")
    assert r.headers["location"] == "https://mx.example.test:8443/"
    pending.clear()
    assert get(app, "/.well-known/acme-challenge/tok_EN-123").status_code == 404


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(max_size=80), host=st.text(max_size=80))
def test_http01_location_is_always_our_https_origin_form(path: str, host: str) -> None:
    app = ChallengeApp(acme.Challenges(), HOST)
    scope = {"type": "http", "path": path, "raw_path": path.encode("utf-8", "replace"), "query_string": b"",
             "headers": [(b"host", host.encode("utf-8", "replace"))]}
    location = app.location(scope)
    assert location.startswith("https://")
    rest = location[len("https://"):]
    authority, _, target = rest.partition("/")
    assert "@" not in authority and " " not in location and "\r" not in location and "\n" not in location
    assert not target.startswith("/")          # never a scheme-relative //host


# ---------------------------------------------------------------- what a CA returns
def issued(names: list[str], days: float = 90, start: float = -1) -> tuple[bytes, bytes]:
    ca = trustme.CA()
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca._certificate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=start)).not_valid_after(now + dt.timedelta(days=start + days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(ca._private_key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem.bytes(), key_pem


def test_check_issued_accepts_only_a_usable_certificate() -> None:
    import time
    now = time.time()
    chain, key = issued([HOST, "mta-sts.example.test"])
    cert = acme.check_issued(chain, key, [HOST, "mta-sts.example.test"], now)
    assert cert.names == {HOST, "mta-sts.example.test"}
    assert cert.renew_at == pytest.approx(cert.not_after - (cert.not_after - cert.not_before) / 3)
    with pytest.raises(acme.AcmeError, match="does not cover mta-sts.example.test"):
        acme.check_issued(*issued([HOST]), [HOST, "mta-sts.example.test"], now)
    with pytest.raises(acme.AcmeError, match="not for our key"):
        acme.check_issued(chain, issued([HOST])[1], [HOST], now)
    with pytest.raises(acme.AcmeError, match="not valid now"):
        acme.check_issued(*issued([HOST], days=1, start=-3), [HOST], now)
    with pytest.raises(acme.AcmeError, match="does not parse"):
        acme.check_issued(b"<html>502</html>", key, [HOST], now)
    wildcard = acme.check_issued(*issued(["*.example.test"]), [HOST], now)
    assert wildcard.covers([HOST]) and not wildcard.covers(["a.b.example.test"])


def test_wanted_names() -> None:
    assert acme.wanted_names("MX.Example.TEST.", ["b.test", "a.test"], https=True) == \
        ["mx.example.test", "mta-sts.a.test", "mta-sts.b.test"]
    assert acme.wanted_names("mx.example.test", ["a.test"], https=False) == ["mx.example.test"]


# ---------------------------------------------------------------- mxd certs status
def test_certs_status_reports_the_served_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    import json

    from mxd.cli import main
    monkeypatch.setenv("MXD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MXD_HOSTNAME", HOST)
    monkeypatch.delenv("MXD_CONFIG", raising=False)
    assert main(["certs", "status", "--json"]) == 1                  # nothing yet
    assert json.loads(capsys.readouterr().out)["source"] == "none"

    keys.ensure_self_signed_cert(tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem", HOST)
    assert main(["certs", "status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["source"], report["names"]) == ("self-signed", [HOST])

    monkeypatch.setenv("MXD_ACME", "true")
    monkeypatch.setenv("MXD_ACME_HTTP_LISTEN", "127.0.0.1:1")
    chain, key = issued([HOST, "mta-sts.example.test"])
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / acme.CERT).write_bytes(chain)
    (tmp_path / "acme" / acme.KEY).write_bytes(key)
    assert main(["certs", "status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source"] == "acme" and report["names"] == ["mta-sts.example.test", HOST]
    assert report["not_before"] < report["renew_at"] < report["not_after"]
