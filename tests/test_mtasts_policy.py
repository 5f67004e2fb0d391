"""Outbound MTA-STS policies (RFC 8461): the record and policy parsers (with hostile input), the WebPKI
check of MX certificates, and the policy cache against a real DNS server and a real HTTPS policy host
on loopback (fetch limits, failures, refresh, the store across restarts)."""
from __future__ import annotations

import datetime
import time
from typing import Iterator

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxd.config import Config, ConfigError
from mxd.delivery.mtasts import Policy, PolicyCache, verifying_context, webpki_check
from mxd.resolver import make_resolver
from mxd.store.models import MtaStsPolicy
from mxd.stspolicy import MAX_AGE_LIMIT, ParsedPolicy, PolicyError, parse_policy, txt_id
from tests.support.dnsserver import DNSServer
from tests.support.peers.https_policy import PolicyServer, SilentHost, policy_text
from tests.support.pg import fresh_database
from tests.support.store import started_store

POLICY_IP = "127.0.0.21"       # the policy hosts' HTTPS server (port 443)
SILENT_IP = "127.0.0.22"       # a policy host that never answers

# ------------------------------------------------------------------ the parsers


def test_rfc_example_policy() -> None:
    text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n"
    assert parse_policy(text) == ParsedPolicy("enforce", ("mail.example.com", "*.example.net", "backupmx.example.com"),
                                              604800)


def test_policy_lf_lines_unknown_keys_and_spaces() -> None:
    text = "version: STSv1\nmode:testing\nmx:  MX1.Example.COM.\nfuture_key: some value\nmax_age: 0"
    assert parse_policy(text) == ParsedPolicy("testing", ("mx1.example.com",), 0)
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n") == ParsedPolicy("none", (), 86400)


@pytest.mark.parametrize("text, why", [
    ("", "version"),
    ("mode: enforce\nversion: STSv1\nmx: a.test\nmax_age: 1\n", "first line"),
    ("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n", "first line"),
    ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "mode"),
    ("version: STSv1\nmx: a.test\nmax_age: 1\n", "mode"),
    ("version: STSv1\nmode: enforce\nmode: testing\nmx: a.test\nmax_age: 1\n", "more than once"),
    ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557601\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1e6\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: a.test\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmax_age: 86400\n", "no mx"),
    ("version: STSv1\nmode: enforce\nmx: a.*.test\nmax_age: 86400\n", "mx"),
    ("version: STSv1\nmode: enforce\nmx: *\nmax_age: 86400\n", "mx"),
    ("version: STSv1\nmode: enforce\nmx: -bad.test\nmax_age: 86400\n", "mx"),
    ("version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 86400\n", "mx"),
    ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 86400\n\n", "key: value"),
    ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 86400\ngarbage\n", "key: value"),
    ("<html><body>hello</body></html>", "key: value"),
    ("version: STSv1\rmode: enforce\rmx: a.test\rmax_age: 86400\r", "key: value"),
])
def test_malformed_policies_are_refused(text: str, why: str) -> None:
    with pytest.raises(PolicyError, match=why):
        parse_policy(text)


_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_LABEL = st.tuples(st.text(_ALNUM, min_size=1, max_size=6), st.sampled_from(["", "-", "--x"])).map(
    lambda t: t[0] + (t[1] + "z" if t[1] else ""))
_HOST = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(["enforce", "testing"]), mx=st.lists(_HOST, min_size=1, max_size=5),
       wild=st.lists(st.booleans(), min_size=5, max_size=5), age=st.integers(0, MAX_AGE_LIMIT),
       crlf=st.booleans(), extra=st.lists(st.text(_ALNUM + "_", max_size=10), max_size=3))
def test_valid_policies_parse_to_what_was_written(mode: str, mx: list[str], wild: list[bool], age: int,
                                                  crlf: bool, extra: list[str]) -> None:
    patterns = [("*." if w else "") + m for m, w in zip(mx, wild)]
    eol = "\r\n" if crlf else "\n"
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {p}" for p in patterns), f"max_age: {age}",
             *(f"x{e}: v" for e in extra if e not in ("mode", "max_age", "version", "mx"))]
    assert parse_policy(eol.join(lines) + eol) == ParsedPolicy(mode, tuple(patterns), age)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=400),
                 st.lists(st.sampled_from(["version: STSv1", "mode: enforce", "mode: none", "mx: a.test",
                                           "mx: *.b.test", "max_age: 86400", "max_age: 99999999999", "x: y",
                                           "", ":", "mx:", "version:STSv1", "\r", "mode: testing\r"]),
                          max_size=8).map("\n".join)))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        parsed = parse_policy(text)
    except PolicyError:
        return
    assert parsed.mode in ("enforce", "testing", "none")
    assert 0 <= parsed.max_age <= MAX_AGE_LIMIT
    assert parsed.mx or parsed.mode == "none"
    assert all(m == m.lower() and "*" not in m[1:] for m in parsed.mx)


