"""Ranking by policy, and the selector's failover, hold-down and damping rules."""

from __future__ import annotations

import ipaddress

from mobike_vici.config.mobike import AnnounceMode, MobikePolicy, PreferRule
from mobike_vici.mobike.paths import LocalAddress, PathState
from mobike_vici.mobike.policy import PathInfo, Selector, addresses_to_announce, rank

from .sim import path

UP, DOWN, UNKNOWN = PathState.UP, PathState.DOWN, PathState.UNKNOWN


def info(local: str, remote: str, ifname: str, state: PathState = UP,
         srtt: float | None = None, since: float | None = 0.0) -> PathInfo:
    return PathInfo(path(local, remote), ifname, state, srtt, since)


ETH = info("10.1.0.2", "192.0.2.1", "eth0")
WWAN = info("10.2.0.2", "192.0.2.1", "wwan0")
V6 = info("2001:db8:1::2", "2001:db8:ff::1", "eth0")
POLICY = MobikePolicy(prefer=(PreferRule("metered", interface="wwan*", cost=100),))


def names(ranked: list[PathInfo]) -> list[str]:
    return [f"{p.ifname}/{p.path.local.addr.version}" for p in ranked]


def test_cost_puts_metered_uplink_last_whatever_its_rtt() -> None:
    fast_wwan = info("10.2.0.2", "192.0.2.1", "wwan0", srtt=0.001)
    slow_eth = info("10.1.0.2", "192.0.2.1", "eth0", srtt=0.5)
    assert rank([fast_wwan, slow_eth], POLICY) == [slow_eth, fast_wwan]


def test_rtt_breaks_ties_unmeasured_last() -> None:
    a = info("10.1.0.2", "192.0.2.1", "eth0", srtt=0.03)
    b = info("10.1.0.2", "192.0.2.2", "eth0", srtt=0.01)
    c = info("10.1.0.2", "192.0.2.3", "eth0", srtt=None)
    assert rank([c, a, b], MobikePolicy()) == [b, a, c]


def test_family_preference_and_input_order() -> None:
    assert rank([ETH, V6], MobikePolicy(family=6)) == [V6, ETH]
    assert rank([ETH, V6], MobikePolicy(family=4)) == [ETH, V6]
    assert rank([V6, ETH], MobikePolicy()) == [V6, ETH]  # stable without preference


def test_prefix_rules_and_costs_add_up() -> None:
    policy = MobikePolicy(prefer=(
        PreferRule("office", prefix=ipaddress.ip_network("10.2.0.0/16"), cost=0),
        PreferRule("eth", interface="eth*", cost=30),
        PreferRule("lte", interface="wwan*", cost=20),
        PreferRule("lte4", interface="wwan*", family=4, cost=20),
    ))
    # eth0: 30; wwan0 over IPv4: 20 + 20 = 40.
    assert rank([WWAN, ETH], policy) == [ETH, WWAN]
    assert policy.cost(WWAN.path.local.addr, "wwan0", WWAN.path.remote.addr) == 40


def test_exclusions_by_interface_glob_prefix_and_peer() -> None:
    policy = MobikePolicy(exclude_interfaces=("wwan*",))
    assert rank([ETH, WWAN], policy) == [ETH]
    policy = MobikePolicy(exclude_prefixes=(ipaddress.ip_network("10.1.0.0/16"),))
    assert rank([ETH, WWAN], policy) == [WWAN]
    policy = MobikePolicy(allowed_peer_prefixes=(ipaddress.ip_network("2001:db8::/32"),))
    assert rank([ETH, V6], policy) == [V6]
    mixed = info("10.1.0.2", "2001:db8:ff::1", "eth0")
    assert rank([mixed], MobikePolicy()) == []


