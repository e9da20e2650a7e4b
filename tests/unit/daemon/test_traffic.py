"""The data plane's counters reach the path managers: a stall probes the active path
at once, through the native backend's glue (fake engine, fake counters, fake clock)."""

from __future__ import annotations

from dataclasses import replace

from mobike_vici.backends.native import Mobility
from mobike_vici.config.mobike import MobikePolicy
from mobike_vici.daemon.traffic import SAMPLE_INTERVAL, TrafficWatch

from ..backends.test_native_backend import (
    M0,
    M1,
    SPI,
    FakeEngine,
    answer_all,
    established,
    path,
    started,
)


class Counters:
    """Packet counters per CHILD_SA as the data plane keeps them."""

    def __init__(self) -> None:
        self.by_ike: dict[str, dict[int, list[int]]] = {}
        self.asked: list[str] = []

    def packets_of(self, ike_spi: str) -> list[tuple[int, int, int]]:
        self.asked.append(ike_spi)
        return [(uid, c[0], c[1]) for uid, c in self.by_ike.get(ike_spi, {}).items()]

    def add(self, ike_spi: str, uid: int, inbound: int, outbound: int) -> None:
        c = self.by_ike.setdefault(ike_spi, {}).setdefault(uid, [0, 0])
        c[0] += inbound
        c[1] += outbound


def setup() -> tuple[Mobility, FakeEngine, Counters, TrafficWatch, list[int]]:
    mob, engine = started([("m0", M0), ("m1", M1)])
    mob.pump(0.0)
    answer_all(mob, engine, 0.01)
    counters = Counters()
    stalls: list[int] = []
    watch = TrafficWatch(counters.packets_of, mob, lambda: stalls.append(1))
    return mob, engine, counters, watch, stalls


def run(watch: TrafficWatch, counters: Counters, start: float, end: float,
        inbound: int, outbound: int) -> float:
    t = start
    while t + SAMPLE_INTERVAL <= end + 1e-9:
        t += SAMPLE_INTERVAL
        counters.add(SPI, 1, inbound, outbound)
        watch.sample(t)
    return t


def test_an_inbound_stall_probes_the_active_path_now() -> None:
    mob, engine, counters, watch, stalls = setup()
    t = run(watch, counters, 0.05, 0.15, 2, 2)  # both ways: the path is fine
    engine.probes.clear()
    assert not stalls
    t = run(watch, counters, t, t + 0.2, 0, 2)  # inbound stops, outbound flows
    assert stalls == [1]
    logged = mob.pump(t)
    assert "path_stalled" in [n for n, _ in logged]
    assert [p for _, _, p in engine.probes] == [path(M0)]


def test_two_way_traffic_and_idle_tunnels_never_stall() -> None:
    _mob, _engine, counters, watch, stalls = setup()
    t = run(watch, counters, 0.05, 2.0, 2, 2)
    run(watch, counters, t, t + 2.0, 0, 0)
    assert not stalls


def test_a_counter_that_starts_over_is_a_new_sa_not_a_negative_count() -> None:
    _mob, _engine, counters, watch, stalls = setup()
    t = run(watch, counters, 0.05, 0.15, 5, 5)
    t = run(watch, counters, t, t + 0.075, 0, 2)  # silence begins
    counters.by_ike[SPI][1] = [1, 1]  # the id now names a fresh SA: one packet came in
    t += SAMPLE_INTERVAL
    watch.sample(t)
    run(watch, counters, t, t + 0.075, 0, 2)  # less than stall_timeout since that packet
    assert not stalls


def test_only_the_ike_sas_we_choose_paths_for_are_sampled() -> None:
    engine = FakeEngine()
    mob = Mobility(engine, MobikePolicy())
    mob.on_addresses([("m0", M0)], 0.0)
    responder = "a" * 16 + "_" + "b" * 16
    mob.on_core_event(replace(established(initiator=False), ike_spi=responder), 0.0)
    counters = Counters()
    watch = TrafficWatch(counters.packets_of, mob, lambda: None)
    watch.sample(1.0)
    assert counters.asked == []
    mob.on_core_event(established(), 1.0)
    watch.sample(1.1)
    assert counters.asked == [SPI]
