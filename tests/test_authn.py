"""mxd.authn end to end: SPF, DKIM, DMARC and Authentication-Results, every lookup through a real DNS server on loopback."""
from __future__ import annotations

import base64
import re
import time

import authres
import dkim as dkimpy
import nacl.encoding
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxd.authn import AuthResults, authenticate, dmarc, spf
from mxd.resolver import StaticResolver, make_resolver
from tests.support.dnsserver import DNSServer, dns_server  # noqa: F401  (fixture)

AUTHSERV = "mx.example.net"
MSG = (b"From: Alice <alice@x.org>\r\n"
       b"To: bob@example.net\r\n"
       b"Subject: hello\r\n"
       b"Date: Sat, 22 Nov 2025 00:00:00 +0000\r\n"
       b"Message-ID: <1@x.org>\r\n"
       b"\r\n"
       b"Hello Bob.\r\n")


# --- keys and signing ---

@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[bytes, str]]:
    """{"rsa": (private key for dkimpy, DNS record), "ed25519": (...)}, fresh for this run."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_priv = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption())
    rsa_pub = rsa_key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    ed = nacl.signing.SigningKey.generate()
    return {
        "rsa": (rsa_priv, "v=DKIM1; k=rsa; p=" + base64.b64encode(rsa_pub).decode()),
        "ed25519": (ed.encode(nacl.encoding.Base64Encoder),
                    "v=DKIM1; k=ed25519; p=" + ed.verify_key.encode(nacl.encoding.Base64Encoder).decode()),
    }


def sign(raw: bytes, keys: dict, kind: str, domain: str = "x.org", selector: str | None = None) -> bytes:
    algo = b"rsa-sha256" if kind == "rsa" else b"ed25519-sha256"
    sel = (selector or f"{kind}sel").encode()
    header = dkimpy.sign(raw, sel, domain.encode(), keys[kind][0], signature_algorithm=algo,
                         canonicalize=(b"relaxed", b"relaxed"), include_headers=[b"from", b"to", b"subject"])
    return header + raw


def publish(server: DNSServer, keys: dict, domain: str = "x.org") -> None:
    server.set(f"rsasel._domainkey.{domain}", "TXT", [keys["rsa"][1]])  # over 255 bytes: split strings
    server.set(f"ed25519sel._domainkey.{domain}", "TXT", [keys["ed25519"][1]])


def run(server: DNSServer, raw: bytes = MSG, *, ip: str = "192.0.2.10", helo: str = "mail.x.org",
        mail_from: str = "alice@x.org") -> AuthResults:
    resolver = make_resolver([server.nameserver], timeout=1.0)
    return authenticate(raw, ip=ip, helo=helo, mail_from=mail_from, resolver=resolver, authserv_id=AUTHSERV)


def spf_result(server: DNSServer, record: str | None = None, *, ip: str = "192.0.2.10",
               mail_from: str = "alice@x.org", helo: str = "mail.x.org") -> spf.SpfResult:
    if record is not None:
        server.set("x.org", "TXT", [record])
    return spf.check(ip, helo, mail_from, make_resolver([server.nameserver], timeout=1.0))


def parsed(value: str):
    return authres.AuthenticationResultsHeader.parse("Authentication-Results: " + value)


# --- SPF (RFC 7208) ---

@pytest.mark.parametrize("record, expected", [
    ("v=spf1 ip4:192.0.2.0/24 -all", "pass"),
    ("v=spf1 ip4:198.51.100.1 -all", "fail"),
    ("v=spf1 ip4:198.51.100.1 ~all", "softfail"),
    ("v=spf1 ip4:198.51.100.1 ?all", "neutral"),
    ("v=spf1 ip4:198.51.100.1", "neutral"),                       # RFC 7208 4.7 default
    ("V=SPF1 IP4:192.0.2.10 -ALL", "pass"),                       # case-insensitive
    ("v=spf1 -ip4:192.0.2.10 +all", "fail"),
    ("v=spf1 ip6:2001:db8::/32 -all", "fail"),                    # wrong family never matches
    ("v=spf1 ip4:192.0.2.10/33 -all", "permerror"),
    ("v=spf1 ip4:999.0.2.10 -all", "permerror"),
    ("v=spf1 frobnicate -all", "permerror"),
    ("v=spf1 -all redirect=x.org redirect=y.org", "permerror"),
    ("v=spf1 include -all", "permerror"),
    ("v=spf1 a:localhost -all", "permerror"),                     # domain-spec without a top label
    ("v=spf1 exists:%{z}.x.org -all", "permerror"),               # unknown macro letter
    ("v=spf1 exists:%{c}.x.org -all", "permerror"),               # exp-only macro
    ("v=spf1 foo=%{ -all", "permerror"),                           # unknown modifier must still parse
    ("v=spf1 foo=bar ip4:192.0.2.10 -all", "pass"),                # ... and is otherwise ignored
    ("v=spf1 exp=explain.x.org ip4:192.0.2.10 -all", "pass"),
    ("v=spf1x -all", "none"),                                      # not an SPF record
])
def test_spf_results(dns_server: DNSServer, record: str, expected: str) -> None:
    assert spf_result(dns_server, record).result == expected


def test_spf_none_without_record_or_domain(dns_server: DNSServer) -> None:
    r = spf_result(dns_server, mail_from="alice@nowhere.example")
    assert (r.result, r.domain, r.identity) == ("none", "nowhere.example", "mailfrom")
    assert spf_result(dns_server, mail_from="alice@single-label").result == "none"   # RFC 7208 4.3


def test_spf_two_records_permerror(dns_server: DNSServer) -> None:
    dns_server.set("x.org", "TXT", ["v=spf1 -all", "v=spf1 +all", "google-site-verification=1"])
    assert spf_result(dns_server).result == "permerror"  # RFC 7208 4.5


def test_spf_temperror(dns_server: DNSServer) -> None:
    dns_server.set("x.org", "SERVFAIL")
    assert spf_result(dns_server).result == "temperror"
    dns_server.delete("x.org")
    dns_server.set("broken.example", "SERVFAIL")
    assert spf_result(dns_server, "v=spf1 include:broken.example -all").result == "temperror"
    assert spf_result(dns_server, "v=spf1 a:broken.example -all").result == "temperror"


def test_spf_include_and_redirect(dns_server: DNSServer) -> None:
    dns_server.set("_spf.provider.example", "TXT", ["v=spf1 ip4:192.0.2.0/28 -all"])
    dns_server.set("none.example", "A", ["192.0.2.99"])
    assert spf_result(dns_server, "v=spf1 include:_spf.provider.example -all").result == "pass"
    # RFC 7208 5.2: an included fail is "no match", evaluation goes on
    assert spf_result(dns_server, "v=spf1 include:_spf.provider.example ?all", ip="192.0.2.200").result == "neutral"
    # RFC 7208 5.2: include of a domain without SPF is permerror
    assert spf_result(dns_server, "v=spf1 include:none.example -all").result == "permerror"
    assert spf_result(dns_server, "v=spf1 redirect=_spf.provider.example").result == "pass"
    assert spf_result(dns_server, "v=spf1 redirect=_spf.provider.example", ip="192.0.2.200").result == "fail"
    assert spf_result(dns_server, "v=spf1 redirect=none.example").result == "permerror"   # RFC 7208 6.1
    # RFC 7208 6.1: redirect is ignored when a mechanism matched
    assert spf_result(dns_server, "v=spf1 ip4:192.0.2.10 redirect=none.example").result == "pass"


def test_spf_a_and_mx(dns_server: DNSServer) -> None:
    dns_server.set("x.org", "A", ["192.0.2.10"])
    dns_server.set("x.org", "MX", [(10, "mx1.x.org"), (20, "mx2.x.org")])
    dns_server.set("mx1.x.org", "A", ["198.51.100.1"])
    dns_server.set("mx2.x.org", "A", ["198.51.100.2"])
    dns_server.set("mx2.x.org", "AAAA", ["2001:db8::25"])
    assert spf_result(dns_server, "v=spf1 a -all").result == "pass"
    assert spf_result(dns_server, "v=spf1 a:mx1.x.org -all").result == "fail"
    assert spf_result(dns_server, "v=spf1 a:mx1.x.org/24 -all", ip="198.51.100.77").result == "pass"
    assert spf_result(dns_server, "v=spf1 mx -all", ip="198.51.100.2").result == "pass"
    assert spf_result(dns_server, "v=spf1 mx -all", ip="198.51.100.3").result == "fail"
    assert spf_result(dns_server, "v=spf1 mx//112 -all", ip="2001:db8::1:1").result == "fail"
    assert spf_result(dns_server, "v=spf1 mx/24//64 -all", ip="2001:db8::99").result == "pass"
    assert spf_result(dns_server, "v=spf1 mx -all", ip="::ffff:198.51.100.1").result == "pass"  # v4-mapped


def test_spf_ptr(dns_server: DNSServer) -> None:
    dns_server.set_ptr("192.0.2.10", ["out.x.org", "spoof.other.example"])
    dns_server.set("out.x.org", "A", ["192.0.2.10"])
    dns_server.set("spoof.other.example", "A", ["203.0.113.1"])
    assert spf_result(dns_server, "v=spf1 ptr -all").result == "pass"
    assert spf_result(dns_server, "v=spf1 ptr:other.example -all").result == "fail"  # not validated


def test_spf_macros(dns_server: DNSServer) -> None:
    for name, record in [("10.2.0.192.ip.x.org", "v=spf1 exists:%{ir}.ip.x.org -all"),
                         ("alice.x.org.user.x.org", "v=spf1 exists:%{l}.%{o}.user.%{d} -all"),
                         ("alice@x.org._s.x.org", "v=spf1 exists:%{s}._s.x.org -all"),
                         ("mail.x.org.helo.x.org", "v=spf1 exists:%{h}.helo.x.org -all"),
                         ("x.org.two.x.org", "v=spf1 exists:%{h2}.two.x.org -all"),
                         ("in-addr.v.x.org", "v=spf1 exists:%{v}.v.x.org -all")]:
        dns_server.set(name, "A", ["127.0.0.2"])
        assert spf_result(dns_server, record).result == "pass", record
    nibbles = "1.0.0.0." + "0." * 20 + "8.b.d.0.1.0.0.2"  # RFC 7208 7.3 example form
    dns_server.set(f"{nibbles}.ip6.x.org", "A", ["127.0.0.2"])
    assert spf_result(dns_server, "v=spf1 exists:%{ir}.ip6.x.org -all", ip="2001:db8::1").result == "pass"
    dns_server.set("c.b.a.rev.x.org", "A", ["127.0.0.2"])
    assert spf_result(dns_server, "v=spf1 exists:%{lr-}.rev.x.org -all", mail_from="a-b-c@x.org").result == "pass"
    assert spf_result(dns_server, "v=spf1 exists:%{l0}.x.org -all").result == "permerror"  # RFC 7208 7.3


def test_spf_lookup_limit(dns_server: DNSServer) -> None:
    for i in range(12):
        dns_server.set(f"h{i}.x.org", "A", ["198.51.100.1"])
    ten = " ".join(f"a:h{i}.x.org" for i in range(9)) + " a"
    dns_server.set("x.org", "A", ["192.0.2.10"])
    assert spf_result(dns_server, f"v=spf1 {ten} -all").result == "pass"   # exactly 10
    eleven = " ".join(f"a:h{i}.x.org" for i in range(10)) + " a"
    r = spf_result(dns_server, f"v=spf1 {eleven} -all")
    assert r.result == "permerror" and "10 DNS lookups" in r.reason        # RFC 7208 4.6.4
    dns_server.set("loop.x.org", "TXT", ["v=spf1 include:loop.x.org -all"])
    assert spf_result(dns_server, "v=spf1 include:loop.x.org -all").result == "permerror"


def test_spf_void_lookup_limit(dns_server: DNSServer) -> None:
    two = "v=spf1 a:v1.x.org a:v2.x.org ip4:192.0.2.10 -all"
    assert spf_result(dns_server, two).result == "pass"
    three = "v=spf1 a:v1.x.org a:v2.x.org mx:v3.x.org ip4:192.0.2.10 -all"
    assert spf_result(dns_server, three).result == "permerror"             # RFC 7208 4.6.4


def test_spf_helo_identity_for_null_sender(dns_server: DNSServer) -> None:
    dns_server.set("mail.x.org", "TXT", ["v=spf1 ip4:192.0.2.10 -all"])
    r = spf_result(dns_server, mail_from="<>")
    assert (r.result, r.domain, r.identity, r.sender) == ("pass", "mail.x.org", "helo", "postmaster@mail.x.org")
    res = run(dns_server, mail_from="")
    assert res.spf == "pass" and res.spf_domain == "mail.x.org"
    assert "spf=pass smtp.helo=mail.x.org" in res.header_value


def test_spf_never_uses_system_resolver(dns_server: DNSServer) -> None:
    spf_result(dns_server, "v=spf1 include:_spf.elsewhere.example a mx -all")
    names = {q[0] for q in dns_server.queries}
    assert {"x.org", "_spf.elsewhere.example"} <= names


# --- DKIM (RFC 6376, RFC 8463) ---

def test_dkim_rsa_and_ed25519_pass(dns_server: DNSServer, keys: dict) -> None:
    publish(dns_server, keys)
    raw = sign(sign(MSG, keys, "rsa"), keys, "ed25519")
    res = run(dns_server, raw)
    assert [(r.result, r.domain, r.algorithm) for r in res.dkim] == [
        ("pass", "x.org", "ed25519-sha256"), ("pass", "x.org", "rsa-sha256")]
    top = dkimpy.util.parse_tag_value(dmarc.header_fields(raw, b"dkim-signature")[0])
    first_b = re.sub(rb"\s+", b"", top[b"b"])[:8].decode()
    assert res.dkim[0].header_b == first_b and res.dkim[0].selector == "ed25519sel"
    # RFC 8601: a value that is not a token ("/" and "=" are tspecials) is a quoted-string
    shown = first_b if re.fullmatch(r"[A-Za-z0-9+]+", first_b) else f'"{first_b}"'
    assert f"dkim=pass header.d=x.org header.s=ed25519sel header.a=ed25519-sha256 header.b={shown}" in res.header_value
    dkim_results = [r for r in parsed(res.header_value).results if r.method == "dkim"]
    assert [p.value for p in dkim_results[0].properties if p.name == "b"] == [first_b]
    assert res.dkim[1].selector == "rsasel" and len(res.dkim[1].header_b) == 8


def test_dkim_fails_after_body_change(dns_server: DNSServer, keys: dict) -> None:
    publish(dns_server, keys)
    raw = sign(sign(MSG, keys, "rsa"), keys, "ed25519").replace(b"Hello Bob.", b"Hello Eve.")
    res = run(dns_server, raw)
    assert [r.result for r in res.dkim] == ["fail", "fail"]
    assert res.dkim[0].reason == "body hash mismatch"


def test_dkim_fails_after_header_change(dns_server: DNSServer, keys: dict) -> None:
    publish(dns_server, keys)
    raw = sign(MSG, keys, "rsa").replace(b"Subject: hello", b"Subject: pay now")
    assert [r.result for r in run(dns_server, raw).dkim] == ["fail"]


def test_dkim_key_missing_revoked_or_unreachable(dns_server: DNSServer, keys: dict) -> None:
    raw = sign(MSG, keys, "ed25519")
    assert run(dns_server, raw).dkim[0].result == "permerror"             # no key record
    dns_server.set("ed25519sel._domainkey.x.org", "TXT", ["v=DKIM1; k=ed25519; p="])
    assert run(dns_server, raw).dkim[0].result == "permerror"             # revoked (RFC 6376 3.6.1)
    dns_server.set("ed25519sel._domainkey.x.org", "SERVFAIL")
    assert run(dns_server, raw).dkim[0].result == "temperror"


def test_dkim_wrong_key_fails(dns_server: DNSServer, keys: dict) -> None:
    other = nacl.signing.SigningKey.generate().verify_key.encode(nacl.encoding.Base64Encoder).decode()
    dns_server.set("ed25519sel._domainkey.x.org", "TXT", ["v=DKIM1; k=ed25519; p=" + other])
    assert run(dns_server, sign(MSG, keys, "ed25519")).dkim[0].result == "fail"


def test_unsigned_is_dkim_none(dns_server: DNSServer) -> None:
    res = run(dns_server)
    assert res.dkim == []
    assert "; dkim=none;" in res.header_value


# --- DMARC (RFC 7489) ---

def test_dmarc_pass_by_spf_alignment(dns_server: DNSServer) -> None:
    dns_server.set("bounce.x.org", "TXT", ["v=spf1 ip4:192.0.2.10 -all"])
    dns_server.set("_dmarc.x.org", "TXT", ["v=DMARC1; p=reject"])
    res = run(dns_server, mail_from="b+123@bounce.x.org")                 # relaxed: same org domain
    assert (res.spf, res.dmarc, res.dmarc_policy, res.from_domain) == ("pass", "pass", "reject", "x.org")
    assert res.header_value == ("mx.example.net; spf=pass smtp.mailfrom=b+123@bounce.x.org; dkim=none; "
                                "dmarc=pass header.from=x.org")


def test_dmarc_strict_spf_alignment_fails(dns_server: DNSServer) -> None:
    dns_server.set("bounce.x.org", "TXT", ["v=spf1 ip4:192.0.2.10 -all"])
    dns_server.set("_dmarc.x.org", "TXT", ["v=DMARC1; p=quarantine; aspf=s"])
    res = run(dns_server, mail_from="b@bounce.x.org")
    assert (res.spf, res.dmarc, res.dmarc_policy) == ("pass", "fail", "quarantine")


def test_dmarc_pass_by_dkim_alignment(dns_server: DNSServer, keys: dict) -> None:
    publish(dns_server, keys, "mail.x.org")
    dns_server.set("x.org", "TXT", ["v=spf1 -all"])
    dns_server.set("_dmarc.x.org", "TXT", ["v=DMARC1; p=reject"])
    res = run(dns_server, sign(MSG, keys, "ed25519", domain="mail.x.org"))
    assert (res.spf, res.dkim[0].result, res.dmarc) == ("fail", "pass", "pass")
    dns_server.set("_dmarc.x.org", "TXT", ["v=DMARC1; p=reject; adkim=s"])
    res = run(dns_server, sign(MSG, keys, "ed25519", domain="mail.x.org"))
    assert (res.dmarc, res.dmarc_policy) == ("fail", "reject")


def test_dmarc_unaligned_dkim_and_spf_fail_with_reject(dns_server: DNSServer, keys: dict) -> None:
    publish(dns_server, keys, "evil.example")
    dns_server.set("evil.example", "TXT", ["v=spf1 +all"])
    dns_server.set("_dmarc.x.org", "TXT", ["v=DMARC1; p=reject; rua=mailto:d@x.org"])
    res = run(dns_server, sign(MSG, keys, "rsa", domain="evil.example"), mail_from="a@evil.example")
    assert (res.spf, res.dkim[0].result, res.dmarc, res.dmarc_policy) == ("pass", "pass", "fail", "reject")
    assert res.header_value.endswith("; dmarc=fail header.from=x.org")


def test_dmarc_org_domain_fallback_and_sp(dns_server: DNSServer) -> None:
    dns_server.set("_dmarc.x.org", "TXT", ["v=DMARC1; p=reject; sp=quarantine"])
    raw = MSG.replace(b"alice@x.org", b"alice@news.x.org")
    res = run(dns_server, raw, mail_from="a@elsewhere.example")
    assert (res.from_domain, res.dmarc, res.dmarc_policy) == ("news.x.org", "fail", "quarantine")
    assert ("_dmarc.news.x.org", "TXT", "udp") in dns_server.queries
    dns_server.set("_dmarc.news.x.org", "TXT", ["v=DMARC1; p=none"])       # own record wins
    assert run(dns_server, raw, mail_from="a@elsewhere.example").dmarc_policy == "none"


def test_dmarc_org_domain_uses_public_suffix_list() -> None:
    assert dmarc.org_domain("a.b.example.co.uk") == "example.co.uk"
    assert dmarc.org_domain("co.uk") == "co.uk"
    assert dmarc.aligned("mail.example.co.uk", "example.co.uk", "r")
    assert not dmarc.aligned("other.co.uk", "example.co.uk", "r")
    assert not dmarc.aligned("mail.example.co.uk", "example.co.uk", "s")


def test_dmarc_pct_downgrades_outside_sample(dns_server: DNSServer) -> None:
    dns_server.set("_dmarc.x.org", "TXT", ["v=DMARC1; p=reject; pct=0"])
    res = run(dns_server, mail_from="a@elsewhere.example")
    assert (res.dmarc, res.dmarc_policy) == ("fail", "quarantine")         # RFC 7489 6.6.4
    r = StaticResolver({"_dmarc.x.org": {"TXT": ["v=DMARC1; p=quarantine; pct=50"]}})
    assert dmarc.evaluate("x.org", "fail", "y.org", [], r, sample=lambda: 0.2).policy == "quarantine"
    assert dmarc.evaluate("x.org", "fail", "y.org", [], r, sample=lambda: 0.7).policy == "none"


def test_dmarc_none_temperror_permerror(dns_server: DNSServer) -> None:
    assert (run(dns_server).dmarc, run(dns_server).dmarc_policy) == ("none", None)
    dns_server.set("_dmarc.x.org", "TXT", ["v=DMARC1; p=reject", "v=DMARC1; p=none"])
    assert run(dns_server).dmarc == "none"                                  # RFC 7489 6.6.3 step 4
    dns_server.set("_dmarc.x.org", "TXT", ["v=DMARC1; p=bogus"])
    assert run(dns_server).dmarc == "permerror"
    dns_server.set("_dmarc.x.org", "TXT", ["v=DMARC1; p=bogus; rua=mailto:r@x.org"])
    assert run(dns_server).dmarc_policy == "none"                           # RFC 7489 6.6.3 step 6
    dns_server.set("_dmarc.x.org", "SERVFAIL")
    assert run(dns_server).dmarc == "temperror"


@pytest.mark.parametrize("from_lines, expected", [
    (b"", ("", "permerror")),
    (b"From: a@x.org\r\nFrom: b@x.org\r\n", ("", "permerror")),
    (b"From: a@x.org, b@y.org\r\n", ("", "permerror")),
    (b"From: a@x.org, b@X.ORG\r\n", ("x.org", "none")),
    (b"From: undisclosed:;\r\n", ("", "permerror")),
    (b"From: \"a@good.example\" <a@x.org>\r\n", ("x.org", "none")),
    (b"FROM:\r\n  Alice\r\n <a@x.org>\r\n", ("x.org", "none")),
])
def test_dmarc_author_domain(dns_server: DNSServer, from_lines: bytes, expected: tuple) -> None:
    raw = from_lines + b"To: b@example.net\r\nSubject: s\r\n\r\nbody\r\n"
    res = run(dns_server, raw)
    assert (res.from_domain, res.dmarc) == expected


# --- Authentication-Results (RFC 8601) ---

def test_header_value_parses_back(dns_server: DNSServer, keys: dict) -> None:
    publish(dns_server, keys)
    dns_server.set("x.org", "TXT", ["v=spf1 ip4:192.0.2.10 -all"])
    dns_server.set("_dmarc.x.org", "TXT", ["v=DMARC1; p=reject"])
    res = run(dns_server, sign(sign(MSG, keys, "rsa"), keys, "ed25519"))
    header = parsed(res.header_value)
    assert header.authserv_id == AUTHSERV
    assert [(r.method, r.result) for r in header.results] == [
        ("spf", "pass"), ("dkim", "pass"), ("dkim", "pass"), ("dmarc", "pass")]
    assert {p.value for p in header.results[1].properties if p.name == "b"} == {res.dkim[0].header_b}


def test_hostile_values_stay_parseable(dns_server: DNSServer) -> None:
    dns_server.set("x.org", "SERVFAIL")
    res = run(dns_server, mail_from='"evil; dkim=pass"@x.org', helo="h;x")
    assert res.spf == "temperror"
    header = parsed(res.header_value)
    assert [r.method for r in header.results] == ["spf", "dkim", "dmarc"]


_sig_tag = st.sampled_from([b"v", b"a", b"b", b"bh", b"d", b"s", b"h", b"c", b"l", b"t", b"x", b"i", b"q", b"z", b""])
_sig_val = st.one_of(
    st.sampled_from([b"1", b"rsa-sha256", b"ed25519-sha256", b"rsa-sha1", b"x.org", b"sel", b"from:to",
                     b"relaxed/simple", b"-1", b"99999999999999999999", b"@x.org", b"AAAA", b"====", b""]),
    st.binary(max_size=40),
)
_signature = st.lists(st.tuples(_sig_tag, _sig_val), max_size=10).map(
    lambda tags: b"DKIM-Signature: " + b"; ".join(k + b"=" + v for k, v in tags) + b"\r\n")
_header_line = st.one_of(
    _signature,
    st.binary(max_size=80).map(lambda b: b + b"\r\n"),
    st.sampled_from([b"From: a@x.org\r\n", b"From: \r\n", b"From: <@>\r\n", b" folded\r\n", b"From: =?x?q?\xff?=\r\n",
                     b"From: a@\xc3\xa9.example\r\n", b"From: a@[192.0.2.1]\r\n", b"\r\n"]),
)


@pytest.fixture(scope="module")
def hostile_resolver():
    """Module-scoped: hypothesis refuses function-scoped fixtures under @given."""
    with DNSServer({
        "x.org": {"TXT": ["v=spf1 a mx include:%{d}.inc.x.org ~all"], "A": ["192.0.2.10"]},
        "_dmarc.x.org": {"TXT": ["v=DMARC1; p=reject"]},
        "sel._domainkey.x.org": {"TXT": ["v=DKIM1; k=rsa; p=AAAA"]},
    }) as server:
        yield make_resolver([server.nameserver], timeout=1.0)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=st.lists(_header_line, max_size=8), body=st.binary(max_size=200),
       ip=st.sampled_from(["192.0.2.10", "2001:db8::1", "garbage", ""]),
       mail_from=st.one_of(st.sampled_from(["", "<>", "a@x.org", "@", "a@b@c", "x" * 300 + "@x.org"]),
                           st.text(max_size=30)),
       helo=st.text(max_size=30))
def test_hostile_input_never_raises(hostile_resolver, headers: list[bytes], body: bytes, ip: str, mail_from: str,
                                    helo: str) -> None:
    raw = b"".join(headers) + b"\r\n" + body
    res = authenticate(raw, ip=ip, helo=helo, mail_from=mail_from, resolver=hostile_resolver, authserv_id=AUTHSERV)
    assert res.spf in ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
    assert res.dmarc in ("pass", "fail", "none", "temperror", "permerror")
    assert all(r.result in ("pass", "fail", "neutral", "policy", "temperror", "permerror") for r in res.dkim)
    # hostile input is a result, never a caught crash
    assert "internal error" not in (res.spf_detail.reason, res.dmarc_detail.reason)
    assert len(parsed(res.header_value).results) == 2 + max(1, len(res.dkim))


# --- cost ---

def test_unsigned_spf_pass_cpu_cost() -> None:
    """Unsigned message, SPF pass, DMARC pass: CPU per message without DNS round trips (StaticResolver)."""
    r = StaticResolver({"x.org": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]},
                        "_dmarc.x.org": {"TXT": ["v=DMARC1; p=reject"]}})
    kwargs = dict(ip="192.0.2.10", helo="mail.x.org", mail_from="alice@x.org", resolver=r, authserv_id=AUTHSERV)
    authenticate(MSG, **kwargs)
    n = 300
    started = time.process_time()
    for _ in range(n):
        res = authenticate(MSG, **kwargs)
    per_message = (time.process_time() - started) / n
    assert res.spf == "pass" and res.dmarc == "pass"
    assert per_message < 0.001


def test_spf_memo_evaluates_a_burst_once_and_never_keeps_a_temperror(monkeypatch) -> None:
    """The MX keeps SPF results of recent (IP, HELO, MAIL FROM) for a few seconds: the same sender on the
    same host is looked up once per burst; another IP, sender or HELO is its own question; a temperror
    is asked again; an expired entry is evaluated anew."""
    r = StaticResolver({"x.org": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]}, "down.org": "SERVFAIL"})
    memo = spf.Memo(seconds=5.0)
    first = memo.check("192.0.2.1", "h.x.org", "a@x.org", r)
    asked = len(r.queries)
    assert first.result == "pass" and asked > 0
    assert memo.check("192.0.2.1", "H.X.ORG", "A@x.org", r) == first and len(r.queries) == asked
    assert memo.check("198.51.100.1", "h.x.org", "a@x.org", r).result == "fail" and len(r.queries) > asked
    asked = len(r.queries)
    assert memo.check("192.0.2.1", "h.x.org", "a@down.org", r).result == "temperror"
    assert memo.check("192.0.2.1", "h.x.org", "a@down.org", r).result == "temperror" and len(r.queries) > asked + 1
    later = time.monotonic() + 6.0
    monkeypatch.setattr(spf.time, "monotonic", lambda: later)
    asked = len(r.queries)
    assert memo.check("192.0.2.1", "h.x.org", "a@x.org", r).result == "pass" and len(r.queries) > asked
