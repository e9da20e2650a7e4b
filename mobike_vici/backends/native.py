"""The native backend's mobility glue: one PathManager per MOBIKE IKE_SA, fed by core
events and the network, driving ``Engine.probe``/``move``/``set_local_addresses``.

Sans I/O like both sides it joins: the daemon calls ``on_core_event`` for every
engine event, ``on_net`` after every netlink event (with the usable addresses it
computed), ``handle_timer`` when ``get_timer`` fires, and ``pump(now)`` after any of
these; ``pump`` sends due probes, carries out moves and returns the path events to
log as ``(name, fields)`` pairs. The engine's own events (ProbeResult, IkeSaMoved, ...)
come back through ``on_core_event`` on the daemon's next drain.

Three choices of this glue, all about the peer or the engine rather than policy:
- The other family is a last resort (``CROSS_FAMILY_COST``) unless the policy
  speaks about families itself: charon rekeys a CHILD_SA it cannot move across
  families (new SPIs), and an uplink that silently died for one family has
  usually died for the other as well.
- Probes on several paths at once (``max_probes_in_flight``): the engine puts each
  on the one outstanding request and keeps it on every later one until its own
  path answers, so probes sharing the peer's window of 1 do not fail paths that work.
- Our own virtual IPs and the tunnel devices are never path ends.

Probe ids: the manager and the engine number probes independently; ``_probes`` maps
the engine's id to the (IKE_SA, manager id) it answers.

Work per packet does not grow with the number of IKE_SAs: ``pump`` visits only the
managers that got an input since the last pump, and the timers sit in a heap, so
``get_timer`` and ``handle_timer`` touch only the managers that are due. Netlink
changes concern every SA and visit them all (they are rare).
"""

from __future__ import annotations

import fnmatch
import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol

from ..config.mobike import MobikePolicy, PreferRule
from ..core.events import (
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaMoved,
    IkeSaRekeyed,
    MoveFailed,
    PacketDropped,
    PeerAddressesUpdated,
    PeerMoved,
    ProbeResult,
)
from ..eventlog import event_fields
from ..mobike import events as pe
from ..mobike.choices import OperatorChoices
from ..mobike.manager import PathManager
from ..mobike.paths import LocalAddress
from ..types import IPAddress, Path

Fields = dict[str, object]

CROSS_FAMILY_COST = 1_000_000
"""Added to paths of the family the IKE_SA was not set up on: above any sane rule."""

TUNNEL_INTERFACES = ("mvici*", "ipsec*", "lo")
"""Our TUN device and charon's: addresses there are inside the tunnel; and loopback,
where a gateway keeps addresses it protects, never an outer endpoint."""


class MobikeEngine(Protocol):
    """What the glue uses of ``core.engine.Engine`` (unit tests pass a fake)."""

    def set_local_addresses(self, addrs: Sequence[IPAddress], now: float) -> None: ...
    def peer_addresses(self, ike_spi: str) -> tuple[IPAddress, ...]: ...
    def probe(self, ike_spi: str, path: Path, now: float) -> int: ...
    def move(self, ike_spi: str, path: Path, now: float,
             timeout: float | None = None) -> None: ...


@dataclass(slots=True)
class _Sa:
    conn: str
    manager: PathManager
    family: int
    """IP version of the peer address the IKE_SA was set up with (its home family)."""


