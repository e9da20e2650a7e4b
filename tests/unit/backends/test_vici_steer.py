"""The controller's host helpers: a path's egress device and next hop from a NetState, and
the host routes of one move."""

from __future__ import annotations

import ipaddress

from mobike_vici.backends.vici.steer import (
    LOOPBACK_DEV,
    LOOPBACK_V4,
    LOOPBACK_V6,
    HostRoute,
    egress,
    steer_routes,
)
from mobike_vici.net.events import Address, AddrFlag, Link, OperState, Route
from mobike_vici.net.state import NetState
from mobike_vici.types import Endpoint, Path


def _state() -> NetState:
    links = {i: Link(ifindex=i, ifname=n, admin_up=True, oper=OperState.UP, carrier=True)
             for i, n in ((2, "m0"), (3, "m1"))}
    addrs = {}
    for i, n, a in ((2, "m0", "10.1.0.2"), (3, "m1", "10.2.0.2")):
        addr = Address(ifindex=i, ifname=n, address=ipaddress.ip_address(a), prefixlen=24,
                       flags=AddrFlag(0), scope=0)
        addrs[addr.key] = addr
    route = Route(family=4, table=254, dst=ipaddress.ip_network("0.0.0.0/0"),
                  gateway=ipaddress.ip_address("10.2.0.1"), oif=3, ifname="m1", metric=200)
    return NetState(links=links, addresses=addrs, routes={route.key: route})


def test_egress_finds_device_and_gateway() -> None:
    state = _state()
    assert egress(state, ipaddress.ip_address("10.2.0.2")) == (
        "m1", ipaddress.ip_address("10.2.0.1"))
    assert egress(state, ipaddress.ip_address("10.1.0.2")) == ("m0", None)
    assert egress(state, ipaddress.ip_address("10.9.9.9")) is None


# -- steer_routes: where charon's MOBIKE check can land --------------------------------

def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


M0_V4, M0_V6, M0_LL = _ip("10.1.0.2"), _ip("2001:db8:1::2"), _ip("fe80::1:2")
M1_V4, M1_V6 = _ip("10.2.0.2"), _ip("2001:db8:2::2")
GW4, GW6 = _ip("192.0.2.2"), _ip("2001:db8:ff::2")


def _dual_stack() -> NetState:
    """m0 and m1, each with IPv4, IPv6 and (m0) a link-local address, both routed."""
    links = {i: Link(ifindex=i, ifname=n, admin_up=True, oper=OperState.UP, carrier=True)
             for i, n in ((2, "m0"), (3, "m1"))}
    addrs = {}
    for i, n, a, scope in ((2, "m0", M0_V4, 0), (2, "m0", M0_V6, 0), (2, "m0", M0_LL, 253),
                           (3, "m1", M1_V4, 0), (3, "m1", M1_V6, 0)):
        addr = Address(ifindex=i, ifname=n, address=a, prefixlen=64 if a.version == 6 else 24,
                       flags=AddrFlag(0), scope=scope)
        addrs[addr.key] = addr
    routes = {}
    for i, n, gw, metric in ((2, "m0", "10.1.0.1", 100), (3, "m1", "10.2.0.1", 200),
                             (2, "m0", "2001:db8:1::1", 100), (3, "m1", "2001:db8:2::1", 200)):
        via = _ip(gw)
        route = Route(family=via.version, table=254,
                      dst=ipaddress.ip_network("::/0" if via.version == 6 else "0.0.0.0/0"),
                      gateway=via, oif=i, ifname=n, metric=metric)
        routes[route.key] = route
    return NetState(links=links, addresses=addrs, routes=routes)


