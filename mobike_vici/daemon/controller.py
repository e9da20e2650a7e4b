"""The asyncio wiring of ``mobike-vici run``: charon over VICI, the kernel over netlink, one
path manager per IKE_SA charon initiated, ICMP probes, and steering by policy routes.

charon does the IKE/ESP work; this process decides which uplink an IKE_SA should
use (in the pure ``PathManager``), installs a host route to the peer with that
source in its own table (``PolicyRouting``), and waits for charon, which follows
route changes with ``charon.prefer_best_path = yes``, to report the move
(``ike-update``: same IKE SPIs, new endpoints); the peer's other addresses are routed
from a source that cannot leave the host meanwhile, so charon's MOBIKE check lands on
the target alone (``backends.vici.steer``). A move charon does not make in
time is escalated (``mobike.steer_plan``): reauthentication, then terminate and
initiate. Every step is an event on the stream.

Responder side (gateway): every peer move is ``addresses_updated``; a peer that
moves outside ``mobike { allowed_peer_prefixes }`` is terminated (``update_rejected``);
one that moves inside must answer at its new address (``gateway_rr``).

Attached (the default) it loads and unloads nothing in charon: swanctl did that, and the
controller follows whatever IKE_SAs charon reports. With ``--load`` it puts its file into
charon as ``swanctl --load-all`` would (``backends.vici.tree``) and unloads only what it
loaded itself. SIGHUP re-reads the file (``reload``).

On start-up the routing leftovers of a crashed run are removed; on a clean stop
everything the controller installed is removed. SAs are never torn down by a
restart of either charon or this process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from ..backends.vici import (
    IkeSaInfo,
    PathChecked,
    SaAdded,
    SaRekeyed,
    SaRemoved,
    SaUpdated,
    ViciClient,
    ViciConnected,
    ViciDisconnected,
    ViciError,
    ViciEvent,
)
from ..backends.vici.addresses import configured_addresses
from ..backends.vici.errors import LoadError
from ..backends.vici.steer import egress, steer_routes
from ..backends.vici.tree import Loaded, PartialLoad, load_tree
from ..config.attach import AttachConfig
from ..config.errors import ConfigError
from ..eventlog import EventLog, configure, format_timestamp
from ..mobike import steer_plan
from ..mobike.choices import OperatorChoices
from ..mobike.events import (
    Event as PathEvent,
)
from ..mobike.events import (
    HandoverCompleted,
    HandoverFailed,
    HandoverStarted,
    MoveRequested,
    PathDown,
    PathSelected,
    PathUp,
    PreferenceChanged,
)
from ..mobike.follow import Follow, same_addresses
from ..mobike.health import settings_of
from ..mobike.manager import PathManager
from ..mobike.paths import LocalAddress
from ..mobike.peer_addresses import PeerAddresses
from ..net.events import AddressAdded, AddressRemoved, LinkDown, LinkUp, NetEvent, RouteChanged
from ..net.monitor import NetlinkMonitor
from ..net.probes.icmp import IcmpProber
from ..net.state import usable_addresses
from ..net.steering import PolicyRouting, SteeredRoute
from ..types import IPAddress, Path
from .control import ControlServer
from .esp_watch import EspWatch
from .feed import EventFeed
from .gateway_rr import GatewayChecks
from .loop_lag import LoopLag
from .metrics import MetricsServer, snapshot_on_loop
from .operator import operator_request
from .pool_service import COMMANDS as POOL_COMMANDS
from .pool_service import PoolService
from .sdnotify import SystemdNotifier
from .sibling_check import SiblingCheck
from .status import paths_json, preferred_json

JsonObject = dict[str, Any]
MAX_WIRE_IDS = 4096  # bound on probe ids awaiting a reply, all SAs together
RECONCILE_WAIT = 10.0  # seconds to wait for charon's SA list before judging leftovers
DEFAULT_STRONGSWAN_CONF = "/etc/strongswan.conf"
_YES = frozenset({"yes", "true", "1", "enabled"})


def prefer_best_path(strongswan_conf: str, daemon: str = "charon") -> bool | None:
    """``prefer_best_path`` as ``daemon`` reads it from ``strongswan_conf`` (includes
    followed): its own section first, then ``charon``'s, the fallback charon-systemd and
    the other charon front ends register. None when the file cannot be read or parsed."""
    from ..config.errors import ConfigError
    from ..config.parser import parse_file

    try:
        root = parse_file(strongswan_conf)
    except (OSError, ConfigError):
        return None
    for name in dict.fromkeys((daemon, "charon")):
        section = root.sections.get(name)
        value = section.keys.get("prefer_best_path") if section is not None else None
        if value is not None:
            return value.value.strip().lower() in _YES
    return False


@dataclass
class _Sa:
    """The controller's view of one IKE_SA charon initiated."""

    info: IkeSaInfo
    manager: PathManager
    follow: Follow  # charon's own moves and the path's signs of life
    timer: asyncio.TimerHandle | None = None
    probes: set[int] = field(default_factory=set)
    last_handover: JsonObject | None = None
    held_plan: float | None = None  # start of the plan whose escalation was held (said once)



