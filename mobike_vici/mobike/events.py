"""Events the path manager hands to its backend: path health, choices and handovers.

Frozen, keyword-only dataclasses with one base class. All but ``MoveRequested`` map
one-to-one onto the event stream (``path_up``, ``path_down``, ``path_selected``,
``handover_started``, ``handover_completed``, ``handover_failed``,
``preference_changed``, ``path_stalled``);
``MoveRequested`` is the instruction the backend carries out (UPDATE_SA_ADDRESSES
natively, steering for charon) and is not logged by itself: ``HandoverStarted``
precedes it with the same data. ``update_rejected`` is the backend's own event.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..types import IPAddress, Path


@dataclass(frozen=True, kw_only=True, slots=True)
class PathEvent:
    path: Path
    """The path the event is about (for handovers: the new one)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PathUp(PathEvent):
    rtt_ms: float
    """The round-trip time of the probe that brought the path up."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PathDown(PathEvent):
    reason: str
    """probe_timeout, link_down, address_removed, peer_address_removed, excluded,
    ike_retransmit, move_failed, unacceptable_addresses, probe_send_failed."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PathSelected(PathEvent):
    reason: str
    """initial, failover, preferred, operator (``mobike-vici move``), peer (the peer
    moved us), backend."""


@dataclass(frozen=True, kw_only=True, slots=True)
class HandoverStarted(PathEvent):
    old_path: Path
    reason: str
    """Same vocabulary as ``PathSelected.reason``."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MoveRequested(PathEvent):
    """Move the IKE_SA (and its CHILD_SAs) from ``old_path`` to ``path``; report back
    with ``on_move_completed`` or ``on_move_failed``."""

    old_path: Path
    reason: str
    timeout: float | None = None
    """How long this attempt may take, from the target path's RTT (None: the backend's
    own bound); past it the backend reports the move failed, and the next candidate
    is tried."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PathStalled(PathEvent):
    """Outbound ESP flows on the active path and nothing came in for ``silent_ms``:
    the path is probed at once (only unanswered probes make it down)."""

    silent_ms: float


@dataclass(frozen=True, kw_only=True, slots=True)
class HandoverCompleted(PathEvent):
    old_path: Path
    duration_ms: float
    """From the move request to the backend's report."""


@dataclass(frozen=True, kw_only=True, slots=True)
class HandoverFailed(PathEvent):
    old_path: Path
    reason: str
    """The backend's reason (e.g. unacceptable_addresses, timeout) or handover_timeout."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PreferenceChanged(PathEvent):
    """The operator's preference changed (``mobike-vici prefer`` or ``move``); ``path``
    is the active path at that moment."""

    preferred_local: IPAddress | None
    """The local address now preferred above any policy rule; None: policy alone."""
    source: str
    """prefer, clear, move, or inherited (a new IKE_SA of the connection took it over)."""


Event = (
    PathUp | PathDown | PathSelected | HandoverStarted | MoveRequested | HandoverCompleted
    | HandoverFailed | PreferenceChanged | PathStalled
)
