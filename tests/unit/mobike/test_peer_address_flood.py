"""An authenticated peer's address list is bounded, and taking it costs linear work.

Work is counted, not timed: the addresses are an IPv4Address subclass that counts
equality comparisons (what a list membership test spends per element)."""

from __future__ import annotations

import ipaddress

from mobike_vici.config.mobike import MAX_PEER_ADDRESSES_PER_FAMILY, MobikePolicy
from mobike_vici.core.exchanges.mobike import parse_addresses
from mobike_vici.ikev2.constants import NotifyType
from mobike_vici.ikev2.payloads import Notify, Payload
from mobike_vici.mobike.manager import PathManager
from mobike_vici.mobike.paths import LocalAddress, PathTable

from .sim import ip, path

COMPARISONS = [0]


class CountingV4(ipaddress.IPv4Address):
    def __eq__(self, other: object) -> bool:
        COMPARISONS[0] += 1
        return super().__eq__(other)

    def __hash__(self) -> int:
        return super().__hash__()


def _addresses(n: int) -> list[CountingV4]:
    return [CountingV4(int(ipaddress.IPv4Address("100.64.0.0")) + i) for i in range(n)]


def test_parse_addresses_keeps_a_bounded_list() -> None:
    notifies: list[Payload] = [Notify(NotifyType.ADDITIONAL_IP4_ADDRESS, a.packed)
                               for a in _addresses(2000)]
    notifies += [Notify(NotifyType.ADDITIONAL_IP6_ADDRESS,
                        ipaddress.IPv6Address(f"2001:db8::{i:x}").packed) for i in range(1, 500)]
    got = parse_addresses(notifies)
    assert got is not None
    v4 = [a for a in got if a.version == 4]
    v6 = [a for a in got if a.version == 6]
    assert len(v4) == len(v6) == MAX_PEER_ADDRESSES_PER_FAMILY
    assert v4[0] == ipaddress.IPv4Address("100.64.0.0")  # the first ones listed are kept
    assert len(set(got)) == len(got)


def test_path_table_update_is_linear_and_bounded() -> None:
    table = PathTable(MobikePolicy(), 4500, 4500)
    table.set_local_addresses([LocalAddress(ip("10.1.0.2"), "eth0"),
                               LocalAddress(ip("10.2.0.2"), "eth1")])
    addrs = _addresses(4000)
    current = CountingV4("192.0.2.1")
    COMPARISONS[0] = 0
    table.set_peer_addresses([*addrs, *addrs], current)  # duplicates too
    # A list membership test per address would be ~n^2/2 = 8 million comparisons.
    assert COMPARISONS[0] < 10 * len(addrs)
    assert len(table.peer_addresses()) == 1 + MAX_PEER_ADDRESSES_PER_FAMILY
    assert len(table.candidate_keys()) == 2 * (1 + MAX_PEER_ADDRESSES_PER_FAMILY)


def test_path_manager_takes_a_huge_list_in_linear_work() -> None:
    locals_ = (LocalAddress(ip("10.1.0.2"), "eth0"), LocalAddress(ip("10.2.0.2"), "eth1"))
    mgr = PathManager(MobikePolicy(), path("10.1.0.2", "192.0.2.1"), locals_, now=0.0)
    addrs = _addresses(4000)
    for round_no in range(3):  # replaced whole each time (RFC 4555 §3.6)
        COMPARISONS[0] = 0
        mgr.on_peer_addresses(addrs[round_no:], 1.0 + round_no)
        assert COMPARISONS[0] < 10 * len(addrs)
    assert len(mgr.table.candidate_keys()) == 2 * (1 + MAX_PEER_ADDRESSES_PER_FAMILY)
