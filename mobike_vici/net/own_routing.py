"""OuterRouting: the native daemon's own tables and rules, which keep IKE, probes and ESP
out of its tunnel on every uplink (the netlink edge for them).

Three pieces, all with our protocol in our tables at our priorities (see ``numbers``):

* the tunnel rule ``not fwmark OUTER_FWMARK lookup TUNNEL_TABLE`` (IPv4 and IPv6),
  so the TUN's routes (``net.tun_routes``) never see a packet our sockets mark, even
  when the kernel picks its source address (the initiator's first packet);
* a ``throw`` route in ``TUNNEL_TABLE`` for every peer address, so no lookup for a
  peer, marked or not, ever ends in the tunnel (a user's ping of the gateway, a
  strict reverse-path check of its packets): it falls through to main;
* one table per uplink with a rule per address (``net.uplinks``), so a marked packet
  leaves by the uplink its source address belongs to.

``start`` and ``close`` (leftovers, the tunnel rules, removal) are blocking pyroute2
calls for start-up and shutdown. ``follow`` and ``exclude_peers`` run on the event
loop while handovers happen: they send their requests and return
(``rtnl_writer``); failures are reported through ``report``, never raised.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from ..types import IPAddress
from .numbers import (
    NATIVE_PRIORITIES,
    NATIVE_TABLES,
    OUTER_FWMARK,
    RTPROT_MOBIKE_VICI,
    TUNNEL_PRIORITY,
    TUNNEL_TABLE,
)
from .rtnl_writer import (
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    Report,
    RtnlWriter,
    route_msg,
    rule_msg,
    throw_msg,
)
from .state import NetState
from .uplinks import EMPTY, UplinkPlan, plan_uplinks

FIB_RULE_INVERT = 0x2
_FAMILIES = ((4, socket.AF_INET), (6, socket.AF_INET6))
_GONE = frozenset({errno.ESRCH, errno.ENOENT})
_T = TypeVar("_T")


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else getattr(exc, "errno", None)


def _addr_key(addr: IPAddress) -> tuple[int, bytes]:
    return (addr.version, addr.packed)


class OuterRouting:
    """Owner of the native daemon's routing tables and rules in one namespace."""

    def __init__(self, *, fwmark: int = OUTER_FWMARK, skip: Sequence[str] = (),
                 netns: str | None = None, report: Report | None = None) -> None:
        self.fwmark = fwmark
        self.skip = tuple(skip)
        self.netns = netns
        self._report = report or (lambda _name, _fields: None)
        self._writer: RtnlWriter | None = None
        self._plan: UplinkPlan = EMPTY  # what we last asked the kernel for
        self._peers: set[IPAddress] = set()
        self._closed = False

    # --- lifecycle (blocking) ---------------------------------------------------------

    def start(self) -> int:
        """Remove what a crashed earlier run left behind, then install the tunnel rules.
        Returns how many leftovers were removed. Blocking: call it off the event loop.
        Raises OSError when netlink refuses."""
        return self._with_ipr(self._start)

    def close(self) -> int:
        """Remove every table entry and rule of ours; returns how many. Blocking: call it
        off the event loop, after ``detach``. Later calls do nothing."""
        if self._closed:
            return 0
        self._closed = True
        self.detach()
        try:
            return self._with_ipr(self._remove_ours)
        except Exception as exc:
            self._report("route_failed", {"call": "remove_ours", "error": type(exc).__name__,
                                          "detail": str(exc)[:200]})
            return 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the kernel's answers to our requests on ``loop`` (else ``flush`` reads them)."""
        self._writer_or_open().attach(loop)

    def detach(self) -> None:
        """Stop reading on the loop; wait briefly for what is still unanswered."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # --- following (non-blocking) -----------------------------------------------------

    @property
    def plan(self) -> UplinkPlan:
        """The uplink tables as last asked for."""
        return self._plan

    def follow(self, state: NetState, *, full: bool = False) -> None:
        """Bring the uplink tables in line with ``state``; ``full`` re-installs every
        wanted entry (after a resync) instead of only the difference."""
        if self._closed:
            return
        old = self._plan
        new = plan_uplinks(state, old.tables, skip=self.skip)
        if new == old and not full:
            return
        self._plan = new
        if new.unplaced != old.unplaced and new.unplaced:
            self._report("route_failed", {"call": "uplink_table", "error": "no_free_table",
                                          "detail": ",".join(new.unplaced)})
        w = self._writer_or_open()
        for rule in sorted(old.rules - new.rules):
            w.send(rule_msg(RTM_DELRULE, rule, self.fwmark), "rule_del", _GONE)
        for route in sorted(old.routes - new.routes):
            w.send(route_msg(RTM_DELROUTE, route), "route_del", _GONE)
        for route in sorted(new.routes if full else new.routes - old.routes):
            # A link that went down meanwhile: the next plan takes the route out again.
            w.send(route_msg(RTM_NEWROUTE, route), "route_replace", {errno.ENETDOWN})
        for rule in sorted(new.rules if full else new.rules - old.rules):
            w.send(rule_msg(RTM_NEWRULE, rule, self.fwmark), "rule_add", {errno.EEXIST})

    def exclude_peers(self, peers: Iterable[IPAddress]) -> None:
        """Make ``peers`` the set of addresses the tunnel table throws back to main."""
        if self._closed:
            return
        new = set(peers)
        for peer in sorted(self._peers - new, key=_addr_key):
            self.exclude_peer(peer, False)
        for peer in sorted(new - self._peers, key=_addr_key):
            self.exclude_peer(peer, True)

    def exclude_peer(self, peer: IPAddress, excluded: bool) -> None:
        """Add ``peer`` to (or take it out of) that set: one route, whatever its size."""
        if self._closed or (peer in self._peers) == excluded:
            return
        w = self._writer_or_open()
        if excluded:
            self._peers.add(peer)
            w.send(throw_msg(RTM_NEWROUTE, peer), "throw_add", frozenset())
        else:
            self._peers.discard(peer)
            w.send(throw_msg(RTM_DELROUTE, peer), "throw_del", _GONE)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until the kernel answered everything sent so far (tests, shutdown)."""
        if self._writer is not None:
            self._writer.flush(timeout)

    # --- internals --------------------------------------------------------------------

    def _with_ipr(self, call: Callable[[Any], _T]) -> _T:
        """``call(ipr)`` with a fresh pyroute2 IPRoute, on a short-lived thread when this
        one runs an event loop (pyroute2's sync API starts its own)."""
        def run() -> _T:
            from pyroute2 import IPRoute

            # flags=0: never create the namespace by accident.
            ipr = IPRoute(netns=self.netns, flags=0) if self.netns else IPRoute()
            try:
                return call(ipr)
            finally:
                ipr.close()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return run()
        result: list[_T] = []
        error: list[BaseException] = []

        def worker() -> None:
            try:
                result.append(run())
            except BaseException as exc:
                error.append(exc)
        thread = threading.Thread(target=worker, name="own-routing")
        thread.start()
        thread.join()
        if error:
            raise error[0]
        return result[0]

    def _writer_or_open(self) -> RtnlWriter:
        if self._writer is None:
            self._writer = RtnlWriter(self.netns, self._report)
        return self._writer

    def _start(self, ipr: Any) -> int:
        removed = self._remove_ours(ipr)
        for version, family in _FAMILIES:
            try:
                ipr.rule("add", family=family, table=TUNNEL_TABLE, priority=TUNNEL_PRIORITY,
                         protocol=RTPROT_MOBIKE_VICI, fwmark=self.fwmark,
                         fwmask=0xFFFFFFFF, flags=FIB_RULE_INVERT)
            except Exception as exc:
                if version == 6 and _code(exc) in (errno.EAFNOSUPPORT, errno.EOPNOTSUPP):
                    continue  # IPv6 disabled: nothing to route there
                raise
        return removed

    def _quiet(self, call: Callable[..., None], ipr: Any, op: str, item: Any,
               *also: int) -> None:
        """``call`` that shrugs off "already gone" and the codes in ``also``."""
        try:
            call(ipr, op, item)
        except Exception as exc:
            if _code(exc) not in _GONE | set(also):
                raise

    def _remove_ours(self, ipr: Any) -> int:
        """Every rule and route of ours, recognised by protocol, table and priority only."""
        removed = 0
        for _version, family in _FAMILIES:
            try:
                rules = list(ipr.get_rules(family=family))
            except Exception as exc:
                if _code(exc) in (errno.EAFNOSUPPORT, errno.EOPNOTSUPP):
                    continue
                raise
            for msg in rules:
                table = msg.get("FRA_TABLE") or msg["table"]
                priority = msg.get("FRA_PRIORITY")
                if table not in NATIVE_TABLES:
                    continue
                if msg.get("FRA_PROTOCOL") != RTPROT_MOBIKE_VICI \
                        and priority not in NATIVE_PRIORITIES:
                    continue
                spec: dict[str, Any] = {"family": family, "table": table,
                                        "priority": priority, "flags": msg["flags"]}
                if msg.get("FRA_SRC"):
                    spec["src"], spec["src_len"] = msg.get("FRA_SRC"), msg["src_len"]
                if msg.get("FRA_FWMARK") is not None:
                    spec["fwmark"] = msg.get("FRA_FWMARK")
                    spec["fwmask"] = msg.get("FRA_FWMASK") or 0xFFFFFFFF
                self._quiet(lambda i, _op, s: i.rule("del", **s), ipr, "del", spec)
                removed += 1
            for msg in ipr.route("dump", family=family):
                table = msg.get("RTA_TABLE") or msg["table"]
                if table not in NATIVE_TABLES or msg["proto"] != RTPROT_MOBIKE_VICI:
                    continue
                dst = msg.get("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
                # The kernel matches a delete on scope and type too.
                route: dict[str, Any] = {"family": family, "table": table, "dst": dst,
                                         "dst_len": msg["dst_len"], "type": msg["type"],
                                         "scope": msg["scope"]}
                for key, attr in (("priority", "RTA_PRIORITY"), ("oif", "RTA_OIF")):
                    if msg.get(attr) is not None:
                        route[key] = msg.get(attr)
                self._quiet(lambda i, _op, s: i.route("del", **s), ipr, "del", route)
                removed += 1
        return removed

