"""mxd.resolver against the in-process DNS server on a loopback port other than 53."""
from __future__ import annotations

import time

import pytest

from mxd.resolver import DNSError, StaticResolver, make_resolver, split_nameserver
from tests.support.dnsserver import DNSServer, dns_server  # noqa: F401  (fixture)


@pytest.fixture
def resolver(dns_server: DNSServer):
    dns_server.set("example.com", "MX", [(20, "mx2.example.com"), (10, "MX1.example.com."), (30, "mx0.example.com")])
    dns_server.set("example.com", "TXT", ["v=spf1 -all", ["part one ", "part two"], "k=" + "x" * 600])
    dns_server.set("example.com", "A", ["192.0.2.1", "192.0.2.2"])
    dns_server.set("example.com", "AAAA", ["2001:db8::1"])
    dns_server.set("www.example.com", "CNAME", ["example.com"])
    dns_server.set("alias.example.com", "CNAME", ["null.example"])
    dns_server.set("broken.example", "SERVFAIL")
    dns_server.set("null.example", "MX", [(0, ".")])
    dns_server.set_ptr("192.0.2.1", ["host.example.com"])
    assert dns_server.port != 53
    return make_resolver([dns_server.nameserver], timeout=2.0)


def test_split_nameserver() -> None:
    assert split_nameserver("127.0.0.1") == ("127.0.0.1", 53)
    assert split_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert split_nameserver("[::1]:5353") == ("::1", 5353)
    assert split_nameserver("::1") == ("::1", 53)


def test_mx_sorted_without_trailing_dot(resolver) -> None:
    assert resolver.mx("example.com") == [(10, "mx1.example.com"), (20, "mx2.example.com"), (30, "mx0.example.com")]


def test_null_mx_is_root(resolver) -> None:
    assert resolver.mx("null.example") == [(0, ".")]


def test_txt_strings_joined(resolver) -> None:
    # an RRset has no order; over 512 bytes: TC over UDP, then TCP
    assert sorted(resolver.txt("example.com")) == ["k=" + "x" * 600, "part one part two", "v=spf1 -all"]


def test_long_answer_retried_over_tcp(resolver, dns_server: DNSServer) -> None:
    resolver.txt("example.com")
    assert ("example.com", "TXT", "udp") in dns_server.queries
    assert ("example.com", "TXT", "tcp") in dns_server.queries


def test_a_aaaa_cname_ptr(resolver) -> None:
    assert sorted(resolver.a("example.com")) == ["192.0.2.1", "192.0.2.2"]
    assert resolver.aaaa("example.com") == ["2001:db8::1"]
    assert sorted(resolver.a("www.example.com")) == ["192.0.2.1", "192.0.2.2"]
    assert resolver.ptr("192.0.2.1") == ["host.example.com"]
    assert resolver.ptr("not an ip") == []


def test_nxdomain_and_nodata_are_empty(resolver) -> None:
    assert resolver.a("nope.example") == []
    assert resolver.txt("nope.example") == []
    assert resolver.txt("alias.example.com") == []   # CNAME to a name without TXT
    assert resolver.aaaa("null.example") == []       # NODATA
    assert resolver.a("a..b.example") == []          # not a DNS name


def test_servfail_raises(resolver) -> None:
    with pytest.raises(DNSError):
        resolver.txt("broken.example")


def test_timeout_raises(dns_server: DNSServer) -> None:
    dns_server.set("slow.example", "TIMEOUT")
    r = make_resolver([dns_server.nameserver], timeout=0.3)
    started = time.monotonic()
    with pytest.raises(DNSError):
        r.a("slow.example")
    assert time.monotonic() - started < 2


def test_mutation_while_running(resolver, dns_server: DNSServer) -> None:
    assert resolver.a("new.example") == []
    dns_server.set("new.example", "A", ["192.0.2.9"])  # TTL 0: nothing cached
    assert resolver.a("new.example") == ["192.0.2.9"]


def test_cache_respects_ttl() -> None:
    with DNSServer({"c.example": {"A": ["192.0.2.7"]}}, ttl=300) as server:
        r = make_resolver([server.nameserver])
        assert r.a("n.example") == []
        server.set("n.example", "A", ["192.0.2.1"])
        assert r.a("n.example") == []  # negative answer cached for the SOA minimum (RFC 2308 5)
        assert r.a("c.example") == ["192.0.2.7"]
        server.set("c.example", "A", ["192.0.2.8"])
        assert r.a("c.example") == ["192.0.2.7"]
        assert len([q for q in server.queries if q[0] == "c.example"]) == 1
        assert make_resolver([server.nameserver], cache_size=0).a("c.example") == ["192.0.2.8"]


async def test_async_twins(resolver) -> None:
    assert await resolver.amx("example.com") == [(10, "mx1.example.com"), (20, "mx2.example.com"), (30, "mx0.example.com")]
    assert "part one part two" in await resolver.atxt("example.com")
    assert sorted(await resolver.aa("example.com")) == ["192.0.2.1", "192.0.2.2"]
    assert await resolver.aaaaa("example.com") == ["2001:db8::1"]
    assert await resolver.aa("nope.example") == []
    with pytest.raises(DNSError):
        await resolver.atxt("broken.example")


def test_ipv6_loopback_server() -> None:
    with DNSServer({"v6.example": {"A": ["192.0.2.6"]}}, host="::1") as server:
        assert server.nameserver.startswith("[::1]:")
        assert make_resolver([server.nameserver]).a("v6.example") == ["192.0.2.6"]


def test_static_resolver_same_zone_shape() -> None:
    r = StaticResolver({
        "Example.com.": {"MX": [(20, "b.example.com."), (10, "a.example.com")], "TXT": ["v=spf1 -all", ["a", "b"]],
                         "A": ["127.0.0.2"]},
        "alias.example.com": {"CNAME": "example.com"},
        "2.0.0.127.in-addr.arpa": {"PTR": ["example.com."]},
        "bad.example": "SERVFAIL",
    })
    assert r.mx("example.com") == [(10, "a.example.com"), (20, "b.example.com")]
    assert r.txt("example.com") == ["v=spf1 -all", "ab"]
    assert r.a("alias.example.com") == ["127.0.0.2"]
    assert r.ptr("127.0.0.2") == ["example.com"]
    assert r.a("nope.example") == []
    with pytest.raises(DNSError):
        r.a("bad.example")


def test_binds_the_resolv_conf_address() -> None:
    """Tools that only read /etc/resolv.conf (opendkim-testmsg) need a server on 127.0.0.53:53."""
    try:
        server = DNSServer({"r.example": {"A": ["192.0.2.53"]}}, host="127.0.0.53", port=53).start()
    except OSError as e:  # not root, or the port is taken by another test run
        pytest.skip(f"cannot bind 127.0.0.53:53: {e}")
    try:
        assert server.nameserver == "127.0.0.53:53"
        assert make_resolver(["127.0.0.53"]).a("r.example") == ["192.0.2.53"]
    finally:
        server.stop()
