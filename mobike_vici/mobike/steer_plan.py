"""The escalation ladder of one controller-driven move of a charon IKE_SA, sans I/O.

The controller cannot tell charon to move an SA; it changes the route charon
follows (``prefer_best_path``) and waits for charon to report the new path. If
charon has not moved by a deadline the controller escalates, one rung at a
time: reauthenticate the IKE_SA (charon builds it anew, from the path the
routes now give it), then terminate it and initiate its children again. Each
rung has its own deadline; after the last one the move has failed.

Time comes in as ``now``; the caller runs the returned ``Action`` and re-arms
one timer at ``deadline``. Nothing escapes the public functions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

from ..types import Path


class Stage(IntEnum):
    ROUTE = 0  # routes changed, waiting for charon's own MOBIKE update
    REAUTH = 1  # asked charon to reauthenticate the IKE_SA
    REINITIATE = 2  # terminated the IKE_SA and initiated its children again
    FAILED = 3


class Action(IntEnum):
    """What the caller has to do now."""

    REAUTH = 1
    REINITIATE = 2
    GIVE_UP = 3


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Seconds each rung gets before the next one is tried."""

    route: float = 2.0  # charon reacts to route changes within ~100 ms plus one exchange
    reauth: float = 5.0
    reinitiate: float = 10.0

    def of(self, stage: Stage) -> float:
        return {Stage.ROUTE: self.route, Stage.REAUTH: self.reauth,
                Stage.REINITIATE: self.reinitiate}.get(stage, 0.0)


@dataclass(frozen=True, slots=True)
class SteerPlan:
    """One move in progress: where to, since when, which rung, until when."""

    ike_spi: str
    target: Path
    old: Path
    started: float
    stage: Stage
    deadline: float

    @property
    def finished(self) -> bool:
        return self.stage == Stage.FAILED


def start(ike_spi: str, target: Path, old: Path, now: float,
          deadlines: Deadlines = Deadlines()) -> SteerPlan:
    """A move just requested: the routes are being changed now."""
    return SteerPlan(ike_spi, target, old, now, Stage.ROUTE, now + deadlines.route)


def reached(plan: SteerPlan, current: Path) -> bool:
    """Whether charon's SA now sits on the target path (addresses; ports may float)."""
    return (current.local.addr == plan.target.local.addr
            and current.remote.addr == plan.target.remote.addr)


def on_timer(plan: SteerPlan, now: float,
             deadlines: Deadlines = Deadlines()) -> tuple[SteerPlan, Action | None]:
    """Escalate when the current rung's deadline has passed; else nothing to do."""
    if plan.finished or now < plan.deadline:
        return plan, None
    if plan.stage == Stage.ROUTE:
        return replace(plan, stage=Stage.REAUTH, deadline=now + deadlines.reauth), Action.REAUTH
    if plan.stage == Stage.REAUTH:
        return (replace(plan, stage=Stage.REINITIATE, deadline=now + deadlines.reinitiate),
                Action.REINITIATE)
    return replace(plan, stage=Stage.FAILED, deadline=now), Action.GIVE_UP

