"""The data-plane watch of one IKE_SA, sans I/O: inbound ESP stalls and move verification.

A backend tells it when ESP from the peer arrives on the active path (``on_inbound``)
and when ESP to the peer leaves by it (``on_outbound``); after every input it drains
``probes_due(now)`` and ``next_event()`` and re-arms the one timer of ``get_timer()``.

Detection: when outbound ESP keeps leaving and nothing has come back for
``stall_rtts`` smoothed RTTs (at least ``stall_floor``), the active path is suspect
(``InboundStalled``) and a short burst of probes goes out at once; when every probe of
the burst goes unanswered and no ESP came back meanwhile, the path is dead
(``ActivePathDead``). A silence is suspected once (it re-arms with the next inbound
packet) and bursts are at least ``rearm_gap`` apart, so a peer that is merely quiet
(idle, or one-way traffic) costs at most one burst per inbound packet, and the move
itself stays with the path manager and its damping: a burst only says "down".

Verification: after the SA landed on a new path (``on_moved``), the move is complete
when ESP from the peer arrives there (``DataPathVerified``). When outbound ESP left by
the new path and nothing came back within ``verify_rtts`` RTTs (at least
``verify_floor``), the CHILD_SAs need a rekey (``RepairNeeded``); inbound ESP after
that is ``DataPathRepaired`` (with how long the data path was dead), twice that bound
more in silence is ``DataPathFailed``. A tunnel with no outbound traffic has nothing to verify.

No exception escapes a public method; times may repeat but never go back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

MAX_EVENTS = 32  # the backend drains after every call; oldest are dropped beyond this


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """Bounds of the watch; RTT multiples with floors for paths whose RTT is tiny."""

    stall_rtts: float = 4.0
    """Inbound silence, in smoothed RTTs, that makes the active path suspect..."""
    stall_floor: float = 0.08
    """...and at least this long (seconds): a 100 Hz stream leaves 10 ms gaps."""
    burst: int = 3
    """Probes in a suspect burst; all unanswered is a dead path (bounded: at most these)."""
    burst_gap_floor: float = 0.02
    """Seconds between the burst's probes (at least one smoothed RTT)."""
    burst_timeout_floor: float = 0.1
    """A burst probe is missed after 3 smoothed RTTs, at least this long (seconds)."""
    rearm_gap: float = 0.5
    """Seconds between two bursts at least: a quiet peer costs little."""
    verify_rtts: float = 8.0
    """After a move, inbound ESP must arrive within this many smoothed RTTs..."""
    verify_floor: float = 0.4
    """...and at least this long (seconds): the peer may rekey its CHILD_SAs first."""


class WatchEvent:
    """Base class of the watch's outputs."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundStalled(WatchEvent):
    silent_s: float
    """How long nothing came back while outbound ESP left."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivePathDead(WatchEvent):
    missed: int
    """Probes of the burst that went unanswered (all of them)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DataPathVerified(WatchEvent):
    wait_s: float
    """From the move to the first ESP from the peer on the new path."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RepairNeeded(WatchEvent):
    waited_s: float
    """How long the new path stayed silent before the repair."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DataPathRepaired(WatchEvent):
    dead_s: float
    """From the last ESP from the peer before the move to the first one after the repair."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DataPathFailed(WatchEvent):
    reason: str
    """Why the data path is still dead (``no_inbound_esp``)."""


@dataclass(slots=True)
class _Burst:
    started: float
    gap: float
    timeout: float
    sent: int = 0
    last_sent: float = 0.0


@dataclass(slots=True)
class _Verify:
    moved: float
    deadline: float
    dead_since: float
    saw_outbound: bool = False
    repairing: bool = False


