"""The pyroute2 edge: rtnetlink sockets, dumps, and messages converted into net events.

Everything that knows pyroute2's message classes lives here (and in `steering.py`);
the rest of the project sees only `net.events`. Sockets are plain non-blocking
`socket.socket`s so asyncio can watch them with `add_reader`; pyroute2 is used to
create them inside a named network namespace, to encode requests and to parse replies
other than links, addresses and routes (those `rtnl_decode` reads, for speed).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from .events import (
    MAIN_TABLE,
    AddressAdded,
    AddressRemoved,
    AddrFlag,
    Link,
    LinkDown,
    LinkRemoved,
    LinkUp,
    NetEvent,
    OperState,
    Route,
    RouteChanged,
    link_event,
)
from .rtnl_decode import decode
from .state import NetState, apply

GROUPS = (RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
          | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
RECV_SIZE = 65536  # one recv() never holds more than a page or two of messages
NLM_F_DUMP_INTR = 0x10
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
RTN_UNICAST = 1
RTM_F_CLONED = 0x200
SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12
SO_RCVBUFFORCE = 33
DUMP_ATTEMPTS = 5  # a dump interrupted by concurrent changes is retried this often

RouteFilter = Callable[[Route], bool]


def is_main_default_route(route: Route) -> bool:
    """The default route filter: default routes of the main table."""
    return route.dst.prefixlen == 0 and route.table == MAIN_TABLE


class DumpInterrupted(OSError):
    """The kernel flagged a dump as inconsistent too many times in a row."""


def open_socket(netns: str | None, *, groups: int = 0, rcvbuf: int = 1 << 20) -> socket.socket:
    """A non-blocking NETLINK_ROUTE socket, created inside `netns` when given and
    bound to `groups`. The namespace must exist: it is never created here."""
    if netns is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    else:
        from pyroute2 import netns as pr_netns  # forks a helper; only needed for netns

        sock = pr_netns.create_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW,
                                      socket.NETLINK_ROUTE, flags=0)
    try:
        try:
            # Root may exceed net.core.rmem_max; a bigger buffer means fewer overruns.
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, groups))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


_MARSHAL = MarshalRtnl()  # for the event loop's thread; dumps bring their own


def parse(data: bytes, marshal: MarshalRtnl | None = None) -> list[Any]:
    """The messages in one datagram: links, addresses and routes by the lean decoder
    (`rtnl_decode`), anything else as pyroute2 messages."""
    return decode(data, lambda rest: list((marshal or _MARSHAL).parse(rest)))


def to_events(msg: Any, links: NetState | None = None,
              route_filter: RouteFilter = is_main_default_route) -> list[NetEvent]:
    """Net events for one rtnetlink message; [] for messages the layer ignores.
    `links` supplies interface names for address and route messages."""
    mtype = msg["header"]["type"]
    if mtype in (RTM_NEWLINK, RTM_DELLINK):
        return [_link_event(msg, removed=mtype == RTM_DELLINK)]
    if mtype in (RTM_NEWADDR, RTM_DELADDR):
        event = _addr_event(msg, links, removed=mtype == RTM_DELADDR)
        return [] if event is None else [event]
    if mtype in (RTM_NEWROUTE, RTM_DELROUTE):
        return [r for r in _route_events(msg, links, removed=mtype == RTM_DELROUTE)
                if route_filter(r)]
    return []


def _link_event(msg: Any, *, removed: bool) -> LinkUp | LinkDown | LinkRemoved:
    ifindex = int(msg["index"])
    ifname = str(msg.get("IFLA_IFNAME") or "")
    if removed:
        return LinkRemoved(ifindex=ifindex, ifname=ifname)
    flags = int(msg["flags"])
    oper_raw = msg.get("IFLA_OPERSTATE")
    try:
        oper = OperState[oper_raw] if isinstance(oper_raw, str) else OperState(oper_raw or 0)
    except (KeyError, ValueError):
        oper = OperState.UNKNOWN
    link = Link(ifindex=ifindex, ifname=ifname, admin_up=bool(flags & IFF_UP), oper=oper,
                carrier=bool(flags & IFF_LOWER_UP))
    return link_event(link)


def _addr_event(msg: Any, links: NetState | None, *, removed: bool
                ) -> AddressAdded | AddressRemoved | None:
    # IFA_LOCAL is the local end; IFA_ADDRESS is the peer on point-to-point links.
    raw = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
    if raw is None:
        return None
    ifindex = int(msg["index"])
    flags = msg.get("IFA_FLAGS")
    ifname = links.ifname(ifindex) if links is not None else ""
    cls = AddressRemoved if removed else AddressAdded
    return cls(
        ifindex=ifindex,
        ifname=ifname or str(msg.get("IFA_LABEL") or ""),
        address=ipaddress.ip_address(raw),
        prefixlen=int(msg["prefixlen"]),
        # The 8-bit header field truncates the flags; IFA_FLAGS carries all 32 bits.
        flags=AddrFlag(int(flags if flags is not None else msg["flags"])),
        scope=int(msg["scope"]),
    )


def _route_events(msg: Any, links: NetState | None, *, removed: bool) -> Iterator[RouteChanged]:
    if msg["type"] != RTN_UNICAST or msg["flags"] & RTM_F_CLONED:
        return
    family = 4 if msg["family"] == socket.AF_INET else 6
    dst_raw = msg.get("RTA_DST")
    dst = ipaddress.ip_network(
        f"{dst_raw or ('0.0.0.0' if family == 4 else '::')}/{msg['dst_len']}", strict=False)
    table = msg.get("RTA_TABLE") or msg["table"]
    metric = int(msg.get("RTA_PRIORITY") or 0)
    prefsrc_raw = msg.get("RTA_PREFSRC")
    prefsrc = ipaddress.ip_address(prefsrc_raw) if prefsrc_raw else None
    hops: Iterable[tuple[Any, Any]]
    multipath = msg.get("RTA_MULTIPATH")
    if multipath:
        hops = [(nh.get("RTA_GATEWAY"), nh.get("oif")) for nh in multipath]
    else:
        hops = [(msg.get("RTA_GATEWAY"), msg.get("RTA_OIF"))]
    for gw_raw, oif in hops:
        oif_i = int(oif) if oif else None
        yield RouteChanged(
            family=family, table=int(table), dst=dst,
            gateway=ipaddress.ip_address(gw_raw) if gw_raw else None,
            oif=oif_i, ifname=links.ifname(oif_i) if links is not None else "",
            metric=metric, prefsrc=prefsrc, added=not removed,
        )


def _request(cls: Any, mtype: int, seq: int, **fields: int) -> bytes:
    msg = cls()
    msg["header"]["type"] = mtype
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    msg["header"]["sequence_number"] = seq
    msg["family"] = socket.AF_UNSPEC
    for key, value in fields.items():
        msg[key] = value
    msg.encode()
    return bytes(msg.data)


def strict_dumps(sock: socket.socket) -> bool:
    """Ask the kernel to honour the filters in our dump requests (Linux 4.20 on);
    False when it cannot, and then it dumps everything (the caller filters anyway)."""
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
    except OSError:
        return False
    return True


def route_dump_request(seq: int, table: int = 0) -> bytes:
    """A dump of the routes of both families; of one table only (``table``) on a socket
    with `strict_dumps`, else of every table."""
    return _request(rtmsg, RTM_GETROUTE, seq, table=table)


class DumpReplies:
    """The answer to one dump request, read datagram by datagram (so a blocking thread
    and the event loop can read it alike)."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.done = False
        self._interrupted = False
        self._marshal = MarshalRtnl()

    def feed(self, data: bytes) -> list[Any]:
        """The messages of this dump in one datagram. Sets `done` at its end; raises
        DumpInterrupted there when the kernel flagged the dump as inconsistent."""
        out = []
        for msg in parse(data, self._marshal):
            header = msg["header"]
            if header["sequence_number"] != self.seq:
                continue  # a late reply to an abandoned earlier dump
            if header["flags"] & NLM_F_DUMP_INTR:
                self._interrupted = True
            if header["type"] == NLMSG_DONE:
                self.done = True
                if self._interrupted:
                    raise DumpInterrupted(errno.EINTR, "netlink dump interrupted")
                break
            if header["type"] == NLMSG_ERROR or header.get("error") is not None:
                code = abs(int(getattr(header.get("error"), "code", 0) or errno.EIO))
                raise OSError(code, f"netlink dump failed: {errno.errorcode.get(code, code)}")
            out.append(msg)
        return out


