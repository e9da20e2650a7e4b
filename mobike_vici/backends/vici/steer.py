"""What steering charon needs from the host: which uplink a path leaves by, and the host
routes that move an IKE_SA from one path to another.

``egress`` maps a path's local address to its device and next hop from the
netlink monitor's snapshot (the main table's default route on that device),
which is what ``PolicyRouting.steer`` installs for charon to follow, and the
device the path's probes are bound to (which keeps them out of both our steering
route and charon's tunnel routes).

``steer_routes`` plans one move. charon (``prefer_best_path``) re-checks an IKE_SA
when a route changes and its current peer address no longer routes from its current
source; its MOBIKE check then sends to every peer address it knows, each from the
source its route lookup gives, and takes the first pair that answers. A route for the
target alone leaves that to a race: the target's pair against every other working pair
(the other address family, another uplink). So every other peer address the move must
not land on is routed from a source that cannot leave the host (``isolating``): IPv4
from 127.0.0.1 (the kernel refuses to send it on an uplink), IPv6 from the uplink's
link-local address behind a router (no router forwards it), else from ::1 on ``lo``
(the kernel refuses it too). Traffic that names its source, as charon's ESP and our
bound probes do, still leaves on the uplink's own route while the move is under way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from ...mobike import steer_plan
from ...mobike.follow import same_addresses
from ...net.events import AddrFlag
from ...net.state import NetState, usable_addresses
from ...types import IPAddress, Path

LOOPBACK_V4 = ipaddress.IPv4Address("127.0.0.1")
LOOPBACK_V6 = ipaddress.IPv6Address("::1")
LOOPBACK_DEV = "lo"


@dataclass(frozen=True, slots=True)
class HostRoute:
    """One host route to a peer address in the controller's table."""

    peer: IPAddress
    dev: str
    via: IPAddress | None
    src: IPAddress
    isolating: bool
    """Its source cannot leave the host: charon's check finds no working pair there."""


def egress(state: NetState, local: IPAddress) -> tuple[str, IPAddress | None] | None:
    """(device, next hop) for traffic from ``local``; None when the address is gone.

    The next hop is the gateway of the main table's best default route on the
    device that holds ``local``; None when there is none (an on-link peer).
    """
    ifname = ""
    for addr in state.addresses.values():
        if addr.address == local:
            ifname = addr.ifname or state.ifname(addr.ifindex)
            break
    if not ifname:
        return None
    for route in state.default_routes(local.version):
        if route.table == 254 and (route.ifname == ifname or state.ifname(route.oif) == ifname):
            return ifname, route.gateway
    return ifname, None


def landed(state: NetState, plan: steer_plan.SteerPlan, current: Path) -> bool:
    """Whether charon, now on ``current``, made the move of ``plan``: on the target, or
    on another path of the target's uplink (charon may pick the other address family of
    the same link, e.g. after the gateway announced it); never on the path the move
    leaves (the other family of the target's own uplink)."""
    if steer_plan.reached(plan, current):
        return True
    if same_addresses(current, plan.old):
        return False
    want = egress(state, plan.target.local.addr)
    have = egress(state, current.local.addr)
    return want is not None and have is not None and want[0] == have[0]


def steer_routes(state: NetState, target: Path, current: Path, peers: Iterable[IPAddress],
                 *, failover: bool) -> list[HostRoute] | None:
    """The routes that move charon from ``current`` to ``target``, in the order to install
    them: after each one charon either keeps its path (its current peer still routes
    from its source) or its check finds the pairs the move allows; the current peer's
    isolation comes last. None when the target's local address is gone.

    ``peers``: every address known of the peer. Charon's current peer address, when it
    is not the target's, is isolated (else charon keeps a path whose source still
    routes). A discretionary move isolates every other peer address too: it lands where
    asked or not at all. A failover leaves them as they are: the current path is dead,
    and any other pair that answers first is better than none (the controller adopts it).
    """
    out = egress(state, target.local.addr)
    if out is None:
        return None
    routes: list[HostRoute] = []
    if not failover:
        for peer in dict.fromkeys(peers):
            if peer not in (target.remote.addr, current.remote.addr):
                routes.extend(_isolating(state, peer, current))
    routes.append(HostRoute(target.remote.addr, out[0], out[1], target.local.addr, False))
    if current.remote.addr != target.remote.addr:
        routes.extend(_isolating(state, current.remote.addr, current))
    return routes


def _isolating(state: NetState, peer: IPAddress, current: Path) -> list[HostRoute]:
    """The isolating route for ``peer`` (none without a local address of its family:
    charon has no source to send from then). It leaves by charon's current uplink when
    that is of the peer's family, so the current path's own traffic keeps its way; not
    when that uplink's link is down (the kernel refuses a route by it, and its routes
    may still be in the snapshot when the move starts)."""
    usable = [addr for _, addr in usable_addresses(state) if addr.version == peer.version]
    locals_ = [current.local.addr] if current.local.addr in usable else []
    locals_ += usable
    for local in locals_:
        out = egress(state, local)
        if out is None:
            continue
        dev, via = out
        if peer.version == 4:
            return [HostRoute(peer, dev, via, LOOPBACK_V4, True)]
        link_local = _link_local(state, dev) if via is not None else None
        if link_local is not None:
            return [HostRoute(peer, dev, via, link_local, True)]
        return [HostRoute(peer, LOOPBACK_DEV, None, LOOPBACK_V6, True)]
    return []


def _link_local(state: NetState, dev: str) -> IPAddress | None:
    for addr in state.addresses.values():
        if (addr.ifname or state.ifname(addr.ifindex)) == dev \
                and addr.address.version == 6 and addr.address.is_link_local \
                and not addr.flags & (AddrFlag.TENTATIVE | AddrFlag.DADFAILED):
            return addr.address
    return None
