from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import stat
import threading
from dataclasses import replace
from pathlib import Path

import dkim
import pytest
from cryptography import x509

from mxd import keys
from mxd.certs.contexts import ServerTLS
from mxd.config import Config
from mxd.dnsrecords import DnsRecord, required_records, reverse_records
from mxd.keys import (
    DkimKey,
    KeyMaterialError,
    dkim_private_for_dkimpy,
    ensure_self_signed_cert,
    generate_dkim_keys,
    load_dkim_keys,
)

NOV = dt.datetime(2025, 11, 22, 10, 30, tzinfo=dt.timezone.utc)
HOST = "mail.example.test"

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"\r\n"
    b"Hi Bob.\r\n"
)

# Ed25519 key from the seed 00 01 02 ... 1f, so the record text is fixed.
FIXED_ED25519_PEM = (
    b"-----BEGIN PRIVATE KEY-----\n"
    b"MC4CAQAwBQYDK2VwBCIEIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f\n"
    b"-----END PRIVATE KEY-----\n"
)
FIXED_ED25519_DNS = "v=DKIM1; k=ed25519; p=A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def dkim_dir(tmp_path: Path) -> Path:
    return tmp_path / "dkim"


@pytest.fixture
def made(dkim_dir: Path) -> list[DkimKey]:
    return generate_dkim_keys(dkim_dir, "Example.COM", now=NOV)


# ---------------------------------------------------------------- DKIM keys on disk

def test_generate_creates_two_active_keys(made: list[DkimKey]) -> None:
    assert [(k.domain, k.selector, k.algorithm, k.state, k.created) for k in made] == [
        ("example.com", "mxd202511r", "rsa-sha256", "active", "2025-11-22T10:30:00Z"),
        ("example.com", "mxd202511e", "ed25519-sha256", "active", "2025-11-22T10:30:00Z"),
    ]
    assert made[0].dns_name == "mxd202511r._domainkey.example.com"
    assert made[0].public_dns_value.startswith("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA")
    assert made[1].public_dns_value.startswith("v=DKIM1; k=ed25519; p=")
    assert len(made[1].public_dns_value) == len("v=DKIM1; k=ed25519; p=") + 44
    assert b"BEGIN PRIVATE KEY" in made[0].private_key_pem          # PKCS#8
    assert b"BEGIN PRIVATE KEY" in made[1].private_key_pem
    assert "PRIVATE" not in repr(made[0])                           # never printed by accident


def test_files_and_modes(dkim_dir: Path, made: list[DkimKey]) -> None:
    folder = dkim_dir / "example.com"
    assert mode(folder) == 0o700
    assert mode(folder / "mxd202511r.pem") == 0o600
    assert mode(folder / "mxd202511e.pem") == 0o600
    assert mode(folder / "keys.json") == 0o600
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "keys.json", "mxd202511e.pem", "mxd202511r.pem"]
    manifest = json.loads((folder / "keys.json").read_text())
    assert manifest == {
        "version": 1,
        "domain": "example.com",
        "keys": [
            {"selector": "mxd202511r", "algorithm": "rsa-sha256", "created": "2025-11-22T10:30:00Z", "state": "active"},
            {"selector": "mxd202511e", "algorithm": "ed25519-sha256", "created": "2025-11-22T10:30:00Z", "state": "active"},
        ],
    }


def test_modes_ignore_umask(dkim_dir: Path) -> None:
    old = os.umask(0)
    try:
        generate_dkim_keys(dkim_dir, "example.org", now=NOV)
    finally:
        os.umask(old)
    assert mode(dkim_dir / "example.org" / "mxd202511e.pem") == 0o600


def test_second_call_never_overwrites(dkim_dir: Path, made: list[DkimKey]) -> None:
    folder = dkim_dir / "example.com"
    before = {p.name: p.read_bytes() for p in folder.glob("*")}
    again = generate_dkim_keys(dkim_dir, "example.com", now=NOV + dt.timedelta(days=40))
    assert again == made
    assert {p.name: p.read_bytes() for p in folder.glob("*")} == before
    assert load_dkim_keys(dkim_dir, "example.com") == made


def test_retired_key_is_kept_and_replaced_under_a_new_selector(dkim_dir: Path, made: list[DkimKey]) -> None:
    folder = dkim_dir / "example.com"
    old_pem = (folder / "mxd202511r.pem").read_bytes()
    manifest = json.loads((folder / "keys.json").read_text())
    manifest["keys"][0]["state"] = "retired"
    (folder / "keys.json").write_text(json.dumps(manifest))

    got = generate_dkim_keys(dkim_dir, "example.com", now=NOV)
    assert [(k.selector, k.state) for k in got] == [
        ("mxd202511r", "retired"), ("mxd202511e", "active"), ("mxd202511r2", "active"),
    ]
    assert (folder / "mxd202511r.pem").read_bytes() == old_pem
    assert got[2].private_key_pem != old_pem


