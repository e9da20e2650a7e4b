"""The data path health of one IKE_SA, sans I/O, for both backends: the flow's history,
inbound stalls on the active path, and the check after every move (verify, repair).

Both backends feed the same model. The native daemon samples its userspace data plane's
counters (every 25 ms); ``mobike-vici run`` sees every ESP packet of charon's on a packet
socket and feeds each as a sample of one packet. Time comes in as ``now``.

:class:`Flow` is what the traffic was before anything went wrong: when the peer's ESP
last came, how many packets its current run had (a pause over ``IN_PAUSE`` ends a run),
and how long the peer usually takes to send something once ours left with nothing
coming back (``wait``: about an RTT for request/reply, the peer's own period for a
mostly one-way flow). A flow is judged by that history, never by what it looks like
after a silent failure: then every flow is one-way, since the replies are what stopped.

:class:`Stall`: outbound ESP keeps leaving and nothing has come in for longer than the
flow's own pace allows (``threshold``: ``stall_timeout`` at least, ``STALL_RTTS``
smoothed RTTs, ``WAIT_FACTOR`` times the flow's usual wait). The backend then probes the
active path at once; only unanswered probes make it down. A stall answered by the peer
(a quiet flow, not a dead path) doubles the floor for the next one, up to
``probe_interval``; inbound ESP resets that. A 100 Hz flow that dies is suspect after
``stall_timeout`` (0.1 s); a 5 packets/s ping, whose replies come an RTT after each
request, never stalls.

:class:`MoveCheck`: after a move, the peer's ESP must follow to the new path. It is
expected when the peer's run had ``MIN_RUN_PACKETS`` packets and its last one came
within ``active_window`` before the move began (the time a dead path takes to detect):
a request/reply flow whose replies stopped at the fault expects them back, a flow that
never had anything back (one-way out) does not, nor an idle tunnel. Then:

- the peer's ESP arrived: ``DataPathVerified``;
- nothing expected: ``DataPathUnverified`` (``one_way`` when ours flows); never a rekey;
- nothing of ours left within the bound: ``DataPathUnverified`` (``idle``), no rekey;
- expected, ours left and none came back within the bound (``verify_timeout``,
  ``RTT_FACTOR`` SRTTs of the new path, ``WAIT_FACTOR`` times the flow's wait,
  whichever is longest), while IKE answers on the new path (the move completed there):
  ``RepairRequested`` (rekey the CHILD_SAs: the peer installs the new ones on the
  IKE_SA's current path). A rekey the
  peer refuses for now (TEMPORARY_FAILURE: its own IKE_SA rekey is in flight) is asked
  again at RTT pace (``on_repair_refused``), not after the peer's 4 s retransmission.
  A peer whose own exchange is stuck (``peer_busy``: it rekeyed a CHILD_SA and its
  DELETE of the old one is long overdue, so its request or our answer was lost) starts
  no exchange until its retransmission gets through (charon: 4 s); where following
  the move takes one (charon over kernel-libipsec when the NAT state changes, which it
  does by a CHILD_SA rekey), its ESP comes back only after our rekey. Its bound is
  ``BUSY_RTTS`` SRTTs (``BUSY_FLOOR`` at least) instead: a needless rekey is cheap.
  Then ``DataPathRepaired`` when the peer's ESP arrives, else after the repair bound
  ``DataPathDead``; ESP that still comes within ``LATE_WATCH`` after that verdict is a
  late ``DataPathRepaired`` whose ``dead_ms`` is the whole outage.

:class:`Burst`: the probes ``mobike-vici run`` sends at a stall (its path manager probes
by ICMP on its own schedule); all unanswered is a dead active path.

No exception escapes a public method for any input; times may repeat but never go back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from ..config.mobike import MobikePolicy
from ..types import Path

# -- one set of constants (the operator's keys are in HealthSettings) ---------------------

STALL_RTTS = 4.0
"""Silence needed before a stall, in smoothed RTTs of the path."""
WAIT_FACTOR = 3.0
"""Silence needed before a stall (and the least verify bound), in the flow's own usual
wait for the peer's next packet: a slow or mostly one-way flow is not suspect at once."""
WAIT_GAIN = 0.25
"""Weight of the newest wait in its moving average."""
MAX_WAIT_BOUND = 2.0
"""Seconds the flow's own pace may add at most, to the stall threshold and the verify
bound alike: a repair must still beat a peer's 4 s retransmission."""
RTT_FACTOR = 4.0
"""The verify and repair bounds stretch to this many smoothed RTTs of the new path: the
peer's update or rekey and its first packet back take about two round trips."""
IN_PAUSE = 1.5
"""Seconds without a packet from the peer that end a run of its traffic."""
MIN_RUN_PACKETS = 3
"""Packets of the peer's run before the fault that make its ESP expected after a move
(one answer to a ping before a one-way stream is no traffic to expect back)."""
MAX_BACKOFF = 8
"""Doublings of the stall floor kept at most (the cap applies long before)."""
REPAIR_RETRY_FLOOR = 0.05
"""Seconds between two repair rekeys the peer refused for now, at least (else 2 SRTTs)."""
MAX_REPAIR_RETRIES = 16
"""Repair rekeys asked again at most per move (each is a DH exchange for the peer)."""
POLL_STEPS = 10
"""Samples per bound while checking: the granularity of the times reported."""
POLL_MIN = 0.005
POLL_MAX = 0.05
"""Sampling pace limits (seconds) of the check."""
BUSY_RTTS = 2.0
BUSY_FLOOR = 0.02
"""The verify bound after a move while the peer's own exchange is stuck (``peer_busy``):
this many SRTTs of the new path, at least BUSY_FLOOR seconds (our ESP must have left)."""
LATE_WATCH = 30.0
"""Seconds after a DataPathDead verdict that the peer's ESP is still watched for (charon's
retransmissions come 4, 11 and 24 s after its request)."""
LATE_STEP = 0.1
"""Sampling pace (seconds) of that late watch."""
BURST = 3
"""Probes in a stall burst; all unanswered is a dead path (bounded: at most these)."""
BURST_GAP_FLOOR = 0.02
"""Seconds between a burst's probes, at least (else one SRTT)."""
BURST_RTTS = 3.0
"""A burst probe is missed after this many SRTTs, at least ``burst_timeout``."""
REARM_GAP = 0.5
"""Seconds between two bursts at least: a quiet peer costs little."""
MAX_EVENTS = 16
"""The backend drains events after every call; the bound only guards against one that does not."""
DEAD_HOLD = 2.0
DEAD_HOLD_CAP = 60.0
"""Seconds a path whose data path was found dead after a move (``DataPathDead``: IKE and
probes answer there, the peer's ESP does not come) stays out of the choice, so the IKE_SA
moves to another candidate: DEAD_HOLD after the first verdict, doubled for each verdict in
a row on that path, DEAD_HOLD_CAP at most (``dead_hold``). Its probes would bring it back
at once, and the move back would find it as dead."""