def _str(addr: IPAddress | None) -> str | None:
    return str(addr) if addr is not None else None


def _ep(path: Path) -> dict[str, str]:
    return {"local": str(path.local), "remote": str(path.remote)}


def path_event_fields(event: PathEvent) -> tuple[str, JsonObject]:
    """The stream name and fields of a path manager event (MoveRequested is not logged)."""
    match event:
        case PathUp():
            return "path_up", {**_ep(event.path), "rtt_ms": round(event.rtt_ms, 3)}
        case PathDown():
            return "path_down", {**_ep(event.path), "reason": event.reason}
        case PathSelected():
            return "path_selected", {**_ep(event.path), "reason": event.reason}
        case HandoverStarted():
            return "handover_started", {**_ep(event.path), "old_local": str(event.old_path.local),
                                        "old_remote": str(event.old_path.remote),
                                        "reason": event.reason}
        case HandoverCompleted():
            return "handover_completed", {
                **_ep(event.path), "old_local": str(event.old_path.local),
                "old_remote": str(event.old_path.remote),
                "duration_ms": round(event.duration_ms, 3)}
        case HandoverFailed():
            return "handover_failed", {**_ep(event.path), "old_local": str(event.old_path.local),
                                       "old_remote": str(event.old_path.remote),
                                       "reason": event.reason}
        case MoveRequested():
            return "move_requested", {**_ep(event.path), "reason": event.reason}
        case PreferenceChanged():
            pref = event.preferred_local
            return "preference_changed", {**_ep(event.path), "source": event.source,
                                          "preferred_local": None if pref is None else str(pref)}
    return "path_event", {"type": type(event).__name__}