def test_load_without_keys_is_empty(dkim_dir: Path) -> None:
    assert load_dkim_keys(dkim_dir, "example.com") == []


def test_load_reports_missing_key_file(dkim_dir: Path, made: list[DkimKey]) -> None:
    (dkim_dir / "example.com" / "mxd202511e.pem").unlink()
    with pytest.raises(KeyMaterialError, match="mxd202511e.pem: listed in keys.json but missing"):
        load_dkim_keys(dkim_dir, "example.com")


def test_domain_cannot_escape_the_key_directory(dkim_dir: Path) -> None:
    with pytest.raises(ValueError):
        generate_dkim_keys(dkim_dir, "../etc")
    assert not dkim_dir.exists()


def test_write_new_refuses_to_replace(tmp_path: Path) -> None:
    target = tmp_path / "k.pem"
    keys._write_new(target, b"first")
    with pytest.raises(FileExistsError):
        keys._write_new(target, b"second")
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]     # no temporary left behind


# ---------------------------------------------------------------- DKIM with dkimpy

def dnsfunc_for(key_list: list[DkimKey]):
    records = {f"{k.dns_name}.".encode(): k.public_dns_value.encode() for k in key_list}

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return dnsfunc


@pytest.mark.parametrize("index,algorithm", [(0, b"rsa-sha256"), (1, b"ed25519-sha256")])
def test_dkimpy_signs_and_verifies(made: list[DkimKey], index: int, algorithm: bytes) -> None:
    key = made[index]
    header = dkim.sign(
        MESSAGE, key.selector.encode(), key.domain.encode(), dkim_private_for_dkimpy(key),
        signature_algorithm=algorithm, include_headers=[b"from", b"to", b"subject", b"message-id"],
    )
    assert f"a={algorithm.decode()}".encode() in header
    assert f"s={key.selector}".encode() in header
    signed = header + MESSAGE
    assert dkim.verify(signed, dnsfunc=dnsfunc_for(made)) is True
    assert dkim.verify(signed.replace(b"Hi Bob.", b"Hi Eve."), dnsfunc=dnsfunc_for(made)) is False


def test_dkimpy_private_forms(made: list[DkimKey]) -> None:
    assert dkim_private_for_dkimpy(made[0]) == made[0].private_key_pem
    fixed = replace(made[1], private_key_pem=FIXED_ED25519_PEM)
    assert dkim_private_for_dkimpy(fixed) == b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def test_public_value_of_fixed_ed25519_key(dkim_dir: Path) -> None:
    folder = dkim_dir / "example.com"
    folder.mkdir(parents=True)
    (folder / "sel1.pem").write_bytes(FIXED_ED25519_PEM)
    (folder / "keys.json").write_text(json.dumps({"keys": [
        {"selector": "sel1", "algorithm": "ed25519-sha256", "created": "2025-01-01T00:00:00Z", "state": "active"},
    ]}))
    [key] = load_dkim_keys(dkim_dir, "example.com")
    assert key.public_dns_value == FIXED_ED25519_DNS
    # generate_dkim_keys keeps it and only adds the missing RSA key
    got = generate_dkim_keys(dkim_dir, "example.com", now=NOV)
    assert [(k.selector, k.algorithm) for k in got] == [("sel1", "ed25519-sha256"), ("mxd202511r", "rsa-sha256")]
    assert (folder / "sel1.pem").read_bytes() == FIXED_ED25519_PEM


# ---------------------------------------------------------------- TLS

def test_self_signed_cert_created_once(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    assert ensure_self_signed_cert(cert, key, HOST) is True
    assert mode(key) == 0o600
    assert mode(cert) == 0o644
    before = (cert.read_bytes(), key.read_bytes())
    assert ensure_self_signed_cert(cert, key, HOST) is False
    assert (cert.read_bytes(), key.read_bytes()) == before

    parsed = x509.load_pem_x509_certificate(before[0])
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOST]
    lifetime = parsed.not_valid_after_utc - parsed.not_valid_before_utc
    assert lifetime == dt.timedelta(days=3651)


