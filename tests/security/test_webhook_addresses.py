"""Threat: an organisation admin registers a webhook whose host is an IPv6 address (or a name resolving to
one) that carries a loopback or private IPv4 address: 6to4 (2002:7f00:1::), Teredo, NAT64, ISATAP,
IPv4-compatible or IPv4-mapped. On a host with a route for that form the request reaches 127.0.0.1 or the
LAN (server-side request forgery into the mail host's own services), while the address looks public.

One rule (mxd.netcheck) judges every address mxd connects to on someone else's say-so: the IPv4 address
inside is checked too, both when the webhook is made and on every connection.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from mxd import netcheck
from tests.support.daemon import MxdProcess

SMUGGLED = {
    "6to4": "2002:7f00:1::1",                              # 127.0.0.1
    "6to4 private": "2002:a00:1::",                        # 10.0.0.1
    "Teredo": "2001:0:4136:e378:8000:63bf:80ff:fffe",      # client 127.0.0.1
    "NAT64": "64:ff9b::a9fe:a9fe",                         # 169.254.169.254, the cloud metadata service
    "NAT64 local use": "64:ff9b:1::808:808",               # RFC 8215: never global
    "ISATAP": "2a00:1450::5efe:7f00:1",                    # 127.0.0.1 behind a global prefix
    "IPv4-compatible": "::7f00:1",
    "IPv4-mapped": "::ffff:192.168.1.1",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MxdProcess]:
    proc = MxdProcess(tmp_path_factory.mktemp("hooks") / "data")     # webhook_allow_private is off by default
    proc.init()
    proc.start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("form", sorted(SMUGGLED))
def test_webhook_to_an_embedded_private_ipv4_is_refused(server: MxdProcess, form: str) -> None:
    r = server.api("POST", "/api/webhooks", json={"url": f"https://[{SMUGGLED[form]}]/hook",
                                                  "event_types": ["message.inbound"]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "webhook_url_refused"


def test_webhook_to_public_nat64_and_6to4_is_allowed(server: MxdProcess) -> None:
    for address in ("64:ff9b::808:808", "2002:808:808::1"):          # 8.8.8.8 through NAT64 and 6to4
        r = server.api("POST", "/api/webhooks", json={"url": f"https://[{address}]/hook",
                                                      "event_types": ["message.inbound"]})
        assert r.status_code == 201, r.text


@pytest.mark.parametrize("address, why", [
    ("2002:7f00:1::", "6to4 of 127.0.0.1, loopback"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo client of 192.0.2.45, private"),
    ("64:ff9b::7f00:1", "NAT64 of 127.0.0.1, loopback"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("fe80::5efe:a00:1", "ISATAP of 10.0.0.1, private"),
    ("::a00:1", "IPv4-compatible of 10.0.0.1, private"),
    ("::ffff:127.0.0.1", "IPv4-mapped of 127.0.0.1, loopback"),
    ("100.64.0.1", "non-public"), ("::1", "loopback"), ("fd00::1", "private"),
    ("64:ff9b::808:808", None), ("::ffff:8.8.8.8", None), ("2606:4700:4700::1111", None), ("8.8.8.8", None)])
def test_one_public_address_rule(address: str, why: str | None) -> None:
    assert netcheck.refusal(address) == why
    assert netcheck.is_public(address) is (why is None)
