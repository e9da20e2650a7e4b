"""The data plane's TUN device: open it, set its MTU and bring it up, with ioctls only.

Addresses and routes on it are the business of :mod:`mobike_vici.net.tun_routes`
(pyroute2 stays in ``net/``). The device is IFF_TUN | IFF_NO_PI: every read
is one bare IP packet and every write must be one, which is exactly what ESP
carries in tunnel mode.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

DEFAULT_NAME = "mvici0"
DEFAULT_MTU = 1400
"""Leaves room for ESP (8 + 16 IV + up to 17 padding/trailer + 32 ICV), UDP (8) and IPv6 (40)."""

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_IFF_UP = 0x1
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_SIOCSIFMTU = 0x8922
_IFREQ_FLAGS = struct.Struct("16sH")
_IFREQ_INT = struct.Struct("16si")


class TunDevice:
    """One open TUN device; ``fd`` is non-blocking, for ``loop.add_reader``."""

    __slots__ = ("fd", "mtu", "name")

    def __init__(self, name: str = DEFAULT_NAME, mtu: int = DEFAULT_MTU) -> None:
        if not name or len(name.encode()) > 15:
            raise ValueError(f"interface name must be 1..15 bytes, got {name!r}")
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            ifreq = _IFREQ_FLAGS.pack(name.encode(), _IFF_TUN | _IFF_NO_PI)
            answer = fcntl.ioctl(fd, _TUNSETIFF, ifreq)
            # The kernel may have filled in a name from a pattern such as "mvici%d".
            self.name = answer[:16].rstrip(b"\0").decode()
            self.fd = fd
            self.mtu = mtu
            _set_mtu_and_up(self.name, mtu)
        except BaseException:
            os.close(fd)
            raise

    def read(self) -> bytes:
        """One IP packet; raises BlockingIOError when none is queued."""
        return os.read(self.fd, 65535)

    def write(self, packet: bytes) -> None:
        """Hand one IP packet to the kernel as if it arrived on this interface."""
        os.write(self.fd, packet)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _set_mtu_and_up(name: str, mtu: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ctl:
        raw = name.encode()
        fcntl.ioctl(ctl, _SIOCSIFMTU, _IFREQ_INT.pack(raw, mtu))
        flags = _IFREQ_FLAGS.unpack(fcntl.ioctl(ctl, _SIOCGIFFLAGS, _IFREQ_FLAGS.pack(raw, 0)))[1]
        fcntl.ioctl(ctl, _SIOCSIFFLAGS, _IFREQ_FLAGS.pack(raw, flags | _IFF_UP))
