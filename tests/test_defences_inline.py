"""Authentication on the event loop (`mxd.defences.inline`): the same results as `authenticate` with the
real resolver, against a real DNS server on loopback, whatever the lookups (SPF includes, DKIM keys,
DMARC at the organisational domain, PTR, timeouts)."""
from __future__ import annotations

import asyncio
import dataclasses
import re

import pytest

from mxd.authn import authenticate
from mxd.defences.inline import Authenticator
from mxd.resolver import make_resolver
from tests.support.dnsserver import DNSServer
from tests.support.mail import dkim_sign, published_keys

ZONE = {
    "remote.test": {"TXT": ["v=spf1 include:_spf.remote.test -all"]},
    "_spf.remote.test": {"TXT": ["v=spf1 a:out.remote.test mx -all"]},
    "out.remote.test": {"A": ["127.0.0.9"]},
    "_dmarc.remote.test": {"TXT": ["v=DMARC1; p=reject"]},
    "ptr.test": {"TXT": ["v=spf1 ptr -all"]},
    "slow.test": "TIMEOUT",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    zone = dict(ZONE)
    signing = published_keys(tmp_path_factory.mktemp("dkim"), zone)
    with DNSServer(zone) as server:
        yield server, signing


def _message(author: str, signing=None) -> bytes:
    body = (f"From: <{author}>\r\nTo: <a@example.test>\r\nSubject: hi\r\nDate: Thu, 3 Dec 2026 10:00:00 +0000\r\n"
            "\r\nhello\r\n").encode()
    return dkim_sign(body, signing) if signing else body


def _both(server: DNSServer, data: bytes, ip: str, mail_from: str):
    resolver = make_resolver([server.nameserver], timeout=2)
    direct = authenticate(data, ip=ip, helo="h.test", mail_from=mail_from, resolver=resolver, authserv_id="mx.test")

    async def inline():
        auth = Authenticator(make_resolver([server.nameserver], timeout=2), "mx.test")
        try:
            return await auth(data, ip=ip, helo="h.test", mail_from=mail_from)
        finally:
            auth.close()
    return direct, asyncio.run(inline())


def _plain(auth):
    out = {k: v for k, v in dataclasses.asdict(auth).items() if k not in ("spf_detail", "dmarc_detail")}
    out["header_value"] = re.sub(r'reason="[^"]*"', 'reason=""', out["header_value"])   # a timeout's seconds differ
    return out


@pytest.mark.parametrize("ip, author, mail_from, signed, spf, dmarc", [
    ("127.0.0.9", "a@remote.test", "a@remote.test", False, "pass", "pass"),      # SPF through an include and a:
    ("127.0.0.8", "a@remote.test", "a@remote.test", True, "fail", "pass"),       # DKIM carries DMARC
    ("127.0.0.8", "a@remote.test", "a@remote.test", False, "fail", "fail"),
    ("127.0.0.8", "a@ptr.test", "a@ptr.test", False, "fail", "none"),            # PTR: handed to a thread
    ("127.0.0.8", "a@slow.test", "a@slow.test", False, "temperror", "none"),
])
def test_inline_answers_what_authenticate_answers(world, ip, author, mail_from, signed, spf, dmarc):
    server, signing = world
    direct, inline = _both(server, _message(author, signing if signed else None), ip, mail_from)
    assert (inline.spf, inline.dmarc) == (spf, dmarc)
    assert _plain(inline) == _plain(direct)
