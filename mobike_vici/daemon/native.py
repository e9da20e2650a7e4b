"""The native daemon: the sans-I/O engine wired to UDP sockets, one timer, signals,
the control socket and the event log.

The adapter stays thin: receive, feed, flush, re-arm one timer. The engine's clock is
the loop's (``time.monotonic``): its deadlines go straight into ``loop.call_at``.

Nothing the engine raises may take the daemon down: a failure while feeding a
datagram is logged as ``packet_dropped`` with reason ``internal_error``, any other
as ``engine_error``; only the exception type is logged (its text could hold
anything).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import ParamSpec

from ..backends.native import Mobility
from ..config.model import Config, StartAction
from ..core.engine import Datagram, IkeStatus
from ..core.events import Event, IkeSaDeleted, IkeSaRekeyed, ProbeResult
from ..eventlog import EventLog, level_of
from ..types import IKE_PORT, NATT_PORT, Path
from . import udp
from .control import ControlServer, JsonObject
from .data_path import DataPathWatch, settings_of
from .drop_log import DropLog
from .feed import EventFeed
from .framing import NON_ESP_MARKER, NattKind, classify_natt, frame_natt
from .loop_lag import LoopLag
from .metrics import MetricsServer, snapshot_on_loop
from .native_api import (
    DataPlaneApi,
    EngineApi,
    EspHandler,
    EventHook,
    Service,
    opens_ike_sa,
    restart_children,
)
from .native_events import write_core_event
from .native_net import NetFollow
from .native_status import status_answer
from .operator import operator_request
from .reload import reloaded, reread
from .routing import DaemonRouting
from .tcp_stream import Pair
from .tcp_transport import TcpTransport
from .traffic import TrafficWatch

_P = ParamSpec("_P")

WILDCARDS: tuple[tuple[socket.AddressFamily, str], ...] = (
    (socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::"))

MAX_BATCH = 64
"""Datagrams read per wakeup of one socket, so one busy socket cannot starve the rest."""

ESP_DROP_LOG_INTERVAL = 1.0
"""At most one ``esp_not_supported`` event per this many seconds."""

ENGINE_ERROR_BACKOFF = 1.0
"""After the engine's timer handler raised, wait at least this long before calling it again."""

# IPv6 may be disabled on the host; the daemon then runs on IPv4 alone.
_V6_UNAVAILABLE = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT})


def _starts(action: StartAction) -> bool:
    """``start`` and ``trap|start`` both initiate at load time."""
    return "start" in action.value.split("|")


