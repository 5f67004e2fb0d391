"""Prefixed, opaque, time-ordered identifiers (msg_, thr_, mbx_, dom_, tok_, evt_ ...).

An id is the prefix and 24 Crockford base32 characters: 50 bits of milliseconds
and 70 bits that are random at the start of each millisecond and then count up,
so ids made by one process sort in creation order (used as list cursors).
An id that leaves the server inside an address (a queue entry's, in its VERP
return path) is `unguessable`: 70 fresh random bits every time, so it sorts by
the millisecond only and says nothing about the ids made next to it.
"""
from __future__ import annotations

import secrets
import threading
import time

ALPHABET = _ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_lock = threading.Lock()
_last_ms = 0
_last_rand = 0


_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]       # 10 bits -> two characters


def new_id(prefix: str, unguessable: bool = False) -> str:
    global _last_ms, _last_rand
    if unguessable:
        return _format(prefix, int(time.time() * 1000), secrets.randbits(70))
    with _lock:
        ms = int(time.time() * 1000)
        if ms <= _last_ms:
            ms = _last_ms
            _last_rand += 1
        else:
            _last_rand = secrets.randbits(69)
        _last_ms = ms
        rand = _last_rand
    return _format(prefix, ms, rand)


def _format(prefix: str, ms: int, rand: int) -> str:
    # 50 bits of time then 70 bits of counter: 24 base32 characters, big-endian, so ids sort by time.
    value = (ms << 70) | (rand & ((1 << 70) - 1))
    pairs = _PAIRS
    return prefix + "_" + "".join([pairs[(value >> shift) & 1023] for shift in range(110, -1, -10)])
