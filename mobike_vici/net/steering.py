"""PolicyRouting: the routing table and rules the controller owns to steer IKE traffic to a peer.

charon picks its source address and uplink by a kernel route lookup to the peer,
so the controller moves an SA by installing a host route to the peer (via a chosen
gateway/device, with the chosen source as `src`) in its own table, reached through
one catch-all rule per IP family that sits before charon's table 220 and main. A lookup
that finds nothing in our table falls through to the next rule, so only steered peers
are affected.

Everything we install carries our own route/rule protocol number (RTPROT_MOBIKE_VICI)
and lives in our table at our priority, which is how `reconcile_leftovers()` finds
what a crashed earlier run left behind. charon's own table (220) is never touched.

The API is synchronous (pyroute2's IPRoute): call it from an executor in async code.
Exceptions: `LookupError` for an unknown device, pyroute2's NetlinkError (an OSError)
for a kernel refusal (e.g. a gateway that is not reachable on `dev`).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..types import IPAddress
from .numbers import (
    LEGACY_STEERING_PRIORITIES,
    RESERVED_TABLES,
    RTPROT_MOBIKE_VICI,
    STEERING_PRIORITY,
    STEERING_TABLE,
)

DEFAULT_TABLE = STEERING_TABLE  # not 220: that one is charon's
DEFAULT_PRIORITY = STEERING_PRIORITY  # after `local` (0), before charon's 220 and main
__all__ = ["DEFAULT_PRIORITY", "DEFAULT_TABLE", "RTPROT_MOBIKE_VICI", "PolicyRouting",
           "SteeredRoute"]


@dataclass(frozen=True, kw_only=True)
class SteeredRoute:
    """One host route in our table, as read back from the kernel."""

    peer: IPAddress
    """The remote IKE address the route is for."""
    via: IPAddress | None
    """Gateway, None for an on-link peer."""
    oif: int | None
    """Output interface index."""
    src: IPAddress | None
    """Preferred source address (what charon will use)."""


class PolicyRouting:
    """Owner of one routing table and its rules (one per IP family) in one namespace."""

    def __init__(self, *, table: int = DEFAULT_TABLE, priority: int = DEFAULT_PRIORITY,
                 protocol: int = RTPROT_MOBIKE_VICI, netns: str | None = None,
                 logger: Any = None) -> None:
        if table in RESERVED_TABLES:
            raise ValueError(f"table {table} is reserved (kernel or charon)")
        self.table = table
        self.priority = priority
        self.protocol = protocol
        self.netns = netns
        self._log = logger if logger is not None else structlog.get_logger("mobike_vici.net")
        # flags=0: never create the namespace by accident.
        self._ipr = IPRoute(netns=netns, flags=0) if netns is not None else IPRoute()

    def __enter__(self) -> PolicyRouting:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def ipr(self) -> IPRoute:
        """The netlink socket, for `SourcePins` beside it (same thread, one socket)."""
        return self._ipr

    def close(self) -> None:
        """Release the netlink socket; what was installed stays (see `clear`)."""
        self._ipr.close()

    # --- steering -----------------------------------------------------------------

    def steer(self, peer: IPAddress, *, via: IPAddress | None, dev: str,
              src: IPAddress | None) -> None:
        """Route `peer` via `via` on `dev` with source `src`; replaces an earlier
        steer of the same peer. Idempotent. OSError: the kernel refused the route."""
        family = _family(peer)
        for addr in (via, src):
            if addr is not None and _family(addr) != family:
                raise ValueError(f"{addr} is not of the same IP version as {peer}")
        oif = self._ifindex(dev)
        self._ensure_rule(family)
        spec: dict[str, Any] = {
            "dst": f"{peer}/{peer.max_prefixlen}", "oif": oif, "table": self.table,
            "proto": self.protocol, "family": family,
        }
        if via is not None:
            spec["gateway"] = str(via)
        if src is not None:
            spec["prefsrc"] = str(src)
        try:
            self._ipr.route("replace", **spec)
        except NetlinkError as exc:  # e.g. ENETUNREACH: the uplink went down meanwhile
            raise OSError(exc.code, f"route to {peer} via {dev}: {exc}") from exc
        self._log.info("route_steered", peer=str(peer), via=str(via) if via else None,
                       dev=dev, src=str(src) if src else None, table=self.table)

    def pin(self, peer: IPAddress, *, via: IPAddress | None, dev: str,
            src: IPAddress | None) -> None:
        """Install the route for `peer` anew: the kernel announces it even when nothing
        changed (it does not for an IPv4 replace with the same route), which starts
        charon's roam timer without changing where charon's lookup leads."""
        self.unsteer(peer)
        self.steer(peer, via=via, dev=dev, src=src)

    def unsteer(self, peer: IPAddress) -> bool:
        """Remove the route for `peer`; False when there was none."""
        try:
            self._ipr.route("del", dst=f"{peer}/{peer.max_prefixlen}", table=self.table,
                            family=_family(peer))
        except NetlinkError as exc:
            if exc.code in (errno.ESRCH, errno.ENOENT):
                return False
            raise
        self._log.info("route_unsteered", peer=str(peer), table=self.table)
        return True

    def routes(self) -> list[SteeredRoute]:
        """Host routes currently in our table (ours by protocol)."""
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self._ipr.route("dump", family=family, table=self.table):
                if msg["proto"] != self.protocol or msg.get("RTA_TABLE") != self.table:
                    continue
                gw, src = msg.get("RTA_GATEWAY"), msg.get("RTA_PREFSRC")
                out.append(SteeredRoute(
                    peer=ipaddress.ip_address(msg.get("RTA_DST")),
                    via=ipaddress.ip_address(gw) if gw else None,
                    oif=msg.get("RTA_OIF"),
                    src=ipaddress.ip_address(src) if src else None,
                ))
        return out

    def clear(self) -> int:
        """Remove every route in our table and our rules; returns how many."""
        return self._remove_ours()

    def reconcile_leftovers(self) -> int:
        """At start-up: remove routes and rules a crashed earlier run left behind
        (recognised by table, priority and protocol). Returns how many."""
        removed = self._remove_ours()
        if removed:
            self._log.warning("steering_leftovers_removed", count=removed, table=self.table)
        return removed

    # --- internals ----------------------------------------------------------------

    def _ifindex(self, dev: str) -> int:
        # A dump read to its end, not link_lookup(ifname=...): pyroute2 0.9 answers that
        # from the first reply of a "get" and leaves the kernel's ACK that follows in a
        # queue nobody reads, one message (and its receive buffer) per steer, forever.
        found = [msg["index"] for msg in self._ipr.get_links()
                 if msg.get("IFLA_IFNAME") == dev]
        if not found:
            raise LookupError(f"no such device: {dev}")
        return int(found[0])

    def _our_rules(self, family: int) -> list[Any]:
        rules = []
        for msg in self._ipr.get_rules(family=family):
            table = msg.get("FRA_TABLE") or msg["table"]
            proto = msg.get("FRA_PROTOCOL")
            priority = msg.get("FRA_PRIORITY")
            if (table == self.table
                    and priority in (self.priority, *LEGACY_STEERING_PRIORITIES)) \
                    or (proto == self.protocol and table == self.table):
                rules.append(msg)
        return rules

    def _ensure_rule(self, family: int) -> None:
        # Only a rule at our priority counts: one an older version left later than
        # charon's 220 would not steer.
        if any(msg.get("FRA_PRIORITY") == self.priority for msg in self._our_rules(family)):
            return
        self._ipr.rule("add", family=family, table=self.table, priority=self.priority,
                       protocol=self.protocol)

    def _remove_ours(self) -> int:
        removed = 0
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self._ipr.route("dump", family=family, table=self.table):
                if msg.get("RTA_TABLE") != self.table:
                    continue
                # The table is ours by configuration: anything in it is ours to remove,
                # but only routes with our protocol are expected there.
                dst = msg.get("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
                spec: dict[str, Any] = {"family": family, "table": self.table,
                                        "dst": f"{dst}/{msg['dst_len']}"}
                for key, attr in (("priority", "RTA_PRIORITY"), ("oif", "RTA_OIF")):
                    if msg.get(attr) is not None:
                        spec[key] = msg.get(attr)
                self._ipr.route("del", **spec)
                removed += 1
            for msg in self._our_rules(family):
                self._ipr.rule("del", family=family, table=self.table,
                               priority=msg.get("FRA_PRIORITY"))
                removed += 1
        return removed


def _family(addr: IPAddress) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6
