"""Where a webhook may post: the URL's scheme and host, and every address the host resolves to (through the
configured resolver like every other lookup; an IP literal as it is), each of which must be public unless
webhook_allow_private (the rule is `mxd.netcheck.refusal`). Checked when a webhook is made (`check_url`) and
again on every connection by the sender (`resolve`), which connects only to the addresses checked.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx

from mxd.errors import MxdError
from mxd.netcheck import refusal
from mxd.resolver import Resolver
from mxd.store.webhook_rows import MAX_URL


class UrlRefused(Exception):
    """The webhook URL may not be used: bad scheme, or a host that is not a public address."""


async def lookup(host: str, port: int, timeout: float, resolver: Resolver | None) -> list[ipaddress._BaseAddress]:
    """The addresses of a host name, through `resolver` (A and AAAA), or the system's without one."""
    if resolver is None:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise UrlRefused(f"{host} does not resolve: {exc or 'timeout'}") from None
        answers = [info[4][0] for info in infos]
    else:
        try:
            found = await asyncio.wait_for(asyncio.gather(resolver.aa(host), resolver.aaaaa(host),
                                                          return_exceptions=True), timeout)
        except asyncio.TimeoutError:
            raise UrlRefused(f"{host} does not resolve: timeout") from None
        errors = [r for r in found if isinstance(r, BaseException)]
        answers = [ip for r in found if not isinstance(r, BaseException) for ip in r]
        if not answers and errors:
            raise UrlRefused(f"{host} does not resolve: {errors[0] or type(errors[0]).__name__}") from None
    out: list[ipaddress._BaseAddress] = []
    for answer in answers:
        ip = ipaddress.ip_address(answer)
        if ip not in out:
            out.append(ip)
    return out


async def resolve(host: str, port: int, allow_private: bool, timeout: float = 10.0,
                  resolver: Resolver | None = None) -> list[str]:
    """The addresses of `host` (an IP literal as it is; a name through `resolver`, the configured one, else
    the system's), each checked; raises UrlRefused when one of them is not allowed."""
    host = host.strip("[]")
    try:
        found = [ipaddress.ip_address(host)]
    except ValueError:
        found = await lookup(host, port, timeout, resolver)
        if not found:
            raise UrlRefused(f"{host} does not resolve")
    if not allow_private:
        for ip in found:
            kind = refusal(ip)
            if kind:
                raise UrlRefused(f"{host} resolves to {ip}, not a public address ({kind})")
    return [str(ip) for ip in found]


def check_scheme(url: str, allow_private: bool) -> httpx.URL:
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise UrlRefused(f"url must be a string of at most {MAX_URL} characters")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UrlRefused(f"not a valid URL: {exc}") from None
    allowed = ("https", "http") if allow_private else ("https",)
    if parsed.scheme not in allowed:
        raise UrlRefused(f"the URL scheme must be {' or '.join(allowed)}")
    if not parsed.host:
        raise UrlRefused("the URL has no host")
    return parsed


async def check_url(url: str, allow_private: bool, *, resolver: Resolver | None = None) -> None:
    """At creation: the URL's scheme and every address its host resolves to (through `resolver`, the
    configured one; without it the system's); raises MxdError 400."""
    try:
        parsed = check_scheme(url, allow_private)
        await resolve(parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80), allow_private,
                      resolver=resolver)
    except UrlRefused as exc:
        raise MxdError("webhook_url_refused", f"webhook URL refused: {exc}") from None
