"""NetState, the snapshot of links, addresses and routes, and the pure functions over it.

`apply` folds one event into a snapshot, `diff` turns two snapshots into the events
that lead from one to the other, `usable_addresses` is the view a path manager wants.
The monitor keeps its state only through these, so they are the whole semantics of
the event stream and are tested without a kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..types import IPAddress
from .events import (
    Address,
    AddressAdded,
    AddressRemoved,
    AddrFlag,
    AddrKey,
    Link,
    LinkDown,
    LinkRemoved,
    LinkUp,
    NetEvent,
    Resynced,
    Route,
    RouteChanged,
    RouteKey,
    Scope,
    link_event,
    record,
)


@dataclass(frozen=True, kw_only=True)
class NetState:
    """What the kernel had at one moment, as far as the monitor tracks it."""

    links: Mapping[int, Link] = field(default_factory=dict)
    """Links by interface index."""
    addresses: Mapping[AddrKey, Address] = field(default_factory=dict)
    """Addresses by (ifindex, address, prefixlen)."""
    routes: Mapping[RouteKey, Route] = field(default_factory=dict)
    """Tracked routes (by default only main-table default routes) by `Route.key`."""

    def ifname(self, ifindex: int | None) -> str:
        """Current name of a link, empty when unknown."""
        if ifindex is None:
            return ""
        link = self.links.get(ifindex)
        return link.ifname if link is not None else ""

    def default_routes(self, family: int | None = None) -> list[Route]:
        """Default routes, best (lowest metric) first."""
        found = [r for r in self.routes.values()
                 if r.dst.prefixlen == 0 and (family is None or r.family == family)]
        return sorted(found, key=lambda r: (r.family, r.metric, r.table, r.oif or 0))


def apply(state: NetState, event: NetEvent) -> NetState:
    """The state after `event`. Idempotent per event: applying an event the state
    already reflects changes nothing, which is what makes replaying events that
    raced a dump safe."""
    links, addresses, routes = state.links, state.addresses, state.routes
    if isinstance(event, LinkUp | LinkDown):
        links = {**links, event.ifindex: record(Link, event)}
    elif isinstance(event, LinkRemoved):
        links = {k: v for k, v in links.items() if k != event.ifindex}
        addresses = {k: v for k, v in addresses.items() if v.ifindex != event.ifindex}
        routes = {k: v for k, v in routes.items() if v.oif != event.ifindex}
    elif isinstance(event, AddressAdded):
        addresses = {**addresses, event.key: record(Address, event)}
    elif isinstance(event, AddressRemoved):
        addresses = {k: v for k, v in addresses.items() if k != event.key}
    elif isinstance(event, RouteChanged):
        if event.added:
            routes = {**routes, event.key: record(Route, event)}
        else:
            routes = {k: v for k, v in routes.items() if k != event.key}
    elif isinstance(event, Resynced):
        return state
    else:
        raise TypeError(f"not a net event: {event!r}")
    return NetState(links=links, addresses=addresses, routes=routes)


def diff(old: NetState, new: NetState) -> list[NetEvent]:
    """Events that take a consumer holding `old` to `new`, in a safe order:
    routes and addresses go before their links, links come before what sits on them.
    Applying them to `old` with `apply` yields a state equal to `new`."""
    out: list[NetEvent] = []
    for rkey in sorted(old.routes.keys() - new.routes.keys(), key=_route_order):
        out.append(_route_event(old.routes[rkey], added=False))
    for akey in sorted(old.addresses.keys() - new.addresses.keys(), key=_addr_order):
        out.append(_addr_event(AddressRemoved, old.addresses[akey]))
    for ifindex in sorted(old.links.keys() - new.links.keys()):
        out.append(LinkRemoved(ifindex=ifindex, ifname=old.links[ifindex].ifname))
    # A LinkRemoved also drops what sat on the link; compare additions against the
    # state after the removals so anything that must survive is announced again.
    mid = old
    for event in out:
        mid = apply(mid, event)
    for ifindex in sorted(new.links):
        if mid.links.get(ifindex) != new.links[ifindex]:
            out.append(link_event(new.links[ifindex]))
    for akey in sorted(new.addresses, key=_addr_order):
        if mid.addresses.get(akey) != new.addresses[akey]:
            out.append(_addr_event(AddressAdded, new.addresses[akey]))
    for rkey in sorted(new.routes, key=_route_order):
        if mid.routes.get(rkey) != new.routes[rkey]:
            out.append(_route_event(new.routes[rkey], added=True))
    return out


def usable_addresses(state: NetState) -> list[tuple[str, IPAddress]]:
    """(ifname, address) pairs a path may use as its local end: global scope, not
    loopback or link-local, not tentative or failed DAD, on a link that is up.
    Deprecated IPv6 addresses stay in (they still work, merely not preferred)."""
    out = []
    for addr in state.addresses.values():
        if is_usable(state, addr):
            out.append((addr.ifindex, addr.address.version, addr.address,
                        state.ifname(addr.ifindex)))
    out.sort(key=lambda t: (t[0], t[1], t[2].packed))
    return [(ifname, address) for _, _, address, ifname in out]


def is_usable(state: NetState, addr: Address) -> bool:
    """Whether ``addr`` may be a path's local end (see `usable_addresses`)."""
    link = state.links.get(addr.ifindex)
    if link is None or not link.up:
        return False
    if addr.scope != Scope.UNIVERSE or addr.flags & (AddrFlag.TENTATIVE | AddrFlag.DADFAILED):
        return False
    return not (addr.address.is_loopback or addr.address.is_link_local)


def _addr_order(key: AddrKey) -> tuple[int, int, bytes, int]:
    ifindex, address, prefixlen = key
    return (ifindex, address.version, address.packed, prefixlen)


def _route_order(key: RouteKey) -> tuple[int, int, bytes, int, int, bytes, int]:
    family, table, dst, metric, gateway, oif = key
    return (family, table, dst.network_address.packed, dst.prefixlen, metric,
            gateway.packed if gateway is not None else b"", oif or 0)


def _addr_event(cls: type[AddressAdded] | type[AddressRemoved], addr: Address
                ) -> AddressAdded | AddressRemoved:
    return cls(ifindex=addr.ifindex, ifname=addr.ifname, address=addr.address,
               prefixlen=addr.prefixlen, flags=addr.flags, scope=addr.scope)


def _route_event(route: Route, *, added: bool) -> RouteChanged:
    return RouteChanged(family=route.family, table=route.table, dst=route.dst,
                        gateway=route.gateway, oif=route.oif, ifname=route.ifname,
                        metric=route.metric, prefsrc=route.prefsrc, added=added)