def test_txt_records() -> None:
    assert txt_id(["v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"
    assert txt_id(["v=STSv1;id=abc", "v=spf1 -all", "something else"]) == "abc"
    assert txt_id(["v=STSv1; id=abc; ext=val"]) == "abc"
    assert txt_id([]) is None
    assert txt_id(["v=STSv1; id=a", "v=STSv1; id=b"]) is None          # RFC 8461 3.1: several = none
    assert txt_id(["v=STSv1; id=" + "a" * 33]) is None
    assert txt_id(["v=STSv1; id=a-b"]) is None
    assert txt_id(["v=STSv1"]) is None
    assert txt_id(["v=STSv1; id=a; id=b"]) is None
    assert txt_id(["v=STSv1 id=a"]) is None
    assert txt_id([" v=STSv1; id=a"]) is None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=80), st.text(max_size=60).map(lambda t: "v=STSv1; id=" + t)), max_size=3))
def test_any_txt_records_give_an_id_or_none(records: list[str]) -> None:
    found = txt_id(records)
    assert found is None or (found.isalnum() and found.isascii() and 1 <= len(found) <= 32)


def test_policy_matches_mx_hosts() -> None:
    policy = Policy("example.com", "1", "enforce", ["mail.example.com", "*.example.net"])
    assert policy.matches("mail.example.com") and policy.matches("MAIL.example.com.")
    assert policy.matches("mx1.example.net")
    assert not policy.matches("example.net")                 # the wildcard needs a label
    assert not policy.matches("a.b.example.net")              # and matches one label only
    assert not policy.matches("mail.example.com.evil.test")
    assert not policy.matches("xmail.example.com")


# ------------------------------------------------------------------ certificates

