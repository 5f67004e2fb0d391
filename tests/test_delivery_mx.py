"""mxd.delivery.mxhosts through a real authoritative DNS server on loopback."""
from __future__ import annotations

import random
from typing import Iterator

import pytest

from mxd.delivery.mxhosts import NoRoute, NullMX, Target, resolve_targets
from mxd.resolver import StaticResolver, make_resolver
from mxd.smtpclient import DeliveryError
from tests.support.dnsserver import DNSServer

ZONE = {
    "multi.test": {"MX": [(20, "backup.multi.test"), (10, "mx1.multi.test"), (10, "mx2.multi.test"),
                          (30, "gone.multi.test"), (40, "mx1.multi.test")]},
    "mx1.multi.test": {"A": ["127.0.0.11"]},
    "mx2.multi.test": {"A": ["127.0.0.12"], "AAAA": ["::1"]},
    "backup.multi.test": {"AAAA": ["2001:db8::25"]},
    "implicit.test": {"A": ["127.0.0.21", "127.0.0.22"], "AAAA": ["2001:db8::21"], "TXT": ["v=spf1 -all"]},
    "v6only.test": {"AAAA": ["2001:db8::6"]},
    "nullmx.test": {"MX": [(0, ".")]},
    "empty.test": {"TXT": ["nothing else"]},
    "dangling.test": {"MX": [(10, "nowhere.dangling.test")]},
    "broken.test": "SERVFAIL",
    "brokenmx.test": {"MX": [(10, "mx.brokenhost.test")]},
    "mx.brokenhost.test": "SERVFAIL",
    "alias.test": {"MX": [(10, "mxalias.alias.test")]},
    "mxalias.alias.test": {"CNAME": "real.alias.test"},
    "real.alias.test": {"A": ["127.0.0.31"]},
    "ipmx.test": {"MX": [(10, "127.0.0.41")]},
    "xn--bcher-kva.test": {"MX": [(5, "mx.xn--bcher-kva.test")]},
    "mx.xn--bcher-kva.test": {"A": ["127.0.0.51"]},
}


@pytest.fixture(scope="module")
def dns() -> Iterator[DNSServer]:
    with DNSServer(ZONE, host="127.0.0.53") as server:
        yield server


@pytest.fixture
def resolver(dns: DNSServer):
    return make_resolver([dns.nameserver], timeout=2, cache_size=0)


async def test_priority_order_and_addresses(resolver) -> None:
    targets = await resolve_targets("multi.test", resolver, rng=random.Random(1))
    assert [t.preference for t in targets] == [10, 10, 20]
    assert sorted(targets[:2], key=lambda t: t.host) == [Target("mx1.multi.test", ["127.0.0.11"], 10),
                                                         Target("mx2.multi.test", ["127.0.0.12", "::1"], 10)]
    # gone.multi.test (no addresses) is skipped; mx1 listed twice keeps its best preference
    assert targets[2] == Target("backup.multi.test", ["2001:db8::25"], 20)


async def test_equal_preferences_are_shuffled(resolver) -> None:
    firsts = {(await resolve_targets("multi.test", resolver, rng=random.Random(seed)))[0].host for seed in range(20)}
    assert firsts == {"mx1.multi.test", "mx2.multi.test"}


async def test_implicit_mx_a_then_aaaa(resolver) -> None:
    (target,) = await resolve_targets("implicit.test", resolver)
    assert (target.host, target.preference) == ("implicit.test", 0)
    # A records first (in the order DNS gave them, which varies), then AAAA
    assert sorted(target.addresses[:2]) == ["127.0.0.21", "127.0.0.22"] and target.addresses[2:] == ["2001:db8::21"]
    assert await resolve_targets("v6only.test", resolver) == [Target("v6only.test", ["2001:db8::6"], 0)]


async def test_null_mx(resolver) -> None:
    with pytest.raises(NullMX) as e:
        await resolve_targets("nullmx.test", resolver)
    assert isinstance(e.value, DeliveryError)
    assert (e.value.permanent, e.value.code, e.value.enhanced, e.value.stage) == (True, 556, "5.1.10", "dns")


async def test_nxdomain_is_permanent(resolver) -> None:
    with pytest.raises(NoRoute) as e:
        await resolve_targets("does-not-exist.test", resolver)
    assert (e.value.permanent, e.value.enhanced, e.value.stage) == (True, "5.1.2", "dns")
    with pytest.raises(NoRoute) as e:       # exists, but has neither MX nor address
        await resolve_targets("empty.test", resolver)
    assert (e.value.permanent, e.value.enhanced) == (True, "5.1.2")


async def test_mx_host_without_address_is_permanent(resolver) -> None:
    with pytest.raises(NoRoute) as e:
        await resolve_targets("dangling.test", resolver)
    assert (e.value.permanent, e.value.enhanced) == (True, "5.4.4")


async def test_servfail_is_temporary(resolver) -> None:
    with pytest.raises(NoRoute) as e:
        await resolve_targets("broken.test", resolver)
    assert (e.value.permanent, e.value.enhanced, e.value.stage) == (False, "4.4.3", "dns")
    with pytest.raises(NoRoute) as e:       # the MX lookup works, the MX host's address lookups do not
        await resolve_targets("brokenmx.test", resolver)
    assert (e.value.permanent, e.value.enhanced) == (False, "4.4.3")


async def test_cname_ip_literal_and_idna(resolver) -> None:
    assert await resolve_targets("alias.test", resolver) == [Target("mxalias.alias.test", ["127.0.0.31"], 10)]
    assert await resolve_targets("ipmx.test", resolver) == [Target("127.0.0.41", ["127.0.0.41"], 10)]
    assert await resolve_targets("bücher.test", resolver) == [Target("mx.xn--bcher-kva.test", ["127.0.0.51"], 5)]
    assert await resolve_targets("[127.0.0.61]", resolver) == [Target("[127.0.0.61]", ["127.0.0.61"], 0)]
    assert await resolve_targets("[IPv6:::1]", resolver) == [Target("[IPv6:::1]", ["::1"], 0)]


async def test_invalid_domain_is_permanent(resolver) -> None:
    with pytest.raises(NoRoute) as e:
        await resolve_targets("bad..domain", resolver)
    assert e.value.permanent


async def test_static_resolver_same_answers() -> None:
    static = StaticResolver(ZONE)
    assert await resolve_targets("implicit.test", static) == [
        Target("implicit.test", ["127.0.0.21", "127.0.0.22", "2001:db8::21"], 0)]
    with pytest.raises(NullMX):
        await resolve_targets("nullmx.test", static)
    with pytest.raises(NoRoute) as e:
        await resolve_targets("broken.test", static)
    assert e.value.permanent is False
