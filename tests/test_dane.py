"""mxd.delivery.dane: TLSA records checked against certificate chains made with trustme (DANE-EE, DANE-TA, names,
dates, hostile records and chains), the lookup's decisions over an in-memory resolver, and the resolver's
DNSSEC-aware lookups against a real validating resolver (unbound) in front of a signed zone (nsd)."""
from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Iterator

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxd.config import Config
from mxd.delivery import dane
from mxd.delivery.dane import Lookup, Tlsa
from mxd.delivery.mxhosts import Target
from mxd.delivery.tlspolicy import DomainPlan, TransportPolicy
from mxd.resolver import DNSError, StaticResolver, make_resolver
from tests.support.peers.dnssec import DnssecPeer, skip_unless_available

HOST = "mx.dane.test"


def der(pem: trustme.Blob) -> bytes:
    return x509.load_pem_x509_certificate(pem.bytes()).public_bytes(Encoding.DER)


def spki(cert_der: bytes) -> bytes:
    return x509.load_der_x509_certificate(cert_der).public_key().public_bytes(Encoding.DER,
                                                                              PublicFormat.SubjectPublicKeyInfo)


def tlsa(usage: int, selector: int, mtype: int, cert_der: bytes) -> Tlsa:
    data = cert_der if selector == 0 else spki(cert_der)
    data = {0: data, 1: hashlib.sha256(data).digest(), 2: hashlib.sha512(data).digest()}[mtype]
    return Tlsa(usage, selector, mtype, data)


def found(*records: Tlsa, host: str = HOST) -> Lookup:
    return Lookup(host, list(records), any(r.usable for r in records), port=25, secure=True)


@pytest.fixture(scope="module")
def pki():
    """A root, an intermediate under it, and leaves for HOST: one issued by the intermediate, one expired,
    one for another name, one by an unrelated CA."""
    root = trustme.CA()
    inter = root.create_child_ca()
    leaf = inter.issue_cert(HOST)
    expired = inter.issue_cert(HOST, not_before=datetime.datetime(2020, 1, 1), not_after=datetime.datetime(2020, 2, 1))
    other_name = inter.issue_cert("mx.elsewhere.test")
    stranger = trustme.CA().issue_cert(HOST)
    chain = lambda c: [der(p) for p in c.cert_chain_pems]  # noqa: E731  (leaf, intermediate)
    return {"root": der(root.cert_pem), "inter": der(inter.cert_pem), "leaf": chain(leaf),
            "expired": chain(expired), "other_name": chain(other_name), "stranger": chain(stranger)}


# ---------------------------------------------------------------- verify: DANE-EE
@pytest.mark.parametrize("selector,mtype", [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)])
def test_dane_ee_matches_the_leaf_in_every_form(pki, selector, mtype) -> None:
    chain = pki["leaf"]
    assert dane.verify(found(tlsa(3, selector, mtype, chain[0])), chain, HOST) is None


def test_dane_ee_ignores_names_and_dates(pki) -> None:
    # RFC 7672 3.1.1: a DANE-EE match authenticates the key whatever the certificate says
    for chain in (pki["expired"], pki["other_name"], pki["stranger"]):
        assert dane.verify(found(tlsa(3, 1, 1, chain[0])), chain, HOST) is None


def test_dane_ee_mismatch_fails_naming_the_records(pki) -> None:
    record = tlsa(3, 1, 1, pki["stranger"][0])
    failure = dane.verify(found(record), pki["leaf"], HOST)
    assert failure is not None and failure.result_type == "validation-failure"
    assert record.data.hex() in failure.text and f"_25._tcp.{HOST}" in failure.text
    # a DANE-EE record for the intermediate does not authenticate the leaf
    assert dane.verify(found(tlsa(3, 0, 1, pki["leaf"][1])), pki["leaf"], HOST) is not None


def test_one_matching_record_of_several_is_enough(pki) -> None:
    records = [tlsa(3, 1, 1, pki["stranger"][0]), Tlsa(3, 1, 1, b"\0" * 32), tlsa(3, 1, 2, pki["leaf"][0])]
    assert dane.verify(found(*records), pki["leaf"], HOST) is None


