"""The native daemon's data path check after its moves: one ``mobike.health.MoveCheck``
per IKE_SA that moved, fed by core events and the userspace data plane's counters, and
the CHILD_SA rekeys it asks for (asked again at RTT pace when the peer answers one with
TEMPORARY_FAILURE). Whether the peer's ESP is expected back is judged from the flow's
history before the fault, as the path manager saw it (``mobike.health.Flow``).

Thin like the rest of the daemon: ``on_core_event`` for every engine event, ``handle_timer``
when ``get_timer`` is due (it samples the counters of the IKE_SAs under check, and only
theirs), then ``take_log`` for the events to write. Checks exist only from a move to its
verdict, so the work is bounded by the moves in progress, not by the number of SAs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from ..core.events import (
    ChildSaDeleted,
    ChildSaRekeyed,
    Event,
    ExchangeFailed,
    IkeSaDeleted,
    IkeSaMoved,
    IkeSaRekeyed,
)
from ..eventlog import event_fields
from ..mobike import health as v
from ..mobike.health import settings_of
from ..mobike.manager import PathManager
from ..mobike.paths import PathTable
from ..types import Path

Fields = dict[str, object]

__all__ = ["DataPathWatch", "path_flow", "path_srtt", "settings_of"]

DELETE_OVERDUE = 0.5
"""Seconds after a CHILD_SA rekey that the old CHILD_SA may still live: a rekey's
initiator deletes it right after the answer (RFC 7296 §2.8), so one older than this at
a move means that side's exchange is stuck (a request or its answer was lost), and it
starts no other until its retransmission (``MoveCheck``'s ``peer_busy``)."""
MAX_REKEYED = 256
"""Rekeyed CHILD_SAs remembered at most (each is forgotten when it is deleted)."""

REFUSED_FOR_NOW = "TEMPORARY_FAILURE"
"""In an ``ExchangeFailed`` reason: the peer refused our rekey while its own IKE_SA rekey
is in flight (RFC 7296 §2.25); asking again soon succeeds once that completes."""


class Child(Protocol):
    """What the check reads of a data plane CHILD_SA (``esp.dataplane.ChildEntry``)."""

    @property
    def unique_id(self) -> int: ...
    @property
    def replaced(self) -> bool: ...
    @property
    def expired(self) -> bool: ...
    def counters(self) -> dict[str, int]: ...


class Children(Protocol):
    """The data plane's CHILD_SAs of one IKE_SA (``esp.dataplane.DataPlane``)."""

    def children_of(self, ike_spi: str) -> Sequence[Child]: ...


class Rekeyer(Protocol):
    """What the check uses of ``core.engine.Engine``."""

    def rekey_child(self, unique_id: int, now: float) -> None: ...


Srtt = Callable[[str, Path], float | None]
"""The smoothed RTT of a path of an IKE_SA, in seconds (None: not measured)."""


Flows = Callable[[str], v.Flow | None]
"""The traffic's history of an IKE_SA (None: not watched, so nothing is expected back)."""


def _no_srtt(ike_spi: str, path: Path) -> float | None:
    return None


def _no_flow(ike_spi: str) -> v.Flow | None:
    return None


class DataPathWatch:
    """Every IKE_SA's data path check; see the module docstring."""

    def __init__(self, engine: Rekeyer, plane: Children, settings: v.HealthSettings,
                 srtt: Srtt = _no_srtt, flows: Flows = _no_flow) -> None:
        self.engine = engine
        self.plane = plane
        self.settings = settings
        self._srtt = srtt
        self._flows = flows
        self._checks: dict[str, tuple[str, v.MoveCheck]] = {}
        """ike_spi -> (conn, its check), only while a check runs."""
        self._log: list[tuple[str, Fields]] = []
        self._rekeyed_at: dict[int, float] = {}
        """unique_id of a rekeyed CHILD_SA not deleted yet -> when it was rekeyed."""
        self.calls = 0
        """Calls into the engine so far: the daemon flushes after they grew."""
        self.errors = 0
        """Rekeys the engine refused (the CHILD_SA went meanwhile): counted, never fatal."""

    @property
    def checking(self) -> list[str]:
        """The IKE_SAs whose data path is being checked now."""
        return list(self._checks)

    def set_settings(self, settings: v.HealthSettings) -> None:
        """A reloaded policy: for the next moves (a running check keeps its bounds)."""
        self.settings = settings

    # -- inputs -----------------------------------------------------------------------

    def on_core_event(self, event: Event, now: float) -> None:
        match event:
            case IkeSaMoved():
                # Also an update on the same path: the NAT before us rebound (RFC 4555
                # §3.8), and the peer's ESP goes to the old public port until it updates.
                self._moved(event, now)
            case ChildSaRekeyed():
                if len(self._rekeyed_at) >= MAX_REKEYED:
                    del self._rekeyed_at[next(iter(self._rekeyed_at))]
                self._rekeyed_at[event.old_unique_id] = now
                found = self._checks.get(event.ike_spi)
                if found is not None:
                    found[1].on_rekeyed(now)
            case ExchangeFailed() if (event.exchange == "CREATE_CHILD_SA"
                                      and REFUSED_FOR_NOW in event.reason):
                found = self._checks.get(event.ike_spi)
                if found is not None:
                    found[1].on_repair_refused(now)
            case ChildSaDeleted():
                self._rekeyed_at.pop(event.unique_id, None)
            case IkeSaRekeyed():
                found = self._checks.pop(event.ike_spi, None)
                if found is not None:
                    self._checks[event.new_ike_spi] = found
            case IkeSaDeleted():
                found = self._checks.pop(event.ike_spi, None)
                if found is not None:
                    found[1].cancel()
            case _:
                pass

    def handle_timer(self, now: float) -> None:
        """Sample the IKE_SAs whose check is due; carry out repairs; queue the verdicts."""
        for spi, (conn, check) in list(self._checks.items()):
            due = check.get_timer()
            if due is None or due > now:
                continue
            check.observe(self._sample(spi), now)
            self._drain(spi, conn, check, now)

    # -- outputs ----------------------------------------------------------------------

    def get_timer(self) -> float | None:
        times = [t for _, c in self._checks.values() if (t := c.get_timer()) is not None]
        return min(times) if times else None

    def take_log(self) -> list[tuple[str, Fields]]:
        out, self._log = self._log, []
        return out

    # -- internals --------------------------------------------------------------------

    def _moved(self, event: IkeSaMoved, now: float) -> None:
        if self.settings.verify_timeout <= 0:
            return
        check = v.MoveCheck(self.settings)
        check.on_moved(event.new_path, event.old_path, started=now - event.duration,
                       srtt=self._srtt(event.ike_spi, event.new_path),
                       sample=self._sample(event.ike_spi), flow=self._flows(event.ike_spi),
                       now=now, peer_busy=self._delete_overdue(event.ike_spi, now))
        self._checks[event.ike_spi] = (event.conn, check)
        self._drain(event.ike_spi, event.conn, check, now)

    def _delete_overdue(self, ike_spi: str, now: float) -> bool:
        """A CHILD_SA of the IKE_SA was rekeyed over DELETE_OVERDUE ago and still lives."""
        return any(now - at > DELETE_OVERDUE for child in self.plane.children_of(ike_spi)
                   if (at := self._rekeyed_at.get(child.unique_id)) is not None)

    def _sample(self, ike_spi: str) -> dict[int, tuple[int, int]]:
        """The counters of the IKE_SA's CHILD_SAs."""
        sample: dict[int, tuple[int, int]] = {}
        for child in self.plane.children_of(ike_spi):
            c = child.counters()
            sample[child.unique_id] = (c["packets_in"], c["packets_out"])
        return sample

    def _drain(self, spi: str, conn: str, check: v.MoveCheck, now: float) -> None:
        while (event := check.next_event()) is not None:
            name, fields = event_fields(event, conn=conn, ike_spi=spi)
            if isinstance(event, v.RepairRequested):
                fields["children"] = self._repair(spi, now)
            self._log.append((name, fields))
        if check.phase is v.Phase.DONE and self._checks.get(spi, (None, None))[1] is check:
            del self._checks[spi]

    def _repair(self, spi: str, now: float) -> list[int]:
        """Rekey every current CHILD_SA of the IKE_SA; returns the unique_ids asked for."""
        asked: list[int] = []
        for child in self.plane.children_of(spi):
            if child.replaced or child.expired:
                continue  # a rekey of it is under way already, or it carries nothing
            self.calls += 1
            try:
                self.engine.rekey_child(child.unique_id, now)
            except KeyError:
                self.errors += 1
                continue
            asked.append(child.unique_id)
        return asked


def path_srtt(managers: Callable[[str], PathManager | None]) -> Srtt:
    """The smoothed RTT of a path as the IKE_SA's path manager measured it by probes."""

    def srtt(ike_spi: str, path: Path) -> float | None:
        mgr = managers(ike_spi)
        if mgr is None:
            return None
        key = PathTable.key_of(path)
        return next((info.srtt for info in mgr.paths() if PathTable.key_of(info.path) == key),
                    None)

    return srtt


def path_flow(managers: Callable[[str], PathManager | None]) -> Flows:
    """The traffic's history of an IKE_SA as its path manager was fed it."""

    def flow(ike_spi: str) -> v.Flow | None:
        mgr = managers(ike_spi)
        return mgr.flow if mgr is not None else None

    return flow
