"""The uplink tables as data: which routes and rules keep each uplink's traffic on it (pure).

For every interface that carries a usable address (an uplink), one routing table
holds that uplink's own routes, mirrored from main: its connected prefixes (with the
address as preferred source) and its default routes. One rule per address,
``from <addr> fwmark OUTER_FWMARK lookup <table>``, sends our marked packets (IKE,
ESP, probes) from that address into it: a path leaves by the uplink its source
address belongs to, whatever the tunnel's routes or main's best default say. The
mark keeps the rule off everything else, so traffic a user sends from an uplink
address (inner traffic without a virtual IP, say) still meets the tunnel's table.

``plan_uplinks`` turns a :class:`~mobike_vici.net.state.NetState` into that wanted
set; ``net.own_routing`` applies the difference. Tables go to interfaces by index and
stay with an interface while it has a usable address (see ``numbers`` for the range).
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..types import IPAddress
from .events import MAIN_TABLE, IPNetwork
from .numbers import MAX_UPLINKS, UPLINK_TABLE_FIRST
from .state import NetState, is_usable


@dataclass(frozen=True, kw_only=True, order=True)
class OwnRoute:
    """One route we want in one of our tables."""

    table: int
    """Our table number."""
    family: int
    """IP version, 4 or 6."""
    dst: IPNetwork
    """Destination prefix."""
    oif: int
    """Output interface index (the uplink)."""
    gateway: IPAddress | None = None
    """Next hop, None for the connected prefix."""
    prefsrc: IPAddress | None = None
    """Preferred source, the uplink's address on a connected prefix."""
    metric: int = 0
    """Copied from main's default route; nothing else competes in our table."""


@dataclass(frozen=True, kw_only=True, order=True)
class OwnRule:
    """``from <src> fwmark <mark> lookup <table>``: our marked packets from one address."""

    family: int
    src: IPAddress
    table: int


@dataclass(frozen=True, kw_only=True)
class UplinkPlan:
    """The routes and rules the uplinks want, and which table each uplink has."""

    tables: Mapping[int, int]
    """ifindex -> our table number."""
    routes: frozenset[OwnRoute]
    rules: frozenset[OwnRule]
    unplaced: tuple[str, ...] = ()
    """Uplinks left without a table because all ``MAX_UPLINKS`` were taken."""


EMPTY = UplinkPlan(tables={}, routes=frozenset(), rules=frozenset())


def plan_uplinks(state: NetState, previous: Mapping[int, int], *,
                 skip: Sequence[str] = (), max_uplinks: int = MAX_UPLINKS,
                 first_table: int = UPLINK_TABLE_FIRST) -> UplinkPlan:
    """What the uplinks of ``state`` want. ``previous`` is the last plan's ``tables``
    (an uplink keeps its table); interfaces matching a glob in ``skip`` (our TUN,
    loopback) are never uplinks."""
    addrs: dict[int, list[tuple[IPAddress, int]]] = {}
    for addr in state.addresses.values():
        if not is_usable(state, addr):
            continue
        if any(fnmatch.fnmatchcase(state.ifname(addr.ifindex), g) for g in skip):
            continue
        addrs.setdefault(addr.ifindex, []).append((addr.address, addr.prefixlen))
    tables = {i: t for i, t in previous.items() if i in addrs}
    free = [t for t in range(first_table, first_table + max_uplinks)
            if t not in tables.values()]
    unplaced: list[str] = []
    for ifindex in sorted(addrs):
        if ifindex in tables:
            continue
        if not free:
            unplaced.append(state.ifname(ifindex) or str(ifindex))
            continue
        tables[ifindex] = free.pop(0)
    routes: set[OwnRoute] = set()
    rules: set[OwnRule] = set()
    for ifindex, table in tables.items():
        families = set()
        connected: dict[IPNetwork, IPAddress] = {}
        for address, prefixlen in sorted(addrs[ifindex], key=lambda a: (a[0].version, a[0])):
            families.add(address.version)
            rules.add(OwnRule(family=address.version, src=address, table=table))
            if prefixlen < address.max_prefixlen:
                # One route per prefix (the kernel keys routes by it): the lowest address.
                net = ipaddress.ip_network(f"{address}/{prefixlen}", strict=False)
                connected.setdefault(net, address)
        for net, address in connected.items():
            routes.add(OwnRoute(table=table, family=net.version, dst=net, oif=ifindex,
                                prefsrc=address))
        for route in state.routes.values():
            if (route.table == MAIN_TABLE and route.dst.prefixlen == 0
                    and route.oif == ifindex and route.family in families):
                routes.add(OwnRoute(table=table, family=route.family, dst=route.dst,
                                    oif=ifindex, gateway=route.gateway,
                                    metric=route.metric))
    return UplinkPlan(tables=tables, routes=frozenset(routes), rules=frozenset(rules),
                      unplaced=tuple(unplaced))
