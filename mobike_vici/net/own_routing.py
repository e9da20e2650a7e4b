"""OuterRouting: the native daemon's own tables and rules, which keep IKE, probes and ESP
out of its tunnel on every uplink (the pyroute2 edge for them).

Three pieces, all with our protocol in our tables at our priorities (see ``numbers``):

* the tunnel rule ``not fwmark OUTER_FWMARK lookup TUNNEL_TABLE`` (IPv4 and IPv6),
  so the TUN's routes (``net.tun_routes``) never see a packet our sockets mark, even
  when the kernel picks its source address (the initiator's first packet);
* a ``throw`` route in ``TUNNEL_TABLE`` for every peer address, so no lookup for a
  peer, marked or not, ever ends in the tunnel (a user's ping of the gateway, a
  strict reverse-path check of its packets): it falls through to main;
* one table per uplink with a rule per address (``net.uplinks``), so a marked packet
  leaves by the uplink its source address belongs to.

All netlink work runs in order on one worker thread (pyroute2's IPRoute must not run
inside the asyncio loop): ``follow`` and ``exclude_peers`` queue and return at once;
``start`` and ``close`` wait for it. Failures are reported through ``report`` (from
the worker thread) and never raised from the queued calls.
"""

from __future__ import annotations

import concurrent.futures
import errno
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..types import IPAddress
from .numbers import (
    NATIVE_PRIORITIES,
    NATIVE_TABLES,
    OUTER_FWMARK,
    RTPROT_MOBIKE_VICI,
    TUNNEL_PRIORITY,
    TUNNEL_TABLE,
    UPLINK_PRIORITY,
)
from .state import NetState
from .uplinks import EMPTY, OwnRoute, OwnRule, UplinkPlan, plan_uplinks

Report = Callable[[str, dict[str, object]], None]
"""``report(event_name, fields)``: called from the worker thread."""

FIB_RULE_INVERT = 0x2
RTN_THROW = 9
RT_SCOPE_LINK = 253
_FAMILIES = ((4, socket.AF_INET), (6, socket.AF_INET6))
_GONE = frozenset({errno.ESRCH, errno.ENOENT})


def _af(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else getattr(exc, "errno", None)


class OuterRouting:
    """Owner of the native daemon's routing tables and rules in one namespace."""

    def __init__(self, *, fwmark: int = OUTER_FWMARK, skip: Sequence[str] = (),
                 netns: str | None = None, report: Report | None = None) -> None:
        self.fwmark = fwmark
        self.skip = tuple(skip)
        self.netns = netns
        self._report = report or (lambda _name, _fields: None)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="own-routing")
        self._ipr: Any = None  # created and used on the worker thread only
        self._plan: UplinkPlan = EMPTY  # the last plan queued (the worker applies in order)
        self._peers: frozenset[IPAddress] = frozenset()
        self._closed = False

    # --- lifecycle (blocking) ---------------------------------------------------------

    def start(self) -> int:
        """Remove what a crashed earlier run left behind, then install the tunnel rules.
        Returns how many leftovers were removed. Raises OSError when netlink refuses."""
        return self._pool.submit(self._start).result()

    def close(self) -> int:
        """Remove every table entry and rule of ours (after the queued work); returns
        how many. The worker is gone afterwards; later calls do nothing."""
        if self._closed:
            return 0
        self._closed = True
        try:
            return self._pool.submit(self._remove_ours).result()
        except Exception as exc:
            self._report("route_failed", {"call": "remove_ours", "error": type(exc).__name__,
                                          "detail": str(exc)[:200]})
            return 0
        finally:
            self._pool.submit(self._close_ipr)
            self._pool.shutdown(wait=True)

    # --- following (queued) -----------------------------------------------------------

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
        self._pool.submit(self._guard, "uplinks", self._apply, old, new, full)

    def exclude_peers(self, peers: Iterable[IPAddress]) -> None:
        """Make ``peers`` the set of addresses the tunnel table throws back to main."""
        if self._closed:
            return
        new = frozenset(peers)
        old, self._peers = self._peers, new
        if new != old:
            self._pool.submit(self._guard, "peers", self._apply_peers, old, new)

    def flush(self) -> None:
        """Wait until everything queued so far is applied (for tests)."""
        if not self._closed:
            self._pool.submit(lambda: None).result()

    # --- worker side ------------------------------------------------------------------

    def _guard(self, what: str, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except Exception as exc:
            self._report("route_failed", {"call": what, "error": type(exc).__name__,
                                          "detail": str(exc)[:200]})

    def _netlink(self) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute

            # flags=0: never create the namespace by accident.
            self._ipr = IPRoute(netns=self.netns, flags=0) if self.netns else IPRoute()
        return self._ipr

    def _close_ipr(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _start(self) -> int:
        removed = self._remove_ours()
        ipr = self._netlink()
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

    def _apply(self, old: UplinkPlan, new: UplinkPlan, full: bool) -> None:
        ipr = self._netlink()
        for rule in sorted(old.rules - new.rules):
            self._quiet(self._rule, ipr, "del", rule)
        for route in sorted(old.routes - new.routes):
            self._quiet(self._route, ipr, "del", route)
        for route in sorted(new.routes if full else new.routes - old.routes):
            self._route(ipr, "replace", route)
        for rule in sorted(new.rules if full else new.rules - old.rules):
            self._quiet(self._rule, ipr, "add", rule, errno.EEXIST)

    def _apply_peers(self, old: frozenset[IPAddress], new: frozenset[IPAddress]) -> None:
        ipr = self._netlink()
        for peer in old - new:
            self._quiet(self._throw, ipr, "del", peer)
        for peer in new - old:
            self._throw(ipr, "replace", peer)

    def _quiet(self, call: Callable[..., None], ipr: Any, op: str, item: Any,
               *also: int) -> None:
        """``call`` that shrugs off "already gone" (the kernel flushes routes of a downed
        link from every table) and the codes in ``also``."""
        try:
            call(ipr, op, item)
        except Exception as exc:
            if _code(exc) not in _GONE | set(also):
                raise

    def _route(self, ipr: Any, op: str, route: OwnRoute) -> None:
        spec: dict[str, Any] = {
            "family": _af(route.family), "dst": str(route.dst.network_address),
            "dst_len": route.dst.prefixlen, "table": route.table, "oif": route.oif,
            "proto": RTPROT_MOBIKE_VICI,
        }
        if route.metric:
            spec["priority"] = route.metric
        if route.gateway is not None:
            spec["gateway"] = str(route.gateway)
        else:
            spec["scope"] = RT_SCOPE_LINK
        if route.prefsrc is not None:
            spec["prefsrc"] = str(route.prefsrc)
        ipr.route(op, **spec)

    def _rule(self, ipr: Any, op: str, rule: OwnRule) -> None:
        ipr.rule(op, family=_af(rule.family), table=rule.table, priority=UPLINK_PRIORITY,
                 protocol=RTPROT_MOBIKE_VICI, src=str(rule.src),
                 src_len=rule.src.max_prefixlen, fwmark=self.fwmark, fwmask=0xFFFFFFFF)

    def _throw(self, ipr: Any, op: str, peer: IPAddress) -> None:
        plain = ipaddress.ip_address(peer.packed)  # no IPv6 scope in a route
        ipr.route(op, family=_af(plain.version), dst=str(plain),
                  dst_len=plain.max_prefixlen, table=TUNNEL_TABLE, type=RTN_THROW,
                  proto=RTPROT_MOBIKE_VICI)

    def _remove_ours(self) -> int:
        """Every rule and route of ours, recognised by protocol, table and priority only."""
        ipr = self._netlink()
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
