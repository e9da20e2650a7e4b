"""Metrics: counters from the event stream, gauges from a status answer, the exposition
parsed back with prometheus_client's parser, and the HOST:PORT argument."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mobike_vici.daemon.metrics import (
    EventMetrics,
    MetricsServer,
    StatusCollector,
    parse_hostport,
    snapshot_on_loop,
    status_metrics,
)

JsonObject = dict[str, Any]

STATUS = {
    "ok": True, "backend": "native",
    "ike_sas": [{
        "conn": "home", "ike_spi": "0123456789abcdef_fedcba9876543210", "state": "ESTABLISHED",
        "local": "10.1.0.2[4500]", "remote": "192.0.2.2[4500]", "preferred_local": "10.2.0.2",
        "paths": [
            {"local": "10.1.0.2[4500]", "remote": "192.0.2.2[4500]", "state": "down",
             "srtt_ms": 1.5, "probe_loss": 0.25, "active": True},
            {"local": "10.2.0.2[4500]", "remote": "192.0.2.2[4500]", "state": "up",
             "srtt_ms": None, "probe_loss": None, "active": False},
            {"local": "10.3.0.2[4500]", "remote": "192.0.2.2[4500]", "state": "probing",
             "srtt_ms": None, "probe_loss": None, "active": False},
        ],
        "children": [{"name": "net", "unique_id": 7, "spi_in": "c1a2b3c4",
                      "spi_out": "d5e6f708",
                      "counters": {"bytes_in": 100, "packets_in": 2, "bytes_out": 300,
                                   "packets_out": 3, "replay_failures": 1,
                                   "integrity_failures": 0, "decode_failures": 0,
                                   "ts_failures": 0}}],
    }],
    "esp": {"unknown_spi": 4, "no_policy": 0},
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def exposed(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_gauges_from_a_status_answer() -> None:
    registry = CollectorRegistry()
    registry.register(StatusCollector(lambda: STATUS))
    got = exposed(registry)
    p0 = {"conn": "home", "local": "10.1.0.2", "remote": "192.0.2.2"}
    p1 = {**p0, "local": "10.2.0.2"}
    assert get(got, "mobike_path_up", **p0) == 0
    assert get(got, "mobike_path_up", **p1) == 1
    assert get(got, "mobike_path_active", **p0) == 1
    assert get(got, "mobike_path_rtt_seconds", **p0) == pytest.approx(0.0015)
    assert get(got, "mobike_path_rtt_seconds", **p1) is None  # not measured yet
    p2 = {**p0, "local": "10.3.0.2"}
    assert get(got, "mobike_path_up", **p2) is None  # no verdict yet
    assert get(got, "mobike_path_active", **p2) == 0
    assert get(got, "mobike_path_probe_loss_ratio", **p0) == 0.25
    assert get(got, "mobike_ike_sas", conn="home", state="ESTABLISHED") == 1
    assert get(got, "mobike_operator_preference", conn="home", local="10.2.0.2") == 1
    child = {"conn": "home", "child": "net", "unique_id": "7"}
    assert get(got, "mobike_esp_bytes_total", **child, direction="out") == 300
    assert get(got, "mobike_esp_packets_total", **child, direction="in") == 2
    assert get(got, "mobike_esp_failures_total", **child, reason="replay") == 1
    assert get(got, "mobike_esp_dropped_total", reason="unknown_spi") == 4
    assert not any(n == "mobike_vici_connected" for n, _ in got)  # native: no VICI


def test_vici_gauge_and_no_spi_in_labels() -> None:
    status = {**STATUS, "vici_connected": False}
    families = list(status_metrics(status))
    vici = next(f for f in families if f.name == "mobike_vici_connected")
    assert [s.value for s in vici.samples] == [0]
    names = {name for f in families for s in f.samples for name in s.labels}
    assert names == {"conn", "state", "local", "remote", "child", "unique_id", "direction",
                     "reason"}


def test_a_failed_snapshot_leaves_out_the_gauges() -> None:
    def broken() -> dict[str, object]:
        raise RuntimeError("loop gone")

    registry = CollectorRegistry()
    registry.register(StatusCollector(broken))
    assert exposed(registry) == {}


def ev(name: str, **fields: object) -> dict[str, object]:
    return {"event": name, "conn": "home", "ike_spi": "a_b", **fields}


def test_counters_follow_the_event_stream() -> None:
    registry = CollectorRegistry()
    m = EventMetrics(registry)
    m.on_event(ev("handover_started", reason="failover"))
    m.on_event(ev("path_down", reason="probe_timeout"))
    m.on_event(ev("handover_completed", duration_ms=42.0))
    m.on_event(ev("handover_started", reason="preferred"))
    m.on_event(ev("handover_failed", reason="handover_timeout"))
    m.on_event(ev("handover_completed", duration_ms=1.0))  # no start seen
    m.on_event({"event": "packet_dropped", "reason": "esp_not_supported", "count": 5})
    m.on_event({"event": "packet_dropped", "reason": "bad_spi"})
    m.on_event(ev("preference_changed", source="move"))
    got = exposed(registry)
    assert get(got, "mobike_handovers_total", conn="home", reason="failover",
               result="completed") == 1
    assert get(got, "mobike_handovers_total", conn="home", reason="preferred",
               result="failed") == 1
    assert get(got, "mobike_handovers_total", conn="home", reason="unknown",
               result="completed") == 1
    assert get(got, "mobike_handover_duration_seconds_count", conn="home") == 2
    assert get(got, "mobike_handover_duration_seconds_sum", conn="home") == pytest.approx(0.043)
    assert get(got, "mobike_handover_duration_seconds_bucket", conn="home", le="0.05") == 2
    assert get(got, "mobike_path_down_total", conn="home", reason="probe_timeout") == 1
    assert get(got, "mobike_packets_dropped_total", reason="esp_not_supported") == 5
    assert get(got, "mobike_packets_dropped_total", reason="bad_spi") == 1
    assert get(got, "mobike_preference_changes_total", conn="home", source="move") == 1


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:9474", ("127.0.0.1", 9474)),
    ("localhost:1", ("localhost", 1)),
    ("[::1]:9474", ("::1", 9474)),
])
def test_hostport(text: str, want: tuple[str, int]) -> None:
    assert parse_hostport(text) == want


@pytest.mark.parametrize("text", ["9474", ":9474", "::1:9474", "h:0", "h:65536", "h:x", "[]:1"])
def test_bad_hostport(text: str) -> None:
    with pytest.raises(ValueError):
        parse_hostport(text)


@pytest.mark.slow
def test_server_serves_over_http() -> None:
    server = MetricsServer(("127.0.0.1", 0))
    server.start(lambda: STATUS)
    try:
        host, port = server.address
        server.events.on_event(ev("handover_started", reason="operator"))
        server.events.on_event(ev("handover_completed", duration_ms=5.0))
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        server.close()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert {"mobike_handovers_total", "mobike_path_up", "mobike_ike_sas"} <= names


def test_status_text_shows_paths_and_preference() -> None:
    from mobike_vici.daemon.status import format_status

    text = format_status(STATUS)
    assert "  prefer   10.2.0.2 (operator)" in text
    assert "   * 10.1.0.2[4500] -> 192.0.2.2[4500] () down, srtt 1.5 ms, loss 25.0%, active" in text
    assert "     10.2.0.2[4500] -> 192.0.2.2[4500] () up, srtt -, loss -" in text


@pytest.mark.slow
def test_start_takes_no_snapshot() -> None:
    """Registering the status collector must not collect: start runs on the daemon's loop,
    and a snapshot waits for that loop (SNAPSHOT_TIMEOUT, 2 s, on every start)."""
    taken: list[int] = []

    def snapshot() -> JsonObject:
        taken.append(1)
        return STATUS

    server = MetricsServer(("127.0.0.1", 0))
    server.start(snapshot)
    try:
        assert taken == []
    finally:
        server.close()


def test_a_snapshot_asked_on_the_loop_itself_is_taken_at_once() -> None:
    """Waiting for the loop from the loop can only time out: answer from it directly."""
    async def main() -> JsonObject | None:
        return snapshot_on_loop(asyncio.get_running_loop(), lambda: STATUS)()

    assert asyncio.run(main()) is STATUS


def test_tcp_metrics_from_a_status_answer() -> None:
    sa = STATUS["ike_sas"][0]
    paths = [{**sa["paths"][0], "transport": "tcp"}, {**sa["paths"][1], "transport": "udp"}]
    status = {**STATUS, "ike_sas": [{**sa, "paths": paths}],
              "tcp": {"streams": [{"role": "initiator", "local": "10.1.0.2[40000]",
                                   "remote": "192.0.2.2[4500]", "connected": True,
                                   "queued": 0}],
                      "accepted": 0, "refused": 3, "connects": 2}}
    registry = CollectorRegistry()
    registry.register(StatusCollector(lambda: status))
    got = exposed(registry)
    p0 = {"conn": "home", "local": "10.1.0.2", "remote": "192.0.2.2"}
    assert get(got, "mobike_path_tcp", **p0) == 1
    assert get(got, "mobike_path_tcp", **{**p0, "local": "10.2.0.2"}) == 0
    assert get(got, "mobike_tcp_streams", role="initiator") == 1
    assert get(got, "mobike_tcp_streams", role="responder") == 0
    assert get(got, "mobike_tcp_events_total", kind="refused") == 3
    assert get(got, "mobike_tcp_events_total", kind="connects") == 2
    # Without TCP in the answer, none of these families.
    plain = exposed(_registry_of(STATUS))
    assert not any(n.startswith(("mobike_tcp", "mobike_path_tcp")) for n, _ in plain)


def _registry_of(status: JsonObject) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StatusCollector(lambda: status))
    return registry
