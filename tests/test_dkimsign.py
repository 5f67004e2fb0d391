"""mxd.dkimsign: signatures that dkimpy, mxd.authn.dkim (over real DNS) and OpenDKIM all accept."""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import dkim
import pytest
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from mxd import dkimsign
from mxd.authn.dkim import verify as mxd_verify
from mxd.dkimsign import NoSigningKey, Signer, relaxed_body, sign_message
from mxd.keys import ED25519, RSA, DkimKey, generate_dkim_keys
from mxd.resolver import make_resolver
from tests.support.corpora import CORPUS
from tests.support.dnsserver import DNSServer

DOMAIN = "example.test"

MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.net\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"\r\n"
    b"Hi Bob.\r\n"
)

MULTIPART_UTF8 = (
    "From: Zoë <zoe@example.test>\r\n"
    "To: Jürgen <juergen@example.net>\r\n"
    "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    "Subject: Grüße – 日本語\r\n"                     # RFC 6532 raw UTF-8 header
    "Message-ID: <2@example.test>\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/alternative; boundary="b1"\r\n'
    "\r\n"
    "--b1\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Grüße aus Köln. 你好。 ☃\r\n"
    "--b1\r\n"
    "Content-Type: text/html; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "<p>Grüße aus Köln. 你好。 ☃</p>\r\n"
    "--b1--\r\n"
).encode("utf-8")

FOLDED = (
    b"From: Alice\r\n  <alice@example.test>  \r\n"
    b"To: bob@example.net,\r\n\tcarol@example.net \t\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"Subject: a   subject\r\n \t that is\r\n\t folded   \r\n"
    b"Message-ID: <3@example.test>\r\n"
    b"\r\n"
    b"line with trailing spaces   \r\n"
    b"tabs\t\tinside  and  out\t\r\n"
    b"\r\n"
    b"\r\n"
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> list[DkimKey]:
    return generate_dkim_keys(tmp_path_factory.mktemp("dkim"), DOMAIN)


@pytest.fixture(scope="module")
def signer(keys: list[DkimKey]) -> Signer:
    return Signer(keys)


@pytest.fixture(scope="module")
def zone(keys: list[DkimKey]) -> dict:
    return {k.dns_name: {"TXT": [k.public_dns_value]} for k in keys}


def dnsfunc_for(keys: list[DkimKey]):
    records = {k.dns_name: k.public_dns_value.encode() for k in keys}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode().rstrip("."))
    return dnsfunc


def signatures(signed: bytes) -> list[bytes]:
    """The DKIM-Signature fields at the top of `signed`, each with its CRLF."""
    return re.findall(rb"DKIM-Signature:.*?\r\n(?! )", signed, re.S)


def tag(field: bytes, name: bytes) -> bytes:
    value = dkim.util.parse_tag_value(field.split(b":", 1)[1])[name]
    return re.sub(rb"\s+", b"", value)


def dkimpy_results(signed: bytes, keys: list[DkimKey]) -> list[bool]:
    d = dkim.DKIM(signed)
    results = []
    for i in range(len(signatures(signed))):
        try:
            results.append(d.verify(idx=i, dnsfunc=dnsfunc_for(keys)))
        except dkim.ValidationError:     # raised for a body hash mismatch
            results.append(False)
    return results


# ---------------------------------------------------------------- format

def test_one_signature_per_active_key_rsa_first(signer: Signer) -> None:
    sigs = signatures(signer.sign(MESSAGE, DOMAIN))
    assert [tag(s, b"a") for s in sigs] == [b"rsa-sha256", b"ed25519-sha256"]
    assert all(tag(s, b"c") == b"relaxed/relaxed" for s in sigs)
    assert all(tag(s, b"d") == b"example.test" for s in sigs)
    assert re.fullmatch(rb"\d{10}", tag(sigs[0], b"t"))


def test_body_hash_shared_and_no_length_tag(signer: Signer) -> None:
    sigs = signatures(signer.sign(MESSAGE, DOMAIN))
    assert tag(sigs[0], b"bh") == tag(sigs[1], b"bh")
    assert all(b"l" not in dkim.util.parse_tag_value(s.split(b":", 1)[1]) for s in sigs)


def test_header_list_oversigns_singletons_and_signs_absent_ones(signer: Signer) -> None:
    h = tag(signatures(signer.sign(MESSAGE, DOMAIN))[0], b"h")
    assert h == (b"from:from:to:to:cc:subject:subject:date:date:message-id:message-id:"
                 b"in-reply-to:references:reply-to")


def test_mime_headers_signed_as_often_as_present(signer: Signer) -> None:
    h = tag(signatures(signer.sign(MULTIPART_UTF8, DOMAIN))[0], b"h").split(b":")
    assert h.count(b"mime-version") == 1 and h.count(b"content-type") == 1
    assert b"content-transfer-encoding" not in h     # only in the parts, not the top header


def test_folded_lines_at_most_78(signer: Signer) -> None:
    out = signer.sign(MESSAGE, DOMAIN)
    assert out.endswith(b"\r\n")
    assert max(len(line) for line in out.split(b"\r\n")) <= 78


