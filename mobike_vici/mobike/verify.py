"""After a move, the check that the peer's ESP follows, and the repair when it does not; sans I/O.

A move is done for IKE when UPDATE_SA_ADDRESSES is answered, but the data path works only
once the peer sends its ESP to the new path. A peer that cannot update an SA in place
(charon with kernel-libipsec, as on Android and in containers) rekeys every CHILD_SA
instead, and queues that rekey behind any request of its own still outstanding: one
that left on the path that died (a DPD, a rekey, an address-list update) is answered
only after its retransmission, 4 s later (then 7 s, 13 s), and until then the peer's
ESP goes to the dead path. We cannot answer a request that never reached us, but we can
rekey the CHILD_SAs ourselves: CREATE_CHILD_SA is our request in our own window (RFC 7296
§2.3: each direction has its own), the peer answers it whatever it has outstanding, and
installs the new SAs on the IKE_SA's current path. The exception is an IKE_SA rekey of
the peer's in flight: until it completes, charon refuses CHILD_SA rekeys with
TEMPORARY_FAILURE (RFC 7296 §2.25), the repair ends in ``DataPathDead``, and only the
peer's retransmission ends the outage.

One :class:`DataPathCheck` per IKE_SA. Protocol, like the path manager's: the backend
calls ``on_moved`` when a move of ours completed, ``observe(sample, now)`` whenever
``get_timer()`` is due (more often does no harm), ``on_rekeyed`` when one of the IKE_SA's
CHILD_SAs was rekeyed, and drains ``next_event()`` after each call. ``RepairRequested``
is an instruction (rekey the CHILD_SAs); the other events are to log.

The decision, over the CHILD_SAs' packet counters (a :data:`Sample`) from the move on:

- the peer's ESP arrived (inbound grew): ``DataPathVerified``;
- the peer was not sending steadily before the move (its ESP had not been arriving for
  ``sustained`` up to within ``active_window`` of the move's start), or nothing went either
  way within the bound: nothing to verify, ``DataPathUnverified`` (``one_way`` or
  ``idle``); nothing is rekeyed (a quiet peer must not cost a rekey per move);
- our ESP went out for the bound and none came back: ``RepairRequested``, then
  ``DataPathRepaired`` when the peer's ESP arrives, else after the repair bound
  ``DataPathDead``, saying whether the rekey at least completed (then the peer holds fresh
  SAs on the new path and its ESP still does not reach us, e.g. plain ESP filtered where
  IKE passes, or a peer that stopped sending just then). ESP from the peer that still
  comes within ``LATE_WATCH`` after that verdict (the peer's own retransmission ended its
  stall) is a late ``DataPathRepaired``: its ``dead_ms`` is the whole outage.

The bound is ``max(verify_timeout, RTT_FACTOR * srtt)`` of the new path and is counted
from the first outbound packet seen after the move (traffic that starts late still gets
its full bound); the repair bound is ``max(repair_timeout, RTT_FACTOR * srtt)`` from the
repair. Counters are per CHILD_SA since its installation; a CHILD_SA that appears later
(a rekey) counts from zero. Inbound counted after the move came by the new path: the old
one is dead (that is why we moved) or, for a move to a better path, still delivers, which
is a working data path as well.

No exception escapes a public method for any input.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from ..types import Path

Sample = Mapping[int, tuple[int, int]]
"""unique_id of each CHILD_SA of the IKE_SA -> (packets in, packets out) since installed."""

RTT_FACTOR = 4.0
"""The bounds stretch to this many smoothed RTTs of the new path: the peer's update or
rekey and its first packet back take about two round trips, and RTTs vary."""

POLL_STEPS = 10
"""Samples per bound while checking: the granularity of the times reported."""

POLL_MIN = 0.005
POLL_MAX = 0.05
"""Sampling pace limits (seconds): polls stay cheap on a fast path and precise on a slow one."""

LATE_WATCH = 30.0
"""Seconds after a DataPathDead verdict that the peer's ESP is still watched for (charon's
retransmissions come 4, 11 and 24 s after its request)."""
LATE_STEP = 0.1
"""Sampling pace (seconds) of that late watch."""

MAX_EVENTS = 16
"""The backend drains events after every call; the bound only guards against one that does not."""


@dataclass(frozen=True, slots=True)
class VerifySettings:
    verify_timeout: float = 0.2
    """Floor of the bound (seconds); 0 turns the check off."""
    repair_timeout: float = 2.0
    """Floor of the repair bound (seconds)."""
    active_window: float = 2.0
    """The peer counts as sending when its last ESP arrived at most this long before the
    move started (the time to detect a dead path, plus the peer's own pauses)..."""
    sustained: float = 1.0
    """... and its ESP had been arriving for at least this long by then, without a long
    pause (one answer to a ping before a one-way stream is no traffic to expect back)."""


class Phase(Enum):
    DONE = "done"
    """Nothing to check (no move yet, or the last one has its verdict)."""
    WATCHING = "watching"
    REPAIRING = "repairing"
    LATE = "late"
    """Declared dead; ESP from the peer that still comes is reported as a late repair."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckEvent:
    path: Path
    """The path the IKE_SA moved to."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DataPathVerified(CheckEvent):
    after_ms: float
    """From the move's completion to the first ESP from the peer seen after it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DataPathUnverified(CheckEvent):
    reason: str
    """idle (no ESP either way within the bound), one_way (the peer had not been sending
    steadily before the move)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RepairRequested(CheckEvent):
    """Rekey the IKE_SA's CHILD_SAs; report completed rekeys with ``on_rekeyed``."""

    waited_ms: float
    """From the move's completion to this request: how long our ESP went unanswered."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DataPathRepaired(CheckEvent):
    dead_ms: float
    """From the move's start to the first ESP from the peer after the repair (the time
    to detect the dead path before the move is not included)."""
    repair_ms: float
    """From the repair request to that packet."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DataPathDead(CheckEvent):
    old_path: Path
    reason: str
    """data_path_dead: no ESP from the peer within the repair bound."""
    rekeyed: bool
    """Whether a CHILD_SA rekey completed during the repair."""
    dead_ms: float
    """From the move's start to this verdict."""


