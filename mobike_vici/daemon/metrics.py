"""Prometheus metrics for both daemons (``--metrics HOST:PORT``); docs/metrics.md lists them.

Two sources, so the daemons need to know nothing about metrics:
- counters and the handover histogram follow the event stream (``EventMetrics`` is
  an ``EventTap`` subscriber): handovers, path failures, dropped packets;
- gauges and the data plane's counters are read from the daemon's ``status``
  answer at scrape time (``StatusCollector``): path health, IKE_SAs, VICI, ESP.

The HTTP server is prometheus_client's own, on a thread of its own; the status
snapshot is taken on the daemon's event loop (``snapshot_on_loop``), never read
across threads. Labels carry names, addresses and reasons only: no key material,
and no SPIs either (not secret, they are on the wire, but they change with every
rekey and would make new series each time); a CHILD_SA is named by its connection,
child name and unique id.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

JsonObject = dict[str, Any]
Snapshot = Callable[[], JsonObject | None]

HANDOVER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds; a link-down handover takes tens of ms, a silent death about a second,
charon's escalation up to tens of seconds."""
SNAPSHOT_TIMEOUT = 2.0
"""A scrape waits this long for the daemon's loop, then answers without the gauges."""
MAX_PENDING = 1024
"""Handovers started and not yet finished that we remember the reason of."""

PATH_LABELS = ("conn", "local", "remote")
VERDICTS = {"up": 1, "down": 0}
CHILD_LABELS = ("conn", "child", "unique_id")
ESP_FAILURES = {"replay_failures": "replay", "integrity_failures": "integrity",
                "decode_failures": "malformed", "ts_failures": "selectors"}


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``; ValueError with a reason for anything else."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address as [ADDR]:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: port must be 1-65535")
    if not host:
        raise ValueError(f"{text!r}: empty host")
    return host, int(port)


def _addr(endpoint: object) -> str:
    """``addr[port]`` -> ``addr``: ports change with NAT-T, the path does not."""
    text = str(endpoint)
    return text.rsplit("[", 1)[0] if text.endswith("]") else text


