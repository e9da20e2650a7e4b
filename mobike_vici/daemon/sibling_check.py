"""``mobike-vici run``: after a silent death, the dead path's uplink must answer first.

A silent uplink death (a dead router, a cut beyond the link) takes every address family
of the uplink at once, while the path manager still counts the uplink's other paths up
from their last standby probe, seconds before. A failover onto one of them, or charon
landing there by itself, loses the traffic until that path fails on its own schedule.
So for ``WINDOW`` seconds after the data plane found a path dead, a failover target on
the same uplink is probed first (a burst, ``mobike.health.Burst``): its first answer lets
the move go ahead; none, and the move fails as unanswered (``handover_failed`` reason
``timeout``), which sets the uplink's other candidates aside until their own probes
answer (the path manager's shared-failure rule) and picks the next path.

Every other candidate is probed already while the dead path's own burst runs
(``stalled``), the controller's race of the candidates: a silent death of the whole
uplink then fails its sibling as the failover's target at once, not one more burst
later, and an answer lets the failover go ahead unheld. A failover onto another uplink
right after the death, when some candidate answered, waits for its target's burst too
(``path_died_silently``): an IPv4 death takes the other uplink's IPv4 path as well, and
the path manager's probes would take most of a second to say so; unanswered, the target
alone fails (``target_down``: the other family of its uplink stays a candidate) and the
next path, which answered beside it, is taken at once.

A return to the preferred path is checked the same way, always: it rests on a standby
probe up to 2 s old, and a fault in between (soak: IPv4 death 80 ms before the return)
sends charon's MOBIKE check onto a dead path, where it holds every later move of
charon's until its retransmission, about 2 s. The check costs one round trip; none
answered, the target is down (``handover_failed`` reason ``target_down``) and the
IKE_SA stays where it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..backends.vici.steer import egress
from ..mobike import health as hm
from ..mobike.events import MoveRequested
from ..mobike.follow import same_addresses
from ..mobike.policy import recent_rtt
from ..types import Path

if TYPE_CHECKING:
    from ..backends.vici.mobility import TrackedSa
    from .watch_host import WatchHost

WINDOW = 3.0
"""Seconds after a silent death that the dead path's uplink stays suspect (its other
paths' standby probes come every 2 s: by then each has answered or failed)."""
UNANSWERED = "timeout"
"""The move failure reason: the target did not answer (the manager sets siblings aside)."""
RETURN_UNANSWERED = "target_down"
"""The failure of an unanswered return: the target alone is down (the path left is not)."""


EARLY_FOR = 1.0
"""Seconds an early burst (``stalled``) stands for its path's check: its stall's burst
ends in a verdict well within it. Also how recent a silent death must be for a failover
onto another uplink to wait for its target's early burst."""


@dataclass(slots=True)
class _Check:
    event: MoveRequested
    burst: hm.Burst
    ids: set[int] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _Early:
    """A sibling's burst, sent beside the stalled path's own."""

    path: Path
    burst: hm.Burst
    ids: set[int] = field(default_factory=set)
    answered: bool = False
    timer: asyncio.TimerHandle | None = None