def test_failover_prefers_up_then_unknown_never_down() -> None:
    sel = Selector(POLICY)
    down_eth = info("10.1.0.2", "192.0.2.1", "eth0", DOWN)
    other = info("10.1.0.2", "192.0.2.9", "eth0", DOWN)
    wwan_unknown = info("10.2.0.2", "192.0.2.1", "wwan0", UNKNOWN, since=None)
    ranked = rank([down_eth, other, wwan_unknown], POLICY)
    choice = sel.choose(ranked, down_eth, False, 5.0)
    assert choice is not None and choice.path == wwan_unknown.path
    assert choice.reason == "failover"
    assert sel.choose(rank([down_eth, other], POLICY), down_eth, False, 5.0) is None


def test_hold_down_and_deadline() -> None:
    sel = Selector(POLICY)
    eth_back = info("10.1.0.2", "192.0.2.1", "eth0", since=100.0)
    ranked = rank([eth_back, WWAN], POLICY)
    assert sel.choose(ranked, WWAN, True, 105.0) is None
    assert sel.next_deadline(ranked, WWAN, True, 105.0) == 110.0
    choice = sel.choose(ranked, WWAN, True, 110.0)
    assert choice is not None and choice.path == eth_back.path and choice.reason == "preferred"


def test_rtt_alone_never_moves() -> None:
    sel = Selector(MobikePolicy())
    slow = info("10.1.0.2", "192.0.2.1", "eth0", srtt=0.3)
    fast = info("10.1.0.2", "192.0.2.2", "eth0", srtt=0.01)
    ranked = rank([slow, fast], MobikePolicy())
    assert ranked[0] == fast
    assert sel.choose(ranked, slow, True, 1000.0) is None
    assert sel.next_deadline(ranked, slow, True, 1000.0) is None


def test_damping_blocks_discretionary_moves_not_failover() -> None:
    policy = MobikePolicy(max_moves_per_minute=2, prefer=POLICY.prefer)
    sel = Selector(policy)
    sel.record_move(10.0)
    sel.record_move(20.0)
    ranked = rank([ETH, WWAN], policy)
    assert sel.damped(30.0)
    assert sel.choose(ranked, WWAN, True, 30.0) is None
    assert sel.next_deadline(ranked, WWAN, True, 30.0) == 70.0
    choice = sel.choose(ranked, WWAN, True, 70.0)
    assert choice is not None and choice.reason == "preferred"
    down_wwan = info("10.2.0.2", "192.0.2.1", "wwan0", DOWN)
    failover = sel.choose(ranked, down_wwan, False, 30.0)
    assert failover is not None and failover.path == ETH.path


def test_zero_moves_per_minute_only_fails_over() -> None:
    sel = Selector(MobikePolicy(max_moves_per_minute=0, prefer=POLICY.prefer))
    ranked = rank([ETH, WWAN], sel.policy)
    assert sel.choose(ranked, WWAN, True, 1000.0) is None
    assert sel.next_deadline(ranked, WWAN, True, 1000.0) is None


def test_announce_modes() -> None:
    ip = ipaddress.ip_address
    local = [LocalAddress(ip("10.1.0.2"), "eth0"), LocalAddress(ip("10.4.0.2"), "eth1"),
             LocalAddress(ip("10.2.0.2"), "wwan0"), LocalAddress(ip("172.17.0.1"), "docker0")]
    peer = ip("192.0.2.1")
    base = MobikePolicy(prefer=POLICY.prefer, exclude_interfaces=("docker*",))
    assert addresses_to_announce(base, local, ip("10.1.0.2"), peer) == [
        ip("10.4.0.2"), ip("10.2.0.2")]
    preferred = MobikePolicy(prefer=POLICY.prefer, announce=AnnounceMode.PREFERRED_ONLY)
    assert addresses_to_announce(preferred, local, ip("10.1.0.2"), peer) == [
        ip("10.4.0.2"), ip("172.17.0.1")]
    prefixes = MobikePolicy(announce=AnnounceMode.PREFIXES,
                            announce_prefixes=(ipaddress.ip_network("10.2.0.0/16"),))
    assert addresses_to_announce(prefixes, local, ip("10.1.0.2"), peer) == [ip("10.2.0.2")]
    assert addresses_to_announce(prefixes, local[2:3], ip("10.2.0.2"), peer) == []