Sample = Mapping[int, tuple[int, int]]
"""unique_id of each CHILD_SA of the IKE_SA -> (packets in, packets out) since installed."""


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """The operator's keys (``mobike { }``) the model uses."""

    stall_timeout: float = 0.1
    """Floor of the stall threshold (seconds)."""
    stall_cap: float = 0.2
    """The floor never doubles beyond this (``probe_interval``)."""
    verify_timeout: float = 0.2
    """Floor of the verify bound (seconds); 0 turns the check off."""
    repair_timeout: float = 2.0
    """Floor of the repair bound (seconds)."""
    active_window: float = 2.0
    """The peer's ESP is expected after a move when its last packet came at most this long
    before the move began (the time to detect a dead path, plus a margin)."""
    burst_timeout: float = 0.05
    """A stall burst's probe unanswered this long is missed, at least
    (``stall_probe_timeout``, as the native daemon's stall probe)."""


ACTIVE_MARGIN = 1.0
"""Added to the time a dead path takes to detect for ``active_window``: a peer that sent
nothing for that long before we moved is not expected to send after."""


def settings_of(policy: MobikePolicy) -> HealthSettings:
    """The model's settings from ``mobike { }`` (both backends): the peer counts as
    sending when its ESP came within the time a silently dead path takes to detect,
    plus a margin."""
    detect = policy.probe_interval * policy.probe_misses + policy.probe_timeout
    return HealthSettings(stall_timeout=policy.stall_timeout, stall_cap=policy.probe_interval,
                          verify_timeout=policy.verify_timeout,
                          repair_timeout=policy.repair_timeout,
                          active_window=detect + ACTIVE_MARGIN,
                          burst_timeout=policy.stall_probe_timeout)


