"""What keeps a probe out of the tunnel and on its uplink: socket options.

Three independent mechanisms, because the data planes catch packets differently:

* ``SO_BINDTODEVICE`` + ``bind(local)``: the probe leaves through the uplink it tests,
  whatever the main table's default route says (the controller relies on this alone
  against charon's table 220, where kernel-libipsec routes the remote traffic selectors,
  a full tunnel ``0.0.0.0/0`` included, through ``ipsec0``).
* ``SO_MARK`` with ``PROBE_FWMARK``: the native daemon's rules send marked packets to
  the uplink tables, never to its tunnel table; a rule ``fwmark PROBE_FWMARK lookup
  main`` before table 220 would do the same beside charon (nothing installs one).
* A per-socket XFRM policy with action ALLOW in both directions (``IP_XFRM_POLICY`` /
  ``IPV6_XFRM_POLICY``, the way charon exempts its IKE sockets): with the kernel XFRM
  data plane, the SPD would otherwise encrypt a probe whose addresses match a TS.
"""

from __future__ import annotations

import socket
import struct

from ..numbers import OUTER_FWMARK

SO_MARK = getattr(socket, "SO_MARK", 36)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
IP_XFRM_POLICY = 17
IPV6_XFRM_POLICY = 35
XFRM_POLICY_IN = 0
XFRM_POLICY_OUT = 1
XFRM_POLICY_ALLOW = 0
_XFRM_INF = (1 << 64) - 1

PROBE_FWMARK = OUTER_FWMARK
"""The fwmark of every probe ("MV", the same as the native daemon's IKE and ESP);
configurable per prober."""


def xfrm_bypass_policy(direction: int, family: int = socket.AF_INET) -> bytes:
    """A ``struct xfrm_userpolicy_info`` (168 bytes) that lets everything pass.

    Layout: selector (56: addresses and ports zero with prefix length 0 = any, but the
    kernel insists on the family, u16 at offset 40), lifetime cfg (8 x u64, no limit), lifetime
    cur (4 x u64), priority u32, index u32, dir u8, action u8, flags u8, share u8, pad 4.
    """
    selector = bytes(40) + struct.pack("=H", family) + bytes(14)
    lft = struct.pack("=8Q", *([_XFRM_INF] * 8))
    cur = bytes(32)
    tail = struct.pack("=IIBBBB4x", 0, 0, direction, XFRM_POLICY_ALLOW, 0, 0)
    return selector + lft + cur + tail


def apply_socket_bypass(sock: socket.socket, *, family: int, ifname: str | None,
                        fwmark: int | None, xfrm_bypass: bool = True) -> None:
    """Pin `sock` to `ifname`, mark it and exempt it from IPsec policies (needs root)."""
    if ifname is not None:
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode())
    if fwmark is not None:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
    if xfrm_bypass:
        level, opt = ((socket.IPPROTO_IP, IP_XFRM_POLICY) if family == socket.AF_INET
                      else (socket.IPPROTO_IPV6, IPV6_XFRM_POLICY))
        for direction in (XFRM_POLICY_IN, XFRM_POLICY_OUT):
            sock.setsockopt(level, opt, xfrm_bypass_policy(direction, family))
