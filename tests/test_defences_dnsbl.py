"""DNS block- and allow-lists: zone entries, query names, what answers mean, and lookups against a real
DNS server on loopback (listings, return codes, error answers, answers outside 127/8, timeouts, SERVFAIL)."""
from __future__ import annotations

import asyncio
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxd.config import ConfigError, load, parse_dns_list, parse_dns_lists
from mxd.defences import counters, dnsbl
from mxd.resolver import make_resolver
from tests.support.dnsserver import DNSServer


def test_zone_entries_with_and_without_codes():
    assert parse_dns_list("zen.example") == dnsbl.Zone("zen.example")
    z = parse_dns_list("Zen.Example.=127.0.0.2,127.0.0.4-127.0.0.7")
    assert z.name == "zen.example"
    assert [z.lists(ipaddress.IPv4Address(f"127.0.0.{i}")) for i in range(1, 9)] == \
        [False, True, False, True, True, True, True, False]


@pytest.mark.parametrize("entry", ["", "a..b", "bl test", "x=10.0.0.1", "x=127.0.0.5-127.0.0.1", "x=", "x=banana",
                                   "x=127.0.0.2-", "x=::1", "-" * 70 + ".test"])
def test_bad_zone_entries_are_config_errors(entry):
    with pytest.raises(ConfigError):
        parse_dns_list(entry)


def test_env_list_split_on_commas_is_put_back_together(tmp_path):
    cfg = load(env={"MXD_DATA_DIR": str(tmp_path), "MXD_DNSBL_ZONES": "a.test=127.0.0.2,127.0.0.4-127.0.0.7,b.test",
                    "MXD_DNSWL_ZONES": "wl.test"})
    assert cfg.dnsbl_zones == ["a.test=127.0.0.2,127.0.0.4-127.0.0.7", "b.test"]
    assert [z.name for z in parse_dns_lists(cfg.dnsbl_zones)] == ["a.test", "b.test"]
    with pytest.raises(ConfigError, match="dnswl_zones"):
        load(env={"MXD_DATA_DIR": str(tmp_path), "MXD_DNSWL_ZONES": "wl.test=8.8.8.8"})


@given(st.text(max_size=80))
def test_any_entry_parses_or_is_a_config_error(entry):
    try:
        zone = parse_dns_list(entry)
    except ConfigError:
        return
    assert zone.name and ".." not in zone.name


def test_query_names_ipv4_ipv6_and_mapped():
    assert dnsbl.query_name("192.0.2.99", "bl.test") == "99.2.0.192.bl.test"
    assert dnsbl.query_name("::ffff:192.0.2.99", "bl.test") == "99.2.0.192.bl.test"
    # RFC 5782 2.4: nibbles, least significant first
    assert dnsbl.query_name("2001:db8:1:2:3:4:567:89ab", "bl.test") == \
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.test"
    assert dnsbl.query_name("not an address", "bl.test") is None


@pytest.mark.parametrize("answers, status", [
    ([], "clean"),
    (["127.0.0.2"], "listed"),
    (["127.0.0.3"], "clean"),                        # not one of the codes that count
    (["127.0.0.3", "127.0.0.4"], "listed"),
    (["127.255.255.254"], "error"),                  # Spamhaus: query through a public resolver
    (["127.255.255.252"], "error"),
    (["127.255.255.255"], "error"),
    (["10.0.0.1"], "error"),                         # outside 127/8 (a wildcard, a parked domain)
    (["1.2.3.4", "127.0.0.2"], "error"),             # one bad answer taints the lot: never a listing
    (["::1"], "error"),
    (["garbage"], "malformed"),
])
def test_what_answers_mean(answers, status):
    zone = parse_dns_list("bl.test=127.0.0.2,127.0.0.4")
    assert dnsbl.classify(zone, answers).status == status


@given(st.lists(st.text(max_size=40), max_size=5))
def test_hostile_answers_never_raise_and_never_list_without_a_loopback_code(answers):
    finding = dnsbl.classify(parse_dns_list("bl.test"), answers)
    if finding.status == "listed":
        assert all(ipaddress.ip_address(a) in ipaddress.ip_network("127.0.0.0/8") for a in answers)