def _p(local: ipaddress.IPv4Address | ipaddress.IPv6Address,
       remote: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Path:
    return Path(Endpoint(local, 4500), Endpoint(remote, 4500))


def _working_pairs(routes: list[HostRoute]) -> set[tuple[object, object]]:
    """The (source, peer) pairs charon's check could get an answer on, by these routes."""
    return {(r.src, r.peer) for r in routes
            if not (r.src.is_loopback or r.src.is_link_local)}


def test_a_move_across_families_gives_charons_check_the_target_pair_only() -> None:
    # The operator moves m0's IPv4 path to m0's IPv6. charon re-checks only when its
    # current peer address no longer routes from its source; its check then tries every
    # peer address it knows and takes the first answer. Before: the IPv4 peer was routed
    # from m1's address, a working pair that won the race about 1 run in 5.
    routes = steer_routes(_dual_stack(), _p(M0_V6, GW6), _p(M0_V4, GW4), [GW4, GW6],
                          failover=False)
    assert routes is not None
    assert _working_pairs(routes) == {(M0_V6, GW6)}
    assert routes[0] == HostRoute(GW6, "m0", _ip("2001:db8:1::1"), M0_V6, False)
    # The current peer still leaves by its own uplink (charon's ESP names its source).
    assert routes[-1] == HostRoute(GW4, "m0", _ip("10.1.0.1"), LOOPBACK_V4, True)


def test_the_current_peer_is_isolated_last_so_charon_never_checks_a_half_plan() -> None:
    routes = steer_routes(_dual_stack(), _p(M1_V4, GW4), _p(M0_V6, GW6), [GW4, GW6],
                          failover=False)
    assert routes is not None
    assert [r.peer for r in routes] == [GW4, GW6]
    assert routes[-1].isolating and routes[-1].src == M0_LL  # behind m0's IPv6 router


def test_a_move_within_a_family_isolates_the_other_family() -> None:
    # m0 -> m1, both IPv4: the gateway's IPv6 address must not win the check on m0's IPv6.
    routes = steer_routes(_dual_stack(), _p(M1_V4, GW4), _p(M0_V4, GW4), [GW4, GW6],
                          failover=False)
    assert routes is not None
    assert _working_pairs(routes) == {(M1_V4, GW4)}
    assert [r.isolating for r in routes] == [True, False]  # isolation before the target


def test_a_failover_isolates_only_the_dead_paths_peer() -> None:
    # The current path is dead: another pair that answers first beats waiting.
    routes = steer_routes(_dual_stack(), _p(M1_V4, GW4), _p(M0_V6, GW6),
                          [GW4, GW6, _ip("2001:db8:ff::3")], failover=True)
    assert routes is not None
    assert [(r.peer, r.isolating) for r in routes] == [(GW4, False), (GW6, True)]


def test_a_failover_from_a_downed_link_isolates_the_dead_peer_by_a_link_that_is_up() -> None:
    # m0 just went down; its routes are still in the snapshot (their removal comes after
    # the link's event), but the kernel refuses a route by m0: charon's MOBIKE check would
    # then find the gateway's IPv4 address from m1 and land there, not on the target.
    state = _dual_stack()
    state.links[2] = Link(ifindex=2, ifname="m0", admin_up=True, oper=OperState.DOWN,
                          carrier=False)
    routes = steer_routes(state, _p(M1_V6, GW6), _p(M0_V4, GW4), [GW4, GW6], failover=True)
    assert routes is not None
    assert routes[-1] == HostRoute(GW4, "m1", _ip("10.2.0.1"), LOOPBACK_V4, True)


def test_ipv6_without_a_router_or_link_local_is_isolated_on_loopback() -> None:
    state = _dual_stack()
    on_link = NetState(links=state.links, routes={}, addresses={
        k: a for k, a in state.addresses.items() if not a.address.is_link_local})
    routes = steer_routes(on_link, _p(M0_V4, GW4), _p(M0_V6, GW6), [GW4, GW6],
                          failover=False)
    assert routes is not None
    assert routes[-1] == HostRoute(GW6, LOOPBACK_DEV, None, LOOPBACK_V6, True)


def test_a_family_without_a_local_address_needs_no_isolation_and_a_gone_target_none(
        ) -> None:
    state = _state()  # IPv4 only
    routes = steer_routes(state, _p(M1_V4, GW4), _p(M0_V4, GW4), [GW4, GW6],
                          failover=False)
    assert routes == [HostRoute(GW4, "m1", _ip("10.2.0.1"), M1_V4, False)]
    assert steer_routes(state, _p(_ip("10.9.9.9"), GW4), _p(M0_V4, GW4), [GW4],
                        failover=False) is None
