"""Authentication on the event loop: `authenticate` run with a resolver that only answers what was looked
up already, its misses fetched with the async resolver in between.

Handing each message to a thread costs more in waiting than in work: under load a thread waits for
the GIL up to its switch interval (5 ms) per hop, while the checks themselves take a fraction of a
millisecond once the answers they need are known. So `authenticate` runs right here; a lookup it needs
and that is not in the memo (a few seconds of recent answers, on top of the resolver's own TTL cache)
stops it (`_Miss`, a BaseException so that no `except Exception` in the checks swallows it), the
answer is fetched without blocking the loop (a timeout waits, but only this message), and it runs
again. A message that needs many lookups, or a kind of lookup without an async twin (PTR), goes to a
thread with the real resolver instead, so the reruns are bounded.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from typing import Any, Sequence

from mxd.authn import AuthResults, authenticate, spf
from mxd.resolver import DNSError, Resolver

MEMO_SECONDS = 5.0
MAX_RERUNS = 12
_MEMO_SIZE = 8192


class _Miss(BaseException):
    """A lookup the memo does not hold (kind None: one that cannot be fetched asynchronously)."""

    def __init__(self, kind: str | None, name: str) -> None:
        super().__init__(kind, name)
        self.kind, self.name = kind, name


class _Memo:
    """Answers (or DNSError) of recent lookups for `MEMO_SECONDS`."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.entries: dict[tuple[str, str], tuple[float, Any]] = {}

    def get(self, kind: str, name: str) -> Any:
        key = (kind, name.lower())
        hit = self.entries.get(key)
        if hit is None or hit[0] < time.monotonic():
            raise _Miss(kind, name)
        if isinstance(hit[1], DNSError):
            raise hit[1]
        return hit[1]

    async def fetch(self, kind: str, name: str) -> None:
        lookup = {"txt": self.resolver.atxt, "mx": self.resolver.amx, "a": self.resolver.aa,
                  "aaaa": self.resolver.aaaaa}[kind]
        try:
            value: Any = await lookup(name)
        except DNSError as e:
            value = e
        if len(self.entries) >= _MEMO_SIZE:
            self.entries.clear()
        self.entries[(kind, name.lower())] = (time.monotonic() + MEMO_SECONDS, value)


class _MemoResolver:
    """The Resolver protocol over the memo: sync methods answer from it or stop the checks."""

    def __init__(self, memo: _Memo) -> None:
        self.memo = memo

    def txt(self, name: str) -> list[str]:
        return self.memo.get("txt", name)

    def mx(self, name: str) -> list[tuple[int, str]]:
        return self.memo.get("mx", name)

    def a(self, name: str) -> list[str]:
        return self.memo.get("a", name)

    def aaaa(self, name: str) -> list[str]:
        return self.memo.get("aaaa", name)

    def ptr(self, ip: str) -> list[str]:
        raise _Miss(None, ip)

    async def atxt(self, name: str) -> list[str]:
        return await self.memo.resolver.atxt(name)

    async def amx(self, name: str) -> list[tuple[int, str]]:
        return await self.memo.resolver.amx(name)

    async def aa(self, name: str) -> list[str]:
        return await self.memo.resolver.aa(name)

    async def aaaaa(self, name: str) -> list[str]:
        return await self.memo.resolver.aaaaa(name)


class Authenticator:
    """`authenticate` for the MX, on the loop when it can, on a thread when it cannot."""

    def __init__(self, resolver: Resolver, authserv_id: str, trusted_arc_sealers: Sequence[str] = ()) -> None:
        self.resolver, self.authserv_id = resolver, authserv_id
        self.trusted_arc_sealers = tuple(trusted_arc_sealers)
        self.spf_memo = spf.Memo(MEMO_SECONDS)
        self.memo = _Memo(resolver)
        self.inline = _MemoResolver(self.memo)
        self.threads = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="mxd-gate")

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, data: bytes, *, ip: str, helo: str, mail_from: str) -> AuthResults:
        for _ in range(MAX_RERUNS):
            try:
                return authenticate(data, ip=ip, helo=helo, mail_from=mail_from, resolver=self.inline,
                                    authserv_id=self.authserv_id, trusted_arc_sealers=self.trusted_arc_sealers,
                                    spf_memo=self.spf_memo)
            except _Miss as miss:
                if miss.kind is None:
                    break
                await self.memo.fetch(miss.kind, miss.name)
        return await asyncio.get_running_loop().run_in_executor(self.threads, functools.partial(
            authenticate, data, ip=ip, helo=helo, mail_from=mail_from, resolver=self.resolver,
            authserv_id=self.authserv_id, trusted_arc_sealers=self.trusted_arc_sealers, spf_memo=self.spf_memo))
