"""The client's forward-confirmed reverse-DNS name (FCrDNS): a PTR name of its IP whose A or AAAA records
lead back to that IP. What the spam engine is told as the client's `Hostname` (as Postfix tells milters
its verified client name); "" when there is none, which the engine then scores as such.

Looked up once per IP for a minute; a DNS failure is "no name", never an error.
"""
from __future__ import annotations

import asyncio
import ipaddress
import time

from mxd.resolver import Resolver

MEMO_SECONDS = 60.0
MAX_NAMES = 5            # PTR names tried (RFC 8601's iprev and Postfix both bound this)
_MEMO_SIZE = 4096


class ClientNames:
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.memo: dict[str, tuple[float, "asyncio.Future[str]"]] = {}

    def start(self, ip: str) -> "asyncio.Future[str]":
        """The lookup for `ip`, started now (at connect) or the one under way or done in the last minute."""
        hit = self.memo.get(ip)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        if len(self.memo) >= _MEMO_SIZE:
            self.memo.clear()
        task = asyncio.ensure_future(self._lookup(ip))
        self.memo[ip] = (time.monotonic() + MEMO_SECONDS, task)
        return task

    async def name(self, ip: str) -> str:
        return await asyncio.shield(self.start(ip))

    async def _lookup(self, ip: str) -> str:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return ""
        try:
            names = await asyncio.to_thread(self.resolver.ptr, ip)     # the resolver has no async PTR
        except Exception:                       # DNSError, or anything odd: no name
            return ""
        forward = self.resolver.aa if address.version == 4 else self.resolver.aaaaa
        for name in names[:MAX_NAMES]:
            name = name.rstrip(".").lower()
            try:
                back = await forward(name)
            except Exception:                   # DNSError, or anything odd: not this name
                continue
            if any(_same(ip, b) for b in back):
                return name
        return ""


def _same(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False
