"""The native daemon's view of the kernel: the netlink monitor's changes go to the path
managers (the link hint first, then the whole usable address set) and, after the
handover's packets are out, to our uplink tables.

A link that comes back brings a burst of messages (the link, its addresses, its
routes), read in one go. Each hint reaches the managers at once; the rest (the
address set, a pump of the managers, the uplink tables) runs once after the burst,
on the final state, not once per message: per message it held the loop, and the
userspace tunnel's packets with it, for several milliseconds per burst.

A burst that only took things away (a link down, an address gone) leaves the tables
for ``FOLLOW_AFTER_LOSS``: the kernel flushed the dead uplink's routes itself, a rule
left over a moment matches nothing, and following at once held the loop for a few
milliseconds right when the handover's answer and the first ESP on the new path
come back."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable

from ..backends.native import Mobility
from ..eventlog import EventLog
from ..net.events import (
    AddressAdded,
    LinkDown,
    LinkRemoved,
    LinkUp,
    NetEvent,
    Resynced,
    RouteChanged,
)
from ..net.monitor import NetlinkMonitor
from ..net.state import usable_addresses
from .native_api import netlink_rcvbuf
from .routing import DaemonRouting

FOLLOW_AFTER_LOSS = 0.1
"""Seconds the uplink tables wait after a burst that added nothing (see above)."""


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
        self._settle: asyncio.Handle | None = None
        self._full = False  # a Resynced since the last settle: re-install every entry
        self._gained = False  # the burst brought something (a link, address or route)
        self._later: asyncio.TimerHandle | None = None  # a follow put off after a loss

    async def start(self) -> None:
        # Set before start(): the initial dump's events arrive during start().
        rcvbuf = netlink_rcvbuf(os.environ)
        self.monitor = (NetlinkMonitor(on_event=self.on_event) if rcvbuf is None else
                        NetlinkMonitor(on_event=self.on_event, rcvbuf=rcvbuf))
        try:
            await self.monitor.start()
            self._settle_now()  # the initial state is in place before start() returns
        except OSError as exc:
            self.monitor = None
            self.log.emit("net_monitor_unavailable",
                          error=errno.errorcode.get(exc.errno or 0, str(exc)))

    def close(self) -> None:
        if self._settle is not None:
            self._settle.cancel()
            self._settle = None
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None

    def on_event(self, event: NetEvent) -> None:
        """A kernel change: the link hint now, the rest once the burst is read."""
        self._full |= isinstance(event, Resynced)
        self._gained |= isinstance(event, LinkUp | AddressAdded | Resynced) or (
            isinstance(event, RouteChanged) and event.added)
        mobility = self.mobility
        if mobility is not None:
            now = self._now()
            try:
                if isinstance(event, LinkDown | LinkRemoved):
                    mobility.on_link(event.ifname, False, now)
                elif isinstance(event, LinkUp):
                    mobility.on_link(event.ifname, True, now)
                elif isinstance(event, RouteChanged):
                    mobility.on_route_changed(now)
            except Exception as exc:
                self.log.emit("engine_error", call="mobility_net", error=type(exc).__name__)
        if self._settle is None:
            self._settle = asyncio.get_running_loop().call_soon(self._settle_now)

    def _settle_now(self) -> None:
        """The whole usable address set to the managers, a pump, then our uplink tables."""
        if self._settle is not None:
            self._settle.cancel()
            self._settle = None
        full, self._full = self._full, False
        gained, self._gained = self._gained, False
        mobility, monitor = self.mobility, self.monitor
        if monitor is None:
            return
        if mobility is not None:
            try:
                mobility.on_addresses(usable_addresses(monitor.state), self._now())
            except Exception as exc:
                self.log.emit("engine_error", call="mobility_net", error=type(exc).__name__)
            self._changed()
        if gained or full:
            self._follow(full)
        elif self._later is None:
            self._later = asyncio.get_running_loop().call_later(
                FOLLOW_AFTER_LOSS, self._follow, False)

    def _follow(self, full: bool) -> None:
        """Our uplink tables follow the kernel, after the handover's packets are out."""
        if self._later is not None:
            self._later.cancel()  # this follow, on the latest state, covers it
            self._later = None
        if self.routing is not None and self.monitor is not None:
            try:
                self.routing.on_net(self.monitor.state, full)
            except Exception as exc:
                self.log.emit("engine_error", call="routing_net", error=type(exc).__name__)