@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _der(cert: trustme.LeafCert) -> list[bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    return [x509.load_pem_x509_certificate(pem.bytes()).public_bytes(Encoding.DER) for pem in cert.cert_chain_pems]


def test_webpki_check(ca: trustme.CA, ca_file: str) -> None:
    good = _der(ca.issue_cert("mx.sts.test", "*.wild.sts.test"))
    assert webpki_check(good, "mx.sts.test", ca_file) is None
    assert webpki_check(good, "MX.sts.test.", ca_file) is None
    assert webpki_check(good, "a.wild.sts.test", ca_file) is None
    assert webpki_check(_der(ca.create_child_ca().issue_cert("mx.sts.test")), "mx.sts.test", ca_file) is None
    assert webpki_check(good, "other.sts.test", ca_file).result_type == "certificate-host-mismatch"
    assert webpki_check(good, "a.b.wild.sts.test", ca_file).result_type == "certificate-host-mismatch"
    assert webpki_check(good, "mx.sts.test", "").result_type == "certificate-not-trusted"
    stranger = _der(trustme.CA().issue_cert("mx.sts.test"))
    assert webpki_check(stranger, "mx.sts.test", ca_file).result_type == "certificate-not-trusted"
    old = _der(ca.issue_cert("mx.sts.test", not_before=datetime.datetime(2020, 1, 1),
                             not_after=datetime.datetime(2021, 1, 1)))
    assert webpki_check(old, "mx.sts.test", ca_file).result_type == "certificate-expired"
    assert webpki_check([], "mx.sts.test", ca_file).result_type == "validation-failure"
    assert webpki_check([b"\x30\x03garbage"], "mx.sts.test", ca_file).result_type == "validation-failure"
    assert webpki_check(good, "[127.0.0.1]", ca_file).result_type in ("validation-failure", "certificate-host-mismatch")


def test_contexts_are_cached_and_verify(tmp_path) -> None:
    with pytest.raises(ConfigError, match="outbound_tls_ca_file"):
        verifying_context(str(tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="outbound_tls_ca_file"):
        verifying_context(str(tmp_path / "junk.pem"))
    ctx = verifying_context("")
    assert verifying_context("") is ctx
    assert ctx.check_hostname and ctx.minimum_version >= __import__("ssl").TLSVersion.TLSv1_2


# ------------------------------------------------------------------ the cache against real peers

DOMAINS = ["good", "huge", "gzip", "bad", "redirect", "html", "notfound", "none", "silent", "twice", "servfail", "nxt",
           "stale", "latin"]


def _zone() -> dict:
    zone: dict = {}
    for name in DOMAINS:
        domain = f"{name}.sts.test"
        zone[f"_mta-sts.{domain}"] = {"TXT": ["v=STSv1; id=1;"]}
        zone[f"mta-sts.{domain}"] = {"A": [SILENT_IP if name == "silent" else POLICY_IP]}
    zone["_mta-sts.twice.sts.test"] = {"TXT": ["v=STSv1; id=1;", "v=STSv1; id=2;"]}
    zone["_mta-sts.servfail.sts.test"] = "SERVFAIL"
    del zone["_mta-sts.nxt.sts.test"]
    return zone


@pytest.fixture(scope="module")
def peers(ca: trustme.CA) -> Iterator[tuple[DNSServer, PolicyServer, SilentHost]]:
    dns = DNSServer(_zone())
    dns.start()
    server = PolicyServer(POLICY_IP, ca, [f"mta-sts.{d}.sts.test" for d in DOMAINS]).start()
    silent = SilentHost(SILENT_IP)
    yield dns, server, silent
    silent.stop()
    server.stop()
    dns.stop()


def _cache(db, dns: DNSServer, ca_file: str) -> PolicyCache:
    cfg = Config(dns_nameservers=[dns.nameserver], outbound_tls_ca_file=ca_file, outbound_allow_private=True)
    cache = PolicyCache(cfg, db, make_resolver([dns.nameserver], timeout=2, cache_size=0))
    cache.fetch_timeout = 1.5
    return cache


async def test_fetch_cache_and_store(db, peers, ca_file: str) -> None:
    dns, server, _ = peers
    host = "mta-sts.good.sts.test"
    server.serve(host, policy_text("enforce", "mx.good.sts.test", "*.good.sts.test", max_age=86400))
    cache = _cache(db, dns, ca_file)
    policy, failure = await cache.get("Good.sts.test.")
    assert failure is None and policy is not None
    assert (policy.domain, policy.policy_id, policy.mode, policy.mx, policy.max_age) == (
        "good.sts.test", "1", "enforce", ["mx.good.sts.test", "*.good.sts.test"], 86400)
    assert policy.policy_strings()[:2] == ["version: STSv1", "mode: enforce"]
    assert server.fetches(host) == 1
    txt_queries = len([q for q in dns.queries if q[0] == "_mta-sts.good.sts.test"])
    assert (await cache.get("good.sts.test"))[0] == policy          # from memory: no fetch, no DNS
    assert server.fetches(host) == 1
    assert len([q for q in dns.queries if q[0] == "_mta-sts.good.sts.test"]) == txt_queries
    # once cached, a delivery's lookup touches neither the store nor DNS
    store, resolver = cache.db, cache.resolver
    cache.db = cache.resolver = _Untouchable()
    assert (await cache.get("good.sts.test"))[0] == policy
    cache.db, cache.resolver = store, resolver
    row = await db.read(lambda: MtaStsPolicy.get_by_id("good.sts.test"))
    assert (row.mode, row.mx, row.policy_id) == ("enforce", ["mx.good.sts.test", "*.good.sts.test"], "1")
    assert row.expires_at - row.fetched_at == 86400
    # a new process (a new cache on the same store) uses the stored policy, with the host gone
    server.forget(host)
    policy2, failure2 = await _cache(db, dns, ca_file).get("good.sts.test")
    assert policy2 == policy and failure2 is None and server.fetches(host) == 1


async def test_changed_id_refetches_in_the_background(db, peers, ca_file: str) -> None:
    dns, server, _ = peers
    host = "mta-sts.stale.sts.test"
    server.serve(host, policy_text("testing", "mx.stale.sts.test"))
    cache = _cache(db, dns, ca_file)
    assert (await cache.get("stale.sts.test"))[0].mode == "testing"
    cache.recheck = cache.retry = 0                     # look at the TXT record on every get, even after failures
    assert (await cache.get("stale.sts.test"))[0].mode == "testing"
    await _settle(cache)
    assert server.fetches(host) == 1                    # same id: not fetched again
    dns.set("_mta-sts.stale.sts.test", "TXT", ["v=STSv1; id=2"])
    server.serve(host, policy_text("enforce", "mx.stale.sts.test"))
    first, _ = await cache.get("stale.sts.test")
    assert first.mode == "testing"                      # the message does not wait for the refresh
    await _settle(cache)
    assert (await cache.get("stale.sts.test"))[0].mode == "enforce"
    assert server.fetches(host) == 2
    # a refresh that fails keeps the cached policy in force and notes why in the store
    await _settle(cache)
    dns.set("_mta-sts.stale.sts.test", "TXT", ["v=STSv1; id=3"])
    server.serve(host, "version: STSv1\nmode: bogus\n")
    await cache.get("stale.sts.test")
    await _settle(cache)
    policy, failure = await cache.get("stale.sts.test")
    assert (policy.mode, policy.policy_id, failure) == ("enforce", "2", None)
    row = await db.read(lambda: MtaStsPolicy.get_by_id("stale.sts.test"))
    assert "invalid" in row.last_error and row.policy_id == "2"
    # and a policy host that stops answering costs the message nothing
    await _settle(cache)
    dns.set("_mta-sts.stale.sts.test", "TXT", ["v=STSv1; id=4"])
    dns.set("mta-sts.stale.sts.test", "A", [SILENT_IP])
    assert (await cache.get("stale.sts.test"))[0].policy_id == "2"
    await _settle(cache)
    policy, failure = await cache.get("stale.sts.test")
    assert (policy.mode, policy.policy_id, failure) == ("enforce", "2", None)
    row = await db.read(lambda: MtaStsPolicy.get_by_id("stale.sts.test"))
    assert "no answer within" in row.last_error
    # so does a TXT record that disappears (RFC 8461 5.1: the cached policy is used until it expires)
    await _settle(cache)
    dns.set("_mta-sts.stale.sts.test", "TXT", None)
    await cache.get("stale.sts.test")
    await _settle(cache)
    assert (await cache.get("stale.sts.test"))[0].policy_id == "2"
    await cache.close()


async def test_policy_near_its_end_is_refetched_in_the_background(db, peers, ca_file: str) -> None:
    dns, server, _ = peers
    host = "mta-sts.good.sts.test"
    server.serve(host, policy_text("enforce", "mx.good.sts.test", max_age=86400))
    cache = _cache(db, dns, ca_file)
    await cache.get("good.sts.test")
    fetched = server.fetches(host)
    await _settle(cache)
    assert server.fetches(host) == fetched
    cache._states["good.sts.test"].expires_at = time.time() + 3600      # less than a quarter of max_age left
    assert (await cache.get("good.sts.test"))[0] is not None
    await _settle(cache)
    assert server.fetches(host) == fetched + 1                          # same id, refreshed all the same
    assert cache._states["good.sts.test"].expires_at > time.time() + 86000
    # near its end again with the host failing: one try, then the cached policy until RETRY has passed
    cache._states["good.sts.test"].expires_at = time.time() + 3600
    server.forget(host)
    for _ in range(3):
        assert (await cache.get("good.sts.test"))[0] is not None
        await _settle(cache)
    assert server.fetches(host) == fetched + 2


class _Untouchable:
    def __getattr__(self, name: str):
        raise AssertionError(f"{name} used on the cached path")


async def _settle(cache: PolicyCache) -> None:
    import asyncio
    await asyncio.gather(*list(cache._running.values()), return_exceptions=True)


@pytest.mark.parametrize("name, body, status, ctype, result, words", [
    ("huge", "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 86400\n" + "x: " + "y" * 70000 + "\n", 200,
     "text/plain", "sts-policy-invalid", "more than 64 KiB"),
    ("bad", "version: STSv1\nmode: enforce\n", 200, "text/plain", "sts-policy-invalid", "is invalid"),
    ("redirect", "", 301, "text/plain", "sts-policy-fetch-error", "redirect"),
    ("html", policy_text("enforce", "a.test"), 200, "text/html", "sts-policy-invalid", "not text/plain"),
    ("gzip", __import__("gzip").compress(b"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 86400\n" + b"x" * 10**7),
     200, "text/plain", "sts-policy-invalid", "compressed"),
    ("notfound", None, 404, "text/plain", "sts-policy-fetch-error", "HTTP 404"),
    ("latin", b"version: STSv1\nmode: enforce\nmx: \xe9.test\nmax_age: 1\n", 200, "text/plain; charset=utf-8",
     "sts-policy-invalid", "UTF-8"),
])
async def test_bad_policy_hosts_give_no_policy_and_a_reported_failure(db, peers, ca_file: str, name: str, body,
                                                                      status: int, ctype: str, result: str,
                                                                      words: str) -> None:
    dns, server, _ = peers
    host = f"mta-sts.{name}.sts.test"
    if body is None:
        server.forget(host)
    else:
        headers = {"Location": "https://elsewhere.test/"} if status == 301 else None
        server.serve(host, body, status, ctype, {"Content-Encoding": "gzip"} if name == "gzip" else headers)
    cache = _cache(db, dns, ca_file)
    policy, failure = await cache.get(f"{name}.sts.test")
    assert policy is None and failure is not None
    assert failure.result_type == result and words in failure.text, failure
    fetched = server.fetches(host)
    assert await cache.get(f"{name}.sts.test") == (None, failure)      # remembered: not fetched again at once
    assert server.fetches(host) == fetched
    assert await db.read(lambda: MtaStsPolicy.get_or_none(MtaStsPolicy.domain == f"{name}.sts.test")) is None


async def test_untrusted_policy_host_certificate(db, peers) -> None:
    dns, server, _ = peers
    server.serve("mta-sts.good.sts.test", policy_text("enforce", "mx.good.sts.test"))
    policy, failure = await _cache(db, dns, "").get("good.sts.test")       # the test CA is not trusted
    assert policy is None and failure.result_type == "sts-webpki-invalid"


async def test_silent_policy_host_costs_the_time_limit_once(db, peers, ca_file: str) -> None:
    dns, _, silent = peers
    cache = _cache(db, dns, ca_file)
    before = silent.count
    policy, failure = await cache.get("silent.sts.test")
    assert policy is None and failure.result_type == "sts-policy-fetch-error" and "no answer" in failure.text
    assert await cache.get("silent.sts.test") == (None, failure)
    assert silent.count == before + 1


async def test_no_policy_cases(db, peers, ca_file: str) -> None:
    dns, server, _ = peers
    server.serve("mta-sts.none.sts.test", "version: STSv1\nmode: none\nmax_age: 86400\n")
    cache = _cache(db, dns, ca_file)
    assert await cache.get("none.sts.test") == (None, None)             # mode none: no policy
    assert server.fetches("mta-sts.none.sts.test") == 1
    assert await cache.get("none.sts.test") == (None, None)
    assert server.fetches("mta-sts.none.sts.test") == 1                  # and remembered
    assert await cache.get("twice.sts.test") == (None, None)            # two records: none (RFC 8461 3.1)
    assert await cache.get("nxt.sts.test") == (None, None)              # no record
    assert await cache.get("servfail.sts.test") == (None, None)         # DNS failing: no policy, no crash
    assert await cache.get("[127.0.0.1]") == (None, None)
    assert await cache.get("bad..name") == (None, None)
    assert server.fetches("mta-sts.twice.sts.test") == 0


async def test_private_policy_host_refused_without_allow_private(db, peers, ca_file: str) -> None:
    dns, server, _ = peers
    server.serve("mta-sts.good.sts.test", policy_text("enforce", "mx.good.sts.test"))
    cfg = Config(dns_nameservers=[dns.nameserver], outbound_tls_ca_file=ca_file)
    cache = PolicyCache(cfg, db, make_resolver([dns.nameserver], timeout=2, cache_size=0))
    policy, failure = await cache.get("good.sts.test")
    assert policy is None and "no (public) address" in failure.text


async def test_policies_kept_in_postgresql(peers, ca_file: str) -> None:
    """The same store code on PostgreSQL (several nodes share their cached policies through it)."""
    dns, server, _ = peers
    host = "mta-sts.good.sts.test"
    server.serve(host, policy_text("testing", "mx.good.sts.test"))
    dns.set("_mta-sts.good.sts.test", "TXT", ["v=STSv1; id=pg1"])
    try:
        with fresh_database("mxd_sts_policies") as url, started_store(url) as pg:
            cache = _cache(pg, dns, ca_file)
            assert (await cache.get("good.sts.test"))[0].mode == "testing"
            dns.set("_mta-sts.good.sts.test", "TXT", ["v=STSv1; id=pg2"])
            server.serve(host, policy_text("enforce", "mx.good.sts.test"))
            cache.recheck = 0
            await cache.get("good.sts.test")
            await _settle(cache)
            server.forget(host)
            policy, _ = await _cache(pg, dns, ca_file).get("good.sts.test")      # another node, same store
            assert (policy.mode, policy.policy_id) == ("enforce", "pg2")
    finally:
        dns.set("_mta-sts.good.sts.test", "TXT", ["v=STSv1; id=1;"])
