"""LinkSwitch: a link set up or down inside a namespace by one netlink request from the
calling process, so a bench's stamp of the fault falls within microseconds of it.

``ip netns exec NS ip link set ...`` forks, enters the namespaces, remounts /sys and
execs first: 4-27 ms at a load of 1.5, 14-21 ms median and 40-120 ms at the 95th
percentile at a load of 10, all of it counted in a soak's outage although the link was
still up. rtnetlink applies a request in the sender's own system call, so a stamp taken
just before ``send`` is the moment the link goes.
"""

from __future__ import annotations

import errno
import socket
import time
from types import TracebackType

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.rtnl import RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from ..net.rtnl import IFF_UP, RECV_SIZE, open_socket

ACK_TIMEOUT = 5.0


class LinkSwitch:
    """One netlink socket inside ``netns`` (opened once: that costs the fork)."""

    def __init__(self, netns: str) -> None:
        self._sock = open_socket(netns)
        self._seq = 0

    def __enter__(self) -> LinkSwitch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def set(self, ifname: str, up: bool) -> float:
        """Set ``ifname`` administratively up or down; returns the wall-clock time taken
        right before the request. Raises OSError with the kernel's error (ENODEV: no
        such link)."""
        self._seq += 1
        msg = ifinfmsg()
        msg["header"]["type"] = RTM_NEWLINK
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
        msg["header"]["sequence_number"] = self._seq
        msg["family"] = socket.AF_UNSPEC
        msg["flags"] = IFF_UP if up else 0
        msg["change"] = IFF_UP
        msg["attrs"] = [("IFLA_IFNAME", ifname)]
        msg.encode()
        data = bytes(msg.data)
        stamp = time.time()
        self._sock.send(data)
        self._await_ack()
        return stamp

    def _await_ack(self) -> None:
        self._sock.settimeout(ACK_TIMEOUT)
        try:
            while True:
                for reply in MarshalRtnl().parse(self._sock.recv(RECV_SIZE)):
                    header = reply["header"]
                    if header["sequence_number"] != self._seq:
                        continue
                    if header["type"] == NLMSG_ERROR or header.get("error") is not None:
                        error = header.get("error")
                        code = abs(int(getattr(error, "code", 0) or 0))
                        if code:
                            raise OSError(code, f"link set: {errno.errorcode.get(code, code)}")
                        return
        finally:
            self._sock.setblocking(False)
