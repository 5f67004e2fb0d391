"""Per-client limits: sliding minute windows per IP and per network, harvesting pauses, 0 = no limit
(a hand-driven clock: no sleeping, no timing asserted)."""
from __future__ import annotations

import pytest

from mxd.defences.limits import ClientLimits, Trusted, Window, network_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0 * 60

    def __call__(self) -> float:
        return self.now


def _limits(clock: Clock, **kw: int) -> ClientLimits:
    args = dict(messages=3, messages_net=5, recipients=4, recipients_net=6, unknown=2, pause=600)
    args.update(kw)
    return ClientLimits(clock=clock, **args)


@pytest.mark.parametrize("ip, net", [("192.0.2.77", "192.0.2.0/24"), ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
                                     ("::ffff:192.0.2.77", "192.0.2.0/24"), ("junk", "junk")])
def test_networks(ip, net):
    assert network_of(ip) == net


def test_messages_per_ip_then_per_network():
    clock = Clock()
    limits = _limits(clock)
    assert [limits.message("192.0.2.1") for _ in range(4)] == ["", "", "", "ip"]
    assert [limits.message("192.0.2.2") for _ in range(3)] == ["", "", "net"]     # 5 per /24
    assert limits.message("192.0.3.1") == ""                                       # another /24


def test_window_slides():
    clock = Clock()
    limits = _limits(clock)
    for _ in range(3):
        assert limits.message("192.0.2.1") == ""
    assert limits.message("192.0.2.1") == "ip"
    clock.now += 60                  # the whole previous minute still weighs 3 at the start of the next
    assert limits.message("192.0.2.1") == "ip"
    clock.now += 30                  # half of it: 1.5 left
    assert limits.message("192.0.2.1") == ""
    clock.now += 120                 # all gone
    assert [limits.message("192.0.2.1") for _ in range(4)] == ["", "", "", "ip"]


def test_recipients_counted_only_when_allowed():
    clock = Clock()
    limits = _limits(clock)
    assert [limits.recipient("192.0.2.1") for _ in range(5)] == ["", "", "", "", "ip"]
    assert [limits.recipient("192.0.2.9") for _ in range(3)] == ["", "", "net"]


def test_harvesting_pauses_the_client_for_the_pause():
    clock = Clock()
    limits = _limits(clock)
    assert [limits.unknown_recipient("192.0.2.1") for _ in range(3)] == [False, False, True]
    assert limits.paused("192.0.2.1") and not limits.paused("192.0.2.2")
    clock.now += 599
    assert limits.paused("192.0.2.1")
    clock.now += 2
    assert not limits.paused("192.0.2.1")


def test_zero_means_no_limit():
    clock = Clock()
    limits = _limits(clock, messages=0, messages_net=0, recipients=0, recipients_net=0, unknown=0)
    assert all(limits.message("192.0.2.1") == "" for _ in range(1000))
    assert all(limits.recipient("192.0.2.1") == "" for _ in range(1000))
    assert not any(limits.unknown_recipient("192.0.2.1") for _ in range(1000))


def test_window_forgets_old_keys_when_flooded():
    clock = Clock()
    window = Window(60, clock)
    window.add("a")
    clock.now += 500
    window.prune(clock.now)
    assert window.count("a") == 0 and not window._buckets


def test_trusted_networks():
    trusted = Trusted(["127.0.0.0/8", "::1/128", "2001:db8::/32"])
    assert "127.0.0.1" in trusted and "::1" in trusted and "2001:db8::5" in trusted
    assert "::ffff:127.0.0.9" in trusted
    assert "192.0.2.1" not in trusted and "junk" not in trusted