class Mobility:
    """Every MOBIKE IKE_SA's path manager, and the calls into the engine they ask for."""

    def __init__(self, engine: MobikeEngine, policy: MobikePolicy,
                 mobike_conns: Callable[[str], bool] = lambda _conn: True,
                 tunnel_interfaces: Sequence[str] = TUNNEL_INTERFACES) -> None:
        self.engine = engine
        self.policy = policy
        self._mobike_conns = mobike_conns
        self._sas: dict[str, _Sa] = {}
        self._dirty: dict[str, None] = {}
        """IKE_SAs whose manager got an input since the last pump (ordered, no duplicates)."""
        self._deadlines: dict[str, float] = {}
        """Each manager's next timer as last pushed to ``_heap``."""
        self._heap: list[tuple[float, str]] = []
        """(deadline, ike_spi); entries that disagree with ``_deadlines`` are stale."""
        self._probes: dict[int, tuple[str, int]] = {}
        self._local: tuple[LocalAddress, ...] = ()
        self._seen: tuple[tuple[str, IPAddress], ...] = ()
        self._virtual: set[IPAddress] = set()
        self._tunnel_ifs = tuple(tunnel_interfaces)
        self._log: list[tuple[str, Fields]] = []
        self._choices = OperatorChoices()
        self._watched: set[str] = set()
        """IKE_SAs whose manager chooses paths (ours to initiate): kept as SAs come, rekey
        and go, so the 25 ms traffic sampling never walks a gateway's table."""
        self.errors = 0
        """Engine calls that raised (an SA vanished under us): counted, never fatal."""
        self.calls = 0
        """Calls into the engine so far: the daemon flushes again when this grew."""

    # -- state ------------------------------------------------------------------------

    def manager(self, ike_spi: str) -> PathManager | None:
        sa = self._sas.get(ike_spi)
        return sa.manager if sa is not None else None

    @property
    def local_addresses(self) -> tuple[LocalAddress, ...]:
        return self._local

    def conn_spis(self, conn: str) -> list[str]:
        return [spi for spi, sa in self._sas.items() if sa.conn == conn]

    # -- inputs: the operator -----------------------------------------------------------

    def set_policy(self, policy: MobikePolicy, now: float) -> None:
        """A reloaded ``mobike { }`` policy, for every live IKE_SA and every later one;
        paths, their health and the move history are kept (``PathManager.set_policy``)."""
        self.policy = policy
        for spi, sa in self._sas.items():
            sa.manager.set_policy(self._sa_policy(sa.family), now)
            self._dirty[spi] = None

    def prefer(self, conn: str, local: IPAddress | None, now: float) -> str | None:
        """Prefer ``local`` for every IKE_SA of ``conn`` (None: clear), also for its
        later IKE_SAs; returns why it was refused, else None."""
        if not self._mobike_conns(conn):
            return "unknown_conn"  # also keeps the remembered choices to configured names
        return self._choices.prefer(conn, self._managers(conn), local, now, self._touch)

    def move(self, conn: str, local: IPAddress, now: float) -> str | None:
        """Move ``conn``'s IKE_SAs to ``local`` now; returns why it was refused, else None."""
        return self._choices.move(conn, self._managers(conn), local, now, self._touch)

    def _managers(self, conn: str) -> dict[str, PathManager]:
        return {spi: sa.manager for spi, sa in self._sas.items() if sa.conn == conn}

    def _touch(self, spi: str) -> None:
        self._dirty[spi] = None  # its manager may now want a move or a probe

    # -- inputs -----------------------------------------------------------------------

    def on_core_event(self, event: Event, now: float) -> None:
        match event:
            case IkeSaEstablished():
                if event.initiator and event.virtual_ips:
                    self._virtual.update(event.virtual_ips)
                    self.on_addresses(self._seen, now)
                if self._mobike_conns(event.conn) and event.ike_spi not in self._sas:
                    added = _Sa(event.conn, self._new_manager(event, now),
                                event.path.remote.addr.version)
                    self._sas[event.ike_spi] = added
                    if added.manager.initiator:
                        self._watched.add(event.ike_spi)
                    self._dirty[event.ike_spi] = None
            case IkeSaDeleted():
                self._forget(event.ike_spi)
            case IkeSaRekeyed():
                sa = self._sas.pop(event.ike_spi, None)
                if sa is not None:
                    self._sas[event.new_ike_spi] = sa
                    if event.ike_spi in self._watched:
                        self._watched.discard(event.ike_spi)
                        self._watched.add(event.new_ike_spi)
                    self._dirty.pop(event.ike_spi, None)
                    self._deadlines.pop(event.ike_spi, None)
                    self._dirty[event.new_ike_spi] = None
                    for eid, (spi, mid) in list(self._probes.items()):
                        if spi == event.ike_spi:
                            self._probes[eid] = (event.new_ike_spi, mid)
            case _:
                self._to_manager(event, now)

    def _to_manager(self, event: Event, now: float) -> None:
        if isinstance(event, PacketDropped):
            return
        mgr = self.manager(event.ike_spi)
        if mgr is None:
            return
        self._dirty[event.ike_spi] = None
        match event:
            case ProbeResult():
                ref = self._probes.pop(event.probe_id, None)
                if ref is None:
                    return
                if event.ok:
                    mgr.on_probe_reply(ref[1], now, event.rtt)
                else:
                    mgr.on_probe_failed(ref[1], now)
            case IkeSaMoved():
                if mgr.wanted_path is not None:
                    mgr.on_move_completed(event.new_path, now)
                elif event.new_path != mgr.active_path:
                    mgr.on_active_path_changed(event.new_path, now)
                # else: the engine's own update on the same path (a NAT rebinding,
                # RFC 4555 §3.8), not a handover.
            case MoveFailed():
                mgr.on_move_failed(event.path, event.reason, now)
            case PeerMoved():
                mgr.on_active_path_changed(event.new_path, now)
            case PeerAddressesUpdated():
                mgr.on_peer_addresses(event.addresses, now, mgr.active_path.remote.addr)
            case _:
                pass

    def on_addresses(self, addrs: Iterable[tuple[str, IPAddress]], now: float) -> None:
        """The usable local addresses as (ifname, address): the whole new set."""
        self._seen = tuple(addrs)
        new = tuple(LocalAddress(addr, ifname) for ifname, addr in self._seen
                    if addr not in self._virtual
                    and not any(fnmatch.fnmatchcase(ifname, g) for g in self._tunnel_ifs))
        if new == self._local:
            return
        self._local = new
        self._log.append(("local_addresses", {"addresses": [
            f"{a.addr}%{a.ifname}" for a in new]}))
        for spi, sa in self._sas.items():
            sa.manager.set_local_addresses(new, now)
            self._dirty[spi] = None
        self._call("set_local_addresses",
                   partial(self.engine.set_local_addresses, [a.addr for a in new], now))

    def on_link(self, ifname: str, up: bool, now: float) -> None:
        for spi, sa in self._sas.items():
            if up:
                sa.manager.on_link_up(ifname, now)
            else:
                sa.manager.on_link_down(ifname, now)
            self._dirty[spi] = None

    def on_route_changed(self, now: float) -> None:
        for spi, sa in self._sas.items():
            sa.manager.on_route_changed(now)
            self._dirty[spi] = None

    def watched(self) -> frozenset[str]:
        """The IKE_SAs whose data plane is worth watching: those we choose paths for."""
        return frozenset(self._watched)

    def on_traffic(self, ike_spi: str, inbound: int, outbound: int, now: float) -> bool:
        """ESP packets of one IKE_SA since the last sample; True when its manager wants
        a pump now (a stall began: the active path is probed at once)."""
        sa = self._sas.get(ike_spi)
        if sa is None or not sa.manager.on_traffic(inbound, outbound, now):
            return False
        self._dirty[ike_spi] = None
        return True

    def handle_timer(self, now: float) -> None:
        """Run the managers that are due (and only those)."""
        for spi in self._dirty:
            self._refresh(spi)
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, spi = heapq.heappop(heap)
            sa = self._sas.get(spi)
            if sa is None or self._deadlines.get(spi) != when:
                continue  # stale: the SA went, or its timer moved
            del self._deadlines[spi]
            sa.manager.handle_timer(now)
            self._dirty[spi] = None

    def get_timer(self) -> float | None:
        for spi in self._dirty:
            self._refresh(spi)
        heap = self._heap
        while heap and self._deadlines.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # -- outputs ----------------------------------------------------------------------

    def pump(self, now: float) -> list[tuple[str, Fields]]:
        """Send due probes, carry out requested moves; the path events to log.

        Only managers with news are visited: the rest wait for their timer."""
        dirty, self._dirty = self._dirty, {}
        for spi in dirty:
            sa = self._sas.get(spi)
            if sa is None:
                continue
            mgr = sa.manager
            for req in mgr.probes_to_send(now):
                eid = self._call("probe", partial(self.engine.probe, spi, req.path, now))
                if isinstance(eid, int):
                    self._probes[eid] = (spi, req.probe_id)
                else:
                    mgr.on_probe_failed(req.probe_id, now)
            while (event := mgr.next_event()) is not None:
                if isinstance(event, pe.MoveRequested):
                    self._call("move", partial(self.engine.move, spi, event.path, now,
                                               event.timeout))
                    continue
                self._log.append(event_fields(event, conn=sa.conn, ike_spi=spi))
            self._refresh(spi)
        out, self._log = self._log, []
        return out

    # -- internals --------------------------------------------------------------------

    def _new_manager(self, event: IkeSaEstablished, now: float) -> PathManager:
        try:
            peers = self.engine.peer_addresses(event.ike_spi)
        except KeyError:
            peers = (event.path.remote.addr,)
        policy = self._sa_policy(event.path.remote.addr.version)
        mgr = PathManager(policy, event.path, self._local, peers, now=now,
                          initiator=event.initiator, attempt_bounds=True)
        self._choices.inherit(event.conn, mgr, now)
        return mgr

    def _sa_policy(self, own: int) -> MobikePolicy:
        """The policy of one IKE_SA whose home family is IP version ``own``."""
        policy = self.policy
        if policy.family is None and not any(r.family is not None for r in policy.prefer):
            other = PreferRule(name="_other_family", family=10 - own, cost=CROSS_FAMILY_COST)
            policy = replace(policy, family=own, prefer=(*policy.prefer, other))
        return policy

    def _refresh(self, ike_spi: str) -> None:
        """Push the manager's timer to the heap if it changed (the old entry goes stale)."""
        sa = self._sas.get(ike_spi)
        when = sa.manager.get_timer() if sa is not None else None
        if when is None:
            self._deadlines.pop(ike_spi, None)
            return
        if self._deadlines.get(ike_spi) == when:
            return
        self._deadlines[ike_spi] = when
        heapq.heappush(self._heap, (when, ike_spi))
        if len(self._heap) > 2 * len(self._deadlines) + 64:
            # Bounded: stale entries never outnumber the live ones by much.
            self._heap = [(t, spi) for spi, t in self._deadlines.items()]
            heapq.heapify(self._heap)

    def _forget(self, ike_spi: str) -> None:
        self._sas.pop(ike_spi, None)
        self._watched.discard(ike_spi)
        self._dirty.pop(ike_spi, None)
        self._deadlines.pop(ike_spi, None)
        for eid in [e for e, (spi, _) in self._probes.items() if spi == ike_spi]:
            del self._probes[eid]

    def _call(self, what: str, call: Callable[[], object]) -> object:
        self.calls += 1
        try:
            return call()
        except (KeyError, ValueError) as exc:
            # The SA went away or is not established (yet): not a bug, a race.
            self.errors += 1
            self._log.append(("mobility_call_failed", {"call": what,
                                                       "error": type(exc).__name__}))
            return None
