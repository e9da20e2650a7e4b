"""Data-plane stall detection on the active path, sans I/O.

The backend samples the ESP packet counters of an IKE_SA's CHILD_SAs and reports
what came in and went out since the last sample (``on_traffic``). When outbound
packets keep leaving and nothing has come in for longer than a few smoothed RTTs
(``stall_timeout`` at least), the path may be dead: the path manager probes it at
once, with the short ``stall_probe_timeout``, instead of waiting for the next
scheduled probe. Only unanswered probes ever make a path down.

A peer that is merely quiet (one-way traffic) answers those probes; each probe it
answers with still nothing in between doubles the silence needed for the next
stall, up to ``probe_interval``, so one-way traffic costs about as many probes as
an idle tunnel (one per ``probe_interval``). Any inbound packet resets it.
"""

from __future__ import annotations

from dataclasses import dataclass

STALL_RTTS = 4
"""Silence needed before a stall, in smoothed RTTs of the path (when above the floor)."""
MAX_BACKOFF = 8
"""Doublings of the silence threshold kept at most (the cap applies long before)."""


@dataclass(slots=True)
class StallWatch:
    """Inbound silence with outbound traffic on one path (the active one)."""

    floor: float
    """The least silence that makes a stall (``stall_timeout``)."""
    cap: float
    """The silence needed never grows beyond this (``probe_interval``)."""
    first_out: float | None = None
    """First sample with outbound packets since the last sign of life; None: none yet."""
    last_out: float | None = None
    stalled: bool = False
    """A stall was seen and no sign of life came since."""
    backoff: int = 0
    """Stall probes answered in a row with no inbound packet between them."""

    def threshold(self, srtt: float | None) -> float:
        base = max(self.floor, STALL_RTTS * srtt) if srtt is not None else self.floor
        return max(base, min(base * (1 << self.backoff), self.cap))

    def deadline(self, srtt: float | None) -> float | None:
        """When the silence becomes a stall if nothing comes in (None: no traffic out)."""
        if self.stalled or self.first_out is None:
            return None
        return self.first_out + self.threshold(srtt)

    def on_traffic(self, inbound: int, outbound: int, now: float,
                   srtt: float | None) -> bool:
        """Packets since the last sample; True when this sample starts a stall."""
        if inbound > 0:
            self.first_out = self.last_out = None
            self.stalled = False
            self.backoff = 0
            return False
        if outbound <= 0:
            return False
        if self.first_out is None:
            self.first_out = now
        self.last_out = now
        if self.stalled or now < self.first_out + self.threshold(srtt):
            return False
        # Outbound must still be flowing: more than the one sample that opened the window.
        if self.last_out <= self.first_out:
            return False
        self.stalled = True
        return True

    def on_alive(self) -> None:
        """An authenticated answer on the path: the silence so far is explained."""
        if self.stalled:
            self.backoff = min(self.backoff + 1, MAX_BACKOFF)
        self.stalled = False
        self.first_out = self.last_out = None

    def reset(self) -> None:
        """A new active path: nothing is known about its traffic yet."""
        self.first_out = self.last_out = None
        self.stalled = False
        self.backoff = 0
