"""How long one move attempt may take, and which candidates a failed attempt rules out.

Pure helpers of the path manager. A move attempt (UPDATE_SA_ADDRESSES on the target
path) is given a few retransmission timeouts of that path, as its probes measured
them, instead of a fixed bound: a target that silently died with the old path is
given up in a fraction of a second. When the attempt fails the same way as the path
it left, what both share is probably what died: the same interface (the uplink), or
the same address family on two interfaces (e.g. IPv4 gone upstream, IPv6 left).
Candidates sharing it are set aside until a probe proves them again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..config.mobike import MobikePolicy
from ..types import Path
from .paths import Key, PathState, PathTable, RttEstimator

MOVE_RTOS = 4
"""An attempt may take this many RTOs (SRTT + 4 RTTVAR) of its target path: the update
may wait one round trip behind a request still outstanding, then takes its own."""
INTERFACE_DOWN = "interface_down"
FAMILY_DOWN = "family_down"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One move attempt under way: to ``target``, leaving ``old``."""

    target: Key
    old: Path
    started: float
    reason: str
    timeout: float | None = None
    """The attempt's own bound (from the target's RTT); None: ``handover_timeout``."""

    def deadline(self, policy: MobikePolicy) -> float:
        # Also when the backend's update waits behind a request of its own that the
        # dead path never answers: the attempt is over, the next candidate is tried.
        bound = self.timeout if self.timeout is not None else policy.handover_timeout
        return self.started + min(bound, policy.handover_timeout)


def attempt_timeout(rtt: RttEstimator, floor: float, cap: float) -> float | None:
    """The bound of one move attempt on a path with this RTT, within [floor, cap];
    None for a path no probe has measured (a responder's): the backend's own bound."""
    srtt = rtt.srtt
    if srtt is None:
        return None
    return min(max(floor, MOVE_RTOS * (srtt + 4 * rtt.rttvar)), max(floor, cap))


def shared_failure(failed: Key, target: Key, ifname: Callable[[Key], str],
                   candidates: Iterable[Key]) -> tuple[str, list[Key]] | None:
    """What ``failed`` (the path left) and ``target`` (the attempt that failed too) have
    in common, and the other candidates that share it; None when nothing is shared.

    The interface counts first (one uplink died, whatever the family); else the
    family, when the two failures are of one family on different interfaces.
    """
    if failed == target:
        return None
    name = ifname(failed)
    if name and name == ifname(target):
        reason = INTERFACE_DOWN
        others = [k for k in candidates if ifname(k) == name]
    elif failed[0].version == target[0].version:
        reason = FAMILY_DOWN
        others = [k for k in candidates if k[0].version == failed[0].version]
    else:
        return None
    return reason, [k for k in others if k not in (failed, target)]


def set_aside(table: PathTable, failed: Key, target: Key,
              since: float) -> tuple[str, list[Key]] | None:
    """The attempt on ``target`` (begun at ``since``) failed after ``failed`` went down:
    the reason and the candidates sharing what both share that no probe proved since."""
    if failed not in table or table.health(failed).state != PathState.DOWN:
        return None
    shared = shared_failure(failed, target, table.ifname, table.candidate_keys())
    if shared is None:
        return None
    reason, keys = shared
    return reason, [k for k in keys
                    if (last := table.health(k).last_success) is None or last < since]
