"""Path choice: ranking by policy, and when to move (failover, hold-down, flap damping).

``rank`` is a pure function of the candidates and the policy. ``Selector`` adds the
little state a choice needs over time: when we last moved. Its rules:

- the active path is down or gone: move at once to the best path that is up, else
  to the best one not known to be down, else (``last_resort``) to the best one only
  probes marked down (not one a failed move or a shared failure set aside); this is
  never damped;
- the active path is fine: move only to a path that is strictly better by policy
  (cost, then family; RTT alone never causes a move, so equal paths do not
  flap), that has been healthy without a miss for ``hold_down``, and only while
  fewer than ``max_moves_per_minute`` moves happened in the last 60 s.
"""

from __future__ import annotations

import ipaddress
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace

from ..config.mobike import AnnounceMode, MobikePolicy, PreferRule
from ..types import IPAddress, Path
from .paths import LocalAddress, PathState

DAMPING_WINDOW = 60.0  # seconds: "moves per minute"
LAST_RESORT = "probe_timeout"
"""The one reason a DOWN path is still tried when nothing else is left."""
OPERATOR_BONUS = 100_000_000
"""Subtracted from the cost of the operator's preferred local address: above any rule
(and above the backend's cross-family cost)."""


@dataclass(frozen=True, slots=True)
class PathInfo:
    """A snapshot of one candidate, what ranking and choice look at."""

    path: Path
    ifname: str
    state: PathState
    srtt: float | None = None
    healthy_since: float | None = None
    loss: float | None = None
    """Probe loss ratio over the last probes (status and metrics only; never ranks)."""
    down_reason: str | None = None
    """Why a DOWN path is down (``probe_timeout``: only probes said so)."""
    last_rtt: float | None = None
    """The newest RTT sample (``srtt`` is the smoothed one; see ``recent_rtt``)."""


def recent_rtt(info: PathInfo) -> float | None:
    """The path's RTT for a data-plane check now: the smoothed one, or the newest sample
    when lower. A latency spike that has ended keeps ``srtt`` high for many probes (a
    standby path, probed every few seconds, for tens of seconds), and a check's waits,
    several RTTs long, would then eat a silent fault's whole outage budget. A spike that
    starts weighs as before (through ``srtt``, then the lower of the two)."""
    if info.srtt is None or info.last_rtt is None:
        return info.srtt
    return min(info.srtt, info.last_rtt)


@dataclass(frozen=True, slots=True)
class Choice:
    path: Path
    reason: str  # failover or preferred


def with_operator_preference(policy: MobikePolicy, local: IPAddress | None) -> MobikePolicy:
    """``policy`` with the operator's preference for ``local`` above every rule (None:
    ``policy`` unchanged). Ranking, hold-down and damping then apply as to any rule."""
    if local is None:
        return policy
    net = ipaddress.ip_network(local)
    rule = PreferRule(name="_operator", prefix=net, cost=-OPERATOR_BONUS)
    return replace(policy, prefer=(rule, *policy.prefer))


def cost(info: PathInfo, policy: MobikePolicy) -> int:
    return policy.cost(info.path.local.addr, info.ifname, info.path.remote.addr)


def preference(info: PathInfo, policy: MobikePolicy) -> tuple[int, int]:
    """What makes a path better by policy: cost, then the preferred family."""
    family = 0 if policy.family is None or info.path.local.addr.version == policy.family else 1
    return cost(info, policy), family


def excluded(info: PathInfo, policy: MobikePolicy) -> bool:
    local, remote = info.path.local.addr, info.path.remote.addr
    return (
        local.version != remote.version
        or policy.excludes_local(local, info.ifname)
        or not policy.allows_peer(remote)
    )


def rank(paths: Iterable[PathInfo], policy: MobikePolicy) -> list[PathInfo]:
    """Best first: policy preference, then smoothed RTT (unmeasured last), then input
    order. Excluded paths are left out."""
    kept = [p for p in paths if not excluded(p, policy)]
    return sorted(
        kept,
        key=lambda p: (*preference(p, policy), p.srtt if p.srtt is not None else math.inf),
    )


