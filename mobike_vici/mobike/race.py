"""A stalled active path raced against the candidates, sans I/O.

Under traffic, a stalled active path is probed at once; two unanswered probes in a row
make it down. The second wait is what a failover pays for its certainty, and a
mostly one-way flow pays it with a doubled timeout (a quiet peer may answer slowly).
A race decides sooner without trusting one lost probe alone: when the first probe of
a stall goes unanswered, the active path is probed again and every candidate with it,
on the same request (the peer answers each copy on its own path). A candidate that
answers proves the peer and our side alive now; the active path, which got the same
request at the same instant, then has ``RACE_RTTS`` of that candidate's round trips
(at least ``RACE_FLOOR``) to answer too. Load on either end slows both answers
alike, so a loaded but working active path is not outraced; a path whose peer is
merely quiet answers its probes and never starts a race. Any sign of life on the
active path (a late answer, inbound ESP) ends the race with no verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

from .paths import Key, PathState, PathTable

RACE_RTTS = 4.0
"""The active path's head start over a candidate's answer, in that answer's RTTs."""
RACE_FLOOR = 0.02
"""Seconds the active path has after the race began, at least, to answer too."""
LOST = "probe_race"
"""``path_down`` reason of an active path outraced by a candidate."""


@dataclass(slots=True)
class Race:
    """One race; bounded: it ends with a move, a sign of life, or the active path down."""

    since: float
    """When the stall's first probe went unanswered: candidates are probed from here,
    and only answers after it count."""
    decide_at: float | None = None
    """When the first answering candidate's head start for the active path ends
    (None: no candidate answered yet)."""

    def on_candidate_answer(self, now: float, rtt: float | None) -> None:
        """A candidate answered at ``now`` (``rtt``: its probe's round trip)."""
        head_start = max(RACE_FLOOR, RACE_RTTS * rtt) if rtt is not None else RACE_FLOOR
        when = max(now, self.since + head_start)
        self.decide_at = when if self.decide_at is None else min(self.decide_at, when)

    def answered(self, table: PathTable, active: Key, now: float) -> list[Key]:
        """The candidates besides ``active`` that are up by an answer since the race
        began."""
        out = []
        for key in table.candidate_keys():
            h = table.health(key)
            if (key != active and h.state == PathState.UP and h.usable(now)
                    and h.last_success is not None and h.last_success > self.since):
                out.append(key)
        return out

    def in_flight(self, table: PathTable, active: Key) -> bool:
        """A candidate's race probe is still unanswered and not yet missed (bounded by
        its probe timeout): a path up by an older probe may have died with the active one."""
        for key in table.candidate_keys():
            h = table.health(key)
            if (key != active and h.in_flight > 0 and h.last_probe is not None
                    and h.last_probe >= self.since):
                return True
        return False

    def due(self, now: float) -> bool:
        """The active path has had its head start and stayed silent."""
        return self.decide_at is not None and now >= self.decide_at