class Daemon:
    """One engine behind UDP ``ike_port``/``natt_port`` on every family in ``bind``."""

    def __init__(
        self,
        config: Config,
        engine: EngineApi,
        log: EventLog,
        *,
        ike_port: int = IKE_PORT,
        natt_port: int = NATT_PORT,
        bind: Sequence[tuple[socket.AddressFamily, str]] = WILDCARDS,
        control_path: str | None = None,
        esp_handler: EspHandler | None = None,
        data_plane: DataPlaneApi | None = None,
        shutdown_grace: float = 2.0,
        mobility: Mobility | None = None,
        net_monitor: bool = True,
        metrics: MetricsServer | None = None,
        routing: DaemonRouting | None = None,
        data_path: DataPathWatch | None = None,
        tcp: TcpTransport | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.log = log
        self.ike_port = ike_port
        self.natt_port = natt_port
        self.esp_handler = esp_handler
        self.data_plane = data_plane
        """Userspace ESP: opened after the sockets, fed core events, asked for counters."""
        self.event_hooks: list[EventHook] = []
        self.control_handlers: dict[str, Callable[[JsonObject], JsonObject]] = {}
        """Control commands served by an attached service (the pool's ``drain``, ``pool``)."""
        self.services: list[Service] = []
        """Started once the daemon is up, closed with it (the pool)."""
        self.mobility = mobility
        """MOBIKE path selection: fed core events and netlink, asked for probes and moves."""
        self.reload_config: Callable[[], Config] | None = None
        """SIGHUP re-reads the config with this (set by ``run_native``)."""
        self.config_file = ""
        """The file ``reload_config`` reads (for the reload's events)."""
        self.reopen_events: Callable[[], None] | None = None
        self.metrics = metrics
        """Prometheus endpoint: fed by the event log's tap, reads ``status_answer``."""
        self.routing = routing
        """Our own tables and rules that keep IKE and ESP out of the tunnel (marks them)."""
        self.data_path = data_path
        """After each move of ours: the peer's ESP must follow, else the CHILD_SAs are rekeyed."""
        self.tcp = tcp
        """IKE and ESP over TCP (RFC 9329); None with ``tcp = no``."""
        self._want_monitor = net_monitor and (mobility is not None or routing is not None)
        self._owns_routes = False
        """Set once this run may touch our tables: a daemon that failed to bind must not
        remove the routes of the one that holds the ports."""
        self._net = NetFollow(log, mobility, routing, self._net_changed, self.now)
        self.shutdown_grace = shutdown_grace
        self.esp_dropped = 0
        """ESP datagrams dropped for want of a data plane (a counter for status and tests)."""
        self._bind = tuple(bind)
        self._control = ControlServer(
            control_path, self._control_request, on_refused=self._control_refused,
        ) if control_path else None
        self._sockets: dict[tuple[socket.AddressFamily, int], socket.socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._stopping = False
        self._started = False
        """start() has opened the data plane: a new IKE_SA's CHILD_SAs have somewhere to go."""
        self._impatient = False
        self._esp_dropped_unlogged = 0
        self._esp_logged_at: float | None = None
        self.drops = DropLog(config.mobike.policy.drop_log_interval)
        """Unauthenticated IKE drops: one ``packet_dropped`` per reason per interval."""
        self._drop_timer: asyncio.TimerHandle | None = None
        self._traffic: TrafficWatch | None = None
        """Samples the data plane's counters for the path managers (stall detection)."""
        self.loop_lag = LoopLag()
        """How late the loop runs its timers (``status`` ``loop_lag``)."""

    # --- lifecycle ------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("daemon not started")
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    @property
    def next_deadline(self) -> float | None:
        """When the engine's timer fires next (loop time), None when not armed."""
        return self._timer.when() if self._timer is not None else None

    async def start(self) -> None:
        """Bind sockets and the control socket, then initiate ``start_action = start``."""
        self._loop = asyncio.get_running_loop()
        self.loop_lag.start(self._loop)
        self.engine.set_wall_clock(time.time() - self.now())
        try:
            self._open_sockets()
            self._attach_feed()  # now: the backlog holds daemon_started
            if self.tcp is not None:
                self.tcp.open(self.loop, self._bind)
            if self.metrics is not None:
                self._start_metrics(self.metrics)
            self.log.emit("daemon_started", backend="native", ike_port=self.ike_port,
                          natt_port=self.natt_port,
                          control=self._control.path if self._control else None)
            if self.routing is not None:
                # Only now: with UDP 500/4500 bound, no other daemon runs in this namespace,
                # so whatever of ours is in the kernel is a dead run's (removed by start()).
                self._owns_routes = True
                await self.routing.start()
            if self.data_plane is not None:
                self._open_data_plane()
                self._watch_traffic()
            if self._want_monitor:
                await self._net.start()
            self._started = True
            # The control socket last: whoever reaches it finds IKE_SA_INIT accepted.
            if self._control is not None:
                await self._control.start()
        except BaseException:
            await self.close()
            raise
        for service in self.services:
            service.start()
        now = self.now()
        for conn in self.config.connections:
            for child in conn.children:
                if _starts(child.start_action):
                    self._guarded("initiate", self.engine.initiate, conn.name, child.name, now)
        self.after_engine()

    def _attach_feed(self) -> None:
        if self._control is not None and self.log.tap is not None:
            self._control.feed = EventFeed(self.loop)
            self.log.tap.subscribe(self._control.feed.publish)

    def _start_metrics(self, metrics: MetricsServer) -> None:
        if self.log.tap is not None:
            self.log.tap.subscribe(metrics.events.on_event)
        metrics.start(snapshot_on_loop(self.loop, self.status_answer))
        self.log.emit("metrics_listening", address=f"{metrics.host}:{metrics.port}")

    def _net_changed(self) -> None:
        if self._loop is not None and self._sockets:
            self.after_engine()  # a path manager may want a probe or a move now

    def _open_data_plane(self) -> None:
        assert self.data_plane is not None
        # The native daemon has one data plane, on every kernel: ESP in userspace over TUN.
        self.log.emit("data_plane_selected", data_plane="userspace",
                      reason="the native daemon carries ESP in userspace over TUN")
        self.data_plane.open(self)
        if self.esp_handler is None:
            self.esp_handler = self.data_plane.receive_udp

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or ``request_stop``), then delete SAs and return 0."""
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        # Handlers first: a SIGTERM during start-up must still end in a graceful stop.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
                handled.append(sig)
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            handled.append(signal.SIGHUP)
        try:
            await self.start()
            await self._stop.wait()
            await self.shutdown()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            await self.close()
        return 0

    def request_stop(self) -> None:
        """First call: shut down gracefully. Second call: stop waiting for the peers."""
        if self._stopping:
            self._impatient = True
            self._changed.set()
        self._stopping = True
        self._stop.set()

    def _on_sighup(self) -> None:
        """Reopen the events file (logrotate), re-read the config, apply the mobike policy
        to every IKE_SA's path selection (live ones included, their SAs untouched);
        connections are left as they are (``connections_unchanged`` says when the file
        changed them). A bad file keeps the running config (``config_rejected``)."""
        new = reread(self.log, self.config_file, self.reload_config, self.reopen_events)
        if new is None:
            return
        policy_changed = new.mobike.policy != self.config.mobike.policy
        if policy_changed and self.data_path is not None:
            self.data_path.set_settings(settings_of(new.mobike.policy))
        if policy_changed and self.mobility is not None:
            self.mobility.set_policy(new.mobike.policy, self.now())
            self.after_engine()  # a live IKE_SA may now want a probe or a move
        for service in self.services:  # the pool's peers and limit
            service.reload(new)
        same_conns = new.connections == self.config.connections and \
            new.secrets == self.config.secrets and new.pools == self.config.pools
        self.config = replace(self.config, mobike=new.mobike)
        reloaded(self.log, self.config_file, policy_changed=policy_changed,
                 conns=(c.name for c in self.config.connections),
                 connections_unchanged=not same_conns)

    async def shutdown(self) -> None:
        """Delete every IKE_SA and wait up to ``shutdown_grace`` seconds for the peers."""
        self._stopping = True
        now = self.now()
        pending = {ike.ike_spi for ike in self._status()}
        for spi in sorted(pending):
            self._guarded("delete_ike", self.engine.delete_ike, spi, now)
        self.after_engine()
        deadline = now + self.shutdown_grace
        while pending:
            pending &= {ike.ike_spi for ike in self._status()}
            remaining = deadline - self.now()
            if not pending or remaining <= 0 or self._impatient:
                break
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        if pending:
            self.log.emit("shutdown_incomplete", ike_sas=sorted(pending))

    def _watch_traffic(self) -> None:
        packets_of = getattr(self.data_plane, "packets_of", None)
        if self.mobility is None or packets_of is None:
            return
        self._traffic = TrafficWatch(
            packets_of, self.mobility, self.after_engine,
            on_error=lambda exc: self.log.emit("engine_error", call="traffic",
                                               error=type(exc).__name__))
        self._traffic.start(self.loop)

    async def close(self) -> None:
        self.loop_lag.stop()
        for service in self.services:
            await service.close()
        if self._traffic is not None:
            self._traffic.stop()
            self._traffic = None
        self._net.close()
        if self.data_plane is not None:
            self.data_plane.close()
        if self.routing is not None and self._owns_routes:
            self._owns_routes = False
            await self.routing.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.tcp is not None:
            self.tcp.close()
        for sock in self._sockets.values():
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        was_open = bool(self._sockets)
        self._sockets.clear()
        if self._control is not None:
            await self._control.close()
        if self.metrics is not None:
            self.metrics.close()
        if was_open:
            self.log.emit("daemon_stopped")

    def _open_sockets(self) -> None:
        for family, addr in self._bind:
            for port in (self.ike_port, self.natt_port):
                try:
                    sock = udp.open_udp(family, addr, port, self.routing.fwmark
                                        if self.routing is not None else None)
                except OSError as exc:
                    if family == socket.AF_INET6 and exc.errno in _V6_UNAVAILABLE:
                        self.log.emit("socket_unavailable", family="ipv6", port=port,
                                      error=errno.errorcode.get(exc.errno or 0, str(exc)))
                        break
                    raise OSError(exc.errno, f"cannot bind UDP {addr} port {port}: "
                                  f"{exc.strerror}") from exc
                self._sockets[(family, port)] = sock
                self.loop.add_reader(sock.fileno(), self._on_readable, sock, port)

    # --- the engine loop ----------------------------------------------------------

    def _guarded(
        self, what: str, call: Callable[_P, object], *args: _P.args, **kwargs: _P.kwargs
    ) -> bool:
        """Call into the engine; log and survive whatever it raises. True on success."""
        try:
            call(*args, **kwargs)
        except Exception as exc:
            self.log.emit("engine_error", call=what, error=type(exc).__name__)
            return False
        return True

    def natt_socket(self, family: socket.AddressFamily) -> socket.socket | None:
        """The NAT-T port's socket of ``family``: ESP-in-UDP leaves through it."""
        return self._sockets.get((family, self.natt_port))

    def child_request(self, kind: int, unique_id: int) -> None:
        """The data plane's lifetimes ask for a CHILD_SA rekey (1) or delete (2)."""
        name = "rekey_child" if kind == 1 else "delete_child"
        call = getattr(self.engine, name, None)
        if call is None:
            return
        self.log.emit("child_sa_limit_reached", unique_id=unique_id,
                      action="rekey" if kind == 1 else "delete")
        self._guarded(name, call, unique_id, self.now())
        self.after_engine()

    def _on_readable(self, sock: socket.socket, port: int) -> None:
        now = self.now()
        ike = False
        # ESP on the NAT-T port goes straight to the data plane: its outer addresses do
        # not matter (the SPI finds the SA), so they are not parsed per packet.
        esp_fast = self.data_plane.receive_esp if (
            self.data_plane is not None and port == self.natt_port) else None
        for _ in range(MAX_BATCH):
            try:
                data, ancdata, peer = udp.receive_raw(sock)
            except BlockingIOError:
                break
            except OSError as exc:
                self.log.emit("receive_failed", port=port,
                              error=errno.errorcode.get(exc.errno or 0, str(exc)))
                break
            if esp_fast is not None and len(data) > 1 and data[:4] != NON_ESP_MARKER:
                try:
                    esp_fast(data, now)
                except Exception as exc:
                    self.log.emit("packet_dropped", reason="internal_error",
                                  error=type(exc).__name__)
                continue
            local, remote = udp.endpoints(sock, ancdata, peer)
            ike |= self._dispatch(data, Path(local, remote), port, now)
        if ike:
            # A batch of ESP alone changed nothing in the engine: no flush, no re-arm.
            self.after_engine()

    def _dispatch(self, data: bytes, path: Path, port: int, now: float) -> bool:
        """Hand one datagram on; True if it went to the engine."""
        if port == self.natt_port:
            kind, payload = classify_natt(data)
            if kind is NattKind.KEEPALIVE:
                return False
            if kind is NattKind.ESP:
                self._esp(payload, path, now)
                return False
            data = payload
        if self.tcp is not None and port >= 0:
            self.tcp.udp_ike_received(path, now)
        if (self._stopping or not self._started) and opens_ike_sa(data):
            # A peer that saw our DELETE may initiate again at once: an IKE_SA set up
            # now would die with this process, and the peer would hold a dead one. Nor
            # while starting: its CHILD_SAs would miss the data plane not yet open, and
            # the peer would hold an IKE_SA whose ESP goes nowhere (it resends anyway).
            self.log.emit("packet_dropped", local=str(path.local), remote=str(path.remote),
                          reason="shutting_down" if self._stopping else "starting")
            return False
        try:
            self.engine.receive_datagram(data, path, now)
        except Exception as exc:
            self.log.emit("packet_dropped", local=str(path.local), remote=str(path.remote),
                          reason="internal_error", error=type(exc).__name__)
        return True

    def tcp_ike(self, data: bytes, path: Path, now: float) -> None:
        """An IKE message off a TCP stream (``path``: the engine's view of it)."""
        if self._dispatch(data, path, -1, now):
            self.after_engine()

    def tcp_esp(self, data: bytes, now: float) -> None:
        """An ESP packet off a TCP stream: the SPI finds the SA, as on UDP 4500."""
        if self.data_plane is not None:
            try:
                self.data_plane.receive_esp(data, now)
            except Exception as exc:
                self.log.emit("packet_dropped", reason="internal_error",
                              error=type(exc).__name__)

    def tcp_switched(self, pair: Pair, transport: str, now: float) -> None:
        """A pair changed transport: each IKE_SA of ours on it sends UPDATE_SA_ADDRESSES
        over the new one, so the peer's SA (and its ESP) follows (RFC 9329 section 8)."""
        for ike in self._status():
            if ike.initiator and ike.state == "ESTABLISHED" and \
                    (ike.path.local.addr, ike.path.remote.addr) == pair:
                move = getattr(self.engine, "move", None)
                if move is not None:
                    self._guarded("move", move, ike.ike_spi, ike.path, now)
        self.after_engine()

    def _esp(self, data: bytes, path: Path, now: float) -> None:
        if self.esp_handler is not None:
            try:
                self.esp_handler(data, path, now)
            except Exception as exc:
                self.log.emit("packet_dropped", local=str(path.local), remote=str(path.remote),
                              reason="internal_error", error=type(exc).__name__)
            return
        self.esp_dropped += 1
        self._esp_dropped_unlogged += 1
        if self._esp_logged_at is None or now - self._esp_logged_at >= ESP_DROP_LOG_INTERVAL:
            self.log.emit("packet_dropped", local=str(path.local), remote=str(path.remote),
                          reason="esp_not_supported", count=self._esp_dropped_unlogged)
            self._esp_logged_at = now
            self._esp_dropped_unlogged = 0

    def _on_timer(self) -> None:
        self._timer = None
        now = self.now()
        ok = self._guarded("handle_timer", self.engine.handle_timer, now)
        if self.mobility is not None:
            ok &= self._guarded("mobility_timer", self.mobility.handle_timer, now)
        if self.data_path is not None:
            ok &= self._guarded("data_path_timer", self.data_path.handle_timer, now)
        self.after_engine(not_before=None if ok else now + ENGINE_ERROR_BACKOFF)

    def after_engine(self, not_before: float | None = None) -> None:
        """After any call into the engine (ours, or a service's such as the pool's
        redirects): send, log events, re-arm the one timer."""
        now = self.now()
        self._flush(now)
        self._drain_events()
        # The path managers may call the engine (probe, move), whose answers may feed
        # them again: a few rounds settle it (the rest waits for the timer).
        for _ in range(4):
            if self.mobility is None or not self._pump_mobility(now):
                break
            self._drain_events()
        if self.data_path is not None:
            for name, fields in self.data_path.take_log():
                self.log.emit(name, **fields)
        # The data plane follows the core's events alone (drained above): nothing here
        # walks the SA table, so the work per packet does not grow with the SAs.
        self._rearm(not_before)
        self._changed.set()

    def _pump_mobility(self, now: float) -> bool:
        """Run the path managers; True when they called the engine. What they asked for
        leaves before their events are written (a handover's update first)."""
        assert self.mobility is not None
        before = self.mobility.calls
        try:
            out = self.mobility.pump(now)
        except Exception as exc:
            self.log.emit("engine_error", call="mobility", error=type(exc).__name__)
            return False
        if called := self.mobility.calls != before:
            self._flush(now)
        for name, fields in out:
            transport = self.tcp.transport_of_fields(fields) if self.tcp is not None else None
            if transport is not None:
                fields = {**fields, "transport": transport}
            self.log.emit(name, **fields)
        return called

    def _flush(self, now: float) -> None:
        try:
            datagrams = self.engine.datagrams_to_send(now)
        except Exception as exc:
            self.log.emit("engine_error", call="datagrams_to_send", error=type(exc).__name__)
            return
        for datagram in datagrams:
            self._send(datagram)

    def _send(self, datagram: Datagram) -> None:
        if self.tcp is not None and self.tcp.send_ike(datagram, self.now()):
            return
        local, remote = datagram.path.local, datagram.path.remote
        v6 = isinstance(local.addr, ipaddress.IPv6Address)
        family = socket.AF_INET6 if v6 else socket.AF_INET
        sock = self._sockets.get((family, local.port))
        if sock is None:
            self.log.emit("send_failed", local=str(local), remote=str(remote),
                          error="no_socket")
            return
        data = datagram.data
        if local.port == self.natt_port:
            data = frame_natt(data, datagram.keepalive)
        try:
            udp.send(sock, data, local.addr, remote)
        except OSError as exc:
            # A path that just went away (address removed, no route): MOBIKE's business.
            self.log.emit("send_failed", local=str(local), remote=str(remote),
                          error=errno.errorcode.get(exc.errno or 0, str(exc)))

    def _drain_events(self) -> None:
        while True:
            try:
                event = self.engine.next_event()
            except Exception as exc:
                self.log.emit("engine_error", call="next_event", error=type(exc).__name__)
                return
            if event is None:
                return
            self._deliver(event, self.now())

    def _deliver(self, event: Event, now: float) -> None:
        """One core event to every part that follows the core, then to the log."""
        extra: Mapping[str, object] = {}
        if self.data_plane is not None:
            try:
                extra = self.data_plane.on_event(event)
            except Exception as exc:
                self.log.emit("engine_error", call="data_plane", error=type(exc).__name__)
        if self.tcp is not None and isinstance(event, IkeSaRekeyed):
            self.tcp.rekeyed(event.ike_spi, event.new_ike_spi)
        if self.routing is not None:
            self._guarded("routing_event", self.routing.on_core_event, event)
        if self.data_path is not None:
            self._guarded("data_path_event", self.data_path.on_core_event, event, now)
        if self.mobility is not None:
            self._guarded("mobility_event", self.mobility.on_core_event, event, now)
            if isinstance(event, ProbeResult):
                return  # several a second per SA; path_up/path_down tell the story
        if write_core_event(self.log, self.drops, event, extra, now):
            self._arm_drop_timer()
        if isinstance(event, IkeSaDeleted):
            self._restart_after(event)
        for hook in self.event_hooks:
            self._guarded("event_hook", hook, event)

    def _restart_after(self, event: IkeSaDeleted) -> None:
        """``close_action = restart`` (the peer deleted the IKE_SA) and ``dpd_action =
        restart`` (it stopped answering): initiate those children again, as charon does.
        A peer whose daemon restarted would otherwise leave the tunnel down for good."""
        children = [] if self._stopping else restart_children(self.config, event,
                                                                   self._status())
        if not children:
            return
        self.log.emit("ike_sa_restarting", conn=event.conn, ike_spi=event.ike_spi,
                      reason=event.reason, children=children)
        # After this drain: the new IKE_SA_INIT leaves at once, not with the next timer.
        # A peer that deleted (or lost) the IKE_SA is restarting: resend fast till back.
        self.loop.call_soon(self._initiate, event.conn, children,
                            event.reason in ("deleted_by_peer", "peer_lost_state"))

    def _initiate(self, conn: str, children: Sequence[str], eager: bool = False) -> None:
        now = self.now()
        for child in children:
            self._guarded("initiate", self.engine.initiate, conn, child, now, eager=eager)
        self.after_engine()

    def _arm_drop_timer(self) -> None:
        deadline = self.drops.next_deadline()
        if self._drop_timer is None and deadline is not None:
            self._drop_timer = self.loop.call_at(deadline, self._flush_drops)

    def _flush_drops(self) -> None:
        """Log the per-reason drop counts of the intervals that ended."""
        self._drop_timer = None
        for line in self.drops.flush(self.now()):
            self.log.write(level_of("packet_dropped"), "packet_dropped", line)
        self._arm_drop_timer()

    def _rearm(self, not_before: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            deadlines = [self.engine.get_timer()]
            if self.mobility is not None:
                deadlines.append(self.mobility.get_timer())
            if self.data_path is not None:
                deadlines.append(self.data_path.get_timer())
            deadline = min((d for d in deadlines if d is not None), default=None)
        except Exception as exc:
            self.log.emit("engine_error", call="get_timer", error=type(exc).__name__)
            deadline = None
            if not_before is None:
                not_before = self.now() + ENGINE_ERROR_BACKOFF
        if deadline is None and not_before is None:
            return
        when = max(d for d in (deadline, not_before) if d is not None)
        self._timer = self.loop.call_at(when, self._on_timer)

    # --- control ----------------------------------------------------------------

    def _status(self) -> list[IkeStatus]:
        try:
            return list(self.engine.status())
        except Exception as exc:
            self.log.emit("engine_error", call="status", error=type(exc).__name__)
            return []

    def status_answer(self) -> JsonObject:
        """The ``status`` answer (also what the metrics read at scrape time)."""
        return status_answer(self.engine.status(), self._status, data_plane=self.data_plane,
                             mobility=self.mobility, monitor=self._net.monitor, tcp=self.tcp,
                             loop_lag=self.loop_lag.snapshot(), esp_dropped=self.esp_dropped)

    def _control_refused(self, uid: int, pid: int) -> None:
        self.log.emit("control_refused", uid=uid, pid=pid)

    def _control_request(self, req: JsonObject) -> JsonObject:
        cmd = req.get("cmd")
        if cmd == "status":
            return self.status_answer()
        handler = self.control_handlers.get(str(cmd))
        if handler is not None:
            return handler(req)
        if cmd in ("prefer", "move"):
            if self.mobility is None:
                return {"ok": False, "error": "MOBIKE path selection is not running"}
            answer = operator_request(self.mobility, req, self.now())
            self.after_engine()  # log the preference, carry out the move
            return answer
        return {"ok": False, "error": f"unknown command {cmd!r}"}

