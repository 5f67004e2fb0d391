"""Prefixed, opaque, time-ordered identifiers (msg_, thr_, mbx_, dom_, tok_, evt_ ...).

An id is the prefix and 24 Crockford base32 characters: 48 bits of milliseconds
and 72 bits that are random at the start of each millisecond and then count up,
so ids made by one process sort in creation order (used as list cursors).
"""
from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_lock = threading.Lock()
_last_ms = 0
_last_rand = 0


def _encode(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    global _last_ms, _last_rand
    with _lock:
        ms = int(time.time() * 1000)
        if ms <= _last_ms:
            ms = _last_ms
            _last_rand += 1
        else:
            _last_rand = secrets.randbits(71)
        _last_ms = ms
        rand = _last_rand
    return f"{prefix}_{_encode(ms, 10)}{_encode(rand & ((1 << 70) - 1), 14)}"


def has_prefix(value: str, prefix: str) -> bool:
    return isinstance(value, str) and value.startswith(prefix + "_") and len(value) == len(prefix) + 25
