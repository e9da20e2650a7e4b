"""The daemon's data path check over two real userspace data planes (ours and the peer's),
with a fake engine whose rekeys install the new CHILD_SA on both sides, and a fake clock."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from mobike_vici.config.mobike import MobikePolicy
from mobike_vici.core.events import (
    ChildSaRekeyed,
    ExchangeFailed,
    IkeSaDeleted,
    IkeSaMoved,
    IkeSaRekeyed,
)
from mobike_vici.daemon.data_path import DataPathWatch, settings_of
from mobike_vici.daemon.metrics import EventMetrics
from mobike_vici.esp.dataplane import DataPlane
from mobike_vici.mobike.health import Flow, HealthSettings
from tests.unit.daemon.test_metrics import exposed, get
from tests.unit.esp.support import iv_source
from tests.unit.esp.test_dataplane import A_INNER, B_INNER, installed, path, udp4

SPI = "1_2"
OLD = path("10.1.0.2", "192.0.2.2")
NEW = path("10.2.0.2", "192.0.2.2")
SETTINGS = HealthSettings(verify_timeout=0.2, repair_timeout=2.0, active_window=2.0)
Log = list[tuple[str, dict[str, object]]]


class Engine:
    """Records rekeys; ``complete`` installs the new CHILD_SA as a finished exchange would."""

    def __init__(self, ours: DataPlane, peer: DataPlane) -> None:
        self.ours, self.peer = ours, peer
        self.rekeys: list[int] = []
        self.unknown: set[int] = set()

    def rekey_child(self, unique_id: int, now: float) -> None:
        if unique_id in self.unknown:
            raise KeyError(unique_id)
        self.rekeys.append(unique_id)

    def complete(self, old: int, new: int) -> ChildSaRekeyed:
        spi_i, spi_r = 0x1000 + new, 0x2000 + new
        self.ours.install(installed(initiator=True, unique_id=new, spi_i=spi_i, spi_r=spi_r,
                                    rekey_of=old, seed=new))
        self.peer.install(installed(initiator=False, unique_id=new, spi_i=spi_i, spi_r=spi_r,
                                    rekey_of=old, seed=new, rekey_initiator=False))
        self.ours.remove(old)
        return ChildSaRekeyed(conn="c", ike_spi=SPI, child="net", old_unique_id=old,
                              new_unique_id=new, old_spi_in=0x1000, new_spi_in=spi_i)


class Lab:
    def __init__(self, settings: HealthSettings = SETTINGS) -> None:
        self.ours, self.peer = DataPlane(iv_source(1)), DataPlane(iv_source(2))
        self.ours.install(installed(initiator=True))
        self.peer.install(installed(initiator=False))
        self.engine = Engine(self.ours, self.peer)
        self.flow = Flow()
        """The traffic as the path manager is fed it (daemon.traffic's samples)."""
        self.watch = DataPathWatch(self.engine, self.ours, settings, lambda spi, p: 0.001,
                                   lambda spi: self.flow if spi == SPI else None)
        self.log: Log = []
        self.peer_reaches_us = True

    def exchange(self, now: float, *, ours: bool = True, theirs: bool = True) -> None:
        """One packet our way out, and the peer's answer back if it gets through."""
        got = 0
        if ours:
            out = self.ours.protect(udp4(A_INNER, B_INNER))
            assert out is not None
            self.peer.unprotect(out[1], now)
        if theirs:
            back = self.peer.protect(udp4(B_INNER, A_INNER, sport=80, dport=1234))
            assert back is not None
            if self.peer_reaches_us:
                self.ours.unprotect(back[1], now)
                got = 1
        self.flow.on_traffic(got, int(ours), now)

    def move(self, now: float, old: object = OLD, new: object = NEW) -> None:
        self.watch.on_core_event(IkeSaMoved(conn="c", ike_spi=SPI, old_path=old,  # type: ignore[arg-type]
                                            new_path=new, duration=0.004), now)  # type: ignore[arg-type]
        self.log += self.watch.take_log()

    def run(self, until: float, *, ours: bool = True, theirs: bool = True,
            rekey_after: float | None = None) -> None:
        while (t := self.watch.get_timer()) is not None and t <= until:
            self.exchange(t, ours=ours, theirs=theirs)
            if rekey_after is not None and self.engine.rekeys and t >= rekey_after:
                for uid in self.engine.rekeys:
                    self.watch.on_core_event(self.engine.complete(uid, uid + 100), t)
                self.engine.rekeys.clear()
                self.peer_reaches_us = True  # the new SA lives on the new path
            self.watch.handle_timer(t)
            self.log += self.watch.take_log()

    def steady(self, start: float, end: float) -> None:
        """Traffic both ways at 10 Hz from ``start`` to ``end``: the peer sends steadily."""
        t = start
        while t <= end:
            self.exchange(t)
            t += 0.1

    def names(self) -> list[str]:
        return [name for name, _ in self.log]


def test_the_peers_esp_on_the_new_path_verifies_the_move() -> None:
    lab = Lab()
    lab.steady(8.0, 9.5)
    lab.move(10.0)
    lab.run(20.0)
    assert lab.names() == ["data_path_verified"]
    fields = lab.log[0][1]
    assert fields["conn"] == "c" and fields["ike_spi"] == SPI
    assert fields["local"] == str(NEW.local) and fields["remote"] == str(NEW.remote)
    assert lab.engine.rekeys == [] and lab.watch.checking == []


def test_a_peer_whose_esp_stays_on_the_dead_path_is_repaired_by_our_rekey() -> None:
    lab = Lab()
    lab.steady(8.0, 9.5)  # the peer was sending before the fault
    lab.peer_reaches_us = False  # its update is stuck: its ESP goes to the old path
    lab.move(10.0)
    lab.run(20.0, rekey_after=10.25)
    assert lab.names() == ["data_path_repair_started", "data_path_repaired"]
    started, repaired = lab.log[0][1], lab.log[1][1]
    assert started["children"] == [1]
    assert isinstance(started["waited_ms"], float) and started["waited_ms"] >= 200.0
    assert isinstance(repaired["dead_ms"], float) and repaired["dead_ms"] >= 250.0
    assert isinstance(repaired["repair_ms"], float) and repaired["repair_ms"] > 0
    # The peer's answer came on the SA our rekey made.
    new = lab.ours.get(101)
    assert new is not None and new.counters()["packets_in"] > 0
    assert lab.watch.checking == []


def test_an_update_after_a_nat_rebinding_is_checked_and_repaired() -> None:
    # The same path before and after: only the public port the peer sees changed. A
    # peer whose own request is stuck updates its CHILD_SAs late (charon on
    # kernel-libipsec rekeys them once that request is answered), so its ESP goes to the
    # old port meanwhile.
    lab = Lab()
    lab.steady(8.0, 9.5)
    lab.peer_reaches_us = False
    lab.move(10.0, old=NEW, new=NEW)
    lab.run(20.0, rekey_after=10.25)
    assert lab.names() == ["data_path_repair_started", "data_path_repaired"]
    assert lab.log[0][1]["children"] == [1]
    assert lab.watch.checking == []


def test_no_answer_and_no_rekey_within_the_repair_bound_fails_the_handover() -> None:
    lab = Lab()
    lab.steady(8.0, 9.5)
    lab.peer_reaches_us = False
    lab.move(10.0)
    lab.run(30.0)
    assert lab.names() == ["data_path_repair_started", "handover_failed"]
    failed = lab.log[1][1]
    assert failed["reason"] == "data_path_dead" and failed["rekeyed"] is False
    assert failed["old_local"] == str(OLD.local) and failed["local"] == str(NEW.local)


def test_an_idle_tunnel_is_not_rekeyed() -> None:
    lab = Lab()
    lab.steady(8.0, 9.5)
    lab.move(10.0)
    lab.run(30.0, ours=False, theirs=False)
    assert lab.names() == ["data_path_unverified"]
    assert lab.log[0][1]["reason"] == "idle"
    assert lab.engine.rekeys == []


@pytest.mark.parametrize(("start", "end"), [
    (4.0, 5.0),  # the peer's last packet, long before the move
    (9.5, 9.5),  # one answer (a ping) just before a one-way stream
])
def test_one_way_traffic_is_not_rekeyed(start: float, end: float) -> None:
    lab = Lab()
    lab.steady(start, end)
    lab.move(10.0)
    lab.run(30.0, theirs=False)
    assert lab.names() == ["data_path_unverified"]
    assert lab.log[0][1]["reason"] == "one_way"
    assert lab.engine.rekeys == []


def test_children_the_engine_no_longer_knows_are_counted_not_fatal() -> None:
    lab = Lab()
    lab.steady(8.0, 9.5)
    lab.peer_reaches_us = False
    lab.engine.unknown.add(1)
    lab.move(10.0)
    lab.run(10.3)
    assert lab.names() == ["data_path_repair_started"]
    assert lab.log[0][1]["children"] == []
    assert lab.watch.errors == 1


def test_the_check_follows_an_ike_rekey_and_ends_with_the_ike_sa() -> None:
    lab = Lab()
    lab.steady(8.0, 9.5)
    lab.peer_reaches_us = False
    lab.move(10.0)
    lab.watch.on_core_event(IkeSaRekeyed(conn="c", ike_spi=SPI, new_ike_spi="3_4"), 10.05)
    assert lab.watch.checking == ["3_4"]
    lab.watch.on_core_event(IkeSaDeleted(conn="c", ike_spi="3_4", path=NEW,
                                         reason="deleted_by_peer"), 10.1)
    assert lab.watch.checking == [] and lab.watch.get_timer() is None


def test_zero_turns_the_check_off() -> None:
    off = Lab(HealthSettings(verify_timeout=0))
    off.move(10.0)
    assert off.watch.checking == [] and off.watch.get_timer() is None


def test_the_data_plane_tells_which_sas_an_ike_sa_has_and_when_the_peer_last_sent() -> None:
    lab = Lab()
    (entry,) = lab.ours.children_of(SPI)
    assert entry.last_in is None
    lab.exchange(7.25)
    assert entry.last_in == 7.25
    assert lab.ours.children_of("9_9") == []


def test_the_peers_run_goes_on_across_a_rekey() -> None:
    """Sending steadily on the old SA, then on the one a rekey made: one run."""
    lab = Lab()
    lab.steady(8.0, 9.0)
    lab.watch.on_core_event(lab.engine.complete(1, 2), 9.05)
    lab.steady(9.1, 9.6)
    lab.peer_reaches_us = False
    lab.move(10.0)
    lab.run(10.3)
    assert lab.names() == ["data_path_repair_started"]
    assert lab.log[0][1]["children"] == [2]


def test_a_young_ping_whose_replies_stopped_is_repaired_not_one_way() -> None:
    """The bug: a ping had run for half a second when the path died (its replies are
    what stopped); the move came 0.2 s later and our pings still leave."""
    lab = Lab()
    t = 9.3
    while t < 9.8:  # 100 Hz request/reply, 50 replies
        lab.exchange(t)
        t += 0.01
    lab.peer_reaches_us = False
    lab.steady(9.8, 9.99)  # after the fault: only ours gets through
    lab.move(10.0)
    lab.run(10.5)
    assert lab.names()[:1] == ["data_path_repair_started"]
    assert lab.engine.rekeys == [1]


def test_a_rekey_refused_for_now_is_asked_again_at_rtt_pace() -> None:
    """charon answers TEMPORARY_FAILURE while its own IKE_SA rekey is in flight: the repair
    asks again soon (not after the peer's 4 s retransmission) until it gets through."""
    lab = Lab()
    lab.steady(8.0, 9.9)
    lab.peer_reaches_us = False
    lab.move(10.0)
    lab.run(10.25)
    assert lab.names() == ["data_path_repair_started"] and lab.engine.rekeys == [1]
    refused = ExchangeFailed(conn="c", ike_spi=SPI, exchange="CREATE_CHILD_SA",
                             reason="CHILD_SA rekey: TEMPORARY_FAILURE")
    lab.engine.rekeys.clear()
    lab.watch.on_core_event(refused, 10.25)
    lab.run(10.4)
    assert lab.engine.rekeys == [1], lab.log  # asked again within 0.15 s
    assert lab.log[-1][1]["attempt"] == 2
    lab.run(11.0, rekey_after=10.4)
    assert lab.names() == ["data_path_repair_started", "data_path_repair_started",
                           "data_path_repaired"]
    # Any other failure is not asked again: the check runs to its verdict.
    other = Lab()
    other.steady(8.0, 9.9)
    other.peer_reaches_us = False
    other.move(10.0)
    other.run(10.25)
    other.engine.rekeys.clear()
    other.watch.on_core_event(ExchangeFailed(conn="c", ike_spi=SPI, exchange="CREATE_CHILD_SA",
                                             reason="CHILD_SA rekey: NO_PROPOSAL_CHOSEN"), 10.25)
    other.run(13.0)
    assert other.engine.rekeys == []
    assert other.names() == ["data_path_repair_started", "handover_failed"]


def test_settings_follow_the_policy() -> None:
    policy = MobikePolicy(probe_interval=0.5, probe_misses=3, probe_timeout=1.0,
                          verify_timeout=0.3, repair_timeout=4.0)
    s = settings_of(policy)
    assert (s.verify_timeout, s.repair_timeout) == (0.3, 4.0)
    # The peer counts as sending when it sent within the detection time (2.5 s) + 1 s.
    assert s.active_window == pytest.approx(3.5)


def test_metrics_count_each_verdict_once() -> None:
    registry = CollectorRegistry()
    m = EventMetrics(registry)
    for name, fields in [("handover_started", {"reason": "failover"}),
                         ("handover_completed", {"duration_ms": 2.0}),
                         ("data_path_repair_started", {"waited_ms": 220.0}),
                         ("handover_failed", {"reason": "data_path_dead", "dead_ms": 2200.0}),
                         ("data_path_verified", {"after_ms": 3.0}),
                         ("data_path_repaired", {"dead_ms": 250.0}),
                         ("data_path_unverified", {"reason": "one_way"})]:
        m.on_event({"event": name, "conn": "home", "ike_spi": "a_b", **fields})
    got = exposed(registry)
    for result in ("dead", "verified", "repaired", "one_way"):
        assert get(got, "mobike_data_path_checks_total", conn="home", result=result) == 1
    # The handover itself completed: counted once, not failed on top.
    assert get(got, "mobike_handovers_total", conn="home", reason="failover",
               result="completed") == 1
    assert get(got, "mobike_handovers_total", conn="home", reason="unknown",
               result="failed") is None


def _peer_rekeyed(lab: Lab, at: float) -> None:
    """The peer rekeyed CHILD_SA 1 into 2 at ``at`` (we answered) and its DELETE of 1
    never came: its own exchange is outstanding, and it starts no other until its
    retransmission gets through (charon: 4 s)."""
    lab.ours.install(installed(initiator=True, unique_id=2, spi_i=0x1002, spi_r=0x2002,
                               rekey_of=1, seed=2, rekey_initiator=False))
    lab.peer.install(installed(initiator=False, unique_id=2, spi_i=0x1002, spi_r=0x2002,
                               rekey_of=1, seed=2, rekey_initiator=True))
    lab.watch.on_core_event(ChildSaRekeyed(conn="c", ike_spi=SPI, child="net",
                                           old_unique_id=1, new_unique_id=2,
                                           old_spi_in=0x1000, new_spi_in=0x1002), at)


@pytest.mark.parametrize(("rekeyed_at", "early"), [
    (6.5, True),   # its DELETE is 3.5 s late: the peer's window is stuck
    (9.99, False),  # a rekey just before the move: its DELETE is still on its way
])
def test_a_move_while_the_peers_own_exchange_is_stuck_is_repaired_at_once(
        rekeyed_at: float, early: bool) -> None:
    # A peer that must rekey to follow a move (charon over kernel-libipsec when the
    # NAT state changes) cannot while its own request is outstanding: waiting out the
    # verify bound only adds to the outage.
    lab = Lab()
    lab.steady(6.0, 6.4)
    _peer_rekeyed(lab, rekeyed_at)
    lab.steady(8.0, 9.5)
    lab.peer_reaches_us = False
    lab.move(10.0)
    lab.run(20.0, rekey_after=10.0)
    assert lab.names() == ["data_path_repair_started", "data_path_repaired"]
    started = lab.log[0][1]
    assert started["children"] == [2]
    assert isinstance(started["waited_ms"], float)
    assert (started["waited_ms"] < 100.0) is early