# -- the flow -------------------------------------------------------------------------------


@dataclass(slots=True)
class Flow:
    """The traffic's history on the IKE_SA (across its paths)."""

    last_in: float | None = None
    """When the peer's last ESP came (None: never)."""
    run_packets: int = 0
    """The peer's packets in its current run (a pause over IN_PAUSE starts a new one)."""
    first_out: float | None = None
    """First sample with outbound packets since the last inbound one (None: none since)."""
    last_out: float | None = None
    wait: float | None = None
    """Moving average of ``first_out`` to the next inbound sample: the flow's own pace."""

    def on_traffic(self, inbound: int, outbound: int, now: float) -> None:
        if inbound > 0:
            # No wait at all when nothing of ours was waiting (a two-way stream): the pace
            # follows the flow as it is now. A longer silence is a pause, not its pace.
            sample = 0.0 if self.first_out is None else \
                min(max(0.0, now - self.first_out), IN_PAUSE)
            self.wait = sample if self.wait is None else \
                self.wait + WAIT_GAIN * (sample - self.wait)
            if self.last_in is None or now - self.last_in > IN_PAUSE:
                self.run_packets = 0
            self.run_packets += inbound
            self.last_in = now
            self.first_out = None
        if outbound > 0:
            if self.first_out is None and inbound <= 0:
                self.first_out = now
            self.last_out = now

    def expects_inbound(self, started: float, window: float) -> bool:
        """Whether the peer was sending when the fault came, for a move begun at ``started``."""
        return (self.last_in is not None and self.last_in >= started - window
                and self.run_packets >= MIN_RUN_PACKETS)

    def wait_bound(self) -> float:
        """The silence this flow shows without anything wrong (0: no pace known yet)."""
        return min(WAIT_FACTOR * self.wait, MAX_WAIT_BOUND) if self.wait is not None else 0.0


# -- stalls ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Stall:
    """Inbound silence with outbound traffic on the active path; see the module docstring."""

    floor: float
    """The least silence that makes a stall (``stall_timeout``)."""
    cap: float
    """The floor never doubles beyond this (``probe_interval``)."""
    flow: Flow = field(default_factory=Flow)
    stalled: bool = False
    """A stall was seen and no sign of life came since."""
    backoff: int = 0
    """Stall probes answered in a row with no inbound packet between them."""
    since: float | None = None
    """Outbound flowing with nothing in since then (on this path)."""

    @property
    def first_out(self) -> float | None:
        return self.since

    def threshold(self, srtt: float | None) -> float:
        floor = self.floor
        if self.backoff:
            floor = max(floor, min(floor * (1 << self.backoff), self.cap))
        rtt = STALL_RTTS * srtt if srtt is not None else 0.0
        return max(floor, rtt, self.flow.wait_bound())

    def on_traffic(self, inbound: int, outbound: int, now: float,
                   srtt: float | None) -> bool:
        """Packets since the last sample; True when this sample starts a stall."""
        self.flow.on_traffic(inbound, outbound, now)
        if inbound > 0:
            self.since = None
            self.stalled = False
            self.backoff = 0
            return False
        if outbound <= 0:
            return False
        if self.since is None:
            self.since = now
            return False  # outbound must go on past the sample that opened the window
        if self.stalled or now < self.since + self.threshold(srtt):
            return False
        self.stalled = True
        return True

    def on_alive(self) -> None:
        """An authenticated answer on the path: the silence so far is explained."""
        if self.stalled:
            self.backoff = min(self.backoff + 1, MAX_BACKOFF)
        self.stalled = False
        self.since = None

    def reset(self) -> None:
        """A new active path: its silence starts over (the flow's history stays)."""
        self.since = None
        self.stalled = False
        self.backoff = 0