def dump_state(sock: socket.socket, route_filter: RouteFilter = is_main_default_route,
               *, timeout: float = 10.0) -> NetState:
    """A fresh NetState from link, address and route dumps on `sock` (an unbound-group
    socket used for nothing else). Blocking: run it in an executor. A dump the kernel
    marks as interrupted (NLM_F_DUMP_INTR) is redone."""
    for _ in range(DUMP_ATTEMPTS):
        try:
            return _dump_once(sock, route_filter, timeout)
        except DumpInterrupted:
            continue
    raise DumpInterrupted(errno.EAGAIN, "netlink dump interrupted repeatedly")


def _dump_once(sock: socket.socket, route_filter: RouteFilter, timeout: float) -> NetState:
    state = NetState()
    sock.settimeout(timeout)
    try:
        for seq, (cls, mtype) in enumerate(
                ((ifinfmsg, RTM_GETLINK), (ifaddrmsg, RTM_GETADDR), (rtmsg, RTM_GETROUTE)),
                start=1):
            sock.send(_request(cls, mtype, seq))
            for msg in _dump_replies(sock, seq):
                for event in to_events(msg, state, route_filter):
                    state = apply(state, event)
    finally:
        sock.setblocking(False)
    return state


def _dump_replies(sock: socket.socket, seq: int) -> Iterator[Any]:
    replies = DumpReplies(seq)
    while not replies.done:
        yield from replies.feed(sock.recv(RECV_SIZE))