# ---------------------------------------------------------------- verify: DANE-TA
@pytest.mark.parametrize("selector,mtype", [(0, 1), (1, 1), (0, 0), (1, 2)])
def test_dane_ta_chain_to_the_intermediate(pki, selector, mtype) -> None:
    assert dane.verify(found(tlsa(2, selector, mtype, pki["inter"])), pki["leaf"], HOST) is None


def test_dane_ta_needs_the_anchor_in_the_presented_chain(pki) -> None:
    # the root is not presented: a digest of it cannot be matched against anything (RFC 7671 5.2.2)
    failure = dane.verify(found(tlsa(2, 0, 1, pki["root"])), pki["leaf"], HOST)
    assert failure is not None and failure.result_type == "validation-failure"
    assert dane.verify(found(tlsa(2, 0, 1, pki["root"])), pki["leaf"] + [pki["root"]], HOST) is None


def test_dane_ta_checks_the_host_name(pki) -> None:
    failure = dane.verify(found(tlsa(2, 0, 1, pki["inter"])), pki["other_name"], HOST)
    assert failure is not None and failure.result_type == "certificate-host-mismatch"
    assert "mx.elsewhere.test" in failure.text and HOST in failure.text


def test_dane_ta_accepts_the_tlsa_base_domain_of_an_alias(pki) -> None:
    # the MX host mx-alias.dane.test is a CNAME for HOST, whose TLSA records were used (RFC 7672 3.2.2)
    lookup = Lookup("mx-alias.dane.test", [tlsa(2, 0, 1, pki["inter"])], True, port=25, secure=True, base=HOST)
    assert lookup.name == f"_25._tcp.{HOST}" and lookup.reference_names() == [HOST, "mx-alias.dane.test"]
    assert dane.verify(lookup, pki["leaf"], "mx-alias.dane.test") is None
    lookup.base = "mx-other.dane.test"
    failure = dane.verify(lookup, pki["leaf"], "mx-alias.dane.test")
    assert failure is not None and failure.result_type == "certificate-host-mismatch"


def test_dane_ta_checks_dates_and_signatures(pki) -> None:
    failure = dane.verify(found(tlsa(2, 0, 1, pki["inter"])), pki["expired"], HOST)
    assert failure is not None and failure.result_type == "validation-failure"
    # a leaf from another CA presented next to the anchor: the anchor matches, the signature does not
    failure = dane.verify(found(tlsa(2, 0, 1, pki["inter"])), [pki["stranger"][0], pki["inter"]], HOST)
    assert failure is not None and failure.result_type == "validation-failure"


def test_unusable_records_authenticate_nothing(pki) -> None:
    leaf = pki["leaf"][0]
    records = [tlsa(0, 0, 1, leaf), tlsa(1, 1, 1, leaf),        # PKIX-TA / PKIX-EE: unusable in SMTP
               Tlsa(3, 2, 1, hashlib.sha256(leaf).digest()),      # unknown selector
               Tlsa(3, 1, 3, hashlib.sha256(spki(leaf)).digest()),  # unknown matching type
               Tlsa(3, 1, 1, hashlib.sha256(spki(leaf)).digest()[:31]),  # truncated digest
               Tlsa(4, 1, 1, hashlib.sha256(spki(leaf)).digest())]      # unknown usage
    assert not any(r.usable for r in records)
    failure = dane.verify(Lookup(HOST, records, False, secure=True), pki["leaf"], HOST)
    assert failure is not None and failure.result_type == "validation-failure"


def test_no_chain_or_garbage_chain_fails(pki) -> None:
    record = tlsa(3, 1, 1, pki["leaf"][0])
    for chain in ([], [b""], [b"\x30\x03\x02\x01\x00"], [b"not a certificate", pki["leaf"][0]]):
        failure = dane.verify(found(record), chain, HOST)
        assert failure is not None and failure.result_type == "validation-failure", chain


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(st.builds(Tlsa, st.integers(0, 255), st.integers(0, 255), st.integers(0, 255),
                                  st.binary(max_size=80)), max_size=6),
       chain=st.lists(st.binary(max_size=300), max_size=3), use_real=st.booleans())
