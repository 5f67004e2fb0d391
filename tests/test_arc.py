"""ARC (RFC 8617): real chains sealed with dkimpy, keys published in the DNS server on loopback, verified by
mxd.authn; a trusted sealer's results turn a DMARC failure caused by forwarding into a pass, and nothing else does."""
from __future__ import annotations

import base64

import authres
import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxd.authn import AuthResults, arc, authenticate
from mxd.resolver import StaticResolver, make_resolver
from tests.support.dnsserver import DNSServer, dns_server  # noqa: F401  (fixture)

AUTHSERV = "mx.example.net"
ORIGINAL = (b"From: Alice <alice@a.test>\r\n"
            b"To: list@lists.example\r\n"
            b"Subject: budget\r\n"
            b"Date: Sat, 22 Nov 2025 00:00:00 +0000\r\n"
            b"Message-ID: <1@a.test>\r\n"
            b"\r\n"
            b"Please approve the budget.\r\n")


def _key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[bytes, str]]:
    return {"a.test": _key(), "lists.example": _key(), "other.example": _key()}


def publish(server: DNSServer, keys: dict) -> None:
    for domain, (_, record) in keys.items():
        server.set(f"sel._domainkey.{domain}", "TXT", [record])
    server.set("_dmarc.a.test", "TXT", ["v=DMARC1; p=reject"])
    server.set("a.test", "TXT", ["v=spf1 ip4:192.0.2.1 -all"])
    server.set("lists.example", "TXT", ["v=spf1 ip4:198.51.100.20 -all"])


def seal(message: bytes, keys: dict, sealer: str, arrived: str) -> bytes:
    """What a forwarder does: record what it found on arrival (`arrived`, an A-R body without authserv-id),
    then ARC-seal (AAR, AMS, AS) the message as it sends it on."""
    with_ar = f"Authentication-Results: {sealer}; {arrived}\r\n".encode() + message
    headers = dkimpy.arc_sign(with_ar, b"sel", sealer.encode(), keys[sealer][0], sealer.encode())
    return b"".join(headers) + message


def forwarded(keys: dict, sealer: str = "lists.example", to: bytes = b"list@lists.example") -> bytes:
    """Alice's DKIM-signed message, through a mailing list that tags the subject and adds a footer (breaking
    her signature), sealed by the list with the results it saw on arrival."""
    signed = dkimpy.sign(ORIGINAL, b"sel", b"a.test", keys["a.test"][0], canonicalize=(b"relaxed", b"relaxed"),
                         include_headers=[b"from", b"to", b"subject"]) + ORIGINAL
    modified = signed.replace(b"Subject: budget", b"Subject: [list] budget") + b"--\r\nlist footer\r\n"
    modified = modified.replace(b"To: list@lists.example", b"To: " + to)
    arrived = ("spf=pass smtp.mailfrom=alice@a.test; dkim=pass header.d=a.test header.s=sel; "
               "dmarc=pass header.from=a.test")
    return seal(modified, keys, sealer, arrived)


def check(server: DNSServer, raw: bytes, trusted: list[str]) -> AuthResults:
    resolver = make_resolver([server.nameserver], timeout=1.0)
    return authenticate(raw, ip="198.51.100.20", helo="lists.example", mail_from="bounces@lists.example",
                        resolver=resolver, authserv_id=AUTHSERV, trusted_arc_sealers=trusted)


def parsed(value: str) -> dict[str, authres.AuthenticationResult]:
    header = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + value)
    return {r.method: r for r in header.results}


def test_trusted_sealer_turns_a_forwarding_failure_into_a_pass(dns_server: DNSServer, keys: dict) -> None:
    publish(dns_server, keys)
    res = check(dns_server, forwarded(keys), ["lists.example"])
    assert [d.result for d in res.dkim] == ["fail"]            # the list broke Alice's signature
    assert (res.arc, res.arc_sealers) == ("pass", ["lists.example"])
    assert res.dmarc == "pass" and res.dmarc_policy == "reject"
    assert res.dmarc_override == "arc: dmarc=pass at trusted sealer lists.example"
    assert res.arc_json() == {"arc": "pass", "arc_sealers": ["lists.example"],
                              "dmarc_override": "arc: dmarc=pass at trusted sealer lists.example"}
    fields = parsed(res.header_value)
    assert fields["arc"].result == "pass"
    assert [(p.type, p.name, p.value) for p in fields["arc"].properties] == [("header", "as.d", "lists.example")]
    assert fields["dmarc"].result == "pass"
    assert ("policy", "override", "arc") in [(p.type, p.name, p.value) for p in fields["dmarc"].properties]


def test_trusting_a_parent_domain_covers_its_sealing_hosts(dns_server: DNSServer, keys: dict) -> None:
    publish(dns_server, keys)
    assert check(dns_server, forwarded(keys), ["example"]).dmarc == "pass"


def test_untrusted_sealer_leaves_dmarc_failing(dns_server: DNSServer, keys: dict) -> None:
    publish(dns_server, keys)
    for trusted in ([], ["other.example"], ["ists.example"]):
        res = check(dns_server, forwarded(keys), trusted)
        assert (res.arc, res.dmarc, res.dmarc_policy, res.dmarc_override) == ("pass", "fail", "reject", "")
        fields = parsed(res.header_value)
        assert fields["arc"].result == "pass" and fields["dmarc"].result == "fail"


