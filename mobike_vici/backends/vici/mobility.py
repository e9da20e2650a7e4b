"""The VICI backend's mobility glue: one PathManager per IKE_SA charon initiated, ICMP
probes on every path, and moves made by steering charon with policy routes.

The counterpart of ``backends.native.Mobility`` (both are ``backends.Mobility``: the
operator's ``prefer``/``move``, ``set_policy`` on SIGHUP): there the engine probes and
moves, here charon does the IKE work and this glue decides. A move installs a host
route to the peer with the target's source in our own table (``PolicyRouting``) and
waits for charon, which follows route changes with ``charon.prefer_best_path = yes``,
to report the move (``ike-update``); the peer's other addresses are routed from a
source that cannot leave the host meanwhile, so charon's MOBIKE check lands on the
target alone (``steer.steer_routes``). A move charon does not make in time is
escalated (``mobike.steer_plan``): reauthentication, then terminate and initiate.

The daemon (``daemon.controller``) owns the processes around it: it feeds VICI events
(``sa_seen``, ``moved``, ``path_checked``, ``forget``), netlink events (``on_net``) and
probe replies (``on_probe_reply``), and attaches the data-plane watch and the sibling
check (``attach``), which call back ``pump``, ``begin_move``, ``data_path_works`` and
``prearm_roam``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from ...config.attach import AttachConfig
from ...config.mobike import MobikePolicy
from ...eventlog import EventLog, event_fields, format_timestamp
from ...mobike import steer_plan
from ...mobike.choices import OperatorChoices
from ...mobike.events import HandoverCompleted, MoveRequested, PathDown
from ...mobike.follow import Follow, same_addresses
from ...mobike.manager import PathManager
from ...mobike.paths import LocalAddress
from ...mobike.peer_addresses import PeerAddresses
from ...net.events import AddressAdded, AddressRemoved, LinkDown, LinkUp, NetEvent, RouteChanged
from ...net.monitor import NetlinkMonitor
from ...net.probes.icmp import IcmpProber
from ...net.state import usable_addresses
from ...net.steering import PolicyRouting, SteeredRoute
from ...types import IPAddress, Path
from . import commands
from .addresses import configured_addresses
from .events import IkeSaInfo, PathChecked
from .left_path import LeftPaths
from .relay_hook import NoRelay, RequestRelay
from .session import ViciClient
from .steer import egress, landed, steer_routes

JsonObject = dict[str, Any]
MAX_WIRE_IDS = 4096  # bound on probe ids awaiting a reply, all SAs together
WIRE_ID_TTL = 30.0
"""Seconds a probe's id waits for its reply (the path manager gave up on it at 3 s at
most). Every probe sent into a dead path stays unanswered: kept until the count bound,
their entries (each with its path) grew the controller by about a MiB an hour."""


@dataclass
class TrackedSa:
    """The glue's view of one IKE_SA charon initiated."""

    info: IkeSaInfo
    manager: PathManager
    follow: Follow  # charon's own moves and the path's signs of life
    timer: asyncio.TimerHandle | None = None
    probes: set[int] = field(default_factory=set)
    last_handover: JsonObject | None = None
    held_plan: float | None = None  # start of the plan whose escalation was held (said once)


class DataWatch(Protocol):
    """What the glue tells the data-plane watch (``daemon.esp_watch.EspWatch``)."""

    def track(self, sa: TrackedSa) -> None: ...
    def forget(self, spi: str) -> None: ...
    def moved(self, sa: TrackedSa) -> None: ...
    def on_probe_reply(self, wire_id: int) -> bool: ...
    def path_alive(self, spi: str, path: Path) -> None: ...
    def last_inbound(self, spi: str) -> float | None: ...
    def last_outbound(self, spi: str) -> float | None: ...


class SiblingGate(Protocol):
    """What the glue asks the sibling check (``daemon.sibling_check.SiblingCheck``)."""

    def hold(self, sa: TrackedSa, event: MoveRequested) -> bool: ...
    def silent_death(self, spi: str, path: Path, now: float) -> None: ...
    def on_reply(self, wire_id: int) -> bool: ...
    def forget(self, spi: str) -> None: ...


def _str(addr: IPAddress | None) -> str | None:
    return str(addr) if addr is not None else None


def _ep(path: Path) -> dict[str, str]:
    return {"local": str(path.local), "remote": str(path.remote)}