def test_hostile_records_and_chains_never_raise_and_never_pass(pki, records, chain, use_real) -> None:
    """Random records never authenticate the real chain (no digest collides), and nothing raises."""
    lookup = Lookup(HOST, records, any(r.usable for r in records), secure=True)
    result = dane.verify(lookup, pki["leaf"] if use_real else chain, HOST)
    assert result is not None and result.result_type in ("validation-failure", "certificate-host-mismatch")
    assert lookup.describe() and len(lookup.policy_strings()) == len(records)


# ---------------------------------------------------------------- lookup over an in-memory resolver
SIGNED_ZONE = {
    "signed.test": {"MX": [(10, "mx.signed.test")]},
    "mx.signed.test": {"A": ["127.0.0.2"]},
    "_25._tcp.mx.signed.test": {"TLSA": [(3, 1, 1, "aa" * 32), (0, 0, 1, "bb" * 32)]},
    "odd.signed.test": {"MX": [(10, "mx-odd.signed.test")]},
    "mx-odd.signed.test": {"A": ["127.0.0.3"]},
    "_25._tcp.mx-odd.signed.test": {"TLSA": [(1, 1, 1, "aa" * 32), (3, 9, 1, "aa" * 32), (3, 1, 1, "aa" * 8)]},
    "bare.signed.test": {"MX": [(10, "mx-bare.signed.test")]},
    "mx-bare.signed.test": {"A": ["127.0.0.4"]},
    "bogus.signed.test": {"MX": [(10, "mx-bogus.signed.test")]},
    "mx-bogus.signed.test": {"A": ["127.0.0.5"]},
    "_25._tcp.mx-bogus.signed.test": "SERVFAIL",
    "badmx.signed.test": "SERVFAIL",
    "cross.signed.test": {"MX": [(10, "mx.plain.test")]},
    "alias.signed.test": {"MX": [(10, "mx-alias.signed.test")]},
    "mx-alias.signed.test": {"CNAME": "mx.signed.test"},
    "mx-alias2.signed.test": {"CNAME": "mx-bare.signed.test"},
    "_25._tcp.mx-alias2.signed.test": {"TLSA": [(3, 1, 1, "cc" * 32)]},
    # an unsigned domain whose MX host is in the signed zone, and the other way round
    "plain.test": {"MX": [(10, "mx.signed.test")]},
    "mx.plain.test": {"A": ["127.0.0.6"]},
    "_25._tcp.mx.plain.test": {"TLSA": [(3, 1, 1, "aa" * 32)]},
}


async def test_lookup_decisions() -> None:
    r = StaticResolver(SIGNED_ZONE, secure=["signed.test"])
    got = await dane.lookup(r, "signed.test", "mx.signed.test", 25)
    assert got.usable and got.secure and got.failure is None
    assert got.policy_strings() == ["3 1 1 " + "aa" * 32, "0 0 1 " + "bb" * 32]
    assert "_25._tcp.mx.signed.test" in got.describe()

    got = await dane.lookup(r, "odd.signed.test", "mx-odd.signed.test", 25)     # secure, nothing usable
    assert got.secure and not got.usable and got.failure is None and len(got.records) == 3
    assert "none usable" in got.describe()

    got = await dane.lookup(r, "bare.signed.test", "mx-bare.signed.test", 25)   # no TLSA: no DANE
    assert not got.secure and not got.usable and got.failure is None

    got = await dane.lookup(r, "bogus.signed.test", "mx-bogus.signed.test", 25)  # SERVFAIL: do not use the host
    assert got.failure is not None and got.failure.result_type == "dnssec-invalid" and not got.usable
    assert "_25._tcp.mx-bogus.signed.test" in got.failure.text

    got = await dane.lookup(r, "badmx.signed.test", "mx.signed.test", 25)
    assert got.failure is not None and got.failure.result_type == "dnssec-invalid"

    # RFC 7672 2.2.1: an MX host name from an insecure MX lookup has no DANE, whatever its zone says
    got = await dane.lookup(r, "plain.test", "mx.signed.test", 25)
    assert not got.usable and not got.secure and got.failure is None
    # an alias: its target's TLSA records first (RFC 7672 2.2.2) ...
    got = await dane.lookup(r, "alias.signed.test", "mx-alias.signed.test", 25)
    assert got.usable and got.base == "mx.signed.test" and got.name == "_25._tcp.mx.signed.test"
    # ... then its own when the target has none
    got = await dane.lookup(r, "alias.signed.test", "mx-alias2.signed.test", 25)
    assert got.usable and got.base == "" and got.policy_strings() == ["3 1 1 " + "cc" * 32]
    # a secure MX naming a host in an unsigned zone (insecure address records, RFC 7672 2.2.2): no DANE
    got = await dane.lookup(r, "cross.signed.test", "mx.plain.test", 25)
    assert not got.usable and not got.secure and got.failure is None
    # the port names the TLSA record: nothing at _2525._tcp
    assert not (await dane.lookup(r, "signed.test", "mx.signed.test", 2525)).secure
    # an MX naming an address has no TLSA base domain
    asked = len(r.queries)
    for literal in ("127.0.0.2", "[127.0.0.2]", "[IPv6:::1]"):
        assert (await dane.lookup(r, literal.strip("[]"), literal, 25)) == Lookup(literal.lower(), port=25)
    assert len(r.queries) == asked                                  # nothing asked for them


