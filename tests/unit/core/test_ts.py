"""Traffic selector resolution, narrowing, printing and matching (charon 5.9.8 semantics)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mobike_vici.config.model import TrafficSelectorSpec
from mobike_vici.core.ts import (
    PORT_OPAQUE,
    icmp_port,
    is_contained_in,
    narrow,
    no_service_names,
    resolve,
    subset,
    ts_from_cidr,
    ts_to_str,
)
from mobike_vici.esp.selector import parse_selector
from mobike_vici.ikev2.constants import TsType
from mobike_vici.ikev2.payloads import TrafficSelector

ip = ipaddress.ip_address
net = ipaddress.ip_network
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58


ANY_PORT = (0, 65535)


def spec(
    text: str | None, proto: int = 0, ports: tuple[int, int] = ANY_PORT
) -> TrafficSelectorSpec:
    return TrafficSelectorSpec(net(text) if text else None, proto, ports[0], ports[1])


def rng(
    first: str, last: str, proto: int = 0, ports: tuple[int, int] = ANY_PORT
) -> TrafficSelector:
    a, b = ip(first), ip(last)
    kind = TsType.TS_IPV4_ADDR_RANGE if a.version == 4 else TsType.TS_IPV6_ADDR_RANGE
    return TrafficSelector(kind, proto, ports[0], ports[1], a, b)


def s(ts: list[TrafficSelector]) -> list[str]:
    return [ts_to_str(t, no_service_names) for t in ts]


# --- resolve -------------------------------------------------------------------------


def test_resolve_subnet_and_dynamic_host() -> None:
    out = resolve([spec("10.1.0.0/24"), spec(None)], ip("192.0.2.1"))
    assert s(out) == ["10.1.0.0/24", "192.0.2.1/32"]
    assert out[1].start_addr == out[1].end_addr == ip("192.0.2.1")


def test_resolve_dynamic_prefers_vips_over_own_address() -> None:
    out = resolve([spec(None)], ip("192.0.2.1"), [ip("10.3.0.1"), ip("fd00::1")])
    assert s(out) == ["10.3.0.1/32", "fd00::1/128"]
    assert out[1].ts_type == TsType.TS_IPV6_ADDR_RANGE


def test_resolve_requested_vip_proposes_whole_family() -> None:
    out = resolve([spec(None)], ip("192.0.2.1"), [ip("0.0.0.0"), ip("::")])
    assert s(out) == ["0.0.0.0/0", "::/0"]
    assert out[0].end_addr == ip("255.255.255.255")


def test_resolve_dynamic_without_address_is_all_of_ipv4() -> None:
    assert s(resolve([spec(None)], None)) == ["0.0.0.0/0"]


def test_resolve_keeps_protocol_and_ports_on_dynamic() -> None:
    out = resolve([spec(None, TCP, (80, 80))], ip("192.0.2.1"))
    assert s(out) == ["192.0.2.1/32[tcp/80]"]


def test_resolve_shifts_icmp_type_into_high_byte() -> None:
    (ts,) = resolve([spec("10.0.0.0/8", ICMP, (8, 8))], None)
    assert (ts.start_port, ts.end_port) == (0x0800, 0x0800)
    assert ts_to_str(ts) == "10.0.0.0/8[icmp/8]"


def test_resolve_drops_contained_selectors() -> None:
    out = resolve([spec("10.1.0.0/24"), spec("10.0.0.0/8"), spec("10.0.0.0/8")], None)
    assert s(out) == ["10.0.0.0/8"]


# --- narrow --------------------------------------------------------------------------


def test_narrow_peer_superset_to_configured_subset() -> None:
    assert s(narrow([rng("0.0.0.0", "255.255.255.255")], [ts_from_cidr("10.1.0.0/24")])) == [
        "10.1.0.0/24"
    ]


def test_narrow_peer_subset_is_kept() -> None:
    assert s(narrow([ts_from_cidr("10.1.0.128/25")], [ts_from_cidr("10.1.0.0/16")])) == [
        "10.1.0.128/25"
    ]


def test_narrow_disjoint_is_empty() -> None:
    assert narrow([ts_from_cidr("10.2.0.0/16")], [ts_from_cidr("10.1.0.0/16")]) == []


def test_narrow_families_never_mix() -> None:
    assert narrow([ts_from_cidr("::/0")], [ts_from_cidr("0.0.0.0/0")]) == []


def test_narrow_ipv6() -> None:
    out = narrow([ts_from_cidr("2001:db8::/32")], [ts_from_cidr("2001:db8:1::/48")])
    assert s(out) == ["2001:db8:1::/48"]


def test_narrow_partial_overlap_gives_a_range() -> None:
    out = narrow([rng("10.0.0.5", "10.0.0.20")], [rng("10.0.0.10", "10.0.0.30")])
    assert s(out) == ["10.0.0.10..10.0.0.20"]


def test_narrow_ports_intersect() -> None:
    out = narrow(
        [ts_from_cidr("10.0.0.0/8", TCP, 1000, 2000)], [ts_from_cidr("10.0.0.0/8", TCP, 1500, 3000)]
    )
    assert s(out) == ["10.0.0.0/8[tcp/1500-2000]"]


def test_narrow_disjoint_ports_is_empty() -> None:
    low, high = ts_from_cidr("10.0.0.0/8", TCP, 1, 10), ts_from_cidr("10.0.0.0/8", TCP, 11, 20)
    assert narrow([low], [high]) == []


def test_narrow_protocol_any_takes_the_specific_one() -> None:
    out = narrow([ts_from_cidr("10.0.0.0/8")], [ts_from_cidr("10.0.0.0/8", UDP, 53, 53)])
    assert s(out) == ["10.0.0.0/8[udp/53]"]
    assert out[0].ip_protocol == UDP


def test_narrow_different_protocols_is_empty() -> None:
    assert narrow([ts_from_cidr("10.0.0.0/8", TCP)], [ts_from_cidr("10.0.0.0/8", UDP)]) == []


def test_narrow_follows_configured_order() -> None:
    proposed = [ts_from_cidr("10.2.0.0/16"), ts_from_cidr("10.1.0.0/16")]
    configured = [ts_from_cidr("10.1.0.0/24"), ts_from_cidr("10.2.0.0/24")]
    assert s(narrow(proposed, configured)) == ["10.1.0.0/24", "10.2.0.0/24"]


def test_narrow_vip_request_to_assigned_address() -> None:
    # Initiator asks for a virtual IP: TSi is all of IPv4; the responder's remote
    # dynamic selector resolves to the address it assigned.
    proposed_tsi = resolve([spec(None)], ip("192.0.2.10"), [ip("0.0.0.0")])
    configured_remote = resolve([spec(None)], ip("192.0.2.10"), [ip("10.3.0.1")])
    narrowed = narrow(proposed_tsi, configured_remote)
    assert s(narrowed) == ["10.3.0.1/32"]
    assert narrowed != proposed_tsi


def test_narrow_dynamic_without_vip_rejects_other_hosts() -> None:
    configured = resolve([spec(None)], ip("192.0.2.10"))
    assert narrow([ts_from_cidr("192.0.2.11/32")], configured) == []
    assert s(narrow([ts_from_cidr("192.0.2.0/24")], configured)) == ["192.0.2.10/32"]


def test_narrow_icmp_type_against_any_icmp() -> None:
    echo = resolve([spec("10.0.0.0/8", ICMP, (8, 8))], None)
    out = narrow([ts_from_cidr("10.0.0.0/8", ICMP)], echo)
    assert (out[0].start_port, out[0].end_port) == (icmp_port(8), icmp_port(8))
    assert narrow(resolve([spec("10.0.0.0/8", ICMP, (0, 0))], None), echo) == []


def test_narrow_removes_redundant_results() -> None:
    proposed = [ts_from_cidr("10.1.0.0/24"), ts_from_cidr("10.0.0.0/8")]
    assert s(narrow(proposed, [ts_from_cidr("10.0.0.0/8")])) == ["10.0.0.0/8"]


def test_opaque_ports() -> None:
    opaque = ts_from_cidr("10.0.0.0/8", UDP, *PORT_OPAQUE)
    anyport = ts_from_cidr("10.0.0.0/8", UDP)
    some = ts_from_cidr("10.0.0.0/8", UDP, 53, 53)
    assert subset(opaque, anyport) == opaque
    assert subset(anyport, opaque) == opaque
    assert subset(opaque, some) is None
    assert ts_to_str(opaque) == "10.0.0.0/8[udp/OPAQUE]"


def test_narrow_as_seen_on_charon() -> None:
    # charon 5.9.8 responder log: config 10.1.0.0/16, 10.2.0.0/24 against a proposed
    # 10.0.0.0/8[any/80-443] installed "10.1.0.0/16[0/80-443] 10.2.0.0/24[0/80-443]".
    configured = resolve([spec("10.1.0.0/16"), spec("10.2.0.0/24")], ip("192.0.2.2"))
    proposed = [ts_from_cidr("10.0.0.0/8", 0, 80, 443)]
    assert s(narrow(proposed, configured)) == ["10.1.0.0/16[0/80-443]", "10.2.0.0/24[0/80-443]"]


# --- printing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (ts_from_cidr("10.1.0.7/24"), "10.1.0.0/24"),
        (ts_from_cidr("10.1.0.5"), "10.1.0.5/32"),
        (ts_from_cidr("0.0.0.0/0"), "0.0.0.0/0"),
        (ts_from_cidr("2001:db8::/64"), "2001:db8::/64"),
        (rng("10.0.0.1", "10.0.0.2"), "10.0.0.1..10.0.0.2"),
        (rng("10.0.0.0", "10.0.0.2"), "10.0.0.0..10.0.0.2"),
        (ts_from_cidr("10.0.0.0/8", TCP), "10.0.0.0/8[tcp]"),
        (ts_from_cidr("10.0.0.0/8", 0, 80, 80), "10.0.0.0/8[0/80]"),
        (ts_from_cidr("10.0.0.0/8", UDP, 1000, 2000), "10.0.0.0/8[udp/1000-2000]"),
        (ts_from_cidr("10.0.0.0/8", 200), "10.0.0.0/8[200]"),
        (
            ts_from_cidr("10.0.0.0/8", ICMP, icmp_port(3, 1), icmp_port(3, 1)),
            "10.0.0.0/8[icmp/3(1)]",
        ),
        (ts_from_cidr("::/0", ICMPV6, icmp_port(128), icmp_port(129)), "::/0[ipv6-icmp/128-129]"),
        (ts_from_cidr("::ffff:10.0.0.1"), "::ffff:10.0.0.1/128"),
        (ts_from_cidr("::1"), "::1/128"),
    ],
)
def test_ts_to_str(ts: TrafficSelector, text: str) -> None:
    assert ts_to_str(ts, no_service_names) == text


def test_ts_to_str_uses_service_names() -> None:
    names = {(80, "tcp"): "http"}
    ts = ts_from_cidr("10.0.0.0/8", TCP, 80, 80)
    lookup = lambda port, proto: names.get((port, proto or ""))  # noqa: E731
    assert ts_to_str(ts, lookup) == "10.0.0.0/8[tcp/http]"
    assert ts_to_str(ts, no_service_names) == "10.0.0.0/8[tcp/80]"


def test_ts_from_cidr_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        ts_from_cidr("10.0.0.0/33")
    with pytest.raises(ValueError):
        ts_from_cidr("example.com")


# --- properties ----------------------------------------------------------------------

v4 = st.integers(0, 2**32 - 1)
port = st.integers(0, 65535)


@st.composite
def selectors(draw: st.DrawFn) -> TrafficSelector:
    a, b = sorted((draw(v4), draw(v4)))
    p, q = sorted((draw(port), draw(port)))
    proto = draw(st.sampled_from([0, TCP, UDP]))
    return rng(str(ip(a)), str(ip(b)), proto, (p, q))


def passes(ts: TrafficSelector, addr: int, proto: int, prt: int) -> bool:
    """Judged as the data plane judges a packet: the core prints ``ts``, ESP parses it."""
    return parse_selector(ts_to_str(ts, no_service_names)).matches(4, addr, proto, prt)


@pytest.mark.slow
@given(selectors(), selectors(), v4, port, st.sampled_from([TCP, UDP]))
def test_subset_is_the_intersection(
    a: TrafficSelector, b: TrafficSelector, addr: int, prt: int, proto: int
) -> None:
    common = subset(a, b)
    inside = passes(a, addr, proto, prt) and passes(b, addr, proto, prt)
    if common is None:
        assert not inside
    else:
        assert passes(common, addr, proto, prt) == inside
        assert is_contained_in(common, a) and is_contained_in(common, b)
        assert subset(b, a) == common
