"""The native daemon's ``status`` answer (the control socket's, and what the metrics
read at scrape time): the engine's IKE_SAs with their paths, the data plane's
counters, the netlink monitor's view, and the TCP transport of each path."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

from ..backends.native import Mobility
from ..core.engine import IkeStatus
from ..net.monitor import NetlinkMonitor
from ..net.state import usable_addresses
from .control import JsonObject
from .native_api import DataPlaneApi
from .status import paths_json, preferred_json, status_json
from .tcp_transport import TcpTransport


def status_answer(ike_sas: Sequence[IkeStatus], statuses: Callable[[], list[IkeStatus]], *,
                  data_plane: DataPlaneApi | None, mobility: Mobility | None,
                  monitor: NetlinkMonitor | None, tcp: TcpTransport | None,
                  loop_lag: Mapping[str, object], esp_dropped: int) -> JsonObject:
    """``ike_sas``: the engine's status; ``statuses`` asks it again, guarded (TCP part)."""
    counters = data_plane.counters() if data_plane is not None else None
    answer = status_json(ike_sas, backend="native", counters=counters)
    answer["pid"] = os.getpid()
    answer["esp_dropped"] = esp_dropped
    answer["loop_lag"] = loop_lag
    if data_plane is not None:
        answer["esp"] = data_plane.totals()
    if mobility is not None:
        for sa in answer["ike_sas"]:  # type: ignore[attr-defined]
            mgr = mobility.manager(str(sa["ike_spi"]))
            if mgr is not None:
                sa["paths"] = paths_json(mgr)
                sa["preferred_local"] = preferred_json(mgr)
    if monitor is not None:
        answer["net"] = net_view(monitor)
    if tcp is not None:
        _tcp_status(answer, tcp, mobility, statuses)
    return answer


def _tcp_status(answer: JsonObject, tcp: TcpTransport, mobility: Mobility | None,
                statuses: Callable[[], list[IkeStatus]]) -> None:
    """The transport of each IKE_SA and of each of its paths, and the streams."""
    transports = {ike.ike_spi: tcp.transport_of(ike.path) for ike in statuses()}
    for sa in answer["ike_sas"]:  # type: ignore[attr-defined]
        sa["transport"] = transports.get(str(sa["ike_spi"]), "udp")
        mgr = mobility.manager(str(sa["ike_spi"])) if mobility else None
        if mgr is None:
            continue
        by_ends = {(str(p.path.local), str(p.path.remote)): tcp.transport_of(p.path)
                   for p in mgr.paths()}
        for entry in sa.get("paths", []):
            entry["transport"] = by_ends.get((entry["local"], entry["remote"]), "udp")
    answer["tcp"] = {"streams": tcp.streams(), **tcp.counters}


def net_view(monitor: NetlinkMonitor) -> JsonObject:
    """The netlink monitor's picture of the host (to compare with the kernel's)."""
    state = monitor.state
    return {
        "resyncs": monitor.resyncs,
        "overruns": monitor.overruns,
        "addresses": sorted(f"{a.ifname} {a.address}/{a.prefixlen}"
                            for a in state.addresses.values()),
        "usable": [f"{ifname} {addr}" for ifname, addr in usable_addresses(state)],
    }
