"""The path manager of one IKE_SA: probes, health verdicts and move decisions, sans I/O.

Modelled on aioquic's connection: after every input (``on_*`` with ``now``, or
``handle_timer(now)`` when the timer from ``get_timer()`` fires) the backend drains
``probes_to_send(now)`` and ``next_event()`` and re-arms that one timer.

A probe is an empty protected INFORMATIONAL request on that path (RFC 4555 §3.5; by §3.8 it
changes nothing at the peer); the backend sends it and reports the reply by probe id. On a
``MoveRequested`` event the backend moves the SA and reports back with ``on_move_completed``
or ``on_move_failed``.

Probing (bounded: at most ``max_probes_in_flight`` probes per IKE_SA in flight): the active
path every ``probe_interval``; a new or unresolved path at the same pace until it has a
verdict, one probe at a time; idle standby paths every ``standby_probe_interval``; all paths
at the fast pace while the active path is not healthy. While no path works, every path (down
ones too) is probed at the fast pace, the longest unprobed first, so each pair is tried
every ``probe_interval`` + ``probe_timeout`` or so. A probe answered after its timeout still
brings its path up (the last ``LATE_PROBES`` are remembered). While a move attempt with its
own bound is in flight (``attempt_bounds``), only its target is probed: the engine's one
request slot is the update's until it is answered or given up. A responder
(``initiator=False``) does not probe: RFC 4555 lets only the initiator choose paths, and a
responder moves only when its own address goes.

Data plane (``on_traffic``, see ``health``): when outbound ESP flows on the active path and
nothing comes in, the active path is probed at once with a short timeout, so a dead path is
down after a quick burst of misses; only probe misses make it down. When the first probe of
a stall is missed, every candidate is probed with the active path's next one, and the best
candidate that answers wins unless the active path answers within a few of that candidate's
RTTs (``race``). Each move attempt is bounded by the target path's RTT (``failover``); when
it fails like the path it left, candidates sharing their interface or family are set aside,
and the next candidate is tried at once: up paths, then unknown ones, then, as a last
resort, paths only probes had marked down (they may have been lost before the network
settled).

No exception escapes a public method for any input; unknown probe ids, paths or interfaces
are ignored.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from ..config.mobike import MobikePolicy
from ..types import Endpoint, IPAddress, Path
from .events import (
    Event,
    HandoverCompleted,
    HandoverFailed,
    HandoverStarted,
    MoveRequested,
    PathDown,
    PathSelected,
    PathStalled,
    PathUp,
    PreferenceChanged,
)
from .failover import Attempt, attempt_timeout, set_aside
from .health import Flow, Stall
from .paths import Key, LocalAddress, PathState, PathTable
from .policy import (
    Choice,
    PathInfo,
    Selector,
    addresses_to_announce,
    rank,
    with_operator_preference,
)
from .race import LOST, Race

# A path the peer refused (UNACCEPTABLE_ADDRESSES) is neither probed nor tried for this long;
# its policy rarely changes, but a restart of the peer's daemon may change it.
UNACCEPTABLE_RETRY = 60.0
# The backend drains events after every call; the bound guards against one that does not.
MAX_EVENTS = 256
UNMEASURED_ATTEMPT = 2
"""Probe timeouts a move attempt to a path no probe has measured may take."""
LATE_PROBES = 32
"""Timed-out probes remembered per IKE_SA: a late answer still brings the path up."""
UNACCEPTABLE = "unacceptable_addresses"
OPERATOR = "operator"
ATTEMPT_TIMEOUT = "attempt_timeout"
NO_ANSWER = frozenset({"timeout", "handover_timeout", ATTEMPT_TIMEOUT})
"""Move failures that mean the target did not answer (the others say nothing of it)."""


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    path: Path
    probe_id: int


@dataclass(slots=True)
class _Probe:
    key: Key
    sent: float
    up: bool = True  # the path was up when it left: a late answer says it is slow


class PathManager:
    """Path health and choice for one IKE_SA; see the module docstring for the protocol."""

    def __init__(
        self,
        policy: MobikePolicy,
        active: Path,
        local_addresses: Iterable[LocalAddress],
        peer_addresses: Iterable[IPAddress] = (),
        *,
        now: float,
        initiator: bool = True,
        attempt_bounds: bool = False,
    ) -> None:
        self.policy = policy
        self.attempt_bounds = attempt_bounds
        """Bound each move attempt by its target's RTT (a backend that moves the SA itself
        in one exchange); False: ``handover_timeout`` (charon, steered by routes, may
        take several stages)."""
        self._base_policy = policy
        self.preferred_local: IPAddress | None = None
        """The operator's preferred local address (``prefer``/``move``), above policy."""
        self.initiator = initiator
        self._last_now = now
        self.table = PathTable(policy, active.local.port, active.remote.port)
        self.table.set_local_addresses(local_addresses)
        self.table.set_peer_addresses(peer_addresses, active.remote.addr)
        self.selector = Selector(policy, last_resort=attempt_bounds)
        self._active: Key = PathTable.key_of(active)
        self._active_path = active
        self._probes: dict[int, _Probe] = {}
        self._late: OrderedDict[int, _Probe] = OrderedDict()
        self._ids = itertools.count(1)
        self._pending: Attempt | None = None
        self._stall = Stall(policy.stall_timeout, policy.probe_interval)
        self._race: Race | None = None
        """The stalled active path against the candidates (see ``race``)."""
        self._events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._emit(PathSelected(path=active, reason="initial"))
        self._decide(now)

    # -- state ------------------------------------------------------------------------

    @property
    def active_path(self) -> Path:
        return self._active_path

    @property
    def wanted_path(self) -> Path | None:
        """The target of the move in progress, if any."""
        return self.table.path(self._pending.target) if self._pending is not None else None

    def paths(self) -> list[PathInfo]:
        """Every candidate, best first (for status output)."""
        return rank((self._info(k) for k in self.table.candidate_keys()), self.policy)

    def announced_addresses(self) -> list[IPAddress]:
        """What to send the peer as ADDITIONAL_*_ADDRESS now (see ``addresses_to_announce``)."""
        return addresses_to_announce(self.policy, self.table.local_addresses(),
                                     self._active[0], self._active[1])

    def in_flight(self) -> int:
        return len(self._probes)

    @property
    def flow(self) -> Flow:
        """The data plane's traffic so far, as ``on_traffic`` reported it."""
        return self._stall.flow

    # -- inputs: the operator -------------------------------------------------------------

    def set_preferred_local(self, local: IPAddress | None, now: float,
                            source: str = "prefer") -> str | None:
        """Prefer paths from ``local`` above every policy rule (None: policy alone).

        The move itself goes through the usual choice: the preferred path must be up
        and healthy for ``hold_down``, and damping applies. Returns why the
        preference was refused (``excluded``), else None.
        """
        if local is not None and self._excluded_local(local):
            return "excluded"
        self._prefer(local, "clear" if local is None else source)
        self._decide(now)
        return None

    def request_move(self, local: IPAddress, now: float) -> str | None:
        """Move to a path from ``local`` now, and keep preferring it (as ``prefer`` does).

        Skips hold-down and damping (the operator asked), not health: returns why the
        move was refused (responder, excluded, no_such_path, already_active,
        move_in_progress, link_down, path_down, path_unverified), else None.
        """
        self._last_now = max(self._last_now, now)
        if not self.initiator:
            return "responder"  # RFC 4555 §3.1: the initiator decides
        if self._excluded_local(local):
            return "excluded"
        keys = [k for k in self.table.candidate_keys() if k[0] == local]
        if not keys:
            return "no_such_path"
        if self._active[0] == local:
            return "already_active"
        if self._pending is not None:
            return "move_in_progress"
        infos = [self._info(k) for k in keys]
        if all(self.table.health(k).link_down for k in keys):
            return "link_down"
        usable = [i for i in rank(infos, self.policy)
                  if self.table.health(PathTable.key_of(i.path)).usable(now)]
        up = [i for i in usable if i.state == PathState.UP]
        if not up:
            return "path_down" if all(i.state == PathState.DOWN for i in infos) \
                else "path_unverified"
        target = up[0].path
        self._prefer(local, "move")
        old = self._active_path
        bound = self._attempt_timeout(PathTable.key_of(target))
        self._pending = Attempt(PathTable.key_of(target), old, now, OPERATOR, bound)
        self._attempt_started()
        self.selector.record_move(now)
        self._emit(PathSelected(path=target, reason=OPERATOR))
        self._emit(HandoverStarted(path=target, old_path=old, reason=OPERATOR))
        self._emit(MoveRequested(path=target, old_path=old, reason=OPERATOR, timeout=bound))
        return None

    # -- outputs ----------------------------------------------------------------------

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def probes_to_send(self, now: float) -> list[ProbeRequest]:
        """Probes due now; each is in flight from ``now`` (see ``on_probe_sent``)."""
        out: list[ProbeRequest] = []
        if not self.initiator:
            return out
        for key in self._probe_order():
            if len(self._probes) >= self.policy.max_probes_in_flight:
                break
            due = self._probe_due(key, now)
            if due is None or due > now:
                continue
            probe_id = next(self._ids)
            h = self.table.health(key)
            self._probes[probe_id] = _Probe(key, now, h.state == PathState.UP)
            h.last_probe, h.in_flight = now, h.in_flight + 1
            if h.state == PathState.UNKNOWN:
                h.state = PathState.PROBING
            out.append(ProbeRequest(self.table.path(key), probe_id))
        return out

    def get_timer(self) -> float | None:
        """The next instant ``handle_timer`` has work; None when there is none."""
        times: list[float] = []
        for probe in self._probes.values():
            times.append(probe.sent + self._timeout(probe.key))
        if self.initiator:
            for key in self.table.candidate_keys():
                h = self.table.health(key)
                if h.unusable_until is not None:
                    times.append(h.unusable_until)
            if len(self._probes) < self.policy.max_probes_in_flight:
                for key in self.table.candidate_keys():
                    due = self._probe_due(key, None)
                    if due is not None:
                        times.append(due)
        if self._race is not None and self._race.decide_at is not None:
            times.append(self._race.decide_at)
        if self._pending is not None:
            times.append(self._pending.deadline(self.policy))
        else:
            ranked, active, ok = self._view(None)
            t = self.selector.next_deadline(
                ranked, active, ok, self._last_now, discretionary=self.initiator
            )
            if t is not None:
                times.append(t)
        return min(times) if times else None

    # -- inputs: time and probes --------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        self._last_now = max(self._last_now, now)
        for probe_id, probe in list(self._probes.items()):
            if now >= probe.sent + self._timeout(probe.key):
                del self._probes[probe_id]
                self._late[probe_id] = probe
                if len(self._late) > LATE_PROBES:
                    self._late.popitem(last=False)
                self._missed(probe.key, now)
        for key in self.table.candidate_keys():
            h = self.table.health(key)
            if h.unusable_until is not None and now >= h.unusable_until:
                h.unusable_until = None
        pending = self._pending
        if pending is not None and now >= pending.deadline(self.policy):
            self._move_failed(pending.target, "handover_timeout" if pending.timeout is None
                              else ATTEMPT_TIMEOUT, now)
        self._decide(now)

    def on_probe_sent(self, probe_id: int, now: float) -> None:
        """The probe left later than ``probes_to_send`` said (the backend queued it)."""
        probe = self._probes.get(probe_id)
        if probe is not None:
            probe.sent = now
            if probe.key in self.table:
                self.table.health(probe.key).last_probe = now

    def on_probe_reply(self, probe_id: int, now: float, rtt: float | None = None) -> None:
        """A valid protected reply to the probe; a late one (timed out already) still
        proves its path; unknown ids are ignored. ``rtt``: the backend's own measure
        (a probe may wait for a request to ride before it leaves); else from when
        ``probes_to_send`` handed it out."""
        probe = self._probes.pop(probe_id, None)
        late = probe is None
        if probe is None:
            probe = self._late.pop(probe_id, None)
        if probe is None or probe.key not in self.table:
            return
        h = self.table.health(probe.key)
        if not late:
            h.in_flight = max(0, h.in_flight - 1)
        h.outcomes.append(True)
        if probe.key == self._active:
            self._stall.on_alive()
            self._race = None
        if rtt is None:
            rtt = now - probe.sent
        # A late answer to a probe sent into an outage (queued for ARP after a link
        # flap) proves the path, but its RTT is the outage's: no sample.
        if h.success(None if late and not probe.up else rtt, now):
            self._emit(PathUp(path=self.table.path(probe.key), rtt_ms=rtt * 1000.0))
        if self._race is not None and probe.key != self._active and now > self._race.since:
            self._race.on_candidate_answer(now, rtt)
        self._decide(now)

    def on_probe_failed(self, probe_id: int, now: float) -> None:
        """The probe could not be sent (e.g. no route): a miss, without waiting."""
        self._late.pop(probe_id, None)
        probe = self._probes.pop(probe_id, None)
        if probe is not None:
            self._missed(probe.key, now)
            self._decide(now)

    # -- inputs: the data plane ---------------------------------------------------------

    def on_traffic(self, inbound: int, outbound: int, now: float) -> bool:
        """ESP packets of this IKE_SA's CHILD_SAs in and out since the last call (the
        backend samples its counters every few tens of ms). True when the sample
        started a stall: the active path wants a probe now (``probes_to_send``)."""
        self._last_now = max(self._last_now, now)
        if not self.initiator or self._active not in self.table:
            return False
        h = self.table.health(self._active)
        if inbound > 0:
            self._race = None  # the active path lives
        first_out = self._stall.first_out
        if not self._stall.on_traffic(inbound, outbound, now, h.rtt.srtt):
            return False
        if self._stall.backoff == 0:  # one-way traffic says it once, not every probe
            silent = now - first_out if first_out is not None else 0.0
            self._emit(PathStalled(path=self._active_path, silent_ms=silent * 1000.0))
        return True

    # -- inputs: the network ------------------------------------------------------------

    def set_local_addresses(self, addrs: Iterable[LocalAddress], now: float) -> None:
        self._removed(self.table.set_local_addresses(addrs), "address_removed", now)

    def on_address_added(self, addr: LocalAddress, now: float) -> None:
        self._removed(self.table.add_local_address(addr), "address_removed", now)

    def on_address_removed(self, addr: IPAddress, now: float) -> None:
        self._removed(self.table.remove_local_address(addr), "address_removed", now)

    def on_peer_addresses(self, addrs: Iterable[IPAddress], now: float,
                          current: IPAddress | None = None) -> None:
        """The peer's ADDITIONAL_*_ADDRESS list (empty for NO_ADDITIONAL_ADDRESSES)."""
        cur = current if current is not None else self._active[1]
        self._removed(self.table.set_peer_addresses(addrs, cur), "peer_address_removed", now)

    def on_link_down(self, ifname: str, now: float) -> None:
        for key in self.table.set_link(ifname, up=False):
            self._drop_probes(key)
            self._fail(key, "link_down")
        self._decide(now)

    def on_link_up(self, ifname: str, now: float) -> None:
        for key in self.table.set_link(ifname, up=True):
            h = self.table.health(key)
            h.last_probe = None  # find out at once
            if h.state != PathState.UP:
                h.state = PathState.UNKNOWN
        self._decide(now)

    def set_policy(self, policy: MobikePolicy, now: float) -> None:
        """A reloaded ``mobike { }`` policy: applies from now on, paths and their health kept."""
        self.policy = policy
        self.table.policy = policy
        self._stall.floor, self._stall.cap = policy.stall_timeout, policy.probe_interval
        moves = list(self.selector._moves)  # the damping history survives
        self.selector = Selector(policy, last_resort=self.attempt_bounds)
        for t in moves[-max(1, policy.max_moves_per_minute):]:
            self.selector.record_move(t)
        self._decide(now)

    def on_route_changed(self, now: float) -> None:
        """Routes changed: a hint only (RFC 4555 §3.5), so probe everything soon."""
        for key in self.table.candidate_keys():
            h = self.table.health(key)
            if h.in_flight == 0:
                h.last_probe = None
        self._decide(now)

    # -- inputs: the IKE_SA ---------------------------------------------------------------

    def on_active_path_failed(self, now: float, reason: str = "ike_retransmit",
                              hold: float = 0.0) -> None:
        """IKE retransmissions on the active path went unanswered (or, ``data_plane``,
        inbound ESP stopped and a burst of probes went unanswered). ``hold``: seconds it
        stays out of the choice, unprobed (ESP died there while IKE and probes pass)."""
        if self._active in self.table:
            self._fail(self._active, reason)
            if hold > 0:
                self.table.health(self._active).unusable_until = now + hold
        self._decide(now)

    def on_active_path_changed(self, path: Path, now: float) -> None:
        """The peer moved us (we are responder), or the backend moved on its own."""
        key = PathTable.key_of(path)
        if key == self._active and path == self._active_path:
            return
        self._set_active(path)
        self._emit(PathSelected(path=path, reason="peer"))
        self._decide(now)

    def on_move_completed(self, path: Path, now: float) -> None:
        """The backend finished moving to ``path``; the exchange proved the path works."""
        key = PathTable.key_of(path)
        old = self._active_path
        pending = self._pending
        started = pending.started if pending is not None else now
        self._pending = None
        self._set_active(path)
        if key in self.table:
            h = self.table.health(key)
            if h.success(None, now):
                self._emit(PathUp(path=path, rtt_ms=(now - started) * 1000.0))
        self._emit(HandoverCompleted(path=path, old_path=old,
                                     duration_ms=max(0.0, now - started) * 1000.0))
        self._decide(now)

    def on_move_failed(self, path: Path, reason: str, now: float) -> None:
        """The move to ``path`` failed; ``unacceptable_addresses`` shelves the path."""
        self._move_failed(PathTable.key_of(path), reason, now)
        self._decide(now)

    # -- internals --------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _excluded_local(self, local: IPAddress) -> bool:
        ifname = next((a.ifname for a in self.table.local_addresses() if a.addr == local), "")
        return self._base_policy.excludes_local(local, ifname)

    def _prefer(self, local: IPAddress | None, source: str) -> None:
        self.preferred_local = local
        self.policy = with_operator_preference(self._base_policy, local)
        self.selector.policy = self.policy
        self.table.policy = self.policy
        self._emit(PreferenceChanged(path=self._active_path, preferred_local=local,
                                     source=source))

    def _set_active(self, path: Path) -> None:
        if PathTable.key_of(path) != self._active:
            self._stall.reset()
            self._race = None
        self._active, self._active_path = PathTable.key_of(path), path
        if (path.local.port, path.remote.port) != (self.table.local_port,
                                                   self.table.remote_port):
            self.table.set_ports(path.local.port, path.remote.port)

    def _path_of(self, key: Key) -> Path:
        # Also for keys no longer in the table (removed paths keep the current ports).
        return Path(Endpoint(key[0], self.table.local_port),
                    Endpoint(key[1], self.table.remote_port))

    def _timeout(self, key: Key) -> float:
        if key not in self.table:
            return self.policy.probe_timeout
        rtt = self.table.health(key).rtt
        normal = rtt.timeout(self.policy.probe_timeout)
        if key == self._active and self._stall.stalled:
            # A peer known to be quiet (one-way traffic) is probed this way again and
            # again: a longer floor keeps a slow answer from ever looking like death.
            floor = self.policy.stall_probe_timeout * (2 if self._stall.backoff else 1)
            return min(normal, rtt.timeout(floor))
        return normal

    def _attempt_timeout(self, key: Key) -> float | None:
        if not self.attempt_bounds or key not in self.table:
            return None
        bound = attempt_timeout(self.table.health(key).rtt, self.policy.probe_timeout,
                                self.policy.handover_timeout)
        if bound is None and self.initiator:
            # Never answered a probe (a last resort): a few probe timeouts, not the
            # backend's long bound, so the other paths are not kept waiting.
            bound = min(UNMEASURED_ATTEMPT * self.policy.probe_timeout,
                        max(self.policy.probe_timeout, self.policy.handover_timeout))
        return bound

    def _probe_order(self) -> list[Key]:
        others = [PathTable.key_of(p.path) for p in self.paths()]
        order = [self._active, *[k for k in others if k != self._active]]
        if not self._active_ok():
            # No path works: every pair gets its turn, the longest unprobed first (a
            # stable sort keeps the policy order among equals), so the in-flight bound
            # never starves the paths ranked last.
            def waited(key: Key) -> float:
                last = self.table.health(key).last_probe if key in self.table else None
                return float("-inf") if last is None else last
            order.sort(key=waited)
        return order

    def _probe_due(self, key: Key, now: float | None) -> float | None:
        """When the next probe on ``key`` is due; None: not to be probed now."""
        if key not in self.table:
            return None
        h = self.table.health(key)
        if not h.usable(now if now is not None else self._last_now):
            return None
        pending = self._pending
        if self.attempt_bounds and pending is not None and key != pending.target:
            return None  # the update holds the request slot (see the module docstring)
        race = self._race
        if race is not None and key != self._active and h.in_flight == 0 and (
                h.last_probe is None or h.last_probe < race.since):
            return race.since  # every candidate once, with the active path's next probe
        if h.last_probe is None:
            return self._last_now if now is None else now
        if key == self._active:
            if self._stall.stalled and h.state != PathState.DOWN:
                # Probe the stalled path at once, one probe after the other (a burst).
                return None if h.in_flight > 0 else (self._last_now if now is None else now)
            return h.last_probe + self.policy.probe_interval
        if h.in_flight > 0:
            return None  # one at a time on paths we do not use
        fast = h.state in (PathState.UNKNOWN, PathState.PROBING) or not self._active_ok()
        interval = self.policy.probe_interval if fast else self.policy.standby_probe_interval
        return h.last_probe + interval

    def _active_ok(self) -> bool:
        if self._active not in self.table:
            return False
        h = self.table.health(self._active)
        return h.state != PathState.DOWN and h.usable(self._last_now)

    def _info(self, key: Key) -> PathInfo:
        h = self.table.health(key)
        return PathInfo(self.table.path(key), self.table.ifname(key), h.state, h.rtt.srtt,
                        h.healthy_since, h.loss_ratio(), h.down_reason, h.rtt.last)

    def _view(self, now: float | None) -> tuple[list[PathInfo], PathInfo | None, bool]:
        t = self._last_now if now is None else now
        usable = [k for k in self.table.candidate_keys() if self.table.health(k).usable(t)]
        ranked = rank((self._info(k) for k in usable), self.policy)
        active = self._info(self._active) if self._active in self.table else None
        return ranked, active, self._active_ok()

    def _missed(self, key: Key, now: float) -> None:
        if key not in self.table:
            return
        h = self.table.health(key)
        h.in_flight = max(0, h.in_flight - 1)
        h.outcomes.append(False)
        if h.miss(self.policy.probe_misses):
            self._emit(PathDown(path=self.table.path(key), reason="probe_timeout"))
        elif (key == self._active and self._stall.stalled and self._race is None
              and self._pending is None and self.initiator):
            self._race = Race(since=now)

    def _fail(self, key: Key, reason: str) -> None:
        if self.table.health(key).fail(reason):
            self._emit(PathDown(path=self.table.path(key), reason=reason))

    def _drop_probes(self, key: Key) -> None:
        for probe_id in [i for i, p in self._probes.items() if p.key == key]:
            del self._probes[probe_id]
        if key in self.table:
            self.table.health(key).in_flight = 0

    def _removed(self, keys: list[Key], reason: str, now: float) -> None:
        for key in keys:
            self._drop_probes(key)
            self._emit(PathDown(path=self._path_of(key), reason=reason))
        self._decide(now)

    def _move_failed(self, key: Key, reason: str, now: float) -> None:
        pending = self._pending
        if pending is not None and pending.target == key:
            self._pending = None
            self._emit(HandoverFailed(path=self._path_of(key), old_path=pending.old,
                                      reason=reason))
        if key not in self.table:
            return
        h = self.table.health(key)
        self._drop_probes(key)
        if reason == UNACCEPTABLE:
            h.unusable_until = now + UNACCEPTABLE_RETRY
            if h.state != PathState.DOWN:
                h.state, h.down_reason = PathState.DOWN, UNACCEPTABLE
                self._emit(PathDown(path=self.table.path(key), reason=UNACCEPTABLE))
            h.healthy_since = None
        else:
            self._fail(key, "move_failed")
            if pending is not None and pending.target == key and reason in NO_ANSWER:
                self._set_aside(PathTable.key_of(pending.old), key, pending.started)

    def _set_aside(self, failed: Key, target: Key, since: float) -> None:
        """The attempt on ``target`` failed after ``failed`` went down: the candidates
        sharing what both share, and not proven since the attempt began, are down too
        (probes bring each back on its own)."""
        aside = set_aside(self.table, failed, target, since)
        if aside is not None:
            reason, keys = aside
            for key in keys:
                self._drop_probes(key)
                self._fail(key, reason)

    def _race_choice(self, active_ok: bool, now: float) -> Choice | None:
        """The best candidate that answered during the race, once the active path has
        had its head start (or is down already); the active path is then down."""
        race = self._race
        if race is None or (active_ok and not race.due(now)):
            return None
        best = rank([self._info(k) for k in race.answered(self.table, self._active, now)],
                    self.policy)
        if not best:
            race.decide_at = None  # that answer no longer counts: wait for another
            return None
        if active_ok:
            self._fail(self._active, LOST)
        return Choice(best[0].path, "failover")

    def _attempt_started(self) -> None:
        """Probes in flight on other paths wait behind the update in the engine: they
        are no verdict on their paths (forgotten, not missed)."""
        self._race = None  # a move is under way: its own bound decides now
        pending = self._pending
        if not self.attempt_bounds or pending is None:
            return
        for probe_id, probe in list(self._probes.items()):
            if probe.key != pending.target:
                del self._probes[probe_id]
                if probe.key in self.table:
                    h = self.table.health(probe.key)
                    h.in_flight = max(0, h.in_flight - 1)

    def _decide(self, now: float) -> None:
        self._last_now = max(self._last_now, now)
        pending = self._pending
        if pending is not None:
            target = pending.target
            if target in self.table and self.table.health(target).usable(now) and (
                self.table.health(target).state != PathState.DOWN
            ):
                return  # wait for the backend's report
            # The target died under the move: give up on it (a late report of the
            # backend still counts) and choose again, as RFC 4555 §3.5 restarts; not
            # as a last resort again (it had its attempt).
            self._pending = None
            if target in self.table and self.table.health(target).state == PathState.DOWN:
                self.table.health(target).down_reason = "move_failed"
            self._emit(HandoverFailed(path=self._path_of(target), old_path=pending.old,
                                      reason="target_down"))
        ranked, active, ok = self._view(now)
        choice = self._race_choice(ok, now)
        race = self._race
        if choice is None and not ok and race is not None and race.in_flight(
                self.table, self._active):
            return  # the raced candidates' answers choose, not their last verdicts
        choice = choice or self.selector.choose(
            ranked, active, ok, now, discretionary=self.initiator)
        if choice is None:
            return
        old = self._active_path
        key = PathTable.key_of(choice.path)
        h = self.table.health(key)
        if h.state == PathState.DOWN:
            # A last resort: the attempt is its probe (no verdict until it ends).
            h.state, h.down_reason = PathState.PROBING, None
        bound = self._attempt_timeout(key)
        self._pending = Attempt(key, old, now, choice.reason, bound)
        self._attempt_started()
        self.selector.record_move(now)
        self._emit(PathSelected(path=choice.path, reason=choice.reason))
        self._emit(HandoverStarted(path=choice.path, old_path=old, reason=choice.reason))
        self._emit(MoveRequested(path=choice.path, old_path=old, reason=choice.reason,
                                 timeout=bound))