class Controller:
    """One charon, steered. ``run()`` until ``request_stop()``; see the module docstring."""

    def __init__(self, config: AttachConfig, log: EventLog, *, uri: str,
                 control_path: str | None = None, netns: str | None = None,
                 table: int | None = None, deadlines: steer_plan.Deadlines | None = None,
                 strongswan_conf: str | None = None, load: bool = False,
                 reload_config: Callable[[], AttachConfig] | None = None,
                 reopen_events: Callable[[], None] | None = None,
                 on_ready: Callable[[], None] | None = None,
                 metrics: MetricsServer | None = None) -> None:
        self.strongswan_conf = strongswan_conf
        self.metrics = metrics
        self.loop_lag = LoopLag()
        self._choices = OperatorChoices()  # the operator's prefer/move, by conn
        self.config = config
        self.policy = config.policy
        self.load = load  # --load: put the file into charon (else swanctl did)
        self._reload_config = reload_config
        self._reopen_events = reopen_events
        self._on_ready = on_ready
        self._loaded: Loaded | None = None  # what this process loaded into charon
        self._reconciled = False
        self._reload_lock = asyncio.Lock()
        self.log = log
        self.uri = uri
        self.control_path = control_path
        self.deadlines = deadlines or steer_plan.Deadlines()
        self._routing_kw: dict[str, Any] = {"netns": netns}
        if table is not None:
            self._routing_kw["table"] = table  # its rule stays before charon's 220
        # pyroute2's synchronous IPRoute runs its own event loop: it lives on one thread
        # of its own, created there too (not on the running loop).
        self._route_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="steering")
        self._routing: PolicyRouting | None = None
        self._routes: list[SteeredRoute] = []  # our table as last read back (for status)
        self._leftovers: list[SteeredRoute] = []
        self._adopted: list[SteeredRoute] = []
        self._rejected: set[str] = set()  # IKE_SAs already being terminated for policy
        # prober id -> (IKE_SA, manager's id, the probe's path)
        self._wire_ids: dict[int, tuple[str, int, Path]] = {}
        self.peers = PeerAddresses()  # every address known of each initiated conn's peer
        self._wire_seq = 0
        self.monitor = NetlinkMonitor(netns=netns, on_event=self._on_net)
        self.client = ViciClient(uri, on_connect=self._on_connect)
        self.prober: IcmpProber | None = None
        # ESP to and from the peers: stalls, verification (the native daemon's model)
        self.data_plane = EspWatch(self, settings_of(self.policy))
        self.sibling_check = SiblingCheck(self)
        self.sas: dict[str, _Sa] = {}
        self.plans: dict[str, steer_plan.SteerPlan] = {}  # by connection name
        self._plan_timers: dict[str, asyncio.TimerHandle] = {}
        # Peer addresses routed from a source that cannot leave (steer_routes), by conn,
        # while a move is under way; the generation tells a later move's routes apart.
        self._isolated: dict[str, set[IPAddress]] = {}
        self._route_gen: dict[str, int] = {}
        self._steer_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._control: ControlServer | None = None
        self._loaded_once = False
        self.gateway_rr = GatewayChecks(self.client, log, self.policy, self._spawn)
        self.pool = PoolService(self.client, log, self.policy.pool,
                                registry=metrics.registry if metrics is not None else None)

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def routing(self) -> PolicyRouting:
        assert self._routing is not None, "routing used before run()"
        return self._routing

    async def _executor(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self._route_thread, lambda: fn(*args, **kwargs))

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self.loop_lag.start(loop)
        if self.metrics is not None:  # first: a port in use stops us before anything changed
            if self.log.tap is not None:
                self.log.tap.subscribe(self.metrics.events.on_event)
            self.metrics.start(snapshot_on_loop(loop, self.status))
            self.log.emit("metrics_listening",
                          address=f"{self.metrics.host}:{self.metrics.port}")
        self._routing = await self._executor(lambda: PolicyRouting(**self._routing_kw))
        # A crashed run may have left routes charon now follows: keep those that match
        # where an SA is (adopted once charon lists it), remove the rest after the first sync.
        self._leftovers = await self._executor(self.routing.routes)
        # SO_BINDTODEVICE keeps probes on their uplink and out of charon's table 220;
        # no fwmark rule to install (and clean up) beside our own table.
        self.prober = IcmpProber(self._on_probe_reply, random_bytes=os.urandom, fwmark=None)
        self.data_plane.start()
        await self.monitor.start()
        if self.control_path:
            self._control = ControlServer(
                self.control_path, self._control_request,
                on_refused=lambda uid, pid: self.log.emit("control_refused", uid=uid, pid=pid))
            if self.log.tap is not None:
                self._control.feed = EventFeed(loop)
                self.log.tap.subscribe(self._control.feed.publish)
            await self._control.start()
        self.pool.start()
        client_task = asyncio.ensure_future(self.client.run())
        events_task = asyncio.ensure_future(self._consume())
        try:
            await self._reconcile_after_sync()
            self._reconciled = True
            self._maybe_ready()
            await self._stop.wait()
        finally:
            self.loop_lag.stop()
            events_task.cancel()
            await self.client.close()
            client_task.cancel()
            with contextlib.suppress(BaseException):
                await client_task
            with contextlib.suppress(BaseException):
                await events_task
            await self._shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        return 0

    def _maybe_ready(self) -> None:
        """systemd's READY=1: VICI attached and charon's SAs (so the path table) read."""
        if self._on_ready is not None and self.client.connected:
            self._on_ready()
            self._on_ready = None

    # -- SIGHUP -------------------------------------------------------------------------

    def request_reload(self) -> None:
        """SIGHUP: reopen the events file, re-read the config, apply what changed."""
        self._spawn(self.reload())

    async def reload(self) -> bool:
        """Reopen the events file (logrotate), then apply a re-read config without touching
        a live SA: the mobike policy to every path manager, connections with ``--load``.
        A bad file keeps the running config (``config_rejected``). True when applied."""
        async with self._reload_lock:  # SIGHUPs in a row: one reload after the other
            return await self._reload()

    async def _reload(self) -> bool:
        if self._reopen_events is not None:
            try:
                self._reopen_events()
            except OSError as exc:
                self.log.emit("events_reopen_failed", error=exc.strerror or str(exc))
        if self._reload_config is None:
            return False
        try:
            new = self._reload_config()
        except ConfigError as exc:
            self.log.emit("config_rejected", file=exc.file, line=exc.line, error=str(exc))
            return False
        except OSError as exc:
            self.log.emit("config_rejected", file=self.config.file, line=0,
                          error=f"{self.config.file}:0: {exc.strerror or exc}")
            return False
        fields: JsonObject = {"file": new.file}
        if self.load and self.client.connected:
            # charon first: when it refuses the file, the running policy stays too.
            assert new.tree is not None
            try:
                self._loaded = await load_tree(self.client, new.tree, new.swanctl_dir,
                                               self._loaded)
            except (LoadError, ViciError) as exc:
                if isinstance(exc, PartialLoad):
                    self._loaded = exc.loaded
                self.log.emit("config_rejected", file=new.file, line=0,
                              error=f"{new.file}:0: charon refused it: {exc}")
                return False
            fields["unloaded"] = list(self._loaded.unloaded)
        policy_changed = new.policy != self.policy
        self.config, self.policy = new, new.policy
        # Address books of connections gone from charon and from our SAs: bounded by both.
        self.peers.retain(set(self.client.conns) | {sa.info.conn for sa in self.sas.values()})
        if policy_changed:
            now = self.now
            for sa in self.sas.values():
                sa.manager.set_policy(new.policy, now)
                self._pump(sa)
            self.data_plane.set_settings(settings_of(new.policy))
            self.gateway_rr.set_policy(new.policy)
            self.pool.set_settings(new.policy.pool)
        self.log.emit("config_reloaded", **fields, policy_changed=policy_changed,
                      conns=sorted(new.connections))
        return True

    async def _load_into_charon(self) -> Loaded:
        assert self.config.tree is not None
        return await load_tree(self.client, self.config.tree, self.config.swanctl_dir,
                               self._loaded)

    async def _reconcile_after_sync(self) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        synced = asyncio.ensure_future(self.client.wait_connected())
        try:
            await asyncio.wait({stop, synced}, timeout=RECONCILE_WAIT,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            synced.cancel()
        while not self.client.events.empty():  # let the resync's SA events be seen
            await asyncio.sleep(0.01)
        adopted = {str(r.peer) for r in self._adopted}
        stale = [r for r in self._leftovers if str(r.peer) not in adopted]
        removed = 0
        for route in stale:
            if await self._executor(self.routing.unsteer, route.peer):
                removed += 1
        if not self._adopted:
            removed += await self._executor(self.routing.reconcile_leftovers)
        self._leftovers = []
        self._routes = await self._executor(self.routing.routes)
        self.log.emit("steering_reconciled", removed=removed, adopted=sorted(adopted),
                      table=self.routing.table)

    def _check_charon_settings(self, daemon: str) -> None:
        # Without prefer_best_path charon ignores our routes while its path "works".
        conf = self.strongswan_conf or os.environ.get("STRONGSWAN_CONF") or \
            DEFAULT_STRONGSWAN_CONF
        on = prefer_best_path(conf, daemon or "charon")
        if on is None:
            self.log.emit("charon_settings_unknown", file=conf,
                          hint="cannot read it; make sure charon.prefer_best_path = yes")
        elif on:
            self.log.emit("charon_settings_checked", file=conf, daemon=daemon,
                          prefer_best_path=True)
        else:
            self.log.write("warning", "prefer_best_path_off", {
                "file": conf, "daemon": daemon,
                "hint": "install swanctl/strongswan.d/mobike-vici.conf as "
                "/etc/strongswan.d/mobike-vici.conf; charon will not follow the "
                "controller's routes"})

    async def _shutdown(self) -> None:
        for sa in self.sas.values():
            if sa.timer is not None:
                sa.timer.cancel()
        for handle in self._plan_timers.values():
            handle.cancel()
        self.gateway_rr.close()
        await self.pool.close()
        if self.prober is not None:
            self.prober.close()
        self.data_plane.close()
        self.sibling_check.close()
        self.monitor.close()
        if self._control is not None:
            await self._control.close()
        if self.metrics is not None:
            self.metrics.close()
        removed = await self._executor(self.routing.clear)
        await self._executor(self.routing.close)
        self._route_thread.shutdown(wait=False)
        self.log.emit("steering_cleared", removed=removed, table=self.routing.table)

    async def _on_connect(self, client: ViciClient) -> None:
        # Attached (the default): swanctl loaded charon; nothing is loaded or unloaded.
        # --load: charon initiates start_action=start children itself when load-conn adds
        # or changes a connection; loading an unchanged config again changes nothing.
        if not self.load:
            return
        try:
            self._loaded = await self._load_into_charon()
        except PartialLoad as exc:
            self._loaded = exc.loaded
            raise
        self.log.emit("config_loaded", conns=list(self._loaded.conns),
                      pools=list(self._loaded.pools), shared=list(self._loaded.shared),
                      unloaded=list(self._loaded.unloaded))

    # -- VICI events --------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            event = await self.client.events.get()
            try:
                self._on_vici(event)
            except Exception as exc:  # one bad event must not end the controller
                self.log.emit("controller_error", error=f"{type(exc).__name__}: {exc}")

    def _on_vici(self, event: ViciEvent) -> None:
        match event:
            case ViciConnected():
                # The VICI client itself logs vici_connected/vici_disconnected on the stream.
                self._check_charon_settings(event.daemon.split(" ", 1)[0])
                if self._reconciled:
                    self._maybe_ready()
            case ViciDisconnected():
                pass
            case SaAdded():
                self._sa_seen(event.sa)
            case SaUpdated():
                if event.moved:
                    self.log.emit("addresses_updated", conn=event.conn, ike_spi=event.ike_spi,
                                  old_local=str(event.old.path.local),
                                  old_remote=str(event.old.path.remote),
                                  **_ep(event.new.path))
                if event.moved and not event.new.initiator \
                        and self.policy.allows_peer(event.new.path.remote.addr):
                    self.gateway_rr.moved(event.old, event.new)
                self._sa_seen(event.new)
                if event.moved:
                    self._moved(event.old, event.new)
            case SaRekeyed():
                old = self.sas.pop(event.ike_spi, None)
                if old is not None and old.timer is not None:
                    old.timer.cancel()
                self.data_plane.forget(event.ike_spi)
                self.sibling_check.forget(event.ike_spi)
                self.log.emit("ike_sa_rekeyed", conn=event.conn, ike_spi=event.ike_spi,
                              new_ike_spi=event.new_ike_spi)
                if not event.new.initiator:
                    self.gateway_rr.rekeyed(event)
                self._sa_seen(event.new)
            case PathChecked():
                self._path_checked(event)
            case SaRemoved():
                gone = self.sas.pop(event.ike_spi, None)
                if gone is not None and gone.timer is not None:
                    gone.timer.cancel()
                self.gateway_rr.removed(event.ike_spi)
                self.data_plane.forget(event.ike_spi)
                self.sibling_check.forget(event.ike_spi)
                if event.reason != "rekeyed":
                    self.log.emit("ike_sa_deleted", conn=event.conn, ike_spi=event.ike_spi,
                                  reason=event.reason, **_ep(event.sa.path))

    def _sa_seen(self, info: IkeSaInfo) -> None:
        """Track an established IKE_SA charon initiated; check a responder's peer address."""
        if info.state != "ESTABLISHED":
            return
        if not info.initiator:
            self.gateway_rr.seen(info)  # the gateway side: only peer moves are judged
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
        manager = PathManager(self.policy, info.path, self._local_addresses(),
                              self.peers.of(info.conn), now=now, initiator=True)
        self._choices.inherit(info.conn, manager, now)
        sa = _Sa(info, manager, Follow(info.path, now))
        self.sas[info.ike_spi] = sa
        self.log.emit("ike_sa_tracked", conn=info.conn, ike_spi=info.ike_spi, **_ep(info.path),
                      peer_addresses=[str(a) for a in self.peers.of(info.conn)])
        self.data_plane.track(sa)
        for route in self._leftovers:
            if route.peer == info.path.remote.addr and route.src == info.path.local.addr:
                self._adopted.append(route)
                self.log.emit("steering_adopted", conn=info.conn, ike_spi=info.ike_spi,
                              **_ep(info.path))
        plan = self.plans.get(info.conn)
        if plan is not None and self._reached(plan, info.path):
            self._plan_done(info, plan)
        self._pump(sa)

    def _moved(self, old: IkeSaInfo, info: IkeSaInfo) -> None:
        if not info.initiator:
            self._check_peer(info)
            return
        sa = self.sas.get(info.ike_spi)
        if sa is None:
            return
        now = self.now
        # charon may land on a peer address it learnt through MOBIKE: a path of ours now.
        self._learn(info.conn, [info.path.remote.addr], "charon")
        plan = self.plans.get(info.conn)
        steered = plan is not None and self._reached(plan, info.path)
        sa.follow.on_moved(old.path, info.path, now, steered=steered)
        if plan is not None and steered:
            self._plan_done(info, plan)
        else:
            sa.manager.on_active_path_changed(info.path, now)
        self._pump(sa)
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
                self._pump(sa)

    def _path_checked(self, event: PathChecked) -> None:
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
        self._pump(sa, extra={
            "source": "charon", "old_local": str(move.old.local),
            "old_remote": str(move.old.remote),
            "duration_ms": round(max(0.0, now - started) * 1000, 3),
            "charon_local": str(path.local), "charon_remote": str(path.remote),
            "cancelled_local": str(plan.target.local) if plan is not None else None,
            "cancelled_remote": str(plan.target.remote) if plan is not None else None,
            "cancelled_stage": plan.stage.name.lower() if plan is not None else None})

    def _reached(self, plan: steer_plan.SteerPlan, current: Path) -> bool:
        """On the target, or on another path of the target's uplink (charon may pick the
        other address family of the same link, e.g. after the gateway announced it); never
        on the path the move leaves (the other family of the target's own uplink)."""
        if steer_plan.reached(plan, current):
            return True
        if same_addresses(current, plan.old):
            return False
        want = egress(self.monitor.state, plan.target.local.addr)
        have = egress(self.monitor.state, current.local.addr)
        return want is not None and have is not None and want[0] == have[0]

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
            self._pump(sa, conn=info.conn, ike_spi=info.ike_spi,
                       extra={"source": "controller", "escalation": plan.stage.name.lower(),
                              "charon_local": str(info.path.local),
                              "charon_remote": str(info.path.remote)})

    def _check_peer(self, info: IkeSaInfo) -> None:
        """A peer moved: outside ``allowed_peer_prefixes`` its IKE_SA is terminated."""
        if self.policy.allows_peer(info.path.remote.addr) or info.ike_spi in self._rejected:
            return
        self._rejected.add(info.ike_spi)
        self.log.emit("update_rejected", conn=info.conn, ike_spi=info.ike_spi,
                      reason="peer_address_not_allowed", **_ep(info.path))
        self._spawn(self._terminate(info, "peer_address_not_allowed"))

    async def _terminate(self, info: IkeSaInfo, reason: str) -> None:
        try:
            await self.client.call("terminate", {"ike-id": str(info.unique_id), "timeout": "-1"})
            self.log.emit("ike_sa_terminated", conn=info.conn, ike_spi=info.ike_spi,
                          reason=reason)
        except ViciError as exc:
            self.log.emit("terminate_failed", conn=info.conn, ike_spi=info.ike_spi,
                          error=str(exc))

    # -- the network --------------------------------------------------------------------

    def _local_addresses(self) -> list[LocalAddress]:
        # Virtual IPs live inside the tunnel: never a path's outer address.
        vips = self.client.table.virtual_ips()  # kept by the table: no walk per SA
        return [LocalAddress(addr, ifname)
                for ifname, addr in usable_addresses(self.monitor.state)
                if str(addr) not in vips]

    def _on_net(self, event: NetEvent) -> None:
        now = self.now
        addrs = (self._local_addresses() if isinstance(event, AddressAdded | AddressRemoved)
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
            self._pump(sa)

    # -- probes -------------------------------------------------------------------------

    def _on_probe_reply(self, wire_id: int, _rtt: float) -> None:
        if self.data_plane.on_probe_reply(wire_id) or self.sibling_check.on_reply(wire_id):
            return
        # Probe ids are per path manager; the prober sees one id space for all SAs.
        entry = self._wire_ids.pop(wire_id, None)
        sa = self.sas.get(entry[0]) if entry is not None else None
        if entry is None or sa is None:
            return
        _, probe_id, path = entry
        sa.probes.discard(probe_id)
        now = self.now
        sa.follow.on_alive(path, now)
        self.data_plane.path_alive(sa.info.ike_spi, path)
        sa.manager.on_probe_reply(probe_id, now)
        self._pump(sa)

    # -- the path manager ---------------------------------------------------------------

    def _pump(self, sa: _Sa, *, conn: str | None = None, ike_spi: str | None = None,
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
                wire_id = self._next_wire_id()
                self._wire_ids[wire_id] = (sa.info.ike_spi, req.probe_id, req.path)
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
            name, fields = path_event_fields(event)
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

    def _next_wire_id(self) -> int:
        self._wire_seq += 1
        while len(self._wire_ids) >= MAX_WIRE_IDS:  # oldest first: long since timed out
            self._wire_ids.pop(next(iter(self._wire_ids)))
        return self._wire_seq

    def _on_timer(self, ike_spi: str) -> None:
        sa = self.sas.get(ike_spi)
        if sa is None:
            return
        sa.timer = None
        sa.manager.handle_timer(self.now)
        self._pump(sa)

    # -- steering -----------------------------------------------------------------------

    def _start_move(self, sa: _Sa, event: MoveRequested) -> None:
        if self.sibling_check.hold(sa, event):
            return  # the target's uplink just died silently: it must answer first
        self.begin_move(sa, event)

    def begin_move(self, sa: _Sa, event: MoveRequested) -> None:
        """Steer charon to the manager's target (the plan, its timer, the routes)."""
        info = sa.info
        plan = steer_plan.start(info.ike_spi, event.path, event.old_path, self.now,
                                self.deadlines)
        self.plans[info.conn] = plan
        self._route_gen[info.conn] = self._route_gen.get(info.conn, 0) + 1
        self._arm_plan(info.conn, plan)
        self._spawn(self._steer(info, event.path, event.reason))

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
            isolated = self._isolated.setdefault(info.conn, set())
            for route in routes:
                if info.conn not in self.plans or self._route_gen.get(info.conn) != gen:
                    break  # the move ended meanwhile, or a later one took over
                try:
                    await self._executor(self.routing.steer, route.peer, via=route.via,
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
            if self.plans.get(info.conn) is None:
                await self._release_isolation(info.conn)
            self._routes = await self._executor(self.routing.routes)
        cur_info = self.client.table.get(info.ike_spi)
        plan = self.plans.get(info.conn)
        if plan is not None and cur_info is not None and self._reached(plan, cur_info.path):
            self._plan_done(cur_info, plan)  # charon was there already (e.g. link down)

    def prearm_roam(self, ike_spi: str, path: Path) -> None:
        """A stall's burst is about to judge ``path``, charon's (``EspWatch``). charon
        checks its paths ``CHARON_ROAM_DELAY`` after the first route event, and no VICI
        command asks for that check; so the route charon already follows there is
        installed anew now, and charon's check runs just after a failover's routes would
        be in place, not that long after them. A path that answers loses nothing:
        charon's check finds it still best and sends nothing."""
        sa = self.sas.get(ike_spi)
        out = egress(self.monitor.state, path.local.addr)
        if sa is None or out is None or sa.info.conn in self.plans:
            return
        self._spawn(self._pin(sa.info, path, out))

    async def _pin(self, info: IkeSaInfo, path: Path, out: tuple[str, IPAddress | None]
                   ) -> None:
        async with self._steer_lock:
            now_at = self.client.table.get(info.ike_spi)
            if info.conn in self.plans or now_at is None or not same_addresses(now_at.path,
                                                                               path):
                return  # a move's routes came first, or charon moved: never pull it back
            try:
                await self._executor(self.routing.pin, path.remote.addr, via=out[1],
                                     dev=out[0], src=path.local.addr)
            except (OSError, LookupError, ValueError) as exc:
                self.log.emit("steer_failed", conn=info.conn, ike_spi=info.ike_spi,
                              error=str(exc), **_ep(path))
                return
        self.log.emit("roam_prearmed", conn=info.conn, ike_spi=info.ike_spi, dev=out[0],
                      **_ep(path))

    def _release(self, conn: str) -> None:
        """The move is over (landed, failed, escalated, given up): charon may use every
        peer address again (reauthentication and initiation need the configured ones)."""
        if self._isolated.get(conn):
            self._spawn(self._locked_release(conn, self._route_gen.get(conn, 0)))

    async def _locked_release(self, conn: str, gen: int) -> None:
        async with self._steer_lock:
            if self._route_gen.get(conn, 0) == gen:  # not when a new move took over
                await self._release_isolation(conn)

    async def _release_isolation(self, conn: str) -> None:
        for peer in sorted(self._isolated.pop(conn, set()), key=lambda a: (a.version, a)):
            try:
                await self._executor(self.routing.unsteer, peer)
            except OSError as exc:
                self.log.emit("steer_failed", conn=conn, remote=str(peer), error=str(exc))
        self._routes = await self._executor(self.routing.routes)

    def _move_failed(self, conn: str, target: Path, reason: str) -> None:
        self.plans.pop(conn, None)
        self._release(conn)
        handle = self._plan_timers.pop(conn, None)
        if handle is not None:
            handle.cancel()
        for sa in self.sas.values():
            if sa.info.conn == conn:
                sa.manager.on_move_failed(target, reason, self.now)
                self._pump(sa)

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
        self._spawn(self._escalate(sa.info, action))

    async def _escalate(self, info: IkeSaInfo, action: steer_plan.Action) -> None:
        # The new IKE_SA resolves the configured peer addresses: none may stay isolated.
        await self._locked_release(info.conn, self._route_gen.get(info.conn, 0))
        if action == steer_plan.Action.REAUTH:
            await self._reauth(info)
        else:
            await self._reinitiate(info)

    async def _reauth(self, info: IkeSaInfo) -> None:
        try:
            await self.client.call("rekey", {"ike-id": str(info.unique_id), "reauth": "yes"})
        except ViciError as exc:
            self.log.emit("escalation_failed", conn=info.conn, ike_spi=info.ike_spi,
                          stage="reauth", error=str(exc))

    async def _reinitiate(self, info: IkeSaInfo) -> None:
        try:
            await self.client.call("terminate", {"ike-id": str(info.unique_id), "timeout": "-1"})
        except ViciError as exc:
            self.log.emit("escalation_failed", conn=info.conn, ike_spi=info.ike_spi,
                          stage="terminate", error=str(exc))
        children = self.config.connections.get(info.conn) or self._charon_children(info.conn)
        for child in children[:1]:
            try:
                await self.client.initiate(child, info.conn, timeout_ms=0)
            except ViciError as exc:
                self.log.emit("escalation_failed", conn=info.conn, ike_spi=info.ike_spi,
                              stage="initiate", error=str(exc))

    def _charon_children(self, conn: str) -> tuple[str, ...]:
        """The children charon has for ``conn`` (list-conns at the last resync): attached,
        the file may not name every connection swanctl loaded."""
        body = self.client.conns.get(conn)
        children = body.get("children") if isinstance(body, dict) else None
        return tuple(str(name) for name in children) if isinstance(children, dict) else ()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- status -------------------------------------------------------------------------

    def _control_request(self, req: JsonObject) -> JsonObject:
        cmd = req.get("cmd")
        if cmd in ("prefer", "move"):
            return operator_request(self, req, self.now)
        if cmd in POOL_COMMANDS:
            return self.pool.control(req)
        if cmd != "status":
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        return self.status()

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
        self._pump(self.sas[spi])

    def status(self) -> JsonObject:
        sas: list[JsonObject] = []
        for info in self.client.table.sas():
            tracked = self.sas.get(info.ike_spi)
            paths: list[JsonObject] = []
            if tracked is not None:
                paths = paths_json(tracked.manager)
            sas.append({
                "conn": info.conn, "ike_spi": info.ike_spi, "state": info.state,
                "initiator": info.initiator, **_ep(info.path), "local_id": info.local_id,
                "remote_id": info.remote_id, "proposal": info.proposal,
                "virtual_ips": list(info.virtual_ips),
                "children": [{"name": c.name, "unique_id": c.unique_id, "state": c.state,
                              "spi_in": c.spi_in, "spi_out": c.spi_out,
                              "local_ts": list(c.local_ts), "remote_ts": list(c.remote_ts),
                              "proposal": c.proposal}
                             for c in info.children],
                "paths": paths,
                "peer_addresses": [str(a) for a in self.peers.of(info.conn)]
                if tracked is not None else [],
                "last_handover": tracked.last_handover if tracked is not None else None,
                "preferred_local": preferred_json(tracked.manager) if tracked else None,
            })
        routes = [{"peer": str(r.peer), "via": str(r.via) if r.via else None,
                   "src": str(r.src) if r.src else None} for r in self._routes]
        policy = self.policy
        return {"ok": True, "backend": "vici", "vici": self.uri,
                "vici_connected": self.client.connected, "mode": "load" if self.load else "attach",
                "config": self.config.file, "conns": sorted(self.config.connections),
                "policy": {"probe_interval_ms": round(policy.probe_interval * 1000),
                           "probe_timeout_ms": round(policy.probe_timeout * 1000),
                           "probe_misses": policy.probe_misses,
                           "hold_down_ms": round(policy.hold_down * 1000)},
                "ike_sas": sas, "loop_lag": self.loop_lag.snapshot(),
                "steering": {"table": self.routing.table, "routes": routes}}


def run_controller(config: AttachConfig, events: TextIO, uri: str, control_path: str | None,
                   strongswan_conf: str | None = None, *, load: bool = False,
                   level: str = "info",
                   reload_config: Callable[[], AttachConfig] | None = None,
                   reopen_events: Callable[[], None] | None = None,
                   metrics: tuple[str, int] | None = None) -> int:
    """The ``run`` subcommand's body: until SIGTERM/SIGINT; 0 after a clean stop.

    Every logger in the process (VICI client, netlink, steering) writes to ``events``
    as one JSON stream, filtered by ``level``.
    """
    configure(events, level)
    log = EventLog.to_stream(events, level)
    notifier = SystemdNotifier.from_env()

    async def main() -> int:
        controller = Controller(config, log, uri=uri, control_path=control_path,
                                strongswan_conf=strongswan_conf, load=load,
                                reload_config=reload_config, reopen_events=reopen_events,
                                on_ready=notifier.ready,
                                metrics=MetricsServer(metrics) if metrics is not None else None)
        notifier.start_watchdog()
        try:
            return await controller.run()
        finally:
            notifier.stopping()

    log.emit("controller_started", pid=os.getpid(), vici=uri, config=config.file,
             mode="load" if load else "attach")
    code = asyncio.run(main())
    log.emit("controller_stopped", code=code)
    return code
