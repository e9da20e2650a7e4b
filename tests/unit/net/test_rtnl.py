"""pyroute2 messages (encoded, then parsed back as from the socket) become the right net
events; a dump's answer is read to its end, its own only."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import Any

import pytest
from pyroute2.netlink import NLMSG_DONE, NLMSG_ERROR, nlmsg
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from mobike_vici.net.events import (
    AddressAdded,
    AddressRemoved,
    AddrFlag,
    LinkDown,
    LinkRemoved,
    LinkUp,
    OperState,
    RouteChanged,
    Scope,
)
from mobike_vici.net.rtnl import (
    NLM_F_DUMP_INTR,
    RTN_UNICAST,
    DumpInterrupted,
    DumpReplies,
    parse,
    route_dump_request,
    to_events,
)
from mobike_vici.net.state import NetState, apply


def wire(cls: Any, mtype: int, fields: dict[str, Any], attrs: list[tuple[str, Any]]) -> Any:
    msg = cls()
    msg["header"]["type"] = mtype
    for key, value in fields.items():
        msg[key] = value
    msg["attrs"] = attrs
    msg.encode()
    (parsed,) = parse(bytes(msg.data))
    return parsed


def link_msg(mtype: int, flags: int, oper: str) -> Any:
    return wire(ifinfmsg, mtype, {"index": 7, "flags": flags, "family": 0},
                [("IFLA_IFNAME", "m0"), ("IFLA_OPERSTATE", oper)])


def test_link_messages() -> None:
    (ev,) = to_events(link_msg(RTM_NEWLINK, 0x1 | 0x10000, "UP"))
    assert ev == LinkUp(ifindex=7, ifname="m0", admin_up=True, oper=OperState.UP, carrier=True)
    (ev,) = to_events(link_msg(RTM_NEWLINK, 0x1, "LOWERLAYERDOWN"))
    assert ev == LinkDown(ifindex=7, ifname="m0", admin_up=True,
                          oper=OperState.LOWERLAYERDOWN, carrier=False)
    (ev,) = to_events(link_msg(RTM_DELLINK, 0, "DOWN"))
    assert ev == LinkRemoved(ifindex=7, ifname="m0")


def addr_msg(mtype: int, family: int, address: str, prefixlen: int, scope: int,
             flags: int) -> Any:
    return wire(ifaddrmsg, mtype,
                {"family": family, "prefixlen": prefixlen, "scope": scope, "index": 7,
                 "flags": flags & 0xFF},
                [("IFA_ADDRESS", address), ("IFA_LOCAL", address), ("IFA_FLAGS", flags)]
                if family == socket.AF_INET else
                [("IFA_ADDRESS", address), ("IFA_FLAGS", flags)])


def test_address_messages_take_names_from_state_and_full_flags() -> None:
    links = apply(NetState(), LinkUp(ifindex=7, ifname="m0", admin_up=True,
                                     oper=OperState.UP, carrier=True))
    (ev,) = to_events(addr_msg(RTM_NEWADDR, socket.AF_INET, "10.1.0.2", 24, 0, 0x80), links)
    assert ev == AddressAdded(ifindex=7, ifname="m0", address=ipaddress.ip_address("10.1.0.2"),
                              prefixlen=24, flags=AddrFlag.PERMANENT, scope=Scope.UNIVERSE)
    # 0x800 does not fit the 8-bit header field: it must come from IFA_FLAGS.
    flags = AddrFlag.TENTATIVE | AddrFlag.STABLE_PRIVACY
    (ev,) = to_events(addr_msg(RTM_NEWADDR, socket.AF_INET6, "2001:db8::5", 64, 0, flags), links)
    assert isinstance(ev, AddressAdded) and ev.flags == flags
    (ev,) = to_events(addr_msg(RTM_DELADDR, socket.AF_INET6, "fe80::5", 64, 253, 0x80), links)
    assert isinstance(ev, AddressRemoved)
    assert ev.scope == Scope.LINK and ev.address == ipaddress.ip_address("fe80::5")


def route_msg(mtype: int, family: int, dst: str | None, dst_len: int, table: int,
              attrs: list[tuple[str, Any]], rtype: int = RTN_UNICAST) -> Any:
    base = [("RTA_TABLE", table)] + ([("RTA_DST", dst)] if dst else [])
    return wire(rtmsg, mtype, {"family": family, "dst_len": dst_len, "table": table,
                               "type": rtype, "proto": 4, "scope": 0}, base + attrs)


def test_default_route_messages_and_the_default_filter() -> None:
    msg = route_msg(RTM_NEWROUTE, socket.AF_INET, None, 0, 254,
                    [("RTA_GATEWAY", "10.1.0.1"), ("RTA_OIF", 7), ("RTA_PRIORITY", 100)])
    (ev,) = to_events(msg)
    assert ev == RouteChanged(family=4, table=254, dst=ipaddress.ip_network("0.0.0.0/0"),
                              gateway=ipaddress.ip_address("10.1.0.1"), oif=7, ifname="",
                              metric=100, added=True)
    gone = route_msg(RTM_DELROUTE, socket.AF_INET6, None, 0, 254,
                     [("RTA_GATEWAY", "fe80::1"), ("RTA_OIF", 7), ("RTA_PRIORITY", 1024)])
    (ev,) = to_events(gone)
    assert isinstance(ev, RouteChanged) and not ev.added and ev.family == 6
    # Non-default, other tables and non-unicast routes are filtered by default...
    subnet = route_msg(RTM_NEWROUTE, socket.AF_INET, "10.1.0.0", 24, 254, [("RTA_OIF", 7)])
    other_table = route_msg(RTM_NEWROUTE, socket.AF_INET, None, 0, 220, [("RTA_OIF", 7)])
    local = route_msg(RTM_NEWROUTE, socket.AF_INET, "10.1.0.2", 32, 255, [("RTA_OIF", 7)],
                      rtype=2)
    assert to_events(subnet) == to_events(other_table) == to_events(local) == []
    # ...but a caller's filter sees unicast routes of any table.
    (ev,) = to_events(subnet, route_filter=lambda r: True)
    assert isinstance(ev, RouteChanged) and ev.dst == ipaddress.ip_network("10.1.0.0/24")
    assert to_events(local, route_filter=lambda r: True) == []


def dump_part(seq: int, *, flags: int = 0, done: bool = False,
              error: int | None = None) -> bytes:
    """One datagram of a route dump: a default route, then NLMSG_DONE or an error."""
    route = rtmsg()
    route["header"]["type"] = RTM_NEWROUTE
    route["header"]["sequence_number"] = seq
    route["header"]["flags"] = flags
    for key, value in {"family": socket.AF_INET, "table": 254, "type": RTN_UNICAST}.items():
        route[key] = value
    route["attrs"] = [("RTA_TABLE", 254), ("RTA_GATEWAY", "10.1.0.1"), ("RTA_OIF", 7)]
    route.encode()
    data = bytes(route.data)
    if error is not None:
        # nlmsghdr, the negative errno, then the header of the request it answers.
        request = route_dump_request(seq)
        data += struct.pack("=IHHIIi", 20 + len(request), NLMSG_ERROR, 0, seq, 0, -error)
        data += request
    elif done:
        end = nlmsg()
        end["header"]["type"] = NLMSG_DONE
        end["header"]["sequence_number"] = seq
        end["header"]["flags"] = flags
        end.encode()
        data += bytes(end.data)
    return data


def test_dump_replies_keep_their_own_sequence_and_stop_at_done() -> None:
    replies = DumpReplies(5)
    assert replies.feed(dump_part(4, done=True)) == []  # an abandoned dump's answer
    assert not replies.done
    (msg,) = replies.feed(dump_part(5))
    assert not replies.done
    assert [e.gateway for e in to_events(msg)] == [ipaddress.ip_address("10.1.0.1")]
    assert len(replies.feed(dump_part(5, done=True))) == 1
    assert replies.done


def test_dump_replies_raise_on_an_interrupted_dump_and_on_errors() -> None:
    replies = DumpReplies(5)
    replies.feed(dump_part(5, flags=NLM_F_DUMP_INTR))
    with pytest.raises(DumpInterrupted):
        replies.feed(dump_part(5, done=True))
    with pytest.raises(OSError) as info:
        DumpReplies(6).feed(dump_part(6, error=errno.EINVAL))
    assert info.value.errno == errno.EINVAL
