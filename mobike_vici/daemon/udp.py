"""UDP sockets that know both ends of every datagram: wildcard-bound, with packet info.

A daemon bound to the wildcard must still learn which local address a datagram
arrived on (the IKE_SA's path) and must send from a chosen local address (MOBIKE
moves between them). IP_PKTINFO / IPV6_PKTINFO give both, on one socket per
family and port, without binding to each address as it comes and goes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from typing import Any

from ..types import Endpoint, IPAddress

# Linux's value; Python's socket module does not export IP_PKTINFO.
IP_PKTINFO: int = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO: int = socket.IPV6_RECVPKTINFO
IPV6_PKTINFO: int = socket.IPV6_PKTINFO
SO_MARK: int = getattr(socket, "SO_MARK", 36)

MAX_DATAGRAM = 65535
_ANCILLARY_SPACE = socket.CMSG_SPACE(64)

_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst, addr (header destination)
_IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex


def open_udp(family: socket.AddressFamily, addr: str, port: int,
             fwmark: int | None = None) -> socket.socket:
    """A non-blocking UDP socket bound to ``addr``:``port`` that reports local addresses;
    with ``fwmark``, everything it sends carries that mark (needs CAP_NET_ADMIN)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if fwmark is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
        if family == socket.AF_INET6:
            # One socket per family: without V6ONLY the v6 socket would also take v4.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.setblocking(False)
        sock.bind((addr, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _local_from_ancillary(
    ancdata: list[tuple[int, int, bytes]], fallback: IPAddress
) -> IPAddress:
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            _ifindex, _spec_dst, dst = _IN_PKTINFO.unpack_from(data)
            return ipaddress.IPv4Address(dst)
        if (
            level == socket.IPPROTO_IPV6
            and kind == IPV6_PKTINFO
            and len(data) >= _IN6_PKTINFO.size
        ):
            dst6, _ifindex6 = _IN6_PKTINFO.unpack_from(data)
            return ipaddress.IPv6Address(dst6)
    return fallback


def receive_raw(sock: socket.socket) -> tuple[bytes, list[tuple[int, int, bytes]], Any]:
    """One datagram with its ancillary data and sender, nothing parsed yet (the ESP fast
    path looks at the first bytes before paying for addresses). Raises BlockingIOError."""
    data, ancdata, _flags, peer = sock.recvmsg(MAX_DATAGRAM, _ANCILLARY_SPACE)
    return data, ancdata, peer


def endpoints(sock: socket.socket, ancdata: list[tuple[int, int, bytes]],
              peer: Any) -> tuple[Endpoint, Endpoint]:
    """(local, remote) of a datagram from :func:`receive_raw`."""
    bound_addr, bound_port = sock.getsockname()[:2]
    local_addr = _local_from_ancillary(ancdata, ipaddress.ip_address(bound_addr))
    return Endpoint(local_addr, bound_port), Endpoint(ipaddress.ip_address(peer[0]), peer[1])


def receive(sock: socket.socket) -> tuple[bytes, Endpoint, Endpoint]:
    """One datagram as (data, local, remote). Raises BlockingIOError when none is queued."""
    data, ancdata, _flags, peer = sock.recvmsg(MAX_DATAGRAM, _ANCILLARY_SPACE)
    bound_addr, bound_port = sock.getsockname()[:2]
    local_addr = _local_from_ancillary(ancdata, ipaddress.ip_address(bound_addr))
    remote = Endpoint(ipaddress.ip_address(peer[0]), peer[1])
    return data, Endpoint(local_addr, bound_port), remote


def _pktinfo(local: IPAddress) -> list[tuple[int, int, bytes]]:
    if local.is_unspecified:
        return []  # let the kernel pick the source address
    if isinstance(local, ipaddress.IPv4Address):
        return [(socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, local.packed, bytes(4)))]
    ifindex = 0
    if local.scope_id:
        with contextlib.suppress(OSError):
            ifindex = socket.if_nametoindex(local.scope_id)
    plain = ipaddress.IPv6Address(local.packed)
    return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, _IN6_PKTINFO.pack(plain.packed, ifindex))]


def send(sock: socket.socket, data: bytes, local: IPAddress, remote: Endpoint) -> None:
    """Send ``data`` to ``remote`` with source address ``local``. Raises OSError."""
    if isinstance(remote.addr, ipaddress.IPv6Address):
        scope = 0
        if remote.addr.scope_id:
            with contextlib.suppress(OSError):
                scope = socket.if_nametoindex(remote.addr.scope_id)
        target: tuple[object, ...] = (
            str(ipaddress.IPv6Address(remote.addr.packed)), remote.port, 0, scope
        )
    else:
        target = (str(remote.addr), remote.port)
    sock.sendmsg([data], _pktinfo(local), 0, target)


def source_address(remote: IPAddress, port: int = 500,
                   fwmark: int | None = None) -> IPAddress | None:
    """The kernel's choice of source address toward ``remote``, or None without a route.

    A connect() on a UDP socket does the route lookup and sends nothing. With
    ``fwmark`` (the mark of the daemon's sockets) the lookup is the one the first
    packet will meet, so a tunnel's routes cannot hand us our own virtual IP.
    """
    family = socket.AF_INET6 if isinstance(remote, ipaddress.IPv6Address) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            if fwmark is not None:
                probe.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
            probe.connect((str(remote), port))
            addr = probe.getsockname()[0]
        found = ipaddress.ip_address(addr)
    except (OSError, ValueError):
        return None
    return None if found.is_unspecified else found
