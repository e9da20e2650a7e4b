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
import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any, TextIO

from ..backends.vici import (
    ChildRemoved,
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
from ..backends.vici.charon_settings import DEFAULT_STRONGSWAN_CONF, read_settings, unmet
from ..backends.vici.errors import LoadError
from ..backends.vici.mobility import ViciMobility
from ..backends.vici.relay_hook import NoRelay
from ..backends.vici.tree import Loaded, PartialLoad, load_tree
from ..config.attach import AttachConfig
from ..config.mobike import MobikePolicy
from ..eventlog import EventLog, configure
from ..mobike import steer_plan
from ..mobike.health import settings_of
from ..net.events import AddressRemoved, NetEvent
from ..net.monitor import NetlinkMonitor
from ..net.probes.icmp import IcmpProber
from ..types import Path
from .control import ControlServer
from .esp_watch import EspWatch
from .feed import EventFeed
from .gateway_rr import GatewayChecks
from .gc_freeze import freeze_startup
from .heap_trim import HeapTrim, share_one_arena
from .ike_relay import IkeRelay
from .loop_lag import LoopLag
from .metrics import MetricsServer, snapshot_on_loop
from .operator import operator_request
from .pool_service import COMMANDS as POOL_COMMANDS
from .pool_service import PoolService
from .reload import reloaded, reread
from .sdnotify import SystemdNotifier
from .sibling_check import SiblingCheck
from .state_probe import StateProbe
from .status import paths_json, preferred_json

JsonObject = dict[str, Any]
RECONCILE_WAIT = 10.0  # seconds to wait for charon's SA list before judging leftovers
def _ep(path: Path) -> dict[str, str]:
    return {"local": str(path.local), "remote": str(path.remote)}


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
        self.heap_trim = HeapTrim()  # worker threads' glibc arenas: free pages back
        self.config = config
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
        routing_kw: dict[str, Any] = {"netns": netns}
        if table is not None:
            routing_kw["table"] = table  # its rule stays before charon's 220
        self.client = ViciClient(uri, on_connect=self._on_connect)
        self.monitor = NetlinkMonitor(netns=netns, on_event=self._on_net)
        self.mobility = ViciMobility(config, log, self.client, self.monitor,
                                     deadlines=deadlines or steer_plan.Deadlines(),
                                     routing_kw=routing_kw)
        # ESP to and from the peers: stalls, verification (the native daemon's model)
        self.sibling_check = SiblingCheck(
            self.mobility, lambda: self.data_plane.settings.burst_timeout)
        self.data_plane = EspWatch(self.mobility, self.sibling_check,
                                   settings_of(config.policy))
        self.mobility.attach(self.data_plane, self.sibling_check)
        self.ike_relay = IkeRelay(log)  # charon's requests held on a path it leaves
        # an IKE_SA the peer lost in a restart without a DELETE (reads the relay's ledger)
        self.state_probe = StateProbe(
            log, self.client, self.ike_relay,
            lambda: {spi: sa.info for spi, sa in self.mobility.sas.items()},
            self.mobility.spawn, lambda: self.mobility.config)
        self._stop = asyncio.Event()
        self._control: ControlServer | None = None
        self.gateway_rr = GatewayChecks(self.client, log, config.policy, self.mobility.spawn)
        self.pool = PoolService(self.client, log, config.policy.pool,
                                registry=metrics.registry if metrics is not None else None)

    @property
    def policy(self) -> MobikePolicy:
        return self.mobility.policy

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        share_one_arena()  # before the first worker thread: see heap_trim
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self.loop_lag.start(loop)
        self.heap_trim.start(loop)
        if self.metrics is not None:  # first: a port in use stops us before anything changed
            if self.log.tap is not None:
                self.log.tap.subscribe(self.metrics.events.on_event)
            self.metrics.start(snapshot_on_loop(loop, self.status))
            self.log.emit("metrics_listening",
                          address=f"{self.metrics.host}:{self.metrics.port}")
        # A crashed run may have left routes charon now follows: keep those that match
        # where an SA is (adopted once charon lists it), remove the rest after the first sync.
        await self.mobility.open_routing()
        await self.mobility.left.open(self.mobility.routing.ipr)
        # SO_BINDTODEVICE keeps probes on their uplink and out of charon's table 220;
        # no fwmark rule to install (and clean up) beside our own table.
        self.mobility.prober = IcmpProber(self.mobility.on_probe_reply, random_bytes=os.urandom,
                                          fwmark=None)
        self.data_plane.start()
        self._open_ike_relay()
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
        freeze_startup()  # before charon's SAs are read: see gc_freeze
        client_task = asyncio.ensure_future(self.client.run())
        events_task = asyncio.ensure_future(self._consume())
        try:
            await self._reconcile_after_sync()
            self._reconciled = True
            self._maybe_ready()
            await self._stop.wait()
        finally:
            self.loop_lag.stop()
            self.heap_trim.stop()
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
        self.mobility.spawn(self.reload())

    async def reload(self) -> bool:
        """Reopen the events file (logrotate), then apply a re-read config without touching
        a live SA: the mobike policy to every path manager, connections with ``--load``.
        A bad file keeps the running config (``config_rejected``). True when applied."""
        async with self._reload_lock:  # SIGHUPs in a row: one reload after the other
            return await self._reload()

    async def _reload(self) -> bool:
        new = reread(self.log, self.config.file, self._reload_config, self._reopen_events)
        if new is None:
            return False
        unloaded: list[str] = []
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
            unloaded = list(self._loaded.unloaded)
        policy_changed = new.policy != self.policy
        self.config = new
        self.mobility.set_config(new)
        if policy_changed:
            self.mobility.set_policy(new.policy, self.now)
            self.data_plane.set_settings(settings_of(new.policy))
            self.gateway_rr.set_policy(new.policy)
            self.pool.set_settings(new.policy.pool)
        # run applies the file's connections (--load puts them into charon).
        reloaded(self.log, new.file, policy_changed=policy_changed, conns=new.connections,
                 connections_unchanged=False, unloaded=unloaded)
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
        mob = self.mobility
        adopted = {str(r.peer) for r in mob.adopted}
        stale = [r for r in mob.leftovers if str(r.peer) not in adopted]
        removed = 0
        for route in stale:
            if await mob.executor(mob.routing.unsteer, route.peer):
                removed += 1
        if not mob.adopted:
            removed += await mob.executor(mob.routing.reconcile_leftovers)
        mob.leftovers = []
        mob.routes = await mob.executor(mob.routing.routes)
        self.log.emit("steering_reconciled", removed=removed, adopted=sorted(adopted),
                      table=mob.routing.table)

    def _check_charon_settings(self, daemon: str) -> None:
        conf = self.strongswan_conf or os.environ.get("STRONGSWAN_CONF") or \
            DEFAULT_STRONGSWAN_CONF
        values = read_settings(conf, daemon or "charon")
        if values is None:
            self.log.emit("charon_settings_unknown", file=conf,
                          hint="cannot read it; make sure charon.prefer_best_path = yes")
            return
        hint = ("install swanctl/strongswan.d/mobike-vici.conf as "
                "/etc/strongswan.d/mobike-vici.conf and restart strongswan")
        missing = unmet(values)
        for setting in missing:
            if setting.key == "prefer_best_path":
                self.log.write("warning", "prefer_best_path_off", {
                    "file": conf, "daemon": daemon, "hint": f"{hint}; {setting.effect}"})
            else:
                self.log.write("warning", "charon_setting_off", {
                    "file": conf, "daemon": daemon, "setting": f"charon.{setting.key}",
                    "value": values[setting.key], "want": setting.want,
                    "effect": setting.effect, "hint": hint})
        self.log.emit("charon_settings_checked", file=conf, daemon=daemon,
                      prefer_best_path=not any(s.key == "prefer_best_path" for s in missing),
                      unmet=[f"charon.{s.key}" for s in missing])

    def _open_ike_relay(self) -> None:
        try:
            self.ike_relay.open()
        except OSError as exc:
            self.log.write("warning", "ike_relay_unavailable",
                           {"error": exc.strerror or str(exc)})
            return
        self.mobility.ike_relay = self.ike_relay
        self.state_probe.start()

    async def _shutdown(self) -> None:
        self.state_probe.stop()
        self.mobility.ike_relay = NoRelay()
        self.ike_relay.close()
        self.mobility.close()
        self.gateway_rr.close()
        await self.pool.close()
        self.data_plane.close()
        self.sibling_check.close()
        self.monitor.close()
        if self._control is not None:
            await self._control.close()
        if self.metrics is not None:
            self.metrics.close()
        removed = await self.mobility.left.close()
        removed += await self.mobility.close_routing()
        self.log.emit("steering_cleared", removed=removed, table=self.mobility.routing.table)

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
                    self.mobility.moved(event.old, event.new)
            case SaRekeyed():
                self.mobility.forget(event.ike_spi)
                self.log.emit("ike_sa_rekeyed", conn=event.conn, ike_spi=event.ike_spi,
                              new_ike_spi=event.new_ike_spi)
                if not event.new.initiator:
                    self.gateway_rr.rekeyed(event)
                self._sa_seen(event.new)
            case PathChecked():
                self.mobility.path_checked(event)
            case ChildRemoved(reason="rekey_undone"):
                self.data_plane.rekey_undone(event.ike_spi, event.child.unique_id)
            case SaRemoved():
                self.gateway_rr.removed(event.ike_spi)
                self.mobility.forget(event.ike_spi)
                if event.reason != "rekeyed":
                    self.log.emit("ike_sa_deleted", conn=event.conn, ike_spi=event.ike_spi,
                                  reason=event.reason, **_ep(event.sa.path))

    def _sa_seen(self, info: IkeSaInfo) -> None:
        if info.state == "ESTABLISHED" and not info.initiator:
            self.gateway_rr.seen(info)  # the gateway side: only peer moves are judged
        self.mobility.sa_seen(info)

    def _on_net(self, event: NetEvent) -> None:
        prober = self.mobility.prober
        if isinstance(event, AddressRemoved) and prober is not None \
                and not any(a.address == event.address
                            for a in self.monitor.state.addresses.values()):
            prober.forget_local(event.address)  # its probe sockets: none left behind
        self.mobility.on_net(event)

    # -- status -------------------------------------------------------------------------

    def _control_request(self, req: JsonObject) -> JsonObject:
        cmd = req.get("cmd")
        if cmd in ("prefer", "move"):
            return operator_request(self.mobility, req, self.now)
        if cmd in POOL_COMMANDS:
            return self.pool.control(req)
        if cmd != "status":
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        return self.status()

    def status(self) -> JsonObject:
        sas: list[JsonObject] = []
        for info in self.client.table.sas():
            tracked = self.mobility.sas.get(info.ike_spi)
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
                "peer_addresses": [str(a) for a in self.mobility.peers.of(info.conn)]
                if tracked is not None else [],
                "last_handover": tracked.last_handover if tracked is not None else None,
                "preferred_local": preferred_json(tracked.manager) if tracked else None,
            })
        routes = [{"peer": str(r.peer), "via": str(r.via) if r.via else None,
                   "src": str(r.src) if r.src else None} for r in self.mobility.routes]
        policy = self.policy
        return {"ok": True, "backend": "vici", "vici": self.uri,
                "vici_connected": self.client.connected, "mode": "load" if self.load else "attach",
                "config": self.config.file, "conns": sorted(self.config.connections),
                "policy": {"probe_interval_ms": round(policy.probe_interval * 1000),
                           "probe_timeout_ms": round(policy.probe_timeout * 1000),
                           "probe_misses": policy.probe_misses,
                           "hold_down_ms": round(policy.hold_down * 1000)},
                "ike_sas": sas, "loop_lag": self.loop_lag.snapshot(),
                "steering": {"table": self.mobility.routing.table, "routes": routes}}


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