@dataclass(slots=True)
class Burst:
    """The probes of one stall (``mobike-vici run``); bounded by BURST."""

    started: float
    gap: float
    timeout: float
    sent: int = 0
    last_sent: float = 0.0

    @classmethod
    def at(cls, now: float, srtt: float | None, timeout: float) -> Burst:
        """``timeout``: the least wait for the last probe's answer (``burst_timeout``)."""
        rtt = srtt or 0.0
        return cls(now, max(BURST_GAP_FLOOR, rtt), max(timeout, BURST_RTTS * rtt))

    def due(self, now: float) -> bool:
        """One probe to send now (it is in flight from ``now``)."""
        if self.sent >= BURST or (self.sent and now < self.last_sent + self.gap):
            return False
        self.sent += 1
        self.last_sent = now
        return True

    def deadline(self) -> float:
        if self.sent < BURST:
            return self.last_sent + self.gap if self.sent else self.started
        return self.last_sent + self.timeout

    def missed(self, now: float) -> bool:
        """Every probe sent and the last one timed out: the path is dead."""
        return self.sent >= BURST and now >= self.last_sent + self.timeout


# -- the check after a move --------------------------------------------------------------------


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
    """idle (no ESP either way within the bound), one_way (the peer was not sending
    before the fault, so nothing is expected back)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RepairRequested(CheckEvent):
    """Rekey the IKE_SA's CHILD_SAs; report completed rekeys with ``on_rekeyed``."""

    waited_ms: float
    """From the move's completion to this request: how long our ESP went unanswered."""
    attempt: int = 1
    """1 for the repair; more when the peer refused the last rekey for now."""


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


