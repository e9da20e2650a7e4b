"""The data plane's selectors: parsed from the core's text, matched against packets,
and in agreement with the core's own idea of what a selector holds."""

from __future__ import annotations

import pytest

from mobike_vici.core.ts import icmp_port, no_service_names, ts_from_cidr, ts_to_str
from mobike_vici.esp.selector import Selector, parse_selector

TCP, UDP, ICMP = 6, 17, 1


@pytest.mark.parametrize(("text", "expected"), [
    ("10.1.0.0/24", Selector(4, 0x0A010000, 0x0A0100FF)),
    ("10.1.0.5..10.1.0.9", Selector(4, 0x0A010005, 0x0A010009)),
    ("10.1.0.5/32[tcp/80]", Selector(4, 0x0A010005, 0x0A010005, 6, 80, 80)),
    ("0.0.0.0/0[udp/1000-2000]", Selector(4, 0, 0xFFFFFFFF, 17, 1000, 2000)),
    ("0.0.0.0/0[icmp/8]", Selector(4, 0, 0xFFFFFFFF, 1, 0x800, 0x800)),
    ("0.0.0.0/0[icmp/3(1)-3(4)]", Selector(4, 0, 0xFFFFFFFF, 1, 0x301, 0x304)),
    ("::/0[58]", Selector(6, 0, (1 << 128) - 1, 58)),
])
def test_parse_selector(text: str, expected: Selector) -> None:
    assert parse_selector(text) == expected


@pytest.mark.parametrize("text", ["10.1.0.0/33", "10.0.0.1..::1", "1.2.3.4/32[bogus]",
                                  "1.2.3.4/32[tcp/x]", "1.2.3.4/32[tcp"])
def test_parse_selector_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_selector(text)


def test_an_opaque_selector_matches_only_packets_without_ports() -> None:
    """RFC 4301 4.4.1: OPAQUE stands for "the port is not available" (a non-first
    fragment); a packet whose port we can see is not selected by it."""
    opaque = parse_selector("10.1.0.0/24[udp/OPAQUE]")
    assert opaque.matches(4, 0x0A010009, UDP, None)
    assert not opaque.matches(4, 0x0A010009, UDP, 53)
    assert not opaque.matches(4, 0x0A010009, TCP, None)


def test_a_port_range_does_not_match_a_packet_without_ports() -> None:
    web = parse_selector("10.1.0.0/24[tcp/80-443]")
    assert web.matches(4, 0x0A010009, TCP, 80)
    assert not web.matches(4, 0x0A010009, TCP, None)
    assert not web.matches(4, 0x0A010109, TCP, 80)
    assert not web.matches(6, 0x0A010009, TCP, 80)
    ping = parse_selector(ts_to_str(ts_from_cidr("10.1.0.0/24", ICMP, 8, 8), no_service_names))
    assert ping.matches(4, 0x0A010001, ICMP, icmp_port(8, 0))
    assert not ping.matches(4, 0x0A010001, ICMP, icmp_port(0, 0))

