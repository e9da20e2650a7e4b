"""The native daemon's data path check after its moves: one ``mobike.verify.DataPathCheck``
per IKE_SA that moved, fed by core events and the userspace data plane's counters, and
the CHILD_SA rekeys it asks for.

Thin like the rest of the daemon: ``on_core_event`` for every engine event, ``handle_timer``
when ``get_timer`` is due (it samples the counters of the IKE_SAs under check, and only
theirs), then ``take_log`` for the events to write. Checks exist only from a move to its
verdict, so the work is bounded by the moves in progress, not by the number of SAs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from ..config.mobike import MobikePolicy
from ..core.events import ChildSaRekeyed, Event, IkeSaDeleted, IkeSaMoved, IkeSaRekeyed
from ..esp.dataplane import IN_PAUSE
from ..mobike import verify as v
from ..mobike.manager import PathManager
from ..mobike.paths import PathTable
from ..types import Path

Fields = dict[str, object]

ACTIVE_MARGIN = 1.0
"""Added to the time a dead path takes to detect for ``VerifySettings.active_window``: a
peer that sent nothing for that long before we moved is not expected to send after."""


class Child(Protocol):
    """What the check reads of a data plane CHILD_SA (``esp.dataplane.ChildEntry``)."""

    @property
    def unique_id(self) -> int: ...
    @property
    def last_in(self) -> float | None: ...
    @property
    def in_since(self) -> float | None: ...
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


def settings_of(policy: MobikePolicy) -> v.VerifySettings:
    """The check's settings from ``mobike { }``: the peer counts as sending when its ESP
    came within the time a silently dead path takes to detect, plus a margin."""
    detect = policy.probe_interval * policy.probe_misses + policy.probe_timeout
    return v.VerifySettings(verify_timeout=policy.verify_timeout,
                            repair_timeout=policy.repair_timeout,
                            active_window=detect + ACTIVE_MARGIN)


Srtt = Callable[[str, Path], float | None]
"""The smoothed RTT of a path of an IKE_SA, in seconds (None: not measured)."""


def _no_srtt(ike_spi: str, path: Path) -> float | None:
    return None


class DataPathWatch:
    """Every IKE_SA's data path check; see the module docstring."""

    def __init__(self, engine: Rekeyer, plane: Children, settings: v.VerifySettings,
                 srtt: Srtt = _no_srtt) -> None:
        self.engine = engine
        self.plane = plane
        self.settings = settings
        self._srtt = srtt
        self._checks: dict[str, tuple[str, v.DataPathCheck]] = {}
        """ike_spi -> (conn, its check), only while a check runs."""
        self._log: list[tuple[str, Fields]] = []
        self.calls = 0
        """Calls into the engine so far: the daemon flushes after they grew."""
        self.errors = 0
        """Rekeys the engine refused (the CHILD_SA went meanwhile): counted, never fatal."""

    @property
    def checking(self) -> list[str]:
        """The IKE_SAs whose data path is being checked now."""
        return list(self._checks)

    def set_settings(self, settings: v.VerifySettings) -> None:
        """A reloaded policy: for the next moves (a running check keeps its bounds)."""
        self.settings = settings

    # -- inputs -----------------------------------------------------------------------

    def on_core_event(self, event: Event, now: float) -> None:
        match event:
            case IkeSaMoved() if event.new_path != event.old_path:
                self._moved(event, now)
            case ChildSaRekeyed():
                found = self._checks.get(event.ike_spi)
                if found is not None:
                    found[1].on_rekeyed(now)
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
            check.observe(self._sample(spi)[0], now)
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
        sample, (last_in, in_since) = self._sample(event.ike_spi)
        check = v.DataPathCheck(self.settings)
        check.on_moved(event.new_path, event.old_path, started=now - event.duration,
                       srtt=self._srtt(event.ike_spi, event.new_path), sample=sample,
                       last_inbound=last_in, inbound_since=in_since, now=now)
        self._checks[event.ike_spi] = (event.conn, check)
        self._drain(event.ike_spi, event.conn, check, now)

    def _sample(self, ike_spi: str
                ) -> tuple[dict[int, tuple[int, int]], tuple[float | None, float | None]]:
        """The counters of the IKE_SA's CHILD_SAs, and (when the peer last sent, since when
        it had been sending without a long pause), its runs on several SAs joined."""
        sample: dict[int, tuple[int, int]] = {}
        runs: list[tuple[float, float]] = []
        for child in self.plane.children_of(ike_spi):
            c = child.counters()
            sample[child.unique_id] = (c["packets_in"], c["packets_out"])
            if child.last_in is not None and child.in_since is not None:
                runs.append((child.last_in, child.in_since))
        if not runs:
            return sample, (None, None)
        runs.sort(reverse=True)
        last, since = runs[0]
        for end, start in runs[1:]:
            if end >= since - IN_PAUSE:  # a rekey: the peer went on on the new SA
                since = min(since, start)
        return sample, (last, since)

    def _drain(self, spi: str, conn: str, check: v.DataPathCheck, now: float) -> None:
        while (event := check.next_event()) is not None:
            name, fields = check_event_fields(conn, spi, event)
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


def check_event_fields(conn: str, ike_spi: str, event: v.Event) -> tuple[str, Fields]:
    """The stream name and fields of a data path check's event."""
    base: Fields = {"conn": conn, "ike_spi": ike_spi, "local": str(event.path.local),
                    "remote": str(event.path.remote)}
    match event:
        case v.DataPathVerified():
            return "data_path_verified", {**base, "after_ms": event.after_ms}
        case v.DataPathUnverified():
            return "data_path_unverified", {**base, "reason": event.reason}
        case v.RepairRequested():
            return "data_path_repair_started", {**base, "waited_ms": event.waited_ms}
        case v.DataPathRepaired():
            return "data_path_repaired", {**base, "dead_ms": event.dead_ms,
                                          "repair_ms": event.repair_ms}
        case v.DataPathDead():
            return "handover_failed", {**base, "old_local": str(event.old_path.local),
                                       "old_remote": str(event.old_path.remote),
                                       "reason": event.reason, "rekeyed": event.rekeyed,
                                       "dead_ms": event.dead_ms}


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
