"""The native daemon's view of the kernel: the netlink monitor's changes go to the path
managers (the link hint first, then the whole usable address set) and, after the
handover's packets are out, to our uplink tables."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from ..backends.native import Mobility
from ..eventlog import EventLog
from ..net.events import LinkDown, LinkRemoved, LinkUp, NetEvent, Resynced, RouteChanged
from ..net.monitor import NetlinkMonitor
from ..net.state import usable_addresses
from .native_api import netlink_rcvbuf
from .routing import DaemonRouting


class NetFollow:
    """``changed`` is called after the managers heard a change (the daemon pumps them)."""

    def __init__(self, log: EventLog, mobility: Mobility | None,
                 routing: DaemonRouting | None, changed: Callable[[], None],
                 now: Callable[[], float]) -> None:
        self.log = log
        self.mobility = mobility
        self.routing = routing
        self._changed = changed
        self._now = now
        self.monitor: NetlinkMonitor | None = None

    async def start(self) -> None:
        # Set before start(): the initial dump's events arrive during start().
        rcvbuf = netlink_rcvbuf(os.environ)
        self.monitor = (NetlinkMonitor(on_event=self.on_event) if rcvbuf is None else
                        NetlinkMonitor(on_event=self.on_event, rcvbuf=rcvbuf))
        try:
            await self.monitor.start()
        except OSError as exc:
            self.monitor = None
            self.log.emit("net_monitor_unavailable",
                          error=errno.errorcode.get(exc.errno or 0, str(exc)))

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None

    def on_event(self, event: NetEvent) -> None:
        """A kernel change: the link hint first, then the whole usable address set."""
        mobility, monitor = self.mobility, self.monitor
        if mobility is None:
            self._follow(event)
            return
        now = self._now()
        try:
            if isinstance(event, LinkDown | LinkRemoved):
                mobility.on_link(event.ifname, False, now)
            elif isinstance(event, LinkUp):
                mobility.on_link(event.ifname, True, now)
            elif isinstance(event, RouteChanged):
                mobility.on_route_changed(now)
            state = monitor.state if monitor is not None else None
            if state is not None:
                mobility.on_addresses(usable_addresses(state), now)
        except Exception as exc:
            self.log.emit("engine_error", call="mobility_net", error=type(exc).__name__)
        self._changed()
        self._follow(event)

    def _follow(self, event: NetEvent) -> None:
        """Our uplink tables follow the kernel, after the handover's packets are out."""
        if self.routing is not None and self.monitor is not None:
            try:
                self.routing.on_net(self.monitor.state, isinstance(event, Resynced))
            except Exception as exc:
                self.log.emit("engine_error", call="routing_net", error=type(exc).__name__)