def test_cert_refuses_half_state(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    key.write_bytes(b"precious")
    with pytest.raises(KeyMaterialError, match="exists but"):
        ensure_self_signed_cert(cert, key, HOST)
    assert key.read_bytes() == b"precious"
    assert not cert.exists()


def test_tls_handshake_on_loopback(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ensure_self_signed_cert(cert, key, HOST)
    server_ctx = ServerTLS(Config()).build("submission", cert, key)
    assert server_ctx.minimum_version == ssl.TLSVersion.TLSv1_2

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    result: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            result["server_version"] = tls.version()
            tls.sendall(tls.recv(100).upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(cert))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client_ctx.wrap_socket(raw, server_hostname=HOST) as tls:
            tls.sendall(b"ehlo")
            assert tls.recv(100) == b"EHLO"
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    thread.join(10)
    listener.close()
    assert result["server_version"] in ("TLSv1.2", "TLSv1.3")


def test_tls_wrong_hostname_is_refused(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ensure_self_signed_cert(cert, key, HOST)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    a, b = socket.socketpair()
    server_ctx = ServerTLS(Config()).build("submission", cert, key)

    def serve() -> None:
        try:
            server_ctx.wrap_socket(b, server_side=True).close()
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with pytest.raises(ssl.SSLCertVerificationError):
        client_ctx.wrap_socket(a, server_hostname="other.example.test")
    a.close()
    thread.join(10)
    b.close()


# ---------------------------------------------------------------- DNS records

FIXED_KEY = DkimKey(
    domain="example.com", selector="mxd202511e", algorithm="ed25519-sha256",
    private_key_pem=FIXED_ED25519_PEM, public_dns_value=FIXED_ED25519_DNS, state="active",
)


def test_required_records_literal() -> None:
    retired = replace(FIXED_KEY, selector="old", state="retired")
    records = required_records("Example.com.", "mail.example.com", [FIXED_KEY, retired],
                               ipv4="203.0.113.5", ipv6="2001:DB8:0:0::25")
    assert [r.zone_line() for r in records] == [
        "example.com. 3600 IN MX 10 mail.example.com.",
        "mail.example.com. 3600 IN A 203.0.113.5",
        "mail.example.com. 3600 IN AAAA 2001:db8::25",
        'example.com. 3600 IN TXT "v=spf1 ip4:203.0.113.5 ip6:2001:db8::25 mx ~all"',
        'mxd202511e._domainkey.example.com. 3600 IN TXT "v=DKIM1; k=ed25519; p=A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="',
        '_dmarc.example.com. 3600 IN TXT "v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:postmaster@example.com"',
    ]
    assert records[0].to_json() == {
        "name": "example.com", "type": "MX", "value": "10 mail.example.com",
        "purpose": "mail for example.com is delivered to mail.example.com",
    }
    assert records[3].value == "v=spf1 ip4:203.0.113.5 ip6:2001:db8::25 mx ~all"


def test_required_records_without_addresses() -> None:
    records = required_records("example.com", "mail.example.com", [FIXED_KEY])
    assert [(r.name, r.type, r.value) for r in records] == [
        ("example.com", "MX", "10 mail.example.com"),
        ("example.com", "TXT", "v=spf1 mx ~all"),
        ("mxd202511e._domainkey.example.com", "TXT", FIXED_ED25519_DNS),
        ("_dmarc.example.com", "TXT", "v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:postmaster@example.com"),
    ]


def test_reverse_records() -> None:
    assert [r.zone_line() for r in reverse_records("mail.example.com", "203.0.113.5", "2001:db8::25")] == [
        "5.113.0.203.in-addr.arpa. 3600 IN PTR mail.example.com.",
        "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 3600 IN PTR mail.example.com.",
    ]


def test_zone_line_splits_long_txt() -> None:
    value = "v=DKIM1; k=rsa; p=" + "A" * 392           # the length of an RSA-2048 record
    line = DnsRecord("s._domainkey.example.com", "TXT", value, "dkim").zone_line(ttl=300)
    assert line == (
        's._domainkey.example.com. 300 IN TXT "v=DKIM1; k=rsa; p=' + "A" * 237 + '" "' + "A" * 155 + '"'
    )


def test_zone_line_splits_real_rsa_record(made: list[DkimKey]) -> None:
    [rsa_record] = [r for r in required_records("example.com", HOST, made) if "k=rsa" in r.value]
    rdata = rsa_record.zone_line().split(" IN TXT ", 1)[1]
    strings = [s.strip('"') for s in rdata.split('" "')]
    assert len(rsa_record.value) == 410
    assert [len(s) for s in strings] == [255, 155]
    assert "".join(strings) == rsa_record.value


def test_zone_line_escapes_quotes() -> None:
    assert DnsRecord("x.example.com", "TXT", 'a "b" \\c', "t").zone_line() == r'x.example.com. 3600 IN TXT "a \"b\" \\c"'