class DataWatch:
    """Inbound-stall detection and post-move verification for one IKE_SA's active path."""

    def __init__(self, settings: WatchSettings | None = None, *, now: float) -> None:
        self.settings = settings or WatchSettings()
        self.srtt: float | None = None
        self._last_in: float | None = None
        self._last_out: float | None = None
        self._suspected = False  # this silence already made a burst
        self._last_burst: float | None = None
        self._burst: _Burst | None = None
        self._verify: _Verify | None = None
        self._events: deque[WatchEvent] = deque(maxlen=MAX_EVENTS)
        self._now = now

    # -- state ------------------------------------------------------------------------

    @property
    def verifying(self) -> bool:
        return self._verify is not None

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    @property
    def suspect(self) -> bool:
        return self._burst is not None

    def stall_bound(self) -> float:
        s = self.settings
        return max(s.stall_floor, s.stall_rtts * self.srtt) if self.srtt else s.stall_floor

    def verify_bound(self) -> float:
        s = self.settings
        return max(s.verify_floor, s.verify_rtts * self.srtt) if self.srtt else s.verify_floor

    # -- inputs -------------------------------------------------------------------------

    def set_rtt(self, srtt: float | None) -> None:
        """The active path's smoothed RTT (seconds) as the path manager knows it."""
        if srtt is None or srtt > 0:
            self.srtt = srtt

    def on_inbound(self, now: float) -> None:
        """ESP from the peer arrived on the active path: it lives."""
        now = self._tick(now)
        self._last_in = now
        self._suspected = False
        self._burst = None
        verify = self._verify
        if verify is not None:
            self._verify = None
            if verify.repairing:
                self._events.append(DataPathRepaired(dead_s=now - verify.dead_since))
            else:
                self._events.append(DataPathVerified(wait_s=now - verify.moved))

    def on_outbound(self, now: float) -> None:
        """ESP to the peer left by the active path; may make the path suspect."""
        now = self._tick(now)
        self._last_out = now
        if self._verify is not None:
            self._verify.saw_outbound = True
            return
        last_in = self._last_in
        if last_in is None or self._suspected or self._burst is not None:
            return  # never heard the peer on this path, or this silence is handled
        silent = now - last_in
        if silent <= self.stall_bound():
            return
        if self._last_burst is not None and now - self._last_burst < self.settings.rearm_gap:
            return
        self._suspected = True
        self._last_burst = now
        srtt = self.srtt or 0.0
        self._burst = _Burst(now, max(self.settings.burst_gap_floor, srtt),
                             max(self.settings.burst_timeout_floor, 3 * srtt))
        self._events.append(InboundStalled(silent_s=silent))

    def on_probe_reply(self, now: float) -> None:
        """A probe (of the burst or the manager's own) answered on the active path."""
        self._tick(now)
        self._burst = None

    def on_moved(self, now: float) -> None:
        """The SA landed on a new active path: verify it carries ESP back."""
        now = self._tick(now)
        self._burst = None
        self._suspected = False
        dead_since = self._last_in if self._last_in is not None else now
        if self._verify is not None:  # moved again before the last move was verified
            dead_since = self._verify.dead_since
        self._verify = _Verify(now, now + self.verify_bound(), dead_since)
        self._last_in = now  # a baseline for the stall detector on the new path

    def on_repair_failed(self, now: float) -> None:
        """The rekey could not even be asked for: the data path stays dead."""
        self._tick(now)
        if self._verify is not None and self._verify.repairing:
            self._verify = None
            self._events.append(DataPathFailed(reason="repair_refused"))

    def forget_move(self) -> None:
        """The SA is gone or replaced: nothing to verify any more."""
        self._verify = None
        self._burst = None

    # -- outputs ------------------------------------------------------------------------

    def probes_due(self, now: float) -> int:
        """Burst probes to send now (each one, when sent, is in flight from ``now``)."""
        now = self._tick(now)
        burst = self._burst
        if burst is None or burst.sent >= self.settings.burst:
            return 0
        if burst.sent and now < burst.last_sent + burst.gap:
            return 0
        burst.sent += 1
        burst.last_sent = now
        return 1

    def next_event(self) -> WatchEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        times: list[float] = []
        burst = self._burst
        if burst is not None:
            if burst.sent < self.settings.burst:
                times.append(burst.last_sent + burst.gap if burst.sent else burst.started)
            else:
                times.append(burst.last_sent + burst.timeout)
        if self._verify is not None:
            times.append(self._verify.deadline)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        now = self._tick(now)
        burst = self._burst
        if (burst is not None and burst.sent >= self.settings.burst
                and now >= burst.last_sent + burst.timeout):
            self._burst = None
            self._events.append(ActivePathDead(missed=burst.sent))
        verify = self._verify
        if verify is None or now < verify.deadline:
            return
        if not verify.saw_outbound:
            self._verify = None  # idle: nothing went out, so nothing had to come back
        elif not verify.repairing:
            verify.repairing = True  # the rekey is one more exchange, then an install
            verify.deadline = now + 2 * self.verify_bound()
            self._events.append(RepairNeeded(waited_s=now - verify.moved))
        else:
            self._verify = None
            self._events.append(DataPathFailed(reason="no_inbound_esp"))

    def _tick(self, now: float) -> float:
        self._now = max(self._now, now)
        return self._now