class EventMetrics:
    """Counters and the handover histogram, from the event stream."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handovers = Counter(
            "mobike_handovers", "Handovers by outcome (result: completed or failed).",
            ("conn", "reason", "result"), registry=registry)
        self.duration = Histogram(
            "mobike_handover_duration_seconds",
            "From the decision to move to the backend's report of the move.",
            ("conn",), buckets=HANDOVER_BUCKETS, registry=registry)
        self.path_down = Counter(
            "mobike_path_down", "Paths that went down, by reason.",
            ("conn", "reason"), registry=registry)
        self.dropped = Counter(
            "mobike_packets_dropped", "Packets dropped by the IKE layer, by reason.",
            ("reason",), registry=registry)
        self.escalations = Counter(
            "mobike_handover_escalations", "Moves charon did not make in time (run only).",
            ("conn", "stage"), registry=registry)
        self.preference_changes = Counter(
            "mobike_preference_changes", "Operator preference changes (prefer, clear, move).",
            ("conn", "source"), registry=registry)
        self.data_path = Counter(
            "mobike_data_path_checks", "Data path checks after a move, by verdict.",
            ("conn", "result"), registry=registry)
        self._reasons: OrderedDict[tuple[str, str], str] = OrderedDict()

    def on_event(self, event: JsonObject) -> None:
        name = event.get("event")
        conn = str(event.get("conn") or "")
        spi = str(event.get("ike_spi") or "")
        match name:
            case "handover_started":
                self._reasons[(conn, spi)] = str(event.get("reason") or "unknown")
                while len(self._reasons) > MAX_PENDING:
                    self._reasons.popitem(last=False)
            case "handover_failed" if event.get("reason") == "data_path_dead":
                # After a handover_completed, already counted: the data path's verdict.
                self.data_path.labels(conn, "dead").inc()
            case "handover_completed" | "handover_failed":
                reason = self._pop_reason(conn, spi)
                result = "completed" if name == "handover_completed" else "failed"
                self.handovers.labels(conn, reason, result).inc()
                ms = event.get("duration_ms")
                if name == "handover_completed" and isinstance(ms, int | float):
                    self.duration.labels(conn).observe(max(0.0, float(ms)) / 1000.0)
            case "data_path_verified" | "data_path_repaired":
                self.data_path.labels(conn, name.removeprefix("data_path_")).inc()
            case "data_path_unverified":
                self.data_path.labels(conn, str(event.get("reason") or "unknown")).inc()
            case "path_down":
                self.path_down.labels(conn, str(event.get("reason") or "unknown")).inc()
            case "packet_dropped":
                count = event.get("count")
                n = count if isinstance(count, int) and count > 0 else 1
                self.dropped.labels(str(event.get("reason") or "unknown")).inc(n)
            case "handover_escalated":
                self.escalations.labels(conn, str(event.get("stage") or "unknown")).inc()
            case "preference_changed":
                self.preference_changes.labels(conn, str(event.get("source") or "")).inc()
            case _:
                pass

    def _pop_reason(self, conn: str, spi: str) -> str:
        reason = self._reasons.pop((conn, spi), None)
        if reason is None:  # charon's escalation may finish on a new IKE_SA
            key = next((k for k in self._reasons if k[0] == conn), None)
            if key is not None:
                reason = self._reasons.pop(key)
        return reason or "unknown"


class StatusCollector(Collector):
    """Gauges (and the data plane's own counters) read from one status snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def describe(self) -> list[Metric]:
        """Nothing to declare in advance: the families depend on the snapshot. Without this
        the registry's auto-describe would call ``collect`` at ``register`` time, on the
        daemon's loop, which the snapshot then waits for in vain (``SNAPSHOT_TIMEOUT``)."""
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            status = self._snapshot()
        except Exception:
            status = None
        if not status or status.get("ok") is not True:
            return
        yield from status_metrics(status)


def status_metrics(status: JsonObject) -> Iterator[Metric]:
    """The metric families one status answer gives (pure; see docs/metrics.md)."""
    sas = [sa for sa in status.get("ike_sas") or () if isinstance(sa, dict)]
    ike = GaugeMetricFamily("mobike_ike_sas", "IKE_SAs by connection and state.",
                            labels=("conn", "state"))
    counts: dict[tuple[str, str], int] = {}
    for sa in sas:
        k = (str(sa.get("conn", "")), str(sa.get("state", "")))
        counts[k] = counts.get(k, 0) + 1
    for k, n in counts.items():
        ike.add_metric(k, n)
    yield ike
    yield from _path_metrics(sas)
    if "vici_connected" in status:
        vici = GaugeMetricFamily("mobike_vici_connected",
                                 "1 while the VICI session to charon is up.")
        vici.add_metric((), 1 if status.get("vici_connected") else 0)
        yield vici
    yield from _esp_metrics(sas, status.get("esp"))
    yield from _tcp_metrics(sas, status.get("tcp"))
    lag = status.get("loop_lag")
    if isinstance(lag, dict) and isinstance(lag.get("p99_ms"), int | float):
        p99 = GaugeMetricFamily("mobike_loop_lag_p99_seconds",
                                "99th percentile of the event loop's timer lateness "
                                "over the last 5 minutes.")
        p99.add_metric((), float(lag["p99_ms"]) / 1000.0)
        yield p99


def _path_metrics(sas: list[JsonObject]) -> Iterator[Metric]:
    up = GaugeMetricFamily("mobike_path_up", "1: the path answers probes, 0: it is down "
                           "(absent: no verdict yet).", labels=PATH_LABELS)
    active = GaugeMetricFamily("mobike_path_active", "1 for the path the IKE_SA uses.",
                               labels=PATH_LABELS)
    rtt = GaugeMetricFamily("mobike_path_rtt_seconds", "Smoothed probe round-trip time.",
                            labels=PATH_LABELS)
    loss = GaugeMetricFamily("mobike_path_probe_loss_ratio",
                             "Share of the last 20 probes that went unanswered.",
                             labels=PATH_LABELS)
    pref = GaugeMetricFamily("mobike_operator_preference",
                             "1 for the local address the operator prefers (prefer/move).",
                             labels=("conn", "local"))
    rows: dict[tuple[str, str, str], JsonObject] = {}  # several IKE_SAs of a conn: last wins
    prefs: set[tuple[str, str]] = set()
    for sa in sas:
        conn = str(sa.get("conn", ""))
        for p in sa.get("paths") or ():
            if isinstance(p, dict):
                rows[(conn, _addr(p.get("local")), _addr(p.get("remote")))] = p
        if sa.get("preferred_local"):
            prefs.add((conn, str(sa["preferred_local"])))
    for labels, p in rows.items():
        if p.get("state") in VERDICTS:  # unknown/probing (and a responder's paths): no verdict
            up.add_metric(labels, VERDICTS[str(p["state"])])
        active.add_metric(labels, 1 if p.get("active") else 0)
        if isinstance(p.get("srtt_ms"), int | float):
            rtt.add_metric(labels, float(p["srtt_ms"]) / 1000.0)
        if isinstance(p.get("probe_loss"), int | float):
            loss.add_metric(labels, float(p["probe_loss"]))
    for labels2 in sorted(prefs):
        pref.add_metric(labels2, 1)
    yield from (up, active, rtt, loss, pref)


def _esp_metrics(sas: list[JsonObject], totals: object) -> Iterator[Metric]:
    bytes_ = CounterMetricFamily("mobike_esp_bytes", "ESP payload bytes per CHILD_SA.",
                                 labels=(*CHILD_LABELS, "direction"))
    packets = CounterMetricFamily("mobike_esp_packets", "ESP packets per CHILD_SA.",
                                  labels=(*CHILD_LABELS, "direction"))
    failures = CounterMetricFamily("mobike_esp_failures",
                                   "ESP packets refused per CHILD_SA, by reason.",
                                   labels=(*CHILD_LABELS, "reason"))
    seen = False
    for sa in sas:
        for child in sa.get("children") or ():
            counters = child.get("counters") if isinstance(child, dict) else None
            if not isinstance(counters, dict):
                continue
            seen = True
            ids = (str(sa.get("conn", "")), str(child.get("name", "")),
                   str(child.get("unique_id", "")))
            for direction in ("in", "out"):
                bytes_.add_metric((*ids, direction), counters.get(f"bytes_{direction}", 0))
                packets.add_metric((*ids, direction), counters.get(f"packets_{direction}", 0))
            for key, reason in ESP_FAILURES.items():
                failures.add_metric((*ids, reason), counters.get(key, 0))
    if seen:
        yield from (bytes_, packets, failures)
    if isinstance(totals, dict):
        dropped = CounterMetricFamily("mobike_esp_dropped",
                                      "ESP packets the data plane dropped outside any "
                                      "CHILD_SA, by reason.", labels=("reason",))
        for reason, value in sorted(totals.items()):
            if isinstance(value, int):
                dropped.add_metric((reason,), value)
        yield dropped


def _tcp_metrics(sas: list[JsonObject], tcp: object) -> Iterator[Metric]:
    """RFC 9329 transport (native with ``tcp`` other than ``no``): which paths run over
    a stream, how many streams there are, and what the listener and streams did."""
    if not isinstance(tcp, dict):
        return
    on_tcp = GaugeMetricFamily("mobike_path_tcp", "1: the path runs over TCP (RFC 9329), "
                               "0: over UDP.", labels=PATH_LABELS)
    for sa in sas:
        conn = str(sa.get("conn", ""))
        for p in sa.get("paths") or ():
            if isinstance(p, dict) and p.get("transport") in ("tcp", "udp"):
                on_tcp.add_metric((conn, _addr(p.get("local")), _addr(p.get("remote"))),
                                  1 if p["transport"] == "tcp" else 0)
    streams = GaugeMetricFamily("mobike_tcp_streams", "Open TCP streams, by role.",
                                labels=("role",))
    roles = {"initiator": 0, "responder": 0}
    for stream in tcp.get("streams") or ():
        if isinstance(stream, dict) and stream.get("role") in roles:
            roles[str(stream["role"])] += 1
    for role, n in roles.items():
        streams.add_metric((role,), n)
    events = CounterMetricFamily("mobike_tcp_events", "What the TCP transport did, by kind "
                                 "(accepted, refused, connects, frames_in, frames_out, "
                                 "esp_dropped, dropped_frames).", labels=("kind",))
    for kind, value in sorted(tcp.items()):
        if isinstance(value, int) and not isinstance(value, bool):
            events.add_metric((kind,), value)
    yield from (on_tcp, streams, events)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def snapshot_on_loop(loop: asyncio.AbstractEventLoop,
                     status: Callable[[], JsonObject]) -> Snapshot:
    """A snapshot function for the HTTP thread that runs ``status`` on ``loop``."""
    def snapshot() -> JsonObject | None:
        if _running_loop() is loop:
            return status()  # on the loop already: waiting for it would only time out
        fut: concurrent.futures.Future[JsonObject] = concurrent.futures.Future()

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(status())
            except Exception as exc:
                fut.set_exception(exc)
        try:
            loop.call_soon_threadsafe(run)
            return fut.result(SNAPSHOT_TIMEOUT)
        except (RuntimeError, concurrent.futures.TimeoutError):
            fut.cancel()
            return None
    return snapshot


class MetricsServer:
    """The ``/metrics`` endpoint of one daemon: start after the loop runs, close at exit."""

    def __init__(self, hostport: tuple[str, int]) -> None:
        self.host, self.port = hostport
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = EventMetrics(self.registry)
        self._server: Any = None
        self._thread: Any = None

    def start(self, snapshot: Snapshot) -> None:
        """Bind and serve; OSError when the address cannot be bound."""
        self.registry.register(StatusCollector(snapshot))
        self._server, self._thread = start_http_server(self.port, self.host,
                                                       registry=self.registry)

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("metrics server not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def is_loopback(host: str) -> bool:
    """Whether ``host`` keeps the endpoint on this machine (a warning otherwise)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