def test_broken_chain_is_arc_fail_and_no_override(dns_server: DNSServer, keys: dict) -> None:
    publish(dns_server, keys)
    tampered = forwarded(keys).replace(b"Please approve the budget.", b"Please wire the money.")
    res = check(dns_server, tampered, ["lists.example"])
    assert (res.arc, res.dmarc, res.dmarc_override) == ("fail", "fail", "")
    assert parsed(res.header_value)["arc"].result == "fail"


def test_trusted_sealer_that_saw_no_pass_does_not_override(dns_server: DNSServer, keys: dict) -> None:
    publish(dns_server, keys)
    # a spoof sent through the trusted list: the list recorded the failure it saw on arrival
    spoof = seal(ORIGINAL, keys, "lists.example", "spf=fail smtp.mailfrom=alice@a.test; dkim=none; "
                                                  "dmarc=fail header.from=a.test")
    res = check(dns_server, spoof, ["lists.example"])
    assert (res.arc, res.dmarc) == ("pass", "fail")
    # a pass for another author domain does not vouch for this one
    other = seal(ORIGINAL, keys, "lists.example", "dmarc=pass header.from=b.test; dkim=pass header.d=b.test")
    assert check(dns_server, other, ["lists.example"]).dmarc == "fail"


def test_a_later_untrusted_seal_hides_a_trusted_one(dns_server: DNSServer, keys: dict) -> None:
    publish(dns_server, keys)
    twice = seal(forwarded(keys), keys, "other.example", "arc=pass; dmarc=fail header.from=a.test")
    res = check(dns_server, twice, ["lists.example"])
    assert (res.arc, res.arc_sealers, res.dmarc) == ("pass", ["other.example", "lists.example"], "fail")
    assert check(dns_server, twice, ["other.example"]).dmarc == "fail"    # other.example saw no pass


def test_unsealed_mail_has_no_arc_result(dns_server: DNSServer, keys: dict) -> None:
    publish(dns_server, keys)
    res = check(dns_server, ORIGINAL, ["lists.example"])
    assert (res.arc, res.arc_sealers, res.dmarc) == ("none", [], "fail")
    assert "arc" not in parsed(res.header_value)


def test_key_lookup_failure_is_temperror(keys: dict) -> None:
    resolver = StaticResolver({"sel._domainkey.lists.example": "SERVFAIL"})
    result = arc.verify(forwarded(keys), resolver)
    assert (result.result, result.sealers) == ("temperror", ("lists.example",))
    assert arc.override(result, "a.test", ["lists.example"]) == ""


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"]),
                          st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))),
                max_size=6))
def test_hostile_arc_fields_never_raise(fields: list[tuple[bytes, bytes]]) -> None:
    raw = b"".join(name + b": " + value + b"\r\n" for name, value in fields) + ORIGINAL
    resolver = StaticResolver({})
    result = arc.verify(raw, resolver)
    assert result.result in ("none", "pass", "fail", "temperror")
    assert arc.override(result, "a.test", ["lists.example"]) == "" or result.result == "pass"
    res = authenticate(raw, ip="192.0.2.1", helo="h", mail_from="alice@a.test", resolver=resolver,
                       authserv_id=AUTHSERV, trusted_arc_sealers=["lists.example"])
    assert res.header_value.startswith(AUTHSERV)


@pytest.mark.slow
def test_arc_result_reaches_the_stored_message(tmp_path, keys: dict) -> None:
    """Over SMTP to a running daemon: the pipeline records the chain and the override in the message's
    Authentication-Results and its `auth` JSON."""
    import smtplib
    import time

    from tests.support.daemon import running_daemon
    zone: dict = {"_dmarc.a.test": {"TXT": ["v=DMARC1; p=reject"]}, "a.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
                  "lists.example": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]}}
    for domain, (_, record) in keys.items():
        zone[f"sel._domainkey.{domain}"] = {"TXT": [record]}
    raw = forwarded(keys, to=b"agent@example.test")
    with DNSServer(zone) as dns, running_daemon(tmp_path / "data", mailboxes=["agent@example.test"], env={
            "MXD_DNS_NAMESERVERS": dns.nameserver, "MXD_DNS_TIMEOUT": "2",
            "MXD_TRUSTED_ARC_SEALERS": "lists.example"}) as proc:
        with smtplib.SMTP("127.0.0.1", proc.mx_port) as s:
            s.sendmail("bounces@lists.example", ["agent@example.test"], raw)
        deadline = time.monotonic() + 30
        found: list = []
        while not found and time.monotonic() < deadline:
            found = [m for m in proc.messages("agent@example.test") if "budget" in m["subject"]]
            time.sleep(0.1)
        assert found, "message not processed"
        detail = proc.api("GET", f"/api/messages/{found[0]['id']}").json()
    assert detail["auth"]["arc"] == "pass" and detail["auth"]["arc_sealers"] == ["lists.example"]
    assert detail["auth"]["dmarc"] == "pass"
    assert detail["auth"]["dmarc_override"] == "arc: dmarc=pass at trusted sealer lists.example"
    fields = parsed(detail["authentication_results"])
    assert fields["arc"].result == "pass" and fields["dmarc"].result == "pass"
