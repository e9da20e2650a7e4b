"""The userspace data plane's packet counters, sampled for the path managers.

Every ``SAMPLE_INTERVAL`` the ESP packets each watched IKE_SA's CHILD_SAs took in
and sent since the last sample go to its path manager (``Mobility.on_traffic``);
when one of them sees a stall, the daemon runs the managers at once so the probe
leaves now. Only IKE_SAs whose paths we choose are watched (a gateway answering
thousands of peers samples nothing), and the work per sample is one counter read
per CHILD_SA of those.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol

SAMPLE_INTERVAL = 0.025
"""Seconds between samples: well below ``stall_timeout``, which the samples resolve."""

PacketsOf = Callable[[str], Iterable[tuple[int, int, int]]]
"""(unique_id, packets in, packets out) of each CHILD_SA of one IKE_SA."""


class TrafficSink(Protocol):
    def watched(self) -> frozenset[str]: ...
    def on_traffic(self, ike_spi: str, inbound: int, outbound: int, now: float) -> bool: ...


class TrafficWatch:
    """Samples counters on a loop timer; ``sample`` is the whole work (tests call it)."""

    def __init__(self, packets_of: PacketsOf, sink: TrafficSink,
                 on_stall: Callable[[], None], interval: float = SAMPLE_INTERVAL,
                 on_error: Callable[[Exception], None] = lambda _exc: None) -> None:
        self._packets_of = packets_of
        self._sink = sink
        self._on_stall = on_stall
        self._on_error = on_error
        self.interval = interval
        self._last: dict[int, tuple[int, int]] = {}
        """Counters at the last sample by CHILD_SA unique_id (only those still there)."""
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def sample(self, now: float) -> bool:
        """Feed every watched IKE_SA its packets since the last sample; True on a stall."""
        seen: dict[int, tuple[int, int]] = {}
        stall = False
        for spi in self._sink.watched():
            inbound = outbound = 0
            for uid, pin, pout in self._packets_of(spi):
                lin, lout = self._last.get(uid, (0, 0))
                # A counter never goes back; a smaller one is a new SA under a reused id.
                inbound += pin - lin if pin >= lin else pin
                outbound += pout - lout if pout >= lout else pout
                seen[uid] = (pin, pout)
            if self._sink.on_traffic(spi, inbound, outbound, now):
                stall = True
        self._last = seen
        if stall:
            self._on_stall()
        return stall

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle = loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._loop = None

    def _tick(self) -> None:
        loop = self._loop
        if loop is None:
            return
        self._handle = loop.call_later(self.interval, self._tick)
        try:
            self.sample(loop.time())
        except Exception as exc:  # never fatal: the next tick samples again
            self._on_error(exc)
