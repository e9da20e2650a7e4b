"""The controller's host helper: a path's egress device and next hop from a NetState."""

from __future__ import annotations

import ipaddress

from mobike_vici.backends.vici.steer import egress
from mobike_vici.net.events import Address, AddrFlag, Link, OperState, Route
from mobike_vici.net.state import NetState


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
