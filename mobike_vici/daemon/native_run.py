"""``mobike-vici native``'s process: the real engine, data plane, mobility glue and
transport built from the config around a ``daemon.native.Daemon``, run until stopped."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import Callable
from typing import TextIO

from ..backends.native import Mobility
from ..config.mobike import MobikePolicy
from ..config.model import Config
from ..config.tcp import TcpMode
from ..core.engine import Engine, EngineSettings
from ..eventlog import EventLog, configure
from ..mobike.paths import MAX_PROBE_TIMEOUT
from . import udp
from .control import ControlError
from .data_path import DataPathWatch, path_flow, path_srtt, settings_of
from .esp_io import UserspaceEsp
from .gc_freeze import GcFreezeService
from .heap_trim import HeapTrimService, share_one_arena
from .metrics import MetricsServer
from .native import Daemon
from .native_pool import NativePool
from .redirect_resolver import RedirectResolver
from .routing import DaemonRouting
from .tcp_transport import TcpTransport


def engine_settings(config: Config) -> EngineSettings:
    """The engine's tunables: charon's defaults, the DoS limits from ``mobike { }``."""
    policy = config.mobike.policy
    return EngineSettings(
        cookie_threshold=policy.cookie_threshold, block_threshold=policy.block_threshold,
        half_open_limit=policy.half_open_limit, dh_budget=float(policy.dh_budget),
        max_ike_sas_per_peer=policy.max_ike_sas_per_peer,
        max_child_sas_per_peer=policy.max_child_sas_per_peer,
        # The path manager judges misses by its own adaptive timeout; the engine keeps
        # a probe open as long as a late answer may still bring its path back up.
        probe_timeout=MAX_PROBE_TIMEOUT,
        fragment_size=policy.fragment_size, dead_after=policy.dead_after,
        state_check_after=state_check_after(policy))


STATE_CHECK_FLOOR = 1.0
"""Seconds of silence before asking a peer whether it lost the IKE_SA, at least: the
silent faults MOBIKE moves around (one dead path) end well before; a restarted peer
costs this plus a round trip or two instead of ``dead_after``."""


def state_check_after(policy: MobikePolicy) -> float:
    """The engine's ``state_check_after``: once a silently dead path is detected (and at
    least STATE_CHECK_FLOOR), within ``dead_after``; none when ``dead_after`` is 0
    (charon's way: only its retransmission bound ends an IKE_SA)."""
    if policy.dead_after <= 0:
        return 0.0
    detect = policy.probe_interval * policy.probe_misses + policy.probe_timeout
    return min(max(STATE_CHECK_FLOOR, detect), policy.dead_after)


def _mobike_conn(config: Config) -> Callable[[str], bool]:
    def mobike(conn: str) -> bool:
        try:
            return config.connection(conn).mobike
        except KeyError:
            return False
    return mobike


def run_native(config: Config, events: TextIO, control_path: str | None, *,
               level: str = "info", reload_config: Callable[[], Config] | None = None,
               reopen_events: Callable[[], None] | None = None,
               metrics: tuple[str, int] | None = None, config_file: str = "") -> int:
    """``mobike-vici native``: build the real engine and run until told to stop.

    Returns the process exit code: 0 after a clean stop, 1 when start-up failed.
    """
    share_one_arena()  # before the first worker thread: see heap_trim
    configure(events, level)
    log = EventLog.to_stream(events, level)
    routing = DaemonRouting(config, log)
    try:
        engine = Engine(config, os.urandom,
                        functools.partial(udp.source_address, fwmark=routing.fwmark),
                        engine_settings(config))
    except Exception as exc:  # a config the engine cannot run is a start-up failure
        print(f"mobike-vici: cannot start the native engine: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    try:
        mobility = Mobility(engine, config.mobike.policy, _mobike_conn(config))
        esp = UserspaceEsp(config, fwmark=routing.fwmark)
        data_path = DataPathWatch(engine, esp.plane, settings_of(config.mobike.policy),
                                  path_srtt(mobility.manager), path_flow(mobility.manager))
        daemon = Daemon(config, engine, log, control_path=control_path,
                        data_plane=esp, mobility=mobility,
                        routing=routing, data_path=data_path,
                        metrics=MetricsServer(metrics) if metrics is not None else None)
        attach_pool(daemon, engine, config)
        daemon.services.append(HeapTrimService())  # the worker threads' freed pages
        resolver = RedirectResolver(engine, log, daemon.now, daemon.after_engine)
        daemon.services.append(resolver)
        daemon.event_hooks.append(resolver.on_event)
        daemon.tcp = tcp_transport(daemon, config, routing.fwmark)
        if daemon.tcp is not None:
            engine.set_wire_view(daemon.tcp.wire_path)
        daemon.reload_config, daemon.reopen_events = reload_config, reopen_events
        daemon.config_file = config_file
        daemon.services.append(GcFreezeService())  # last: all of start-up is built
        return asyncio.run(daemon.run())
    except (OSError, ControlError) as exc:
        print(f"mobike-vici: {exc}", file=sys.stderr)
        return 1


def attach_pool(daemon: Daemon, engine: Engine, config: Config) -> NativePool | None:
    """A gateway of a ``mobike { pool { } }``: drain, max_ike_sas, IKE_SA_INIT redirects."""
    settings = config.mobike.policy.pool
    if not settings.gateways:
        return None
    metrics = daemon.metrics
    pool = NativePool(engine, daemon.log, settings, daemon.now, daemon.after_engine,
                      registry=metrics.registry if metrics is not None else None)
    daemon.services.append(pool)
    daemon.event_hooks.append(pool.on_event)
    for cmd in pool.commands:
        daemon.control_handlers[cmd] = pool.control
    return pool


def tcp_transport(daemon: Daemon, config: Config, fwmark: int | None) -> TcpTransport | None:
    """The daemon's RFC 9329 transport, or None with ``tcp = no``."""
    settings = config.mobike.policy.tcp
    if settings.mode == TcpMode.NO:
        return None
    return TcpTransport(settings, daemon.log, daemon.tcp_ike, daemon.tcp_esp,
                        daemon.tcp_switched, fwmark=fwmark)
