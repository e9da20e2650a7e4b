"""RtnlWriter: route and rule requests encoded on the event loop, sent by a small thread,
answered later.

The uplink tables change right when a handover runs (a link goes down or comes
back). Doing the pyroute2 work on a second thread made the loop wait for the GIL
behind it, tens of milliseconds on a busy host; so requests are encoded here on the
loop (pyroute2's message classes, as rtnl.py does for dumps). Sending them is
another matter: the kernel handles a NETLINK_ROUTE request inside ``send()`` under
its routing lock, even on a non-blocking socket, and while a link comes up that lock
is busy (address configuration), so a few sends held the loop, and the tunnel's
packets with it, for 10-70 ms. Once attached to a loop, the encoded bytes go to one
sender thread, in order, which does nothing but ``send()`` (the GIL is released
there). The kernel's acknowledgements are read on the loop when the socket is
readable (``attach``) or by ``flush``; an error the caller did not expect is
reported, never raised.

Bounded: at most ``MAX_PENDING`` requests are remembered while unanswered; beyond
that the oldest is forgotten (its error, if any, is then reported without a name).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import queue
import select
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink import NLMSG_ERROR as _NLMSG_ERROR
from pyroute2.netlink.rtnl import RTM_DELROUTE, RTM_DELRULE, RTM_NEWROUTE, RTM_NEWRULE
from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from ..types import IPAddress
from .numbers import RTPROT_MOBIKE_VICI, TUNNEL_TABLE, UPLINK_PRIORITY
from .rtnl import RECV_SIZE, open_socket, parse
from .uplinks import OwnRoute, OwnRule

__all__ = ["RTM_DELROUTE", "RTM_DELRULE", "RTM_NEWROUTE", "RTM_NEWRULE", "RtnlWriter",
           "route_msg", "rule_msg", "throw_msg"]

Report = Callable[[str, dict[str, object]], None]
Message = tuple[Any, int, int]
"""(pyroute2 message class instance with fields and attrs set, type, flags)."""

MAX_PENDING = 1024
RT_TABLE_COMPAT = 252  # the 8-bit table field when the real number is in RTA_TABLE
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255  # in a delete: any scope
RTN_UNICAST = 1
RTN_THROW = 9
FR_ACT_TO_TBL = 1
ALL_BITS = 0xFFFFFFFF
STOP_WAIT = 1.0  # seconds close() waits for the sender to send what is queued


def _af(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def route_msg(mtype: int, route: OwnRoute) -> Message:
    """RTM_NEWROUTE (create or replace) or RTM_DELROUTE for one of our uplink routes."""
    msg = rtmsg()
    delete = mtype == RTM_DELROUTE
    msg["family"] = _af(route.family)
    msg["dst_len"] = route.dst.prefixlen
    msg["table"] = RT_TABLE_COMPAT
    msg["proto"] = RTPROT_MOBIKE_VICI
    msg["type"] = RTN_UNICAST
    msg["scope"] = (RT_SCOPE_NOWHERE if delete
                    else RT_SCOPE_UNIVERSE if route.gateway is not None else RT_SCOPE_LINK)
    attrs: list[tuple[str, object]] = [("RTA_DST", str(route.dst.network_address)),
                                       ("RTA_TABLE", route.table), ("RTA_OIF", route.oif)]
    if route.gateway is not None:
        attrs.append(("RTA_GATEWAY", str(route.gateway)))
    if route.prefsrc is not None and not delete:
        attrs.append(("RTA_PREFSRC", str(route.prefsrc)))
    if route.metric:
        attrs.append(("RTA_PRIORITY", route.metric))
    msg["attrs"] = attrs
    flags = NLM_F_REQUEST | NLM_F_ACK | (0 if delete else NLM_F_CREATE | NLM_F_REPLACE)
    return msg, mtype, flags


def rule_msg(mtype: int, rule: OwnRule, fwmark: int) -> Message:
    """``from <src> fwmark <mark> lookup <table>`` at UPLINK_PRIORITY, added or deleted."""
    msg = fibmsg()
    msg["family"] = _af(rule.family)
    msg["src_len"] = rule.src.max_prefixlen
    msg["table"] = RT_TABLE_COMPAT
    msg["action"] = FR_ACT_TO_TBL
    msg["attrs"] = [("FRA_TABLE", rule.table), ("FRA_PRIORITY", UPLINK_PRIORITY),
                    ("FRA_SRC", str(rule.src)), ("FRA_FWMARK", fwmark),
                    ("FRA_FWMASK", ALL_BITS), ("FRA_PROTOCOL", RTPROT_MOBIKE_VICI)]
    flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE | NLM_F_EXCL if mtype == RTM_NEWRULE
                                         else 0)
    return msg, mtype, flags


def throw_msg(mtype: int, peer: IPAddress) -> Message:
    """A ``throw <peer>`` route in the tunnel table, added (or replaced) or deleted."""
    plain = ipaddress.ip_address(peer.packed)  # no IPv6 scope in a route
    msg = rtmsg()
    msg["family"] = _af(plain.version)
    msg["dst_len"] = plain.max_prefixlen
    msg["table"] = RT_TABLE_COMPAT
    msg["proto"] = RTPROT_MOBIKE_VICI
    msg["type"] = RTN_THROW
    msg["scope"] = RT_SCOPE_NOWHERE if mtype == RTM_DELROUTE else RT_SCOPE_UNIVERSE
    msg["attrs"] = [("RTA_DST", str(plain)), ("RTA_TABLE", TUNNEL_TABLE)]
    flags = NLM_F_REQUEST | NLM_F_ACK | (0 if mtype == RTM_DELROUTE
                                         else NLM_F_CREATE | NLM_F_REPLACE)
    return msg, mtype, flags


_Queued = tuple[int, str, bytes] | threading.Event | None
"""A request (sequence number, name, bytes), a flush marker, or the sender's stop."""


