"""ICMP/ICMPv6 echo probes per path, sent from a socket bound to the path's address and uplink.

Raw sockets (we run as root): unprivileged ``SOCK_DGRAM`` ICMP needs
``net.ipv4.ping_group_range``, which is off by default in every new namespace, and
lets the kernel choose the identifier. A raw socket sees every echo reply that
arrives on its device for its address, so replies are matched by identifier,
sequence and a random 16-byte token; strays are dropped and counted.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from ...types import IPAddress, Path
from .bypass import PROBE_FWMARK, apply_socket_bypass
from .outstanding import MAX_OUTSTANDING, Outstanding, Sent
from .wire import (
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    TOKEN_LEN,
    DecodeError,
    IcmpEcho,
    decode_icmp_echo,
    encode_icmp_echo,
)

ReplyCallback = Callable[[int, float], None]
"""Called with (probe_id, rtt in seconds) for every authentic reply."""


@dataclass(slots=True)
class Counters:
    sent: int = 0
    replies: int = 0
    dropped: int = 0
    send_errors: int = 0


@dataclass(slots=True)
class _Sock:
    sock: socket.socket
    family: int


class IcmpProber:
    """Sends echo requests for (path, probe_id) and reports replies to `on_reply`.

    One raw socket per (local address, interface), opened on first use and closed when
    the address leaves the host (``forget_local``). Must be used from a running asyncio
    loop (it registers readers).
    """

    def __init__(self, on_reply: ReplyCallback, *, random_bytes: Callable[[int], bytes],
                 clock: Callable[[], float] = time.monotonic, fwmark: int | None = PROBE_FWMARK,
                 xfrm_bypass: bool = True, max_outstanding: int = MAX_OUTSTANDING,
                 timeout: float = 5.0) -> None:
        self.on_reply = on_reply
        self.random_bytes = random_bytes
        self.clock = clock
        self.fwmark = fwmark
        self.xfrm_bypass = xfrm_bypass
        self.ident = int.from_bytes(random_bytes(2), "big")
        self._seq = 0
        self._outstanding: Outstanding[tuple[int, int]] = Outstanding(max_outstanding, timeout)
        self._socks: dict[tuple[IPAddress, str | None], _Sock] = {}
        self.counters = Counters()

    def send(self, path: Path, probe_id: int, ifname: str | None) -> bool:
        """Send one echo request; False (and counted) when the socket or send fails."""
        try:
            entry = self._socket(path.local.addr, ifname)
        except OSError:
            self.counters.send_errors += 1
            return False
        self._seq = (self._seq + 1) & 0xFFFF
        token = self.random_bytes(TOKEN_LEN)
        v4 = entry.family == socket.AF_INET
        msg = IcmpEcho(type=ICMP_ECHO_REQUEST if v4 else ICMPV6_ECHO_REQUEST,
                       ident=self.ident, seq=self._seq, token=token)
        self._outstanding.add((path.remote.addr.version, self._seq),
                              Sent(probe_id=probe_id, token=token, sent=self.clock()))
        try:
            entry.sock.sendto(encode_icmp_echo(msg), (str(path.remote.addr), 0))
        except OSError:
            self.counters.send_errors += 1
            return False
        self.counters.sent += 1
        return True

    @property
    def open_sockets(self) -> int:
        return len(self._socks)

    def forget_local(self, local: IPAddress) -> int:
        """Close the sockets bound to ``local``, an address that left the host; returns
        how many. Kept, they would add one per address the host ever had (a new lease,
        IPv6 temporary addresses); a later probe from it opens one anew."""
        loop = asyncio.get_running_loop()
        gone = [key for key in self._socks if key[0] == local]
        for key in gone:
            entry = self._socks.pop(key)
            loop.remove_reader(entry.sock.fileno())
            entry.sock.close()
        return len(gone)

    def close(self) -> None:
        loop = asyncio.get_event_loop()
        for entry in self._socks.values():
            loop.remove_reader(entry.sock.fileno())
            entry.sock.close()
        self._socks.clear()

    def _socket(self, local: IPAddress, ifname: str | None) -> _Sock:
        key = (local, ifname)
        entry = self._socks.get(key)
        if entry is not None:
            return entry
        family = socket.AF_INET if local.version == 4 else socket.AF_INET6
        proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
        sock = socket.socket(family, socket.SOCK_RAW, proto)
        try:
            sock.setblocking(False)
            apply_socket_bypass(sock, family=family, ifname=ifname, fwmark=self.fwmark,
                                xfrm_bypass=self.xfrm_bypass)
            sock.bind((str(local), 0))
        except OSError:
            sock.close()
            raise
        entry = _Sock(sock=sock, family=family)
        self._socks[key] = entry
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, entry)
        return entry

    def _readable(self, entry: _Sock) -> None:
        v4 = entry.family == socket.AF_INET
        for _ in range(64):  # bounded work per wakeup
            try:
                data = entry.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._on_packet(data, v4)

    def _on_packet(self, data: bytes, v4: bool) -> None:
        try:
            msg = decode_icmp_echo(data, ipv4_header=v4)
        except DecodeError:
            return
        if msg.type == (ICMP_ECHO_REQUEST if v4 else ICMPV6_ECHO_REQUEST):
            return  # our own request looped back, or someone pinging us
        if msg.type != (ICMP_ECHO_REPLY if v4 else ICMPV6_ECHO_REPLY) or msg.ident != self.ident:
            return
        now = self.clock()
        sent = self._outstanding.pop((4 if v4 else 6, msg.seq), msg.token, now)
        if sent is None:
            self.counters.dropped += 1
            return
        self.counters.replies += 1
        self.on_reply(sent.probe_id, now - sent.sent)
