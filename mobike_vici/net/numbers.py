"""The routing numbers mobike-vici owns: route/rule protocol, tables, rule priorities, fwmark.

Everything we put into the kernel's routing carries ``RTPROT_MOBIKE_VICI`` and lives
in one of the tables below at one of the priorities below; that is how a later run
recognises what a crashed one left behind, and the only thing cleanup ever keys on.
A user's own routes and rules (main, other tables, other priorities, other
protocols) are never read for removal.

Rules, in the order the kernel consults them (``ip rule``)::

     214  from <old src> to <peer> lookup <pin table>                   controller (run)
     215  from all lookup STEERING_TABLE                                controller (run)
     220  not fwmark 0x4d43 lookup 220                                  charon's
    4550  from <uplink addr> fwmark OUTER_FWMARK lookup <uplink table>  native daemon
    4556  not fwmark OUTER_FWMARK lookup TUNNEL_TABLE                   native daemon
   32766  from all lookup main                                          the user's

(220's ``not fwmark`` comes from the shipped strongswan.d snippet: charon marks its IKE
packets, so its MOBIKE checks never ride a full tunnel's default route.)

Tables: ``STEERING_TABLE`` 4555 (host routes that steer charon), ``TUNNEL_TABLE`` 4556
(the TUN's routes for remote traffic selectors, and a ``throw`` route per peer),
``UPLINK_TABLE_FIRST`` .. ``+ MAX_UPLINKS - 1`` (4560-4591, one per uplink: its
connected prefixes and its default routes, mirrored from main), ``PIN_TABLE_FIRST`` ..
``+ MAX_PINS - 1`` (4600-4631, the controller's: one host route each, for the source a
move left). charon's 220 is never touched.
"""

from __future__ import annotations

RTPROT_MOBIKE_VICI = 145
"""Route and rule protocol (unassigned in rt_protos): ``proto 145`` in ``ip route``/``ip rule``."""

OUTER_FWMARK = 0x4D56
"""The mark ("MV") of every packet we send outside a tunnel: IKE, ESP, probes. Packets
with it never consult ``TUNNEL_TABLE`` (nor charon's table 220, see net.probes.bypass)."""

STEERING_TABLE = 4555
STEERING_PRIORITY = 215
"""The controller's catch-all rule: before charon's table 220 (priority 220), whose
routes would otherwise win for the peers' addresses. With a full tunnel, 220 holds
``::/0``/``0.0.0.0/0`` into the tunnel and a ``throw`` only for the peer address in
use, so charon's MOBIKE checks to the peer's other family (the IPv6 address it
announced) went into the tunnel riding the dead IPv4 path. Our table holds host
routes to peers only, so preceding 220 takes nothing else from the tunnel."""

PIN_PRIORITY = 214
PIN_TABLE_FIRST = 4600
MAX_PINS = 32
"""The controller's pins (``net.source_pins``): ``from OLD_SRC to PEER`` before the
steering rule, so the traffic still sent from the address a move left keeps its uplink
until the CHILD_SAs followed. At most that many at once; beyond, a move pins nothing."""

LEGACY_STEERING_PRIORITIES = frozenset({4555})
"""Where earlier versions put that rule: still ours to remove at start-up."""

TUNNEL_TABLE = 4556
TUNNEL_PRIORITY = 4556
"""The native daemon's TUN routes and the rule ``not fwmark OUTER_FWMARK lookup 4556``."""

UPLINK_PRIORITY = 4550
UPLINK_TABLE_FIRST = 4560
MAX_UPLINKS = 32
"""Uplink tables are 4560-4591; interfaces beyond that many get none (their marked
packets then follow main, still never the tunnel)."""

NATIVE_TABLES = frozenset({TUNNEL_TABLE,
                           *range(UPLINK_TABLE_FIRST, UPLINK_TABLE_FIRST + MAX_UPLINKS)})
NATIVE_PRIORITIES = frozenset({TUNNEL_PRIORITY, UPLINK_PRIORITY})
RESERVED_TABLES = frozenset({0, 220, 253, 254, 255})
"""unspec, charon's, default, main, local: never ours."""
