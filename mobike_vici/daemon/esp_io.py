"""The userspace data plane's I/O: the TUN device, ESP on UDP 4500 and on raw IP protocol 50,
routes for the CHILD_SAs, and the core events that drive them.

Thin like the rest of the daemon: read, hand to :class:`~mobike_vici.esp.dataplane.DataPlane`,
write or send what it returns. An outbound packet is protected and addressed
in one step with the SA's current outer path, so after a move nothing leaves
on the old path, and a packet no CHILD_SA covers is dropped, never sent in
clear (it came in through the TUN, so it cannot leave any other way).

Plain ESP (no UDP) is used when the CHILD_SA is not encapsulated; inbound
ESP is accepted either way, since charon's kernel-libipsec always
encapsulates whatever it negotiated.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..config.model import ChildConfig, Config
from ..core.events import (
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaUpdated,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaRekeyed,
)
from ..esp.dataplane import ChildEntry, DataPlane, Limits, RequestKind, limits_of
from ..esp.replay import DEFAULT_WINDOW
from ..esp.selector import Selector
from ..esp.tun import DEFAULT_MTU, DEFAULT_NAME, TunDevice
from ..eventlog import EventLog
from ..net import tun_routes
from ..types import NATT_PORT, IPAddress, Path
from . import udp

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
JsonObject = dict[str, object]

DROP_REPORT_INTERVAL = 1.0
"""Inbound ESP drops are summed into one ``packet_dropped`` event per reason at most this often."""

TUN_BATCH = 256
"""Packets read from the TUN (or the raw socket) per wakeup, so one side cannot starve the rest."""

SOCKET_BUFFER = 4 << 20
"""Receive/send buffer asked for on the data sockets: bursts of a TCP window must fit."""

_IPPROTO_ESP = 50


class Host(Protocol):
    """What the adapter needs of the daemon."""

    log: EventLog
    natt_port: int

    def natt_socket(self, family: socket.AddressFamily) -> socket.socket | None: ...
    def child_request(self, kind: RequestKind, unique_id: int) -> None: ...


Sender = Callable[[bytes], None]


class UserspaceEsp:
    """One TUN device and the raw ESP sockets of a daemon, around one :class:`DataPlane`."""

    def __init__(self, config: Config, *, tun_name: str = DEFAULT_NAME, mtu: int = DEFAULT_MTU,
                 random_bytes: Callable[[int], bytes] = os.urandom,
                 manage_routes: bool = True, fwmark: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` must be the event loop's (asyncio's default loop uses time.monotonic).
        ``fwmark`` marks the raw ESP sockets, as the daemon marks its UDP ones (net.numbers)."""
        self.config = config
        self.plane = DataPlane(random_bytes)
        self.tun_name = tun_name
        self.mtu = mtu
        self.manage_routes = manage_routes
        self.fwmark = fwmark
        self._clock = clock
        self.tun: TunDevice | None = None
        self.tun_write_failures = 0
        self.send_failures = 0
        self._host: Host | None = None
        self._raw: dict[socket.AddressFamily, socket.socket] = {}
        self._senders: dict[int, tuple[Path, bool, Sender]] = {}
        self._routes: dict[Network, set[int]] = {}
        self._route_src: dict[Network, IPAddress | None] = {}
        """The source address each route was added with."""
        self._vips: dict[str, tuple[IPAddress, ...]] = {}
        self._drops_reported: dict[str, int] = {}
        self._drop_timer: Any = None

    # --- lifecycle -----------------------------------------------------------------

    def open(self, host: Host) -> None:
        """Create the TUN device and the raw ESP sockets, and start reading them."""
        import asyncio

        loop = asyncio.get_running_loop()
        self._host = host
        self.tun = TunDevice(self.tun_name, self.mtu)
        self.tun_name = self.tun.name
        loop.add_reader(self.tun.fd, self._on_tun)
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                raw = socket.socket(family, socket.SOCK_RAW, _IPPROTO_ESP)
            except OSError:
                continue  # e.g. IPv6 disabled: plain ESP only where the family exists
            raw.setblocking(False)
            if self.fwmark is not None:
                raw.setsockopt(socket.SOL_SOCKET, udp.SO_MARK, self.fwmark)
            with contextlib.suppress(OSError):
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    raw.setsockopt(socket.IPPROTO_IPV6, udp.IPV6_RECVPKTINFO, 1)
            self._raw[family] = raw
            loop.add_reader(raw.fileno(), self._on_raw, raw, family)
        for family in (socket.AF_INET, socket.AF_INET6):
            sock = host.natt_socket(family)
            if sock is not None:
                for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        host.log.emit("tun_opened", ifname=self.tun_name, mtu=self.mtu)
        self._drop_timer = loop.call_later(DROP_REPORT_INTERVAL, self._report_drops)

    def _report_drops(self) -> None:
        """One ``packet_dropped`` per reason with the count since the last report: ESP drops
        come at packet rates, one event each would flood the stream."""
        import asyncio

        self.report_drops()
        self._drop_timer = asyncio.get_running_loop().call_later(DROP_REPORT_INTERVAL,
                                                                 self._report_drops)

    def report_drops(self) -> None:
        if self._host is None:
            return
        for reason, total in self.plane.drops.items():
            new = total - self._drops_reported.get(reason, 0)
            if new > 0:
                self._host.log.emit("packet_dropped", protocol="esp", reason=reason, count=new)
                self._drops_reported[reason] = total

    def close(self) -> None:
        import asyncio

        if self._drop_timer is not None:
            self._drop_timer.cancel()
            self._drop_timer = None

        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        for raw in self._raw.values():
            if loop is not None:
                loop.remove_reader(raw.fileno())
            raw.close()
        self._raw.clear()
        if self.tun is not None:
            if loop is not None:
                loop.remove_reader(self.tun.fd)
            self.tun.close()  # the kernel removes the device and its routes with it
            self.tun = None

    # --- packets -----------------------------------------------------------------------

    def _on_tun(self) -> None:
        tun = self.tun
        if tun is None:
            return
        protect = self.plane.protect
        senders = self._senders
        for _ in range(TUN_BATCH):
            try:
                inner = os.read(tun.fd, 65535)
            except BlockingIOError:
                break
            except OSError:
                break
            done = protect(inner)
            if done is None:
                continue
            entry, esp = done
            cached = senders.get(entry.unique_id)
            if cached is None or cached[0] is not entry.path or cached[1] != entry.encap:
                send = self._sender(entry)
            else:
                send = cached[2]
            try:
                send(esp)
            except OSError:
                # Full socket buffer or a path that just went away: TCP will resend.
                self.send_failures += 1
        self._requests()

    def _sender(self, entry: ChildEntry) -> Sender:
        """How to send on ``entry``'s current path; rebuilt whenever the path or encap changes."""
        host = self._host
        assert host is not None
        path, encap = entry.path, entry.encap
        local, remote = path.local, path.remote
        v6 = isinstance(remote.addr, ipaddress.IPv6Address)
        family = socket.AF_INET6 if v6 else socket.AF_INET
        ancillary = udp._pktinfo(local.addr)
        target: tuple[object, ...]
        if encap:
            sock = host.natt_socket(family)
            port = remote.port if local.port == host.natt_port else NATT_PORT
            target = (str(remote.addr), port, 0, 0) if v6 else (str(remote.addr), port)
        else:
            sock = self._raw.get(family)
            target = (str(remote.addr), 0, 0, 0) if v6 else (str(remote.addr), 0)
        if sock is None:
            def drop(esp: bytes) -> None:
                raise OSError("no socket for this path")
            send: Sender = drop
        else:
            sendmsg = sock.sendmsg

            def send(esp: bytes) -> None:
                sendmsg([esp], ancillary, 0, target)
        tcp = getattr(host, "tcp", None)
        if tcp is not None:
            send = _over_tcp(tcp.send_esp, path, entry, send)
        self._senders[entry.unique_id] = (path, encap, send)
        return send

    def receive_udp(self, data: bytes, path: Path, now: float) -> None:
        """The daemon's ``esp_handler``: one ESP packet from UDP 4500."""
        self._inbound(data, now)

    def receive_esp(self, data: bytes, now: float) -> None:
        """One ESP packet from UDP 4500, outer addresses not looked at (the fast path)."""
        self._inbound(data, now)

    def _inbound(self, data: bytes, now: float) -> None:
        plane = self.plane
        _entry, inner = plane.unprotect(data, now)
        if inner is not None and self.tun is not None:
            try:
                os.write(self.tun.fd, inner)
            except OSError:
                self.tun_write_failures += 1
        if plane.has_requests:
            self._requests()

    def _on_raw(self, raw: socket.socket, family: socket.AddressFamily) -> None:
        now = self._now()
        for _ in range(TUN_BATCH):
            try:
                data = raw.recv(65535)
            except BlockingIOError:
                break
            except OSError:
                break
            if family == socket.AF_INET:
                # IPv4 raw sockets hand over the IP header too; IPv6 ones do not.
                if len(data) < 20:
                    continue
                data = data[(data[0] & 0x0F) * 4:]
            self._inbound(data, now)
        self._requests()

    def _now(self) -> float:
        return self._clock()

    def _requests(self) -> None:
        if self.plane.has_requests and self._host is not None:
            for request in self.plane.take_requests():
                self._host.child_request(request.kind, request.unique_id)

    # --- events ------------------------------------------------------------------------

    def on_event(self, event: Event) -> Mapping[str, object]:
        """Follow one core event; returns extra fields for its line in the event stream."""
        if isinstance(event, ChildSaInstalled):
            self._installed(event)
        elif isinstance(event, ChildSaUpdated):
            # The only way a CHILD_SA's ESP changes path: the core says it moved, which
            # under return routability is after the peer answered there (RFC 4555 §3.7).
            self.plane.move_child(event.unique_id, event.path, event.encap)
        elif isinstance(event, ChildSaDeleted):
            entry = self.plane.remove(event.unique_id, self._now())
            self._senders.pop(event.unique_id, None)
            if entry is not None:
                self._unroute(entry)
                return entry.counters()
        elif isinstance(event, IkeSaEstablished):
            if event.initiator and event.virtual_ips:
                self._vips[event.ike_spi] = event.virtual_ips
                for vip in event.virtual_ips:
                    self._net("add_address", self.tun_name, vip)
        elif isinstance(event, IkeSaRekeyed):
            self.plane.reparent(event.ike_spi, event.new_ike_spi)
            if event.ike_spi in self._vips:
                self._vips[event.new_ike_spi] = self._vips.pop(event.ike_spi)
        elif isinstance(event, IkeSaDeleted):
            for vip in self._vips.pop(event.ike_spi, ()):
                self._net("del_address", self.tun_name, vip)
        return {}

    def packets_of(self, ike_spi: str) -> list[tuple[int, int, int]]:
        """Packet counters of one IKE_SA's CHILD_SAs (``daemon.traffic``)."""
        return self.plane.packets_of(ike_spi)

    def counters(self) -> dict[int, dict[str, int]]:
        return {e.unique_id: e.counters() for e in self.plane.entries()}

    def totals(self) -> JsonObject:
        return {
            "unknown_spi": self.plane.unknown_spi,
            "no_policy": self.plane.no_policy,
            "dropped_out": self.plane.dropped_out,
            "send_failures": self.send_failures,
            "tun_write_failures": self.tun_write_failures,
        }

    def _child_config(self, conn: str, child: str) -> ChildConfig | None:
        for c in self.config.connections:
            if c.name == conn:
                for ch in c.children:
                    if ch.name == child:
                        return ch
        return None

    def _installed(self, event: ChildSaInstalled) -> None:
        known = self.plane.get(event.unique_id) is not None
        config = self._child_config(event.conn, event.child)
        limits = limits_of(config) if config is not None else Limits()
        window = config.replay_window if config is not None else DEFAULT_WINDOW
        entry = self.plane.install(event, limits, window)
        if not known:
            self._route(entry)

    def _route(self, entry: ChildEntry) -> None:
        if not self.manage_routes:
            return
        # A selector that covers the peer needs nothing more here: the outer packets are
        # marked and skip the tunnel's table (net.own_routing).
        sources: dict[int, IPAddress | None] = {}
        vips = self._vips.get(entry.ike_spi, ())
        for sel in entry.remote_ts:
            for net in _networks(sel):
                users = self._routes.setdefault(net, set())
                # One route per remote selector, shared by the CHILD_SAs behind it: the
                # source lookup (a netlink dump) only when a route is really added, or when
                # a new IKE_SA brings its own virtual IP (a redirect's, RFC 5685): the
                # newest carries the traffic, and the old address goes with the old SA
                # (the kernel drops a route whose source is deleted).
                if not users or (vips and self._route_src.get(net) not in vips):
                    if net.version not in sources:
                        sources[net.version] = self._inner_source(entry, net.version)
                    src = sources[net.version]
                    self._net("replace_route", net, self.tun_name, src)
                    self._route_src[net] = src
                users.add(entry.unique_id)

    def _unroute(self, entry: ChildEntry) -> None:
        if not self.manage_routes:
            return
        for sel in entry.remote_ts:
            for net in _networks(sel):
                users = self._routes.get(net)
                if users is None:
                    continue
                users.discard(entry.unique_id)
                if not users:
                    del self._routes[net]
                    self._route_src.pop(net, None)
                    self._net("del_route", net, self.tun_name)

    def _inner_source(self, entry: ChildEntry, version: int) -> IPAddress | None:
        """Our address of IP ``version`` inside the local selectors: a virtual IP, else one
        on some interface (a route's preferred source must be of the route's family)."""
        candidates = list(self._vips.get(entry.ike_spi, ()))
        with contextlib.suppress(OSError):
            candidates += tun_routes.local_addresses()
        for addr in candidates:
            if addr.version != version or addr.is_loopback or addr.is_link_local:
                continue  # the kernel refuses those as the source of a routed prefix
            value = int(addr)
            if any(s.version == addr.version and s.lo <= value <= s.hi for s in entry.local_ts):
                return addr
        return None

    def _net(self, what: str, *args: object) -> None:
        """One call into net/tun_routes; a failure is logged, never fatal for the daemon."""
        try:
            getattr(tun_routes, what)(*args)
        except Exception as exc:
            if self._host is not None:
                self._host.log.emit("route_failed", call=what, error=type(exc).__name__,
                                    detail=str(exc)[:200])


def _networks(sel: Selector) -> list[Network]:
    """The CIDR blocks that cover a selector's address range (routes need prefixes)."""
    if sel.version == 4:
        first4, last4 = ipaddress.IPv4Address(sel.lo), ipaddress.IPv4Address(sel.hi)
        return list(ipaddress.summarize_address_range(first4, last4))
    first6, last6 = ipaddress.IPv6Address(sel.lo), ipaddress.IPv6Address(sel.hi)
    return list(ipaddress.summarize_address_range(first6, last6))


def _over_tcp(send_tcp: Callable[[Path, bytes, str], bool], path: Path, entry: ChildEntry,
              send_udp: Sender) -> Sender:
    """A sender that asks the TCP transport first, per packet: a path may move to a
    stream (RFC 9329 fallback) and back without the SA changing. The stream is that of
    the IKE_SA owning the CHILD_SA, read each time (a rekey reparents the CHILD_SA)."""
    def send(esp: bytes) -> None:
        if not send_tcp(path, esp, entry.ike_spi):
            send_udp(esp)
    return send