def test_sign_message_prepends(keys: list[DkimKey]) -> None:
    out = sign_message(MESSAGE, keys)
    assert out.endswith(MESSAGE)
    assert len(signatures(out)) == 2


# ---------------------------------------------------------------- verification

@pytest.mark.parametrize("message", [MESSAGE, MULTIPART_UTF8, FOLDED], ids=["plain", "multipart-utf8", "folded"])
def test_dkimpy_verifies_both(signer: Signer, keys: list[DkimKey], message: bytes) -> None:
    assert dkimpy_results(signer.sign(message, DOMAIN) + message, keys) == [True, True]


@pytest.mark.parametrize("message", [MESSAGE, MULTIPART_UTF8, FOLDED], ids=["plain", "multipart-utf8", "folded"])
def test_mxd_verify_through_dns_server(signer: Signer, zone: dict, message: bytes) -> None:
    with DNSServer(zone) as server:
        results = mxd_verify(signer.sign(message, DOMAIN) + message, make_resolver([server.nameserver]))
        queried = {q[0] for q in server.queries}
    assert [(r.result, r.algorithm) for r in results] == [("pass", RSA), ("pass", ED25519)]
    assert queried == set(zone)


def test_relaxed_survives_refolding(signer: Signer, keys: list[DkimKey]) -> None:
    signed = signer.sign(FOLDED, DOMAIN) + FOLDED
    refolded = signed.replace(b"\r\n \t that is\r\n\t folded", b" that is folded").replace(b"   \r\n\r\n", b"\r\n\r\n")
    assert refolded != signed
    assert dkimpy_results(refolded, keys) == [True, True]


def test_bare_lf_is_normalised_before_signing(signer: Signer, keys: list[DkimKey]) -> None:
    lf = MESSAGE.replace(b"\r\n", b"\n")
    assert dkimpy_results(signer.sign(lf, DOMAIN) + MESSAGE, keys) == [True, True]
    assert sign_message(lf, keys).endswith(MESSAGE)


def test_missing_final_crlf_added_as_on_the_wire(signer: Signer, keys: list[DkimKey]) -> None:
    # aiosmtplib adds the CRLF before "."; a trailing space on that last line is then stripped too
    unterminated = MESSAGE[:-2] + b"  "
    assert sign_message(unterminated, keys).endswith(unterminated + b"\r\n")
    wire = unterminated + b"\r\n"
    assert dkimpy_results(signer.sign(unterminated, DOMAIN) + wire, keys) == [True, True]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"b", b" ", b"  ", b"\t", b"\r\n", b"\r", b"\n", b"\x0b", b"\xc3\xa9"]),
                max_size=40).map(b"".join))
def test_relaxed_body_equals_dkimpy(body: bytes) -> None:
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


def test_relaxed_body_equals_dkimpy_on_corpus() -> None:
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file())[:300]
    assert len(files) > 50
    for path in files:
        body = re.sub(rb"\r\n|\r|\n", b"\r\n", path.read_bytes())
        assert relaxed_body(body) == Relaxed.canonicalize_body(body), path


def _tamper_body(m: bytes) -> bytes:
    return m.replace(b"Hi Bob.", b"Hi Bob!")


def _tamper_subject(m: bytes) -> bytes:
    return m.replace(b"Subject: hello", b"Subject: hellO")


def _second_from_below(m: bytes) -> bytes:
    return m.replace(b"\r\n\r\n", b"\r\nFrom: Mallory <m@evil.test>\r\n\r\n", 1)


def _second_from_above(m: bytes) -> bytes:
    return m.replace(b"From: Alice", b"From: Mallory <m@evil.test>\r\nFrom: Alice", 1)


def _second_subject(m: bytes) -> bytes:
    return m.replace(b"\r\n\r\n", b"\r\nSubject: pay now\r\n\r\n", 1)


def _add_reply_to(m: bytes) -> bytes:
    return m.replace(b"\r\n\r\n", b"\r\nReply-To: m@evil.test\r\n\r\n", 1)


TAMPERS = [_tamper_body, _tamper_subject, _second_from_below, _second_from_above, _second_subject, _add_reply_to]


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda f: f.__name__.strip("_"))
def test_tampering_breaks_both(signer: Signer, keys: list[DkimKey], zone: dict, tamper) -> None:
    signed = signer.sign(MESSAGE, DOMAIN) + MESSAGE
    tampered = tamper(signed)
    assert tampered != signed
    assert dkimpy_results(tampered, keys) == [False, False]
    with DNSServer(zone) as server:
        results = mxd_verify(tampered, make_resolver([server.nameserver]))
    assert [r.result for r in results] == ["fail", "fail"]


def test_adding_default_content_type_keeps_signature(signer: Signer, keys: list[DkimKey]) -> None:
    # the documented exception: absent MIME fields are not signed as absent
    signed = signer.sign(MESSAGE, DOMAIN) + MESSAGE
    added = signed.replace(b"\r\n\r\n", b"\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n", 1)
    assert dkimpy_results(added, keys) == [True, True]