class ViciMobility:
    """Every tracked IKE_SA's path manager, its probes, and charon steered by routes."""

    data_plane: DataWatch
    sibling_check: SiblingGate

    def __init__(self, config: AttachConfig, log: EventLog, client: ViciClient,
                 monitor: NetlinkMonitor, *, deadlines: steer_plan.Deadlines,
                 routing_kw: dict[str, Any]) -> None:
        self.config = config
        self.policy = config.policy
        self.log = log
        self.client = client
        self.monitor = monitor
        self.deadlines = deadlines
        self._routing_kw = routing_kw
        # pyroute2's synchronous IPRoute runs its own event loop: it lives on one thread
        # of its own, created there too (not on the running loop).
        self._route_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="steering")
        self._routing: PolicyRouting | None = None
        self.routes: list[SteeredRoute] = []  # our table as last read back (for status)
        self.leftovers: list[SteeredRoute] = []
        self.adopted: list[SteeredRoute] = []
        self._rejected: set[str] = set()  # IKE_SAs already being terminated for policy
        # prober id -> (IKE_SA, manager's id, the probe's path, when sent); oldest first
        self._wire_ids: dict[int, tuple[str, int, Path, float]] = {}
        self.peers = PeerAddresses()  # every address known of each initiated conn's peer
        self._wire_seq = 0
        self.prober: IcmpProber | None = None
        self._choices = OperatorChoices()  # the operator's prefer/move, by conn
        self.sas: dict[str, TrackedSa] = {}
        self.plans: dict[str, steer_plan.SteerPlan] = {}  # by connection name
        self._plan_timers: dict[str, asyncio.TimerHandle] = {}
        # Peer addresses routed from a source that cannot leave (steer_routes), by conn,
        # while a move is under way; the generation tells a later move's routes apart.
        self._isolated: dict[str, set[IPAddress]] = {}
        self._route_gen: dict[str, int] = {}
        self._steer_lock = asyncio.Lock()
        self.left = LeftPaths(self, self._steer_lock)  # the sources moves leave, pinned
        self._tasks: set[asyncio.Task[Any]] = set()
        self.ike_relay: RequestRelay = NoRelay()  # the controller's, once its socket opened

    def attach(self, data_plane: DataWatch, sibling_check: SiblingGate) -> None:
        self.data_plane = data_plane
        self.sibling_check = sibling_check

    @property
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- routing: its own thread --------------------------------------------------------

    @property
    def routing(self) -> PolicyRouting:
        assert self._routing is not None, "routing used before open_routing()"
        return self._routing

    async def executor(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self._route_thread, lambda: fn(*args, **kwargs))

    async def open_routing(self) -> None:
        """Our table and its rule; the routes a crashed run left are read back first."""
        self._routing = await self.executor(lambda: PolicyRouting(**self._routing_kw))
        self.leftovers = await self.executor(self.routing.routes)

    async def close_routing(self) -> int:
        """Remove every route we installed; returns how many."""
        removed: int = await self.executor(self.routing.clear)
        await self.executor(self.routing.close)
        self._route_thread.shutdown(wait=False)
        return removed

    def set_config(self, config: AttachConfig) -> None:
        """A reloaded file: its connections (for escalation and the operator)."""
        self.config = config
        # Address books of connections gone from charon and from our SAs: bounded by both.
        self.peers.retain(set(self.client.conns) | {sa.info.conn for sa in self.sas.values()})

    def set_policy(self, policy: MobikePolicy, now: float) -> None:
        """A reloaded policy for every path manager (live ones included)."""
        self.policy = policy
        for sa in self.sas.values():
            sa.manager.set_policy(policy, now)
            self.pump(sa)

    def manager(self, ike_spi: str) -> PathManager | None:
        sa = self.sas.get(ike_spi)
        return sa.manager if sa is not None else None

    def forget(self, ike_spi: str) -> None:
        """The IKE_SA is gone (deleted, or rekeyed into a new one)."""
        gone = self.sas.pop(ike_spi, None)
        if gone is not None and gone.timer is not None:
            gone.timer.cancel()
        self.data_plane.forget(ike_spi)
        self.sibling_check.forget(ike_spi)
        self.ike_relay.forget(ike_spi)

    def close(self) -> None:
        for sa in self.sas.values():
            if sa.timer is not None:
                sa.timer.cancel()
        for handle in self._plan_timers.values():
            handle.cancel()
        if self.prober is not None:
            self.prober.close()

    # -- VICI events --------------------------------------------------------------------

    def sa_seen(self, info: IkeSaInfo) -> None:
        """Track an established IKE_SA charon initiated (the gateway side is not ours)."""
        if info.state != "ESTABLISHED" or not info.initiator:
            return
        known = self.sas.get(info.ike_spi)
        if known is not None:
            known.info = info
            return
        now = self.now
        conf = self.client.conns.get(info.conn)
        if isinstance(conf, dict):
            self._learn(info.conn, configured_addresses(conf), "config")
        self._learn(info.conn, [info.path.remote.addr], "charon")
        manager = PathManager(self.policy, info.path, self.local_addresses(),
                              self.peers.of(info.conn), now=now, initiator=True)
        self._choices.inherit(info.conn, manager, now)
        sa = TrackedSa(info, manager, Follow(info.path, now))
        self.sas[info.ike_spi] = sa
        self.log.emit("ike_sa_tracked", conn=info.conn, ike_spi=info.ike_spi, **_ep(info.path),
                      peer_addresses=[str(a) for a in self.peers.of(info.conn)])
        self.data_plane.track(sa)
        for route in self.leftovers:
            if route.peer == info.path.remote.addr and route.src == info.path.local.addr:
                self.adopted.append(route)
                self.log.emit("steering_adopted", conn=info.conn, ike_spi=info.ike_spi,
                              **_ep(info.path))
        plan = self.plans.get(info.conn)
        if plan is not None and landed(self.monitor.state, plan, info.path):
            self._plan_done(info, plan)
        self.pump(sa)

    def moved(self, old: IkeSaInfo, info: IkeSaInfo) -> None:
        if not info.initiator:
            self.check_peer(info)
            return
        sa = self.sas.get(info.ike_spi)
        if sa is None:
            return
        now = self.now
        # charon may land on a peer address it learnt through MOBIKE: a path of ours now.
        self._learn(info.conn, [info.path.remote.addr], "charon")
        plan = self.plans.get(info.conn)
        steered = plan is not None and landed(self.monitor.state, plan, info.path)
        sa.follow.on_moved(old.path, info.path, now, steered=steered)
        if plan is not None and steered:
            self._plan_done(info, plan)
        else:
            sa.manager.on_active_path_changed(info.path, now)
        self.pump(sa)
        self.data_plane.moved(sa)

    # -- the peer's addresses and charon's own moves ----------------------------------

    def _learn(self, conn: str, addrs: list[IPAddress], source: str) -> None:
        """Add what was seen of ``conn``'s peer to its address book and to the path table
        of each of its IKE_SAs (new pairs are probed like the others)."""
        new = self.peers.learn(conn, addrs, source)
        if not new:
            return
        known = self.peers.of(conn)
        self.log.emit("peer_addresses_learned", conn=conn, source=source,
                      addresses=[str(a) for a in new], known=[str(a) for a in known])
        now = self.now
        for sa in list(self.sas.values()):
            if sa.info.conn == conn:
                sa.manager.on_peer_addresses(known, now)
                self.pump(sa)

    def path_checked(self, event: PathChecked) -> None:
        """charon's MOBIKE checked a path: its peer address is one charon knows."""
        if any(sa.info.conn == event.conn for sa in self.sas.values()):  # ours to steer
            self._learn(event.conn, [event.path.remote.addr], "mobike")

    def data_path_works(self, ike_spi: str, path: Path) -> None:
        """ESP from the peer arrived on ``path`` after a move (verified or repaired).

        A move charon made by itself is adopted then: it is the active path, the
        controller's own move and escalation for the connection are dropped, and the
        stream says so (``handover_completed`` with ``source`` ``charon``)."""
        sa = self.sas.get(ike_spi)
        if sa is None:
            return
        now = self.now
        move = sa.follow.on_verified(path, now)
        if move is None:
            return
        conn = sa.info.conn
        plan = self.plans.get(conn)
        if plan is not None and plan.ike_spi != ike_spi:
            plan = None  # another IKE_SA's move (of the same connection)
        if plan is not None:
            self.plans.pop(conn, None)
            self._release(conn)
            handle = self._plan_timers.pop(conn, None)
            if handle is not None:
                handle.cancel()
        started = plan.started if plan is not None else move.at
        sa.manager.on_move_completed(path, now)
        self.pump(sa, extra={
            "source": "charon", "old_local": str(move.old.local),
            "old_remote": str(move.old.remote),
            "duration_ms": round(max(0.0, now - started) * 1000, 3),
            "charon_local": str(path.local), "charon_remote": str(path.remote),
            "cancelled_local": str(plan.target.local) if plan is not None else None,
            "cancelled_remote": str(plan.target.remote) if plan is not None else None,
            "cancelled_stage": plan.stage.name.lower() if plan is not None else None})

    def _plan_done(self, info: IkeSaInfo, plan: steer_plan.SteerPlan) -> None:
        self.plans.pop(info.conn, None)
        self._release(info.conn)
        handle = self._plan_timers.pop(info.conn, None)
        if handle is not None:
            handle.cancel()
        sa = self.sas.get(info.ike_spi)
        if sa is not None:
            sa.follow.own_move = None  # the controller's move, reported as such
        if plan.stage != steer_plan.Stage.ROUTE:
            self.log.emit("handover_escalation_succeeded", conn=info.conn,
                          ike_spi=info.ike_spi, stage=plan.stage.name.lower(),
                          old_ike_spi=plan.ike_spi, **_ep(info.path))
        if sa is not None:
            # Where charon really is (a failover may land on the target uplink's other
            # family): the active path is always charon's, never the plan's target.
            sa.manager.on_move_completed(info.path, self.now)
            self.pump(sa, conn=info.conn, ike_spi=info.ike_spi,
                       extra={"source": "controller", "escalation": plan.stage.name.lower(),
                              "charon_local": str(info.path.local),
                              "charon_remote": str(info.path.remote)})

    def check_peer(self, info: IkeSaInfo) -> None:
        """A peer moved: outside ``allowed_peer_prefixes`` its IKE_SA is terminated."""
        if self.policy.allows_peer(info.path.remote.addr) or info.ike_spi in self._rejected:
            return
        self._rejected.add(info.ike_spi)
        self.log.emit("update_rejected", conn=info.conn, ike_spi=info.ike_spi,
                      reason="peer_address_not_allowed", **_ep(info.path))
        self.spawn(commands.terminate(self.client, self.log, info, "peer_address_not_allowed"))

    # -- the network --------------------------------------------------------------------

    def local_addresses(self) -> list[LocalAddress]:
        # Virtual IPs live inside the tunnel: never a path's outer address.
        vips = self.client.table.virtual_ips()  # kept by the table: no walk per SA
        return [LocalAddress(addr, ifname)
                for ifname, addr in usable_addresses(self.monitor.state)
                if str(addr) not in vips]

    def on_net(self, event: NetEvent) -> None:
        now = self.now
        addrs = (self.local_addresses() if isinstance(event, AddressAdded | AddressRemoved)
                 else [])  # once per event, not once per SA
        for sa in list(self.sas.values()):
            match event:
                case LinkDown():
                    sa.manager.on_link_down(event.ifname, now)
                case LinkUp():
                    sa.manager.on_link_up(event.ifname, now)
                case AddressAdded() | AddressRemoved():
                    sa.manager.set_local_addresses(addrs, now)
                case RouteChanged():
                    sa.manager.on_route_changed(now)
                case _:
                    continue
            self.pump(sa)

    # -- probes -------------------------------------------------------------------------

    def on_probe_reply(self, wire_id: int, _rtt: float) -> None:
        if self.data_plane.on_probe_reply(wire_id) or self.sibling_check.on_reply(wire_id):
            return
        # Probe ids are per path manager; the prober sees one id space for all SAs.
        entry = self._wire_ids.pop(wire_id, None)
        sa = self.sas.get(entry[0]) if entry is not None else None
        if entry is None or sa is None:
            return
        _, probe_id, path, _ = entry
        sa.probes.discard(probe_id)
        now = self.now
        sa.follow.on_alive(path, now)
        self.data_plane.path_alive(sa.info.ike_spi, path)
        sa.manager.on_probe_reply(probe_id, now)
        self.pump(sa)

    # -- the path manager ---------------------------------------------------------------

    def pump(self, sa: TrackedSa, *, conn: str | None = None, ike_spi: str | None = None,
              extra: JsonObject | None = None) -> None:
        """Send due probes, log and act on the manager's events, re-arm its one timer."""
        now = self.now
        manager = sa.manager
        for _ in range(8):  # a failed send is a miss, which may make more probes due
            requests = manager.probes_to_send(now)
            if not requests:
                break
            for req in requests:
                out = egress(self.monitor.state, req.path.local.addr)
                wire_id = self.next_wire_id()
                self._wire_ids[wire_id] = (sa.info.ike_spi, req.probe_id, req.path, now)
                ok = (out is not None and self.prober is not None
                      and self.prober.send(req.path, wire_id, out[0]))
                if not ok:
                    self._wire_ids.pop(wire_id, None)
                if ok:
                    sa.probes.add(req.probe_id)
                else:
                    manager.on_probe_failed(req.probe_id, now)
        while (event := manager.next_event()) is not None:
            if isinstance(event, MoveRequested):
                self._start_move(sa, event)
                continue
            if isinstance(event, PathDown) and event.reason == "probe_timeout" \
                    and same_addresses(event.path, sa.info.path):
                # charon's path went silent with its link up, found before the data plane
                # did: its uplink's other paths must answer before a failover onto them.
                self.sibling_check.silent_death(sa.info.ike_spi, event.path, now)
            name, fields = event_fields(event)
            if isinstance(event, HandoverCompleted):
                if extra:
                    fields.update(extra)
                sa.last_handover = {"at": format_timestamp(datetime.now(UTC)),
                                    "from": fields["old_local"], "to": fields["local"],
                                    "remote": fields["remote"],
                                    "duration_ms": fields["duration_ms"]}
            self.log.emit(name, conn=conn or sa.info.conn, ike_spi=ike_spi or sa.info.ike_spi,
                          **fields)
        if sa.timer is not None:
            sa.timer.cancel()
            sa.timer = None
        when = manager.get_timer()
        if when is not None:
            loop = asyncio.get_running_loop()
            sa.timer = loop.call_at(max(when, now + 0.001), self._on_timer, sa.info.ike_spi)

    def next_wire_id(self) -> int:
        self._wire_seq += 1
        self.forget_old_wire_ids(self.now)
        return self._wire_seq

    def forget_old_wire_ids(self, now: float) -> None:
        """Drop the ids of probes long unanswered (oldest first), and any beyond the bound."""
        ids = self._wire_ids
        while ids:
            oldest = next(iter(ids))
            if len(ids) < MAX_WIRE_IDS and ids[oldest][3] > now - WIRE_ID_TTL:
                break
            del ids[oldest]

    def _on_timer(self, ike_spi: str) -> None:
        sa = self.sas.get(ike_spi)
        if sa is None:
            return
        sa.timer = None
        sa.manager.handle_timer(self.now)
        self.pump(sa)

    # -- steering -----------------------------------------------------------------------

    def _start_move(self, sa: TrackedSa, event: MoveRequested) -> None:
        if self.sibling_check.hold(sa, event):
            return  # the target's uplink just died silently: it must answer first
        self.begin_move(sa, event)

    def begin_move(self, sa: TrackedSa, event: MoveRequested) -> None:
        """Steer charon to the manager's target (the plan, its timer, the routes)."""
        info = sa.info
        plan = steer_plan.start(info.ike_spi, event.path, event.old_path, self.now,
                                self.deadlines)
        self.plans[info.conn] = plan
        self._route_gen[info.conn] = self._route_gen.get(info.conn, 0) + 1
        self._arm_plan(info.conn, plan)
        self.spawn(self._steer(info, event.path, event.reason))

    async def _steer(self, info: IkeSaInfo, target: Path, reason: str) -> None:
        """Install the move's routes (``steer_routes``): the target's, and the isolating
        ones that leave charon's MOBIKE check no other pair to land on."""
        gen = self._route_gen.get(info.conn, 0)
        async with self._steer_lock:
            current = self.client.table.get(info.ike_spi)
            where = current.path if current is not None else info.path
            routes = steer_routes(self.monitor.state, target, where,
                                  self.peers.of(info.conn), failover=reason == "failover")
            if routes is None:
                self._move_failed(info.conn, target, "no_local_address")
                return
            if info.conn in self.plans and self._route_gen.get(info.conn) == gen:
                await self.left.pin(info, where, egress(self.monitor.state, where.local.addr))
            isolated = self._isolated.setdefault(info.conn, set())
            for route in routes:
                if info.conn not in self.plans or self._route_gen.get(info.conn) != gen:
                    break  # the move ended meanwhile, or a later one took over
                try:
                    await self.executor(self.routing.steer, route.peer, via=route.via,
                                         dev=route.dev, src=route.src)
                except (OSError, LookupError, ValueError) as exc:
                    self.log.emit("steer_failed", conn=info.conn, ike_spi=info.ike_spi,
                                  error=str(exc), local=str(route.src), remote=str(route.peer))
                    if not route.isolating:
                        self._move_failed(info.conn, target, "route_refused")
                        break
                    continue
                if route.isolating:
                    isolated.add(route.peer)
                    self.log.emit("route_steered", conn=info.conn, ike_spi=info.ike_spi,
                                  dev=route.dev, via=_str(route.via), local=str(route.src),
                                  remote=str(route.peer), reason="isolate")
                else:
                    isolated.discard(route.peer)
                    self.log.emit("route_steered", conn=info.conn, ike_spi=info.ike_spi,
                                  dev=route.dev, via=_str(route.via), **_ep(target))
                    self.ike_relay.relay(info.conn, info.ike_spi, target, where)
            if self.plans.get(info.conn) is None:
                await self._release_isolation(info.conn)
            self.routes = await self.executor(self.routing.routes)
        cur_info = self.client.table.get(info.ike_spi)
        plan = self.plans.get(info.conn)
        if plan is not None and cur_info is not None \
                and landed(self.monitor.state, plan, cur_info.path):
            self._plan_done(cur_info, plan)  # charon was there already (e.g. link down)

    def prearm_roam(self, ike_spi: str, path: Path, reason: str) -> None:
        """Make charon check ``path``, its current one, now (``daemon.nat_check``): no
        VICI command asks for that, so the route charon follows there is installed anew;
        charon checks its paths 100 ms after a route event, and with
        ``check_current_path`` checks one it keeps with a DPD (NAT detection included)."""
        sa = self.sas.get(ike_spi)
        out = egress(self.monitor.state, path.local.addr)
        if sa is None or out is None or sa.info.conn in self.plans:
            return
        self.spawn(self._pin(sa.info, path, out, reason))

    async def _pin(self, info: IkeSaInfo, path: Path, out: tuple[str, IPAddress | None],
                   reason: str) -> None:
        async with self._steer_lock:
            now_at = self.client.table.get(info.ike_spi)
            if info.conn in self.plans or now_at is None or not same_addresses(now_at.path,
                                                                               path):
                return  # a move's routes came first, or charon moved: never pull it back
            try:
                await self.executor(self.routing.pin, path.remote.addr, via=out[1],
                                     dev=out[0], src=path.local.addr)
            except (OSError, LookupError, ValueError) as exc:
                self.log.emit("steer_failed", conn=info.conn, ike_spi=info.ike_spi,
                              error=str(exc), **_ep(path))
                return
        self.log.emit("roam_prearmed", conn=info.conn, ike_spi=info.ike_spi, dev=out[0],
                      reason=reason, **_ep(path))

    def _release(self, conn: str) -> None:
        """The move is over (landed, failed, escalated, given up): charon may use every
        peer address again (reauthentication and initiation need the configured ones)."""
        self.ike_relay.stop(conn)
        self.left.hold(conn)
        if self._isolated.get(conn):
            self.spawn(self._locked_release(conn, self._route_gen.get(conn, 0)))

    async def _locked_release(self, conn: str, gen: int) -> None:
        async with self._steer_lock:
            if self._route_gen.get(conn, 0) == gen:  # not when a new move took over
                await self._release_isolation(conn)

    async def _release_isolation(self, conn: str) -> None:
        for peer in sorted(self._isolated.pop(conn, set()), key=lambda a: (a.version, a)):
            try:
                await self.executor(self.routing.unsteer, peer)
            except OSError as exc:
                self.log.emit("steer_failed", conn=conn, remote=str(peer), error=str(exc))
        self.routes = await self.executor(self.routing.routes)

    def _move_failed(self, conn: str, target: Path, reason: str) -> None:
        self.plans.pop(conn, None)
        self._release(conn)
        handle = self._plan_timers.pop(conn, None)
        if handle is not None:
            handle.cancel()
        for sa in self.sas.values():
            if sa.info.conn == conn:
                sa.manager.on_move_failed(target, reason, self.now)
                self.pump(sa)

    def _arm_plan(self, conn: str, plan: steer_plan.SteerPlan, when: float | None = None
                  ) -> None:
        old = self._plan_timers.pop(conn, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        at = plan.deadline if when is None else when
        self._plan_timers[conn] = loop.call_at(at, self._on_plan_timer, conn)

    def _hold_escalation(self, conn: str, plan: steer_plan.SteerPlan) -> bool:
        """True when the next rung (reauth, reinitiate: both delete the IKE_SA) must wait
        because the IKE_SA's path, where charon has it, showed life within
        ``escalate_after``; the plan is looked at again then, or dropped when the path
        manager no longer wants its target."""
        now = self.now
        if plan.stage not in (steer_plan.Stage.ROUTE, steer_plan.Stage.REAUTH) \
                or now < plan.deadline:
            return False
        sa = self.sas.get(plan.ike_spi)
        if sa is None:
            return False
        hold = sa.follow.escalation_hold(now, self.policy.escalate_after,
                                         self.data_plane.last_inbound(plan.ike_spi))
        if hold is None:
            return False
        wanted = sa.manager.wanted_path
        dropped = wanted is None or not same_addresses(wanted, plan.target)
        if dropped or sa.held_plan != plan.started:
            sa.held_plan = plan.started
            self.log.emit("handover_escalation_held", conn=conn, ike_spi=plan.ike_spi,
                          stage=plan.stage.name.lower(), **_ep(plan.target),
                          charon_local=str(sa.follow.path.local),
                          charon_remote=str(sa.follow.path.remote),
                          alive_ms_ago=round(max(0.0, now - hold + self.policy.escalate_after)
                                             * 1000, 1),
                          dropped=dropped)
        if dropped:
            self.plans.pop(conn, None)  # the path manager gave that target up already
            self._release(conn)
        else:
            self._arm_plan(conn, plan, hold)
        return True

    def _on_plan_timer(self, conn: str) -> None:
        self._plan_timers.pop(conn, None)
        plan = self.plans.get(conn)
        if plan is None or self._hold_escalation(conn, plan):
            return
        plan, action = steer_plan.on_timer(plan, self.now, self.deadlines)
        if action is None:
            self._arm_plan(conn, plan)
            return
        # charon did not follow the routes in time: say so, then push harder.
        self.log.write("warning", "handover_escalated", {
            "conn": conn, "ike_spi": plan.ike_spi, "stage": plan.stage.name.lower(),
            **_ep(plan.target)})
        if action == steer_plan.Action.GIVE_UP:
            self._move_failed(conn, plan.target, "charon_did_not_move")
            return
        self.plans[conn] = plan
        self._arm_plan(conn, plan)
        sa = next((s for s in self.sas.values() if s.info.conn == conn), None)
        if sa is None:
            self._release(conn)
            return
        self.spawn(self._escalate(sa.info, action))

    async def _escalate(self, info: IkeSaInfo, action: steer_plan.Action) -> None:
        self.ike_relay.retire(info.conn)  # a reauth's delete must not end the old SA early
        # The new IKE_SA resolves the configured peer addresses: none may stay isolated.
        await self.left.locked_unpin(info.conn)
        await self._locked_release(info.conn, self._route_gen.get(info.conn, 0))
        if action == steer_plan.Action.REAUTH:
            await commands.reauth(self.client, self.log, info)
        else:
            await commands.reinitiate(self.client, self.log, info,
                                      self.config.connections.get(info.conn, ()))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the operator (``mobike-vici prefer`` / ``move``) ---------------------------------

    def conn_spis(self, conn: str) -> list[str]:
        return [spi for spi, sa in self.sas.items() if sa.info.conn == conn]

    def prefer(self, conn: str, local: IPAddress | None, now: float) -> str | None:
        if conn not in self.config.connections:
            return "unknown_conn"  # also keeps the remembered choices to configured names
        return self._choices.prefer(conn, self._managers(conn), local, now, self._touch)

    def move(self, conn: str, local: IPAddress, now: float) -> str | None:
        if conn in self.plans and self.conn_spis(conn):
            return "move_in_progress"
        return self._choices.move(conn, self._managers(conn), local, now, self._touch)

    def _managers(self, conn: str) -> dict[str, PathManager]:
        return {spi: sa.manager for spi, sa in self.sas.items() if sa.info.conn == conn}

    def _touch(self, spi: str) -> None:
        self.pump(self.sas[spi])
