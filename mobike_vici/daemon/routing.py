"""The native daemon's own routing (net.own_routing), fed by netlink state and core events.

Thin glue: every kernel change goes to ``OuterRouting.follow`` (the uplink tables),
every move of an IKE_SA updates the peer addresses the tunnel's table must throw
back to main, and the routing's own reports come back to the event stream on the
loop's thread. What is installed and removed is said in events
(``routing_installed``, ``uplink_tables``, ``routing_removed``,
``routing_leftovers_removed``, ``route_failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
from collections.abc import Sequence

from ..backends.native import TUNNEL_INTERFACES
from ..config.model import Config
from ..core.events import (
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaMoved,
    IkeSaRekeyed,
    PeerMoved,
)
from ..eventlog import EventLog
from ..net.numbers import (
    MAX_UPLINKS,
    RTPROT_MOBIKE_VICI,
    TUNNEL_PRIORITY,
    TUNNEL_TABLE,
    UPLINK_PRIORITY,
    UPLINK_TABLE_FIRST,
)
from ..net.own_routing import OuterRouting
from ..net.state import NetState
from ..types import IPAddress


class DaemonRouting:
    """One daemon's OuterRouting and the peer addresses of its IKE_SAs."""

    def __init__(self, config: Config, log: EventLog, *,
                 skip: Sequence[str] = TUNNEL_INTERFACES, netns: str | None = None) -> None:
        self._log = log
        self._loop: asyncio.AbstractEventLoop | None = None
        self.owner = OuterRouting(skip=skip, netns=netns, report=self._report)
        self.fwmark = self.owner.fwmark
        self._peers: dict[str, IPAddress] = {}
        self._configured = frozenset(_literal_remotes(config))
        self._refs: dict[IPAddress, int] = dict.fromkeys(self._configured, 1)
        """IKE_SAs per peer address (configured ones hold one more): an address joins
        or leaves the tunnel table's throw routes only when its count leaves or reaches
        0, so an event costs the same whatever the number of SAs."""
        self._closed = False

    def _report(self, name: str, fields: dict[str, object]) -> None:
        """Write the routing's report on the loop's thread (start and close run off it)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(functools.partial(self._log.emit, name, **fields))
                return
        self._log.emit(name, **fields)

    async def start(self) -> None:
        """Clear leftovers of a crashed run and install the tunnel rules. Raises OSError."""
        self._loop = asyncio.get_running_loop()
        removed = await asyncio.to_thread(self.owner.start)
        self.owner.attach(self._loop)
        if removed:
            self._log.emit("routing_leftovers_removed", count=removed)
        self._log.emit("routing_installed", protocol=RTPROT_MOBIKE_VICI, fwmark=hex(self.fwmark),
                       tunnel_table=TUNNEL_TABLE, tunnel_priority=TUNNEL_PRIORITY,
                       uplink_tables=f"{UPLINK_TABLE_FIRST}-{UPLINK_TABLE_FIRST + MAX_UPLINKS - 1}",
                       uplink_priority=UPLINK_PRIORITY)
        self._update_peers()

    async def close(self) -> None:
        """Remove everything of ours (after the kernel answered what was sent). Once."""
        if self._closed:
            return
        self._closed = True
        self.owner.detach()
        removed = await asyncio.to_thread(self.owner.close)
        self._log.emit("routing_removed", count=removed)

    def on_net(self, state: NetState, resynced: bool = False) -> None:
        before = self.owner.plan.tables
        self.owner.follow(state, full=resynced)
        after = self.owner.plan.tables
        if after != before:
            self._log.emit("uplink_tables", tables={state.ifname(i) or str(i): t
                                                    for i, t in sorted(after.items())})

    def on_core_event(self, event: Event) -> None:
        match event:
            case IkeSaEstablished():
                self._set_peer(event.ike_spi, event.path.remote.addr)
            case IkeSaMoved() | PeerMoved():
                self._set_peer(event.ike_spi, event.new_path.remote.addr)
            case IkeSaRekeyed():
                if event.ike_spi in self._peers:
                    # Same address, another name: no route changes.
                    self._peers[event.new_ike_spi] = self._peers.pop(event.ike_spi)
            case IkeSaDeleted():
                self._set_peer(event.ike_spi, None)

    def _set_peer(self, ike_spi: str, addr: IPAddress | None) -> None:
        old = self._peers.pop(ike_spi, None)
        if addr is not None:
            self._peers[ike_spi] = addr
        if old == addr:
            return
        if addr is not None:
            self._refs[addr] = self._refs.get(addr, 0) + 1
            if self._refs[addr] == 1:
                self.owner.exclude_peer(addr, True)
        if old is not None:
            self._refs[old] -= 1
            if self._refs[old] == 0:
                del self._refs[old]
                self.owner.exclude_peer(old, False)

    def _update_peers(self) -> None:
        """The whole set at once (start-up)."""
        self.owner.exclude_peers(self._refs.keys())


def _literal_remotes(config: Config) -> list[IPAddress]:
    """The connections' remote_addrs that are plain addresses (not %any, names, ranges)."""
    out = []
    for conn in config.connections:
        for text in conn.remote_addrs:
            with contextlib.suppress(ValueError):
                out.append(ipaddress.ip_address(text))
    return out
