"""What steering charon needs from the host: which uplink a path leaves by.

``egress`` maps a path's local address to its device and next hop from the
netlink monitor's snapshot (the main table's default route on that device),
which is what ``PolicyRouting.steer`` installs for charon to follow, and the
device the path's probes are bound to (which keeps them out of both our steering
route and charon's tunnel routes).
"""

from __future__ import annotations

from ...net.state import NetState
from ...types import IPAddress

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
MAX_OUTSTANDING = 1024  # bound on probes awaiting a reply, all paths together


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

