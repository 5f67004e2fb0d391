"""Webhook hosts are resolved through the configured resolver (mxd.resolver), like every other lookup."""
from __future__ import annotations

import pytest

from mxd import webhook_sender, webhook_target
from mxd.errors import MxdError
from mxd.resolver import StaticResolver, make_resolver
from tests.support.dnsserver import DNSServer, dns_server  # noqa: F401  (fixture)


@pytest.fixture
def resolver(dns_server: DNSServer):
    dns_server.set("hooks.only-here.test", "A", ["93.184.215.14"])
    dns_server.set("hooks.only-here.test", "AAAA", ["2606:4700:4700::1111"])
    dns_server.set("v6.only-here.test", "AAAA", ["2606:4700:4700::1001"])
    dns_server.set("inside.only-here.test", "A", ["10.1.2.3"])
    dns_server.set("mixed.only-here.test", "A", ["93.184.215.14", "127.0.0.1"])
    dns_server.set("broken.only-here.test", "SERVFAIL")
    return make_resolver([dns_server.nameserver], timeout=2.0)


async def test_a_name_only_the_configured_dns_knows_resolves(resolver) -> None:
    found = await webhook_target.resolve("hooks.only-here.test", 443, False, resolver=resolver)
    assert found == ["93.184.215.14", "2606:4700:4700::1111"]
    assert await webhook_target.resolve("v6.only-here.test", 443, False, resolver=resolver) == ["2606:4700:4700::1001"]
    await webhook_target.check_url("https://hooks.only-here.test/hook", False, resolver=resolver)


async def test_a_name_resolving_to_a_private_address_is_refused(resolver) -> None:
    with pytest.raises(webhook_target.UrlRefused, match="resolves to 10.1.2.3, not a public address"):
        await webhook_target.resolve("inside.only-here.test", 443, False, resolver=resolver)
    with pytest.raises(webhook_target.UrlRefused, match="127.0.0.1, not a public address"):
        await webhook_target.resolve("mixed.only-here.test", 443, False, resolver=resolver)
    with pytest.raises(MxdError) as refused:
        await webhook_target.check_url("https://inside.only-here.test/hook", False, resolver=resolver)
    assert refused.value.code == "webhook_url_refused"
    # allowed when webhook_allow_private is on
    assert await webhook_target.resolve("inside.only-here.test", 80, True, resolver=resolver) == ["10.1.2.3"]


async def test_unknown_and_failing_names_do_not_resolve(resolver) -> None:
    for host in ("nowhere.only-here.test", "broken.only-here.test"):
        with pytest.raises(webhook_target.UrlRefused, match=f"{host} does not resolve"):
            await webhook_target.resolve(host, 443, False, resolver=resolver)


async def test_ip_literals_are_used_as_they_are() -> None:
    nothing = StaticResolver({})                     # would answer no name at all
    assert await webhook_target.resolve("[2606:4700:4700::1111]", 443, False, resolver=nothing) == [
        "2606:4700:4700::1111"]
    assert await webhook_target.resolve("127.0.0.1", 80, True, resolver=nothing) == ["127.0.0.1"]
    with pytest.raises(webhook_target.UrlRefused, match="loopback"):
        await webhook_target.resolve("127.0.0.1", 80, False, resolver=nothing)


async def test_every_connection_goes_through_the_configured_resolver(resolver) -> None:
    """The worker's HTTP client checks the addresses the configured DNS gives, on each connection."""
    client = webhook_sender.make_client(5.0, allow_private=False, resolver=resolver)
    try:
        with pytest.raises(webhook_target.UrlRefused, match="10.1.2.3"):
            await client.post("https://inside.only-here.test/hook", content=b"{}")
        with pytest.raises(webhook_target.UrlRefused, match="does not resolve"):
            await client.post("https://nowhere.only-here.test/hook", content=b"{}")
    finally:
        await client.aclose()