class MoveCheck:
    """The data path of one IKE_SA after its moves; see the module docstring.

    The backend calls ``on_moved`` when a move completed, ``observe(sample, now)``
    whenever ``get_timer()`` is due (more often does no harm), ``on_rekeyed`` when a
    CHILD_SA of the IKE_SA was rekeyed, ``on_repair_refused`` when the peer refused a
    repair rekey for now, and drains ``next_event()`` after each call.
    """

    def __init__(self, settings: HealthSettings) -> None:
        self.settings = settings
        self.phase = Phase.DONE
        self._events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._path: Path | None = None
        self._old: Path | None = None
        self._started = 0.0
        self._moved = 0.0
        self._bound = 0.0
        self._repair_bound = 0.0
        self._retry_gap = REPAIR_RETRY_FLOOR
        self._step = POLL_MAX
        self._expect_inbound = False
        self._base: dict[int, tuple[int, int]] = {}
        self._first_out: float | None = None
        self._repair_at = 0.0
        self._attempts = 0
        self._retry_at: float | None = None
        self._rekeyed = False
        self._next: float | None = None

    @property
    def expects_inbound(self) -> bool:
        return self._expect_inbound

    # -- inputs -----------------------------------------------------------------------

    def on_moved(self, path: Path, old_path: Path, *, started: float, srtt: float | None,
                 sample: Sample, flow: Flow | None, now: float,
                 peer_busy: bool = False) -> None:
        """A move to ``path`` completed at ``now`` (begun at ``started``); ``sample`` is
        the CHILD_SAs' counters now, ``flow`` the traffic's history (None: unknown, so
        nothing is expected back); ``peer_busy``: the peer's own exchange is stuck. A
        check still running for an earlier move is replaced."""
        s = self.settings
        self._events.clear()
        self.phase = Phase.DONE
        self._next = None
        if s.verify_timeout <= 0:
            return
        rtt = srtt if srtt is not None and srtt > 0 else 0.0
        wait = flow.wait_bound() if flow is not None else 0.0
        self._path, self._old = path, old_path
        self._started, self._moved = min(started, now), now
        self._bound = max(s.verify_timeout, RTT_FACTOR * rtt, wait)
        if peer_busy:
            self._bound = min(self._bound, max(BUSY_FLOOR, BUSY_RTTS * rtt))
        self._repair_bound = max(s.repair_timeout, RTT_FACTOR * rtt, wait)
        self._retry_gap = max(REPAIR_RETRY_FLOOR, 2 * rtt)
        self._step = min(max(self._bound / POLL_STEPS, POLL_MIN), POLL_MAX)
        self._expect_inbound = flow is not None and flow.expects_inbound(
            self._started, s.active_window)
        self._base = dict(sample)
        self._first_out = None
        self._attempts = 0
        self._retry_at = None
        self._rekeyed = False
        self.phase = Phase.WATCHING
        self._next = now + self._step

    def on_rekeyed(self, now: float) -> None:
        """A CHILD_SA of the IKE_SA was rekeyed (by either side) during the repair."""
        if self.phase is Phase.REPAIRING:
            self._rekeyed = True

    def on_repair_refused(self, now: float) -> None:
        """The peer refused a repair rekey for now (TEMPORARY_FAILURE): ask again soon."""
        if self.phase is not Phase.REPAIRING or self._attempts > MAX_REPAIR_RETRIES:
            return
        when = now + self._retry_gap
        if when < self._repair_at + self._repair_bound:
            self._retry_at = when
            self._next = min(self._next, when) if self._next is not None else when

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
            self._watch(sample, grew_in, grew_out, now)
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
        if self._retry_at is not None and now >= self._retry_at and now < deadline:
            self._retry_at = None
            self._attempts += 1
            self._events.append(RepairRequested(path=path, waited_ms=_ms(now - self._moved),
                                                attempt=self._attempts))
        if now < deadline:
            nxt = min(now + self._step, deadline)
            self._next = min(nxt, self._retry_at) if self._retry_at is not None else nxt
            return
        assert self._old is not None
        self._events.append(DataPathDead(path=path, old_path=self._old, reason="data_path_dead",
                                         rekeyed=self._rekeyed,
                                         dead_ms=_ms(now - self._started)))
        self.phase = Phase.LATE
        self._retry_at = None
        self._next = now + LATE_STEP

    # -- outputs ----------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When to ``observe`` next; None while there is nothing to check."""
        return self._next if self.phase is not Phase.DONE else None

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # -- internals --------------------------------------------------------------------

    def _watch(self, sample: Sample, grew_in: bool, grew_out: bool, now: float) -> None:
        path = self._path
        assert path is not None
        if grew_in:
            self._finish(DataPathVerified(path=path, after_ms=_ms(now - self._moved)))
            return
        if grew_out and self._first_out is None:
            self._first_out = now
        if grew_out and not self._expect_inbound:
            self._finish(DataPathUnverified(path=path, reason="one_way"))
            return
        # Traffic that starts late still gets its whole bound.
        deadline = (self._first_out if self._first_out is not None else self._moved) \
            + self._bound
        if now < deadline:
            self._next = min(now + self._step, deadline)
            return
        if self._first_out is None:
            # Nothing went either way: an idle tunnel (or a flow that ended with the
            # fault) tells nothing, and a rekey per move would cost the peer for nothing.
            self._finish(DataPathUnverified(path=path, reason="idle"))
            return
        # The peer was sending up to the fault, ours went out on the new path for the
        # bound and nothing came back, while IKE answers there (the move completed): the
        # peer's ESP goes elsewhere. Repair.
        self.phase = Phase.REPAIRING
        self._repair_at = now
        self._attempts = 1
        self._base = dict(sample)
        self._events.append(RepairRequested(path=path, waited_ms=_ms(now - self._moved)))
        self._next = now + self._step

    def _finish(self, event: Event) -> None:
        self._events.append(event)
        self.phase = Phase.DONE
        self._next = None


def dead_hold(verdicts: int) -> float:
    """Seconds a path stays out of the choice after its ``verdicts``-th ``DataPathDead`` in
    a row (a verified or repaired data path on it ends the row)."""
    return min(DEAD_HOLD * 2.0 ** max(0, min(verdicts, 32) - 1), DEAD_HOLD_CAP)


def _ms(seconds: float) -> float:
    return round(max(0.0, seconds) * 1000.0, 3)
