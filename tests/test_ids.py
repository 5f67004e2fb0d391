"""mxd.ids: prefixed, time-ordered ids in Crockford base32."""
from __future__ import annotations

import re
import time

from mxd.ids import new_id


def test_ids_are_prefixed_crockford_and_sort_in_creation_order():
    made = [new_id("msg") for _ in range(5000)]
    assert all(re.fullmatch(r"msg_[0-9a-hjkmnp-tv-z]{24}", i) for i in made)
    assert made == sorted(made) and len(set(made)) == len(made)
    before = new_id("q")
    time.sleep(0.002)
    assert new_id("q") > before


def test_the_time_is_in_the_leading_characters():
    ms = int(time.time() * 1000)
    value = int("".join("0123456789abcdefghjkmnpqrstvwxyz".index(c).__format__("05b") for c in new_id("x")[2:]), 2)
    assert abs((value >> 70) - ms) < 1000
