"""What each listener accepts from a TLS client (`openssl s_client`): submission (587 STARTTLS, 465) and HTTPS
take TLS 1.2 or later with forward-secret AEAD suites only (`tls_min_version` "1.3": 1.3 only); the MX takes
whatever a peer has (RFC 7435: any encryption beats plain text). And a client with Python's default context,
trusting the CA, verifies the submission certificate without turning checks off."""
from __future__ import annotations

import shutil
import smtplib
import ssl
import subprocess

import pytest
import trustme

from tests.support.daemon import MxdProcess

HTTPS_PORT, HTTPS13_PORT = 26121, 26122
LEGACY = "DEFAULT@SECLEVEL=0"        # lets the client offer TLS 1.0/1.1 and old suites at all

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed (tests/run.sh)")


def _daemon(tmp, port: int, min_version: str) -> MxdProcess:
    ca = trustme.CA(key_type=trustme.KeyType.RSA)         # RSA, so that RSA key exchange can be offered at all
    cert = ca.issue_cert("mx.example.test", "127.0.0.1", key_type=trustme.KeyType.RSA)
    (tmp / "key.pem").write_bytes(cert.private_key_pem.bytes())
    (tmp / "cert.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    proc = MxdProcess(tmp / "data", env={"MXD_TLS_CERT": str(tmp / "cert.pem"), "MXD_TLS_KEY": str(tmp / "key.pem"),
                                         "MXD_HTTPS_LISTEN": f"127.0.0.1:{port}", "MXD_TLS_MIN_VERSION": min_version})
    proc.init()
    return proc.start()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    proc = _daemon(tmp_path_factory.mktemp("tls12"), HTTPS_PORT, "1.2")
    yield proc
    proc.stop()


def _listener(proc: MxdProcess, name: str, https_port: int) -> list[str]:
    return {"mx": ["-connect", f"127.0.0.1:{proc.mx_port}", "-starttls", "smtp"],
            "587": ["-connect", f"127.0.0.1:{proc.submission_port}", "-starttls", "smtp"],
            "465": ["-connect", f"127.0.0.1:{proc.submissions_port}"],
            "https": ["-connect", f"127.0.0.1:{https_port}", "-servername", "mx.example.test"]}[name]


def handshake(args: list[str]) -> str | None:
    """The protocol and suite agreed ("TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384"), None when the handshake failed."""
    out = subprocess.run(["openssl", "s_client", "-brief", *args], input=b"", capture_output=True, timeout=30)
    text = (out.stdout + out.stderr).decode(errors="replace")
    found = dict(line.split(": ", 1) for line in text.splitlines()
                 if line.startswith(("Protocol version: ", "Ciphersuite: ")))
    if out.returncode != 0 or not found:
        return None
    return f"{found['Protocol version']} {found['Ciphersuite']}"


OFFERS = {   # what the client offers -> (the MX, the other listeners)
    "tls1.0": (["-tls1", "-cipher", LEGACY], True, False),
    "tls1.1": (["-tls1_1", "-cipher", LEGACY], True, False),
    "tls1.2": (["-tls1_2"], True, True),
    "tls1.3": (["-tls1_3"], True, True),
    "rsa-kx": (["-tls1_2", "-cipher", "AES128-SHA"], True, False),                # no forward secrecy
    "cbc": (["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"], True, False),         # not AEAD
    "gcm": (["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"], True, True),
}


@pytest.mark.parametrize("listener", ["mx", "587", "465", "https"])
@pytest.mark.parametrize("offer", list(OFFERS))
def test_what_each_listener_accepts(daemon, listener, offer):
    args, on_mx, elsewhere = OFFERS[offer]
    agreed = handshake(_listener(daemon, listener, HTTPS_PORT) + args)
    if (on_mx if listener == "mx" else elsewhere):
        assert agreed is not None, f"{listener} refused {offer}"
        version = {"-tls1": "TLSv1 ", "-tls1_1": "TLSv1.1 ", "-tls1_2": "TLSv1.2 ", "-tls1_3": "TLSv1.3 "}[args[0]]
        assert agreed.startswith(version)
        suite = args[args.index("-cipher") + 1] if "-cipher" in args else LEGACY
        if suite != LEGACY:
            assert agreed.endswith(" " + suite)
    else:
        assert agreed is None, f"{listener} accepted {offer}: {agreed}"


def test_mx_prefers_a_modern_suite_when_the_peer_offers_one(daemon):
    assert handshake(_listener(daemon, "mx", HTTPS_PORT) + ["-tls1_2", "-cipher", LEGACY]) == \
        "TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384"


def test_python_default_context_verifies_submission_with_the_ca(daemon):
    ctx = ssl.create_default_context(cafile=str(daemon.data_dir.parent / "ca.pem"))
    with smtplib.SMTP("127.0.0.1", daemon.submission_port, local_hostname="client.test", timeout=30) as smtp:
        smtp.starttls(context=ctx)
        assert smtp.sock.version() in ("TLSv1.2", "TLSv1.3")
    with smtplib.SMTP_SSL("127.0.0.1", daemon.submissions_port, context=ctx, timeout=30,
                          local_hostname="client.test") as smtp:
        assert smtp.noop()[0] == 250
    # without the CA the same check fails: the certificate is really verified
    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL("127.0.0.1", daemon.submissions_port, context=ssl.create_default_context(), timeout=30)


def test_tls_min_version_1_3_refuses_1_2_on_submission_and_https_not_on_the_mx(tmp_path):
    proc = _daemon(tmp_path, HTTPS13_PORT, "1.3")
    try:
        for name in ("587", "465", "https"):
            assert handshake(_listener(proc, name, HTTPS13_PORT) + ["-tls1_2"]) is None, name
            assert handshake(_listener(proc, name, HTTPS13_PORT) + ["-tls1_3"]).startswith("TLSv1.3 "), name
        assert handshake(_listener(proc, "mx", HTTPS13_PORT) + ["-tls1_2"]).startswith("TLSv1.2 ")
    finally:
        proc.stop()