class SiblingCheck:
    """The suspect uplinks of the tracked IKE_SAs and the failovers waiting on them."""

    def __init__(self, ctl: WatchHost, burst_timeout: Callable[[], float]) -> None:
        self.ctl = ctl
        self._burst_timeout = burst_timeout  # the data-plane watch's, reloaded with it
        self._deaths: dict[str, tuple[str, float]] = {}  # IKE_SA -> (uplink, died at)
        self._checks: dict[str, _Check] = {}
        self._ids: dict[int, str] = {}  # prober wire id -> IKE_SA
        self._early: dict[str, list[_Early]] = {}  # IKE_SA -> its stalled path's siblings
        self._early_ids: dict[int, tuple[str, _Early]] = {}

    def silent_death(self, spi: str, path: Path, now: float) -> None:
        """The data plane found ``path`` dead (a burst went unanswered)."""
        out = egress(self.ctl.monitor.state, path.local.addr)
        if out is not None:
            self._deaths[spi] = (out[0], now)
        self._target_silent(spi)

    def stalled(self, sa: TrackedSa, path: Path) -> None:
        """The data plane bursts on ``path``, charon's, after a stall: every other
        candidate gets a burst of its own now, the answer a failover onto it needs."""
        spi = sa.info.ike_spi
        self._drop_early(spi)
        state = self.ctl.monitor.state
        if egress(state, path.local.addr) is None:
            return
        now = self.ctl.now
        early = []
        for info in sa.manager.paths():
            if same_addresses(info.path, path) or egress(state, info.path.local.addr) is None:
                continue
            early.append(_Early(info.path, hm.Burst.at(now, recent_rtt(info),
                                                       self._burst_timeout())))
        if early:
            self._early[spi] = early
            for e in early:
                self._pump_early(spi, e)

    def suspect(self, spi: str, path: Path, now: float) -> bool:
        """``path`` is on the uplink of the IKE_SA's last silent death, within WINDOW."""
        death = self._deaths.get(spi)
        if death is None or now - death[1] > WINDOW:
            return False
        out = egress(self.ctl.monitor.state, path.local.addr)
        return out is not None and out[0] == death[0]

    def hold(self, sa: TrackedSa, event: MoveRequested) -> bool:
        """True when the move must wait for its target to answer (then checked here): a
        return to the preferred path, or a failover onto a silently dead uplink."""
        spi = sa.info.ike_spi
        now = self.ctl.now
        self.forget(spi)  # a later move supersedes one still held
        if event.reason == "preferred":
            reason = "return_unproven"
        elif event.reason == "failover" and self.suspect(spi, event.path, now):
            reason = "uplink_died_silently"
        elif event.reason == "failover" and self._raced(spi, event.path, now):
            reason = "path_died_silently"
        else:
            return False
        self.ctl.log.emit("failover_target_checked", conn=sa.info.conn, ike_spi=spi,
                          local=str(event.path.local), remote=str(event.path.remote),
                          reason=reason)
        early = self._take_early(spi, event.path, now)
        if early is not None and early.answered:
            return False  # it answered during the dead path's own burst
        if early is not None:
            check = _Check(event, early.burst, early.ids)
            self._ids.update(dict.fromkeys(early.ids, spi))
        else:
            srtt = next((recent_rtt(p) for p in sa.manager.paths() if p.path == event.path),
                        None)
            check = _Check(event, hm.Burst.at(now, srtt, self._burst_timeout()))
        self._checks[spi] = check
        if check.burst.missed(now):  # already unanswered: fail it outside the caller's move
            check.timer = asyncio.get_running_loop().call_later(0, self._pump, spi)
        else:
            self._pump(spi)
        return True

    def _raced(self, spi: str, path: Path, now: float) -> bool:
        """A silent death of the IKE_SA's path within EARLY_FOR, ``path`` had an early
        burst beside the dead path's own, and some candidate answered one: failing the
        target then leaves a path known to work. With none answered the move goes ahead
        unheld, as before the race: charon's own MOBIKE check of every address it knows
        (some the path manager may not) is then the last way out."""
        death = self._deaths.get(spi)
        if death is None or now - death[1] > EARLY_FOR:
            return False
        early = [e for e in self._early.get(spi, []) if now - e.burst.started <= EARLY_FOR]
        return any(same_addresses(e.path, path) for e in early) and any(
            e.answered for e in early)

    def on_reply(self, wire_id: int) -> bool:
        """True when the reply answered a check's probe: the held move goes ahead."""
        hit = self._early_ids.pop(wire_id, None)
        if hit is not None:
            hit[1].answered = True
            if hit[1].timer is not None:
                hit[1].timer.cancel()
                hit[1].timer = None
        spi = self._ids.pop(wire_id, None)
        if spi is None:
            return hit is not None
        check = self._checks.pop(spi, None)
        if check is None:
            return True
        self._drop(check)
        sa = self.ctl.sas.get(spi)
        wanted = sa.manager.wanted_path if sa is not None else None
        if sa is not None and wanted is not None and same_addresses(wanted, check.event.path):
            self.ctl.begin_move(sa, check.event)
        return True

    def forget(self, spi: str) -> None:
        check = self._checks.pop(spi, None)
        if check is not None:
            self._drop(check)

    def close(self) -> None:
        for spi in list(self._checks):
            self.forget(spi)
        for spi in list(self._early):
            self._drop_early(spi)
        self._deaths.clear()

    def _take_early(self, spi: str, path: Path, now: float) -> _Early | None:
        """The early burst of ``path`` from the last stall, recent enough; it becomes the
        check's (its probes answer the check from now on)."""
        for e in self._early.get(spi, []):
            if same_addresses(e.path, path) and now - e.burst.started <= EARLY_FOR:
                self._early[spi].remove(e)
                self._retire_early(e)
                return e
        return None

    def _drop_early(self, spi: str) -> None:
        for e in self._early.pop(spi, []):
            self._retire_early(e)

    def _retire_early(self, e: _Early) -> None:
        """No more probes of ``e``, and its replies no longer count as early ones."""
        if e.timer is not None:
            e.timer.cancel()
        for wire_id in e.ids:
            self._early_ids.pop(wire_id, None)

    def _pump_early(self, spi: str, e: _Early) -> None:
        e.timer = None
        if e.answered:
            return
        now = self.ctl.now
        while e.burst.due(now):
            wire_id = self._probe(e.path)
            if wire_id is not None:
                e.ids.add(wire_id)
                self._early_ids[wire_id] = (spi, e)
        if not e.burst.missed(now):
            e.timer = asyncio.get_running_loop().call_at(
                max(e.burst.deadline(), now + 0.001), self._pump_early, spi, e)
        else:
            self._target_silent(spi)

    def _target_silent(self, spi: str) -> None:
        """A move already under way (charon steered) when the path it leaves died
        silently: its target missed its early burst while another candidate answered
        one, so it is down too (``target_down``) and the next path, which answered, is
        chosen now rather than at the target's probe timeout (soak: every IPv4 died 36 ms
        after a return to m0's IPv4 began; the failover to IPv6 waited 0.6 s for that)."""
        sa, death, now = self.ctl.sas.get(spi), self._deaths.get(spi), self.ctl.now
        if sa is None or death is None or now - death[1] > EARLY_FOR or spi in self._checks:
            return
        wanted = sa.manager.wanted_path
        early = [e for e in self._early.get(spi, []) if now - e.burst.started <= EARLY_FOR]
        target = next((e for e in early if wanted is not None
                       and same_addresses(e.path, wanted)), None)
        if wanted is None or target is None or target.answered \
                or not target.burst.missed(now) or not any(e.answered for e in early):
            return
        sa.manager.on_move_failed(wanted, RETURN_UNANSWERED, now)
        self.ctl.pump(sa)

    def _drop(self, check: _Check) -> None:
        if check.timer is not None:
            check.timer.cancel()
        for wire_id in check.ids:
            self._ids.pop(wire_id, None)

    def _pump(self, spi: str) -> None:
        check = self._checks.get(spi)
        sa = self.ctl.sas.get(spi)
        if check is None:
            return
        if sa is None:
            self.forget(spi)
            return
        now = self.ctl.now
        burst = check.burst
        while burst.due(now):
            self._send(spi, check)
        if burst.missed(now):
            self.forget(spi)
            # Only an unanswered target on the dead path's own uplink says the uplink
            # died (its other paths are set aside); elsewhere, the target alone is down.
            shared = check.event.reason != "preferred" and self.suspect(
                spi, check.event.path, now)
            sa.manager.on_move_failed(check.event.path,
                                      UNANSWERED if shared else RETURN_UNANSWERED, now)
            self.ctl.pump(sa)
            return
        if check.timer is not None:
            check.timer.cancel()
        check.timer = asyncio.get_running_loop().call_at(
            max(burst.deadline(), now + 0.001), self._pump, spi)

    def _send(self, spi: str, check: _Check) -> None:
        wire_id = self._probe(check.event.path)
        if wire_id is not None:
            self._ids[wire_id] = spi
            check.ids.add(wire_id)

    def _probe(self, path: Path) -> int | None:
        """One probe on ``path``; its wire id, None when it could not go out (then it
        is a miss when its burst times out)."""
        prober = self.ctl.prober
        out = egress(self.ctl.monitor.state, path.local.addr)
        if prober is None or out is None:
            return None
        wire_id = self.ctl.next_wire_id()
        return wire_id if prober.send(path, wire_id, out[0]) else None