# ---------------------------------------------------------------- keys and errors

def test_keys_parsed_once(keys: list[DkimKey], monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = dkimsign.load_pem_private_key

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(dkimsign, "load_pem_private_key", counting)
    signer = Signer(keys)
    assert len(calls) == 2
    for i in range(1000):
        signer.sign(MESSAGE.replace(b"<1@", b"<%d@" % i), DOMAIN)
    assert len(calls) == 2


def test_retired_keys_do_not_sign(keys: list[DkimKey]) -> None:
    retired_ed = [k if k.algorithm == RSA else replace(k, state="retired") for k in keys]
    sigs = signatures(Signer(retired_ed).sign(MESSAGE, DOMAIN))
    assert [tag(s, b"a") for s in sigs] == [b"rsa-sha256"]


def test_unknown_domain(signer: Signer) -> None:
    with pytest.raises(NoSigningKey):
        signer.sign(MESSAGE, "other.test")


def test_domain_case_insensitive(signer: Signer) -> None:
    assert len(signatures(signer.sign(MESSAGE, "Example.TEST."))) == 2


def test_idn_domain_signs_with_a_label(tmp_path: Path) -> None:
    idn_keys = generate_dkim_keys(tmp_path, "bücher.example")
    message = MESSAGE.replace(b"example.test", "bücher.example".encode())
    signed = Signer(idn_keys).sign(message, "Bücher.example") + message
    assert [tag(s, b"d") for s in signatures(signed)] == [b"xn--bcher-kva.example"] * 2
    assert dkimpy_results(signed, idn_keys) == [True, True]


def test_message_without_from_refused(signer: Signer) -> None:
    with pytest.raises(ValueError, match="From"):
        signer.sign(b"To: bob@example.net\r\n\r\nhi\r\n", DOMAIN)


def test_unparsable_header_refused(signer: Signer) -> None:
    with pytest.raises(ValueError, match="header"):
        signer.sign(b"From: a@example.test\r\nnot a header\r\n\r\nhi\r\n", DOMAIN)


# ---------------------------------------------------------------- OpenDKIM

@pytest.fixture(scope="module")
def opendkim(zone: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A runner of opendkim-testmsg whose system resolver is a DNSServer on 127.0.0.53:53."""
    testmsg = shutil.which("opendkim-testmsg") or "/usr/sbin/opendkim-testmsg"
    if not Path(testmsg).exists():
        pytest.skip("opendkim-testmsg not installed (Debian: opendkim-tools)")
    if not shutil.which("unshare"):
        pytest.skip("unshare not installed")
    folder = tmp_path_factory.mktemp("opendkim")
    resolv = folder / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\noptions timeout:2 attempts:2\n")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind "$1" /etc/resolv.conf', "sh", str(resolv)],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot bind-mount resolv.conf in a mount namespace: {probe.stderr.strip()}")
    try:
        server = DNSServer(zone, host="127.0.0.53", port=53).start()
    except OSError as e:
        pytest.skip(f"cannot bind 127.0.0.53:53: {e}")

    def run(message: bytes, name: str) -> subprocess.CompletedProcess:
        path = folder / name
        path.write_bytes(message)
        return subprocess.run(
            ["unshare", "-m", "sh", "-c", 'mount --bind "$1" /etc/resolv.conf && exec "$2" < "$3"',
             "sh", str(resolv), testmsg, str(path)],
            capture_output=True, text=True, timeout=60)
    try:
        yield run
    finally:
        server.stop()


def _corrupt_b(sig: bytes) -> bytes:
    i = sig.index(b" b=") + 20
    return sig[:i] + (b"A" if sig[i:i + 1] != b"A" else b"B") + sig[i + 1:]


@pytest.mark.parametrize("message", [MESSAGE, MULTIPART_UTF8, FOLDED], ids=["plain", "multipart-utf8", "folded"])
def test_opendkim_verifies_each_signature(signer: Signer, opendkim, message: bytes) -> None:
    # opendkim-testmsg exits 0 when any one signature passes, so each is checked alone
    rsa_sig, ed_sig = signatures(signer.sign(message, DOMAIN))
    for name, sig in (("rsa", rsa_sig), ("ed25519", ed_sig)):
        r = opendkim(sig + message, f"{name}.eml")
        assert r.returncode == 0, (name, r.stdout, r.stderr)


# No second From here: OpenDKIM's strict header checks refuse that message before any crypto.
@pytest.mark.parametrize("tamper", [_tamper_body, _tamper_subject, _add_reply_to, _corrupt_b],
                         ids=lambda f: f.__name__.strip("_"))
def test_opendkim_rejects_tampered(signer: Signer, opendkim, tamper) -> None:
    for name, sig in zip(("rsa", "ed25519"), signatures(signer.sign(MESSAGE, DOMAIN))):
        tampered = _corrupt_b(sig) + MESSAGE if tamper is _corrupt_b else tamper(sig + MESSAGE)
        r = opendkim(tampered, f"{name}-tampered.eml")
        assert r.returncode != 0, (name, r.stdout, r.stderr)
        assert "Bad signature" in r.stderr
