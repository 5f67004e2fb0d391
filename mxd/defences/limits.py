"""Per-client limits of the MX, in memory per process: messages and accepted recipients per client IP
and per client network (/24 for IPv4, /64 for IPv6) per minute, and unknown-recipient attempts per IP
(directory harvesting) per ten minutes, after which the client is paused.

Windows are bucketed and sliding: the count of the current bucket plus the previous bucket's count
weighted by how much of it still lies inside the window (the estimate nginx and Cloudflare use); O(1)
per event and two numbers per key. A limit of 0 means no limit. Trusted networks skip all of it.
"""
from __future__ import annotations

import ipaddress
import time
from typing import Callable

MINUTE = 60.0
HARVEST_WINDOW = 600.0
_MAX_KEYS = 100_000


def network_of(ip: str) -> str:
    """The client's network: its /24 (IPv4) or /64 (IPv6); the address itself when it is not one."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


class Window:
    """Events per key over a sliding window of `span` seconds."""

    def __init__(self, span: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.span, self.clock = span, clock
        self._buckets: dict[str, tuple[float, int, int]] = {}   # key -> (bucket start, current, previous)

    def _current(self, key: str, now: float) -> tuple[float, int, int]:
        start = now - now % self.span
        entry = self._buckets.get(key)
        if entry is None:
            return start, 0, 0
        began, current, previous = entry
        if began == start:
            return entry
        if began == start - self.span:
            return start, 0, current
        return start, 0, 0

    def count(self, key: str) -> float:
        """The events of `key` in the last `span` seconds (the previous bucket weighted by its overlap)."""
        now = self.clock()
        start, current, previous = self._current(key, now)
        return current + previous * (1.0 - (now - start) / self.span)

    def add(self, key: str, n: int = 1) -> None:
        now = self.clock()
        start, current, previous = self._current(key, now)
        if len(self._buckets) >= _MAX_KEYS and key not in self._buckets:
            self.prune(now)
        self._buckets[key] = (start, current + n, previous)

    def prune(self, now: float) -> None:
        old = now - 2 * self.span
        for key in [k for k, v in self._buckets.items() if v[0] < old]:
            del self._buckets[key]
        if len(self._buckets) >= _MAX_KEYS:      # a flood of distinct keys: forget rather than grow
            self._buckets.clear()


class Trusted:
    """Membership of `trusted_networks`, remembered per address."""

    def __init__(self, networks: list[str]) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self._known: dict[str, bool] = {}

    def __contains__(self, ip: str) -> bool:
        hit = self._known.get(ip)
        if hit is None:
            try:
                address = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                return False
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            hit = any(address in n for n in self.networks if n.version == address.version)
            if len(self._known) > 10_000:
                self._known.clear()
            self._known[ip] = hit
        return hit


class ClientLimits:
    """The MX's per-client limits; each method answers whether the event is allowed, and counts it if so."""

    def __init__(self, *, messages: int, messages_net: int, recipients: int, recipients_net: int,
                 unknown: int, pause: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.messages, self.messages_net = messages, messages_net
        self.recipients, self.recipients_net = recipients, recipients_net
        self.unknown, self.pause, self.clock = unknown, pause, clock
        self._msg, self._msg_net = Window(MINUTE, clock), Window(MINUTE, clock)
        self._rcpt, self._rcpt_net = Window(MINUTE, clock), Window(MINUTE, clock)
        self._unknown = Window(HARVEST_WINDOW, clock)
        self._paused: dict[str, float] = {}
        self._nets: dict[str, str] = {}      # ip -> its network: parsing an address costs more than the rest

    def _net(self, ip: str) -> str:
        net = self._nets.get(ip)
        if net is None:
            if len(self._nets) >= _MAX_KEYS:
                self._nets.clear()
            net = self._nets[ip] = network_of(ip)
        return net

    def message(self, ip: str) -> str:
        """"" when another message may start; else what is exceeded ("ip" or "net")."""
        if self.messages:
            if self._msg.count(ip) >= self.messages:
                return "ip"
        if self.messages_net:
            net = self._net(ip)
            if self._msg_net.count(net) >= self.messages_net:
                return "net"
            self._msg_net.add(net)
        if self.messages:
            self._msg.add(ip)
        return ""

    def recipient(self, ip: str) -> str:
        """"" when one more accepted recipient is allowed (and counts it); else "ip" or "net"."""
        if self.recipients:
            if self._rcpt.count(ip) >= self.recipients:
                return "ip"
        if self.recipients_net:
            net = self._net(ip)
            if self._rcpt_net.count(net) >= self.recipients_net:
                return "net"
            self._rcpt_net.add(net)
        if self.recipients:
            self._rcpt.add(ip)
        return ""

    def unknown_recipient(self, ip: str) -> bool:
        """Count one unknown-recipient attempt; True when that makes the client a harvester (now paused)."""
        if not self.unknown:
            return False
        self._unknown.add(ip)
        if self._unknown.count(ip) > self.unknown:
            if len(self._paused) > _MAX_KEYS:
                self._paused.clear()
            self._paused[ip] = self.clock() + self.pause
            return True
        return False

    def paused(self, ip: str) -> bool:
        until = self._paused.get(ip)
        if until is None:
            return False
        if until <= self.clock():
            del self._paused[ip]
            return False
        return True