class RtnlWriter:
    """One non-blocking NETLINK_ROUTE socket for our requests and their answers."""

    def __init__(self, netns: str | None, report: Report) -> None:
        self._sock = open_socket(netns, groups=0)
        self._report = report
        self._seq = 0
        self._pending: OrderedDict[int, tuple[str, Collection[int]]] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: queue.SimpleQueue[_Queued] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self.sent = 0
        self.failed = 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read answers on ``loop``; from now on requests are sent by the sender thread."""
        if self._loop is None:
            self._loop = loop
            loop.add_reader(self._sock.fileno(), self._read)
            self._sender = threading.Thread(target=self._send_queued, name="rtnl-writer",
                                            daemon=True)
            self._sender.start()

    def send(self, message: Message, what: str, ok: Collection[int]) -> None:
        """Send one request; ``ok`` are error codes that are no failure (EEXIST, ...)."""
        msg, mtype, flags = message
        self._seq += 1
        msg["header"]["type"] = mtype
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = self._seq
        msg.encode()
        self._pending[self._seq] = (what, ok)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
        if self._sender is not None:
            self._queue.put((self._seq, what, bytes(msg.data)))
            return
        try:
            self._sock.send(msg.data)
        except OSError as exc:
            self._send_failed(self._seq, what, exc.errno)
            return
        self.sent += 1

    def flush(self, timeout: float = 5.0) -> None:
        """Read answers until none is outstanding or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        if self._sender is not None:
            sent = threading.Event()  # everything queued before it has been sent
            self._queue.put(sent)
            sent.wait(timeout)
        while self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            readable, _, _ = select.select([self._sock], [], [], left)
            if readable:
                self._read()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._loop = None
        if self._sender is not None:
            self._queue.put(None)
            self._sender.join(STOP_WAIT)
            self._sender = None
        self.flush(1.0)
        self._sock.close()

    def _send_queued(self) -> None:
        """The sender thread: nothing but ``send()``, in the order the loop queued."""
        loop = self._loop
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            seq, what, data = item
            try:
                self._sock.send(data)
            except OSError as exc:
                if loop is None or loop.is_closed():
                    continue
                try:
                    loop.call_soon_threadsafe(self._send_failed, seq, what, exc.errno)
                except RuntimeError:  # the loop closed meanwhile
                    continue
            else:
                self.sent += 1  # a counter for tests and status; only this thread adds

    def _send_failed(self, seq: int, what: str, code: int | None) -> None:
        self._pending.pop(seq, None)
        self.failed += 1
        self._report("route_failed", {"call": what, "error": errno.errorcode.get(
            code or 0, "OSError")})

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ENOBUFS: answers lost; what failed shows up later
                self._report("route_failed", {"call": "netlink_receive",
                                              "error": errno.errorcode.get(exc.errno or 0,
                                                                           "OSError")})
                self._pending.clear()
                return
            for msg in parse(data):
                header = msg["header"]
                if header["type"] != _NLMSG_ERROR:
                    continue
                what, ok = self._pending.pop(header["sequence_number"], ("unknown", ()))
                error = header.get("error")
                code = abs(int(getattr(error, "code", 0) or 0)) if error is not None else 0
                if code and code not in ok:
                    self.failed += 1
                    self._report("route_failed", {"call": what,
                                                  "error": errno.errorcode.get(code, str(code))})
