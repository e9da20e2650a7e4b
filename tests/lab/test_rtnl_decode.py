"""The lean decoder reads what the kernel really sends as pyroute2 does: every link,
address and route of a namespace's dump gives the same net events both ways."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from pyroute2.netlink.rtnl import RTM_GETADDR, RTM_GETLINK, RTM_GETROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from mobike_vici.lab.netns import Lab
from mobike_vici.net.events import NetEvent, RouteChanged
from mobike_vici.net.rtnl import RECV_SIZE, open_socket, to_events
from mobike_vici.net.rtnl_decode import decode
from mobike_vici.net.state import NetState, apply

pytestmark = pytest.mark.netns


def raw_dump(sock: socket.socket, cls: Any, mtype: int, seq: int) -> list[bytes]:
    """The datagrams of one dump, up to and including the one with NLMSG_DONE."""
    msg = cls()
    msg["header"]["type"] = mtype
    msg["header"]["flags"] = 0x301  # NLM_F_REQUEST | NLM_F_DUMP
    msg["header"]["sequence_number"] = seq
    msg["family"] = socket.AF_UNSPEC
    msg.encode()
    sock.send(bytes(msg.data))
    out = []
    while True:
        data = sock.recv(RECV_SIZE)
        out.append(data)
        if any(m["header"]["type"] == 3 for m in MarshalRtnl().parse(data)):
            return out


def everything(_route: Any) -> bool:
    return True


def events_of(datagrams: list[bytes], state: NetState, lean: bool) -> list[NetEvent]:
    marshal = MarshalRtnl()
    out: list[NetEvent] = []
    for data in datagrams:
        msgs = (decode(data, lambda rest: list(marshal.parse(rest))) if lean
                else list(marshal.parse(data)))
        for msg in msgs:
            out += to_events(msg, state, everything)
    return out


def test_lean_decoder_matches_pyroute2_on_a_real_dump(lab: Lab) -> None:
    ns, peer = lab.netns("dec"), lab.netns("peer")
    lab.link(ns, "u0", peer, "p0")
    lab.link(ns, "u1", peer, "p1")
    ns.add_address("u0", "10.7.0.2/24")
    ns.add_address("u0", "2001:db8:7::2/64")
    ns.add_address("u1", "10.8.0.2/24")
    ns.ip("route", "add", "default", "via", "10.7.0.1", "metric", "100")
    ns.ip("-6", "route", "add", "default", "via", "2001:db8:7::1", "metric", "100")
    ns.ip("route", "add", "default", "via", "10.8.0.1", "table", "4561", "src", "10.8.0.2")
    ns.ip("route", "add", "10.9.0.0/16", "nexthop", "via", "10.7.0.1", "dev", "u0",
          "nexthop", "via", "10.8.0.1", "dev", "u1")
    ns.set_link("u1", False)  # a link down, with its operational state
    sock = open_socket(ns.name)
    sock.setblocking(True)
    try:
        links = raw_dump(sock, ifinfmsg, RTM_GETLINK, 1)
        addrs = raw_dump(sock, ifaddrmsg, RTM_GETADDR, 2)
        routes = raw_dump(sock, rtmsg, RTM_GETROUTE, 3)
    finally:
        sock.close()
    state = NetState()
    for event in events_of(links, state, lean=False):
        state = apply(state, event)
    for datagrams in (links, addrs, routes):
        lean = events_of(datagrams, state, lean=True)
        assert lean == events_of(datagrams, state, lean=False)
        assert lean  # the dump was not empty
    found = {(r.table, str(r.dst), str(r.gateway), r.ifname)
             for r in events_of(routes, state, lean=True) if isinstance(r, RouteChanged)}
    assert {(254, "10.9.0.0/16", "10.7.0.1", "u0"), (254, "10.9.0.0/16", "10.8.0.1", "u1"),
            (254, "0.0.0.0/0", "10.7.0.1", "u0")} <= found