Event = DataPathVerified | DataPathUnverified | RepairRequested | DataPathRepaired | DataPathDead


def _grew(sample: Sample, base: Sample) -> tuple[bool, bool]:
    """Did any CHILD_SA receive (first) or send (second) since ``base``?"""
    grew_in = grew_out = False
    for uid, (packets_in, packets_out) in sample.items():
        before_in, before_out = base.get(uid, (0, 0))
        grew_in = grew_in or packets_in > before_in
        grew_out = grew_out or packets_out > before_out
    return grew_in, grew_out


class DataPathCheck:
    """The data path of one IKE_SA after its moves; see the module docstring."""

    def __init__(self, settings: VerifySettings) -> None:
        self.settings = settings
        self.phase = Phase.DONE
        self._events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._path: Path | None = None
        self._old: Path | None = None
        self._started = 0.0
        self._moved = 0.0
        self._bound = 0.0
        self._repair_bound = 0.0
        self._step = POLL_MAX
        self._expect_inbound = False
        self._base: dict[int, tuple[int, int]] = {}
        self._first_out: float | None = None
        self._repair_at = 0.0
        self._rekeyed = False
        self._next: float | None = None

    # -- inputs -----------------------------------------------------------------------

    def on_moved(self, path: Path, old_path: Path, *, started: float, srtt: float | None,
                 sample: Sample, last_inbound: float | None, inbound_since: float | None,
                 now: float) -> None:
        """A move of ours to ``path`` completed at ``now`` (requested at ``started``).

        ``sample`` is the CHILD_SAs' counters now, ``last_inbound`` when the peer's last
        ESP arrived (None: never), ``inbound_since`` since when its ESP had been arriving
        without a long pause by then. A check still running for an earlier move is replaced.
        """
        s = self.settings
        self._events.clear()
        self.phase = Phase.DONE
        self._next = None
        if s.verify_timeout <= 0:
            return
        rtt = srtt if srtt is not None and srtt > 0 else 0.0
        self._path, self._old = path, old_path
        self._started, self._moved = min(started, now), now
        self._bound = max(s.verify_timeout, RTT_FACTOR * rtt)
        self._repair_bound = max(s.repair_timeout, RTT_FACTOR * rtt)
        self._step = min(max(self._bound / POLL_STEPS, POLL_MIN), POLL_MAX)
        self._expect_inbound = (
            last_inbound is not None and inbound_since is not None
            and last_inbound >= self._started - s.active_window
            and last_inbound - inbound_since >= s.sustained)
        self._base = dict(sample)
        self._first_out = None
        self._rekeyed = False
        self.phase = Phase.WATCHING
        self._next = now + self._step

    def on_rekeyed(self, now: float) -> None:
        """A CHILD_SA of the IKE_SA was rekeyed (by either side) during the repair."""
        if self.phase is Phase.REPAIRING:
            self._rekeyed = True

    def cancel(self) -> None:
        """The IKE_SA is gone: no verdict."""
        self.phase = Phase.DONE
        self._next = None

    def observe(self, sample: Sample, now: float) -> None:
        """The CHILD_SAs' counters at ``now``; decides when a bound has passed."""
        if self.phase is Phase.DONE or self._path is None:
            return
        path = self._path
        grew_in, grew_out = _grew(sample, self._base)
        if self.phase is Phase.WATCHING:
            if grew_in:
                self._finish(DataPathVerified(path=path, after_ms=_ms(now - self._moved)))
                return
            if grew_out and self._first_out is None:
                self._first_out = now
            if grew_out and not self._expect_inbound:
                self._finish(DataPathUnverified(path=path, reason="one_way"))
                return
            deadline = (self._first_out if self._first_out is not None
                        else self._moved) + self._bound
            if now < deadline:
                self._next = min(now + self._step, deadline)
                return
            if self._first_out is None:
                self._finish(DataPathUnverified(path=path, reason="idle"))
                return
            # Our ESP went out for a whole bound and none came back: repair.
            self.phase = Phase.REPAIRING
            self._repair_at = now
            self._base = dict(sample)
            self._events.append(RepairRequested(path=path, waited_ms=_ms(now - self._moved)))
            self._next = now + self._step
            return
        if grew_in:
            self._finish(DataPathRepaired(path=path, dead_ms=_ms(now - self._started),
                                          repair_ms=_ms(now - self._repair_at)))
            return
        if self.phase is Phase.LATE:
            late_until = self._repair_at + self._repair_bound + LATE_WATCH
            if now >= late_until:
                self.phase, self._next = Phase.DONE, None
            else:
                self._next = min(now + LATE_STEP, late_until)
            return
        deadline = self._repair_at + self._repair_bound
        if now < deadline:
            self._next = min(now + self._step, deadline)
            return
        assert self._old is not None
        self._events.append(DataPathDead(path=path, old_path=self._old, reason="data_path_dead",
                                         rekeyed=self._rekeyed,
                                         dead_ms=_ms(now - self._started)))
        self.phase = Phase.LATE
        self._next = now + LATE_STEP

    # -- outputs ----------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When to ``observe`` next; None while there is nothing to check."""
        return self._next if self.phase is not Phase.DONE else None

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # -- internals --------------------------------------------------------------------

    def _finish(self, event: Event) -> None:
        self._events.append(event)
        self.phase = Phase.DONE
        self._next = None


def _ms(seconds: float) -> float:
    return round(max(0.0, seconds) * 1000.0, 3)
