"""Routes and rules a crashed run left behind: found by our protocol number, removed.

A daemon killed with SIGKILL cannot clean up. Its TUN device goes with its file
descriptor (and the kernel drops every route through it), but routes through the
underlay (a pinned host route to the peer) and policy-routing rules stay. Everything
the native daemon installs carries ``ROUTE_PROTO`` (routes and rules alike, in any
table), so the next start can remove exactly that and nothing of the operator's:
a route or rule with any other protocol number is never touched, whatever its table.

The API is synchronous (pyroute2's IPRoute): call it off the event loop.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

ROUTE_PROTO = 0x6D
"""The native daemon's route and rule protocol number ("m"; unassigned in rt_protos)."""

_FAMILIES = (socket.AF_INET, socket.AF_INET6)


@dataclass(frozen=True, kw_only=True)
class Removed:
    """What one sweep removed."""

    routes: list[str]
    """``"table T dst/len"`` of each route removed."""
    rules: list[str]
    """``"pref P table T"`` of each rule removed."""

    @property
    def count(self) -> int:
        return len(self.routes) + len(self.rules)


def remove_owned(protocol: int = ROUTE_PROTO, *, netns: str | None = None) -> Removed:
    """Remove every route (any table) and rule whose protocol is ``protocol``."""
    ipr = IPRoute(netns=netns, flags=0) if netns is not None else IPRoute()
    try:
        routes = [_remove_route(ipr, msg) for family in _FAMILIES
                  for msg in ipr.route("dump", family=family) if msg["proto"] == protocol]
        rules = [_remove_rule(ipr, msg) for family in _FAMILIES
                 for msg in ipr.get_rules(family=family)
                 if msg.get("FRA_PROTOCOL") == protocol]
    finally:
        ipr.close()
    return Removed(routes=[r for r in routes if r], rules=[r for r in rules if r])


def _remove_route(ipr: Any, msg: Any) -> str:
    family = msg["family"]
    table = msg.get("RTA_TABLE") or msg["table"]
    dst = msg.get("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
    spec: dict[str, Any] = {"family": family, "table": table, "dst": f"{dst}/{msg['dst_len']}",
                            "proto": msg["proto"], "type": msg["type"], "tos": msg["tos"]}
    for key, attr in (("oif", "RTA_OIF"), ("gateway", "RTA_GATEWAY"),
                      ("priority", "RTA_PRIORITY")):
        if msg.get(attr) is not None:
            spec[key] = msg.get(attr)
    try:
        ipr.route("del", **spec)
    except NetlinkError:
        return ""  # gone meanwhile (its link went away): nothing left to remove
    return f"table {table} {dst}/{msg['dst_len']}"


def _remove_rule(ipr: Any, msg: Any) -> str:
    family = msg["family"]
    table = msg.get("FRA_TABLE") or msg["table"]
    priority = msg.get("FRA_PRIORITY") or 0
    spec: dict[str, Any] = {"family": family, "table": table, "priority": priority,
                            "protocol": msg.get("FRA_PROTOCOL"), "action": msg["action"]}
    for key, attr, length in (("src", "FRA_SRC", "src_len"), ("dst", "FRA_DST", "dst_len")):
        if msg.get(attr) is not None:
            spec[key] = msg.get(attr)
            spec[length] = msg[length]
    for key, attr in (("fwmark", "FRA_FWMARK"), ("fwmask", "FRA_FWMASK"),
                      ("iifname", "FRA_IIFNAME"), ("oifname", "FRA_OIFNAME")):
        if msg.get(attr) is not None:
            spec[key] = msg.get(attr)
    try:
        ipr.rule("del", **spec)
    except NetlinkError:
        return ""
    return f"pref {priority} table {table}"