async def test_plan_host_follows_the_lookup(tmp_path: Path) -> None:
    cfg = Config(data_dir=str(tmp_path))
    policy = TransportPolicy(cfg, StaticResolver(SIGNED_ZONE, secure=["signed.test"]), None)

    plan = await policy.plan_host(DomainPlan("signed.test"), Target("mx.signed.test", ["127.0.0.2"], 10), 25)
    assert (plan.tls, plan.enforce, plan.applied.policy, plan.applied.report_type) == ("required", True, "dane", "tlsa")
    assert plan.check is not None and plan.check([]) is not None      # the chain is checked

    plan = await policy.plan_host(DomainPlan("odd.signed.test"), Target("mx-odd.signed.test", ["127.0.0.3"], 10), 25)
    assert (plan.tls, plan.enforce, plan.check, plan.refuse) == ("required", True, None, None)
    assert plan.applied.policy == "dane" and "none usable" in plan.applied.detail

    plan = await policy.plan_host(DomainPlan("bogus.signed.test"),
                                  Target("mx-bogus.signed.test", ["127.0.0.5"], 10), 25)
    assert plan.refuse is not None and plan.refuse.result_type == "dnssec-invalid"

    plan = await policy.plan_host(DomainPlan("bare.signed.test"), Target("mx-bare.signed.test", ["127.0.0.4"], 10), 25)
    assert (plan.tls, plan.applied.policy) == ("opportunistic", "opportunistic")

    cfg.outbound_dane = False
    plan = await policy.plan_host(DomainPlan("signed.test"), Target("mx.signed.test", ["127.0.0.2"], 10), 25)
    assert plan.applied.policy == "opportunistic"


# ---------------------------------------------------------------- the resolver against nsd + unbound
@pytest.fixture(scope="module")
def dnssec(tmp_path_factory) -> Iterator[DnssecPeer]:
    skip_unless_available()
    peer = DnssecPeer(tmp_path_factory.mktemp("dnssec"), 26353, 26354)
    peer.zone("dane.test", [
        "dane.test. MX 10 mx.dane.test.",
        "mx.dane.test. A 127.0.0.2",
        f"_25._tcp.mx.dane.test. TLSA 3 1 1 {'ab' * 32}",
        f"_25._tcp.mx.dane.test. TLSA 2 0 1 {'cd' * 32}",
        f"_25._tcp.bogus.dane.test. TLSA 3 1 1 {'ef' * 32}",
        "bogus.dane.test. A 127.0.0.3",
        "alias.dane.test. CNAME mx.dane.test.",
    ], tamper=[("_25._tcp.bogus.dane.test", "TLSA")])
    peer.zone("plain.test", ["plain.test. MX 10 mx.plain.test.", "mx.plain.test. A 127.0.0.4",
                             f"_25._tcp.mx.plain.test. TLSA 3 1 1 {'ab' * 32}"], signed=False)
    peer.start()
    yield peer
    peer.stop()


