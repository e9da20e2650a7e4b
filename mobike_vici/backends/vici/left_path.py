"""The path each move of charon leaves: its source pinned to its uplink until the
CHILD_SAs followed (``net.source_pins``).

The move's host route to the peer takes every packet to it, the ESP charon still sends
from the old address included, out of the target's uplink. charon on kernel-libipsec
cannot move a CHILD_SA in place: the peer rekeys it after the MOBIKE update, and until
that is done both ends send its ESP on the old path. So the old source is pinned when
the move's routes go in, and released when ESP travels the new path both ways (the
rekeyed CHILD_SA is in place at both ends), when the IKE_SA goes, when a later move takes
over, or after ``LEFT_PATH_HOLD``; ``left_path_released`` says which.

The peer's ESP alone does not show it: as the rekey's responder charon installs the new
CHILD_SA's outbound half only when the peer's DELETE of the old one comes, and sends on
the old one from the old source until then (soak, a `loss` fault: the gateway's DELETE
lost, its ESP on the new path at once, the pin released, and our ESP from the old source
dropped for 3.9 s, until the DELETE's retransmission).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol

from pyroute2 import IPRoute

from ...eventlog import EventLog
from ...net.source_pins import SourcePins
from ...types import IPAddress, Path
from .events import IkeSaInfo

LEFT_PATH_HOLD = 12.0
"""Seconds at most a pin stays after the move. A lost message of the peer's rekey costs
its retransmission: 4 s by charon's default, then 7 s more."""
LEFT_PATH_POLL = 0.1


class _Watch(Protocol):
    def last_inbound(self, spi: str) -> float | None: ...
    def last_outbound(self, spi: str) -> float | None: ...


class Host(Protocol):
    """What it needs of ``ViciMobility``."""

    @property
    def log(self) -> EventLog: ...
    @property
    def sas(self) -> Mapping[str, Any]: ...
    @property
    def data_plane(self) -> _Watch: ...

    async def executor(self, fn: Any, *args: Any, **kwargs: Any) -> Any: ...
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...


class _Left:
    """One pin: the move's IKE_SA, the old source, the peer address."""

    def __init__(self, ike_spi: str, src: IPAddress, peer: IPAddress) -> None:
        self.ike_spi, self.src, self.peer = ike_spi, src, peer


class LeftPaths:
    """One pin per connection at most: the path its current (or last) move left."""

    def __init__(self, host: Host, lock: asyncio.Lock) -> None:
        self.host = host
        self.lock = lock  # the steering lock: pins change only beside the move's routes
        self._pins: SourcePins | None = None
        self._left: dict[str, _Left] = {}

    async def open(self, ipr: IPRoute) -> None:
        """On the steering's netlink socket; what a crashed run left is removed."""
        self._pins = SourcePins(ipr)
        await self.host.executor(self._pins.clear)

    async def close(self) -> int:
        """Remove every pin (before the steering closes its socket); how many."""
        if self._pins is None:
            return 0
        removed: int = await self.host.executor(self._pins.clear)
        return removed

    async def pin(self, info: IkeSaInfo, where: Path,
                  out: tuple[str, IPAddress | None] | None) -> None:
        """Under the lock, as the move's routes go in: pin ``where``'s source to its
        uplink ``out`` (device, next hop), an earlier move's pin of the connection
        removed; nothing when that uplink is gone."""
        await self.unpin(info.conn)
        if out is None or self._pins is None:
            return
        try:
            pinned = await self.host.executor(self._pins.pin, where.local.addr,
                                              where.remote.addr, via=out[1], dev=out[0])
        except (OSError, LookupError, ValueError):
            return  # its link is down (a failover): nothing left to keep there
        if pinned:
            self._left[info.conn] = _Left(info.ike_spi, where.local.addr, where.remote.addr)

    async def unpin(self, conn: str) -> None:
        """Under the lock."""
        left = self._left.pop(conn, None)
        if left is None or self._pins is None:
            return
        try:
            await self.host.executor(self._pins.unpin, left.src, left.peer)
        except OSError as exc:
            self.host.log.emit("steer_failed", conn=conn, local=str(left.src),
                               remote=str(left.peer), error=str(exc))

    async def locked_unpin(self, conn: str) -> None:
        async with self.lock:
            await self.unpin(conn)

    def hold(self, conn: str) -> None:
        """The move is over (landed, failed, dropped): the pin stays until the CHILD_SAs
        followed, or charon's path (where it stayed) carries ESP both ways."""
        left = self._left.get(conn)
        if left is not None:
            self.host.spawn(self._release(conn, left))

    async def _release(self, conn: str, left: _Left) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        why = "bound"
        while loop.time() < start + LEFT_PATH_HOLD:
            if self._left.get(conn) is not left:
                return  # a later move took it over, or an escalation released it
            if left.ike_spi not in self.host.sas:
                why = "ike_sa_gone"
                break
            plane = self.host.data_plane
            if plane.last_inbound(left.ike_spi) is not None \
                    and plane.last_outbound(left.ike_spi) is not None:
                why = "esp_on_new_path"
                break
            await asyncio.sleep(LEFT_PATH_POLL)
        async with self.lock:
            if self._left.get(conn) is not left:
                return
            await self.unpin(conn)
        self.host.log.emit("left_path_released", conn=conn, ike_spi=left.ike_spi,
                           local=str(left.src), remote=str(left.peer), reason=why,
                           after_ms=round((loop.time() - start) * 1000, 1))