@pytest.fixture(scope="module")
def lists():
    zone = {
        "66.0.0.127.bl.test": {"A": ["127.0.0.2"], "TXT": ["listed: see https://bl.test/"]},
        "67.0.0.127.bl.test": {"A": ["127.255.255.254"]},
        "68.0.0.127.bl.test": {"A": ["10.9.9.9"]},
        "69.0.0.127.bl.test": "SERVFAIL",
        "70.0.0.127.bl.test": "TIMEOUT",
        "71.0.0.127.bl.test": {"A": ["127.0.0.2"]},
        "71.0.0.127.wl.test": {"A": ["127.0.10.2"]},
        "72.0.0.127.bl.test": {"TXT": ["only text, no address"]},
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.test": {"A": ["127.0.0.4"]},
    }
    with DNSServer(zone) as server:
        yield server


def _check(server, ip, blocklists="bl.test", allowlists=""):
    resolver = make_resolver([server.nameserver], timeout=0.5)
    return asyncio.run(dnsbl.check_client(resolver, parse_dns_lists([blocklists] if blocklists else []),
                                          parse_dns_lists([allowlists] if allowlists else []), ip))


def test_listed_client_and_its_zone(lists):
    verdict = _check(lists, "127.0.0.66")
    assert (verdict.listed_by, verdict.code, verdict.notes) == ("bl.test", "127.0.0.2", [])
    assert _check(lists, "2001:db8:1:2:3:4:567:89ab").listed_by == "bl.test"
    assert _check(lists, "127.0.0.99").listed_by == ""           # NXDOMAIN: not listed


def test_return_codes_that_do_not_count(lists):
    assert _check(lists, "127.0.0.66", "bl.test=127.0.0.4").listed_by == ""


def test_allow_listing_wins(lists):
    verdict = _check(lists, "127.0.0.71", allowlists="wl.test")
    assert (verdict.listed_by, verdict.allowed_by) == ("", "wl.test")


@pytest.mark.parametrize("ip, status", [("127.0.0.67", "error"), ("127.0.0.68", "error"),
                                        ("127.0.0.69", "servfail"), ("127.0.0.70", "timeout")])
def test_problems_are_not_listings_and_are_recorded(lists, ip, status):
    counters.reset()
    verdict = _check(lists, ip)
    assert verdict.listed_by == ""
    assert len(verdict.notes) == 1 and verdict.notes[0].startswith(f"dnsbl bl.test {status}")
    problems = counters.snapshot()["problems"]
    assert [(p["key"], p["count"]) for p in problems] == [(f"dnsbl bl.test {status}", 1)]
    assert problems[0]["last_seen"]


def test_nodata_is_not_a_listing(lists):
    verdict = _check(lists, "127.0.0.72")
    assert (verdict.listed_by, verdict.notes) == ("", [])


class GarbageDNS(DNSServer):
    """Answers the query id, then bytes that are no DNS message, for names under garbage.test."""

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        if b"\x07garbage\x04test" in wire:
            return wire[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\xff\xfe\xfd"
        return super().answer(wire, transport)


def test_malformed_answers_are_not_listings():
    counters.reset()
    with GarbageDNS({}) as server:
        resolver = make_resolver([server.nameserver], timeout=0.5)
        verdict = asyncio.run(dnsbl.check_client(resolver, parse_dns_lists(["garbage.test"]), [], "192.0.2.1"))
    assert verdict.listed_by == ""
    assert len(verdict.notes) == 1 and verdict.notes[0].startswith("dnsbl garbage.test ")
    assert counters.snapshot()["problems"][0]["count"] == 1


def test_problems_are_logged_sparingly(caplog):
    counters.reset()
    with caplog.at_level("WARNING", logger="mxd.defences"):
        for _ in range(120):
            counters.problem("dnsbl bl.test error", "error answer 127.255.255.254")
    assert [r.getMessage().split(" (")[1].split(" ")[0] for r in caplog.records] == ["1", "10", "100"]
    assert counters.snapshot()["problems"][0]["count"] == 120