async def test_resolver_reports_the_ad_bit_of_a_validating_resolver(dnssec: DnssecPeer) -> None:
    r = make_resolver([dnssec.nameserver], timeout=2)
    records, secure = await r.atlsa("_25._tcp.mx.dane.test")
    assert secure and sorted(records) == [(2, 0, 1, bytes.fromhex("cd" * 32)), (3, 1, 1, bytes.fromhex("ab" * 32))]
    assert await r.asecure("dane.test", "MX") and await r.asecure("mx.dane.test", "A")
    assert await r.atlsa("_25._tcp.nothing.dane.test") == ([], True)       # NXDOMAIN, proven by NSEC
    assert await r.atlsa("_25._tcp.dane.test") == ([], True)               # NODATA
    records, secure = await r.atlsa("_25._tcp.mx.plain.test")              # unsigned zone: records, no AD
    assert records and not secure
    assert not await r.asecure("plain.test", "MX")
    with pytest.raises(DNSError):                                          # bogus: SERVFAIL, not "no records"
        await r.atlsa("_25._tcp.bogus.dane.test")
    assert await r.aa("mx.dane.test") == ["127.0.0.2"]                     # the plain lookups are untouched
    assert await r.amx("dane.test") == [(10, "mx.dane.test")]


async def test_lookup_through_unbound(dnssec: DnssecPeer) -> None:
    r = make_resolver([dnssec.nameserver], timeout=2)
    got = await dane.lookup(r, "dane.test", "mx.dane.test", 25)
    assert got.usable and got.secure and len(got.records) == 2
    got = await dane.lookup(r, "dane.test", "alias.dane.test", 25)
    assert got.usable and got.base == "mx.dane.test" and await r.acanonical("alias.dane.test") == ("mx.dane.test", True)
    got = await dane.lookup(r, "dane.test", "bogus.dane.test", 25)
    assert got.failure is not None and got.failure.result_type == "dnssec-invalid"
    got = await dane.lookup(r, "plain.test", "mx.plain.test", 25)
    assert not got.usable and not got.secure and got.failure is None


async def test_dnssec_answers_are_cached_for_their_ttl_apart_from_plain_ones() -> None:
    """A non-validating server (tests.support.dnsserver never sets AD): records, insecure, asked once per TTL."""
    from tests.support.dnsserver import DNSServer
    zone = {"_25._tcp.mx.cache.test": {"TLSA": [f"3 1 1 {'ab' * 32}"]}, "mx.cache.test": {"A": ["127.0.0.2"]}}
    with DNSServer(zone, ttl=60) as server:
        r = make_resolver([server.nameserver], timeout=2)
        for _ in range(3):
            assert await r.atlsa("_25._tcp.mx.cache.test") == ([(3, 1, 1, bytes.fromhex("ab" * 32))], False)
            assert await r.atlsa("_25._tcp.gone.cache.test") == ([], False)       # NXDOMAIN, cached by the SOA
            assert not await r.asecure("mx.cache.test", "A")
        assert await r.aa("mx.cache.test") == ["127.0.0.2"]                       # its own lookup, own cache
        asked = [(name, rdtype) for name, rdtype, _ in server.queries]
        assert asked.count(("_25._tcp.mx.cache.test", "TLSA")) == 1
        assert asked.count(("_25._tcp.gone.cache.test", "TLSA")) == 1
        assert asked.count(("mx.cache.test", "A")) == 2


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_certificates_never_raise(pki, data) -> None:
    """Bytes of the real leaf changed here and there: the parser may refuse them or read something else,
    but verify answers a failure (a change inside the signed part breaks the match) and never raises."""
    leaf = bytearray(pki["leaf"][0])
    for _ in range(data.draw(st.integers(1, 4))):
        leaf[data.draw(st.integers(0, len(leaf) - 1))] = data.draw(st.integers(0, 255))
    chain = [bytes(leaf), pki["leaf"][1]]
    cut = data.draw(st.integers(0, len(leaf)))
    record = tlsa(3, 0, 1, pki["leaf"][0])
    for presented in (chain, [bytes(leaf)[:cut]]):
        result = dane.verify(found(record, tlsa(2, 0, 1, pki["inter"])), presented, HOST)
        if bytes(leaf) != pki["leaf"][0]:
            assert result is not None