def addresses_to_announce(
    policy: MobikePolicy, local: Iterable[LocalAddress], current: IPAddress, peer: IPAddress
) -> list[IPAddress]:
    """Local addresses for ADDITIONAL_*_ADDRESS, without ``current`` (it is in the IP
    header, RFC 4555 §3.6); an empty list means NO_ADDITIONAL_ADDRESSES.

    Every announced address tells the peer where we are (RFC 4555 §5.5), so excluded
    addresses never go out, ``preferred-only`` keeps only the cheapest tier (the
    metered backup uplink stays private until we use it) and a prefix list keeps only
    what is inside it.
    """
    addrs = [a for a in local
             if a.addr != current and not policy.excludes_local(a.addr, a.ifname)]
    if policy.announce == AnnounceMode.PREFIXES:
        return [a.addr for a in addrs
                if any(a.addr.version == n.version and a.addr in n
                       for n in policy.announce_prefixes)]
    if policy.announce == AnnounceMode.PREFERRED_ONLY:
        costs = {a.addr: policy.cost(a.addr, a.ifname, peer) for a in local}
        best = min(costs.values(), default=0)
        return [a.addr for a in addrs if costs[a.addr] == best]
    return [a.addr for a in addrs]


class Selector:
    """Which path to move to now, if any; remembers its moves for flap damping.

    Bound: at most ``max_moves_per_minute`` (at least one) move times are kept.
    """

    def __init__(self, policy: MobikePolicy, *, last_resort: bool = False) -> None:
        self.policy = policy
        self.last_resort = last_resort
        """Try paths only probes marked down when nothing else is left (a backend whose
        move attempts are short and bounded)."""
        self._moves: deque[float] = deque(maxlen=max(1, policy.max_moves_per_minute))

    def record_move(self, now: float) -> None:
        self._moves.append(now)

    def moves_in_window(self, now: float) -> int:
        return sum(1 for t in self._moves if now < t + DAMPING_WINDOW)

    def damped(self, now: float) -> bool:
        limit = self.policy.max_moves_per_minute
        return limit == 0 or self.moves_in_window(now) >= limit

    def choose(
        self,
        ranked: list[PathInfo],
        active: PathInfo | None,
        active_ok: bool,
        now: float,
        *,
        discretionary: bool = True,
    ) -> Choice | None:
        """``ranked`` as ``rank`` returns it; ``active`` None when it is no candidate."""
        current = active.path if active is not None else None
        if not active_ok:
            for states in ((PathState.UP,), (PathState.UNKNOWN, PathState.PROBING)):
                for p in ranked:
                    if p.path != current and p.state in states:
                        return Choice(p.path, "failover")
            for p in ranked if self.last_resort else ():
                # Last resort: a path only lost probes marked down (maybe before the
                # network settled); an attempt is a probe that moves us if it answers.
                if (p.path != current and p.state == PathState.DOWN
                        and p.down_reason == LAST_RESORT):
                    return Choice(p.path, "failover")
            return None
        if not discretionary or active is None:
            return None
        for p in self._eligible_better(ranked, active):
            if now >= self._ready_at(p):
                return None if self.damped(now) else Choice(p.path, "preferred")
        return None

    def next_deadline(
        self,
        ranked: list[PathInfo],
        active: PathInfo | None,
        active_ok: bool,
        now: float,
        *,
        discretionary: bool = True,
    ) -> float | None:
        """When ``choose`` could answer differently without any new input."""
        if not active_ok or not discretionary or active is None:
            return None
        best: float | None = None
        for p in self._eligible_better(ranked, active):
            ready = self._ready_at(p)
            if ready <= now:
                if not self.damped(now) or self.policy.max_moves_per_minute == 0:
                    continue  # choose() moves now, or damping never lets go
                # Held back by damping only: the oldest move leaving the window frees us
                # (the deque is full when damped, so [0] is the oldest one that counts).
                ready = self._moves[0] + DAMPING_WINDOW
            best = ready if best is None else min(best, ready)
        return best

    def _eligible_better(self, ranked: list[PathInfo], active: PathInfo) -> list[PathInfo]:
        mine = preference(active, self.policy)
        return [
            p for p in ranked
            if p.path != active.path
            and p.state == PathState.UP
            and p.healthy_since is not None
            and preference(p, self.policy) < mine
        ]

    def _ready_at(self, p: PathInfo) -> float:
        assert p.healthy_since is not None
        return p.healthy_since + self.policy.hold_down
