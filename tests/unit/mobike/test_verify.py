"""The data path check after a move, driven by counters and a fake clock."""

from __future__ import annotations

import itertools

import pytest

from mobike_vici.mobike.verify import (
    LATE_STEP,
    LATE_WATCH,
    POLL_MAX,
    DataPathCheck,
    DataPathDead,
    DataPathRepaired,
    DataPathUnverified,
    DataPathVerified,
    Event,
    Phase,
    RepairRequested,
    Sample,
    VerifySettings,
)

from .sim import path

NEW = path("10.2.0.2", "192.0.2.2")
OLD = path("10.1.0.2", "192.0.2.2")
SETTINGS = VerifySettings(verify_timeout=0.2, repair_timeout=2.0, active_window=2.0)
MOVED_AT = 10.0


class Peer:
    """Counters of one CHILD_SA (unique id 1) as traffic flows; more SAs come by rekeys."""

    def __init__(self) -> None:
        self.counters: dict[int, tuple[int, int]] = {1: (500, 500)}

    def send(self, uid: int = 1, n: int = 1) -> None:
        packets_in, packets_out = self.counters.get(uid, (0, 0))
        self.counters[uid] = (packets_in, packets_out + n)

    def receive(self, uid: int = 1, n: int = 1) -> None:
        packets_in, packets_out = self.counters.get(uid, (0, 0))
        self.counters[uid] = (packets_in + n, packets_out)

    def sample(self) -> Sample:
        return dict(self.counters)


def moved(peer: Peer, *, srtt: float | None = 0.001, last_inbound: float | None = 9.3,
          inbound_since: float | None = 5.0,
          settings: VerifySettings = SETTINGS) -> DataPathCheck:
    """The move completes at MOVED_AT; the peer sent steadily from 5.0 to 9.3 before."""
    check = DataPathCheck(settings)
    check.on_moved(NEW, OLD, started=MOVED_AT - 0.005, srtt=srtt, sample=peer.sample(),
                   last_inbound=last_inbound, inbound_since=inbound_since, now=MOVED_AT)
    return check


def run(check: DataPathCheck, peer: Peer, until: float, *, sending: bool = True,
        answering_from: float | None = None, rekey_at: float | None = None,
        ) -> list[tuple[float, Event]]:
    """Poll as the backend does, our traffic at 100 Hz (between polls), until ``until``."""
    events: list[tuple[float, Event]] = []
    while (t := check.get_timer()) is not None and t <= until:
        if sending:
            peer.send()
        if answering_from is not None and t >= answering_from:
            peer.receive(uid=2 if rekey_at is not None else 1)
        if rekey_at is not None and t >= rekey_at:
            check.on_rekeyed(t)
        check.observe(peer.sample(), t)
        while (ev := check.next_event()) is not None:
            events.append((t, ev))
    return events


def test_the_peers_esp_after_the_move_verifies_it() -> None:
    peer = Peer()
    check = moved(peer)
    events = run(check, peer, 20.0, answering_from=MOVED_AT + 0.03)
    assert [type(e) for _, e in events] == [DataPathVerified]
    t, ev = events[0]
    assert isinstance(ev, DataPathVerified) and ev.path == NEW
    assert ev.after_ms == pytest.approx((t - MOVED_AT) * 1000, abs=0.01)
    assert t - MOVED_AT < 0.03 + POLL_MAX
    assert check.phase is Phase.DONE and check.get_timer() is None


def test_our_esp_unanswered_for_the_bound_asks_for_a_repair_then_the_peer_answers() -> None:
    peer = Peer()
    check = moved(peer)
    events = run(check, peer, 20.0, answering_from=MOVED_AT + 0.5, rekey_at=MOVED_AT + 0.45)
    kinds = [type(e) for _, e in events]
    assert kinds == [RepairRequested, DataPathRepaired]
    (t_repair, repair), (t_done, done) = events
    assert isinstance(repair, RepairRequested) and isinstance(done, DataPathRepaired)
    # Not before the bound has passed since our first packet after the move.
    assert MOVED_AT + 0.2 <= t_repair <= MOVED_AT + 0.2 + 2 * POLL_MAX
    assert repair.waited_ms == pytest.approx((t_repair - MOVED_AT) * 1000, abs=0.01)
    assert t_done >= MOVED_AT + 0.5
    # dead_ms counts from the move's start (5 ms before its completion).
    assert done.dead_ms == pytest.approx((t_done - (MOVED_AT - 0.005)) * 1000, abs=0.01)
    assert done.repair_ms == pytest.approx((t_done - t_repair) * 1000, abs=0.01)


def test_repair_without_an_answer_and_without_a_rekey_is_a_dead_data_path() -> None:
    peer = Peer()
    check = moved(peer)
    events = run(check, peer, 60.0)
    assert [type(e) for _, e in events] == [RepairRequested, DataPathDead]
    t_repair, t_dead = events[0][0], events[1][0]
    dead = events[1][1]
    assert isinstance(dead, DataPathDead)
    assert dead.reason == "data_path_dead" and dead.old_path == OLD and dead.path == NEW
    assert not dead.rekeyed
    assert t_dead - t_repair == pytest.approx(2.0, abs=1e-9)  # repair_timeout
    # Then the late watch, and nothing more.
    assert check.get_timer() is None and check.phase is Phase.DONE


def test_the_peers_esp_after_the_dead_verdict_is_a_late_repair() -> None:
    """The peer's own retransmission ended its stall, 4 s after its request."""
    peer = Peer()
    check = moved(peer)
    events = run(check, peer, 60.0, answering_from=MOVED_AT + 4.0)
    assert [type(e) for _, e in events] == [RepairRequested, DataPathDead, DataPathRepaired]
    t_late, late = events[2]
    assert isinstance(late, DataPathRepaired)
    assert MOVED_AT + 4.0 <= t_late <= MOVED_AT + 4.0 + LATE_STEP + 1e-9
    assert late.dead_ms == pytest.approx((t_late - (MOVED_AT - 0.005)) * 1000, abs=0.01)
    assert check.phase is Phase.DONE


def test_the_late_watch_ends() -> None:
    peer = Peer()
    check = moved(peer)
    run(check, peer, MOVED_AT + 3.0)
    assert check.phase is Phase.LATE
    events = run(check, peer, MOVED_AT + 2.3 + LATE_WATCH + 1.0, answering_from=1e9)
    assert events == [] and check.get_timer() is None
    assert check.phase is Phase.DONE


def test_a_completed_rekey_without_an_answer_is_still_a_dead_data_path() -> None:
    peer = Peer()
    check = moved(peer)
    events = run(check, peer, 30.0, rekey_at=MOVED_AT + 0.3)
    assert [type(e) for _, e in events] == [RepairRequested, DataPathDead]
    last = events[-1][1]
    assert isinstance(last, DataPathDead) and last.reason == "data_path_dead"
    assert last.rekeyed


def test_an_idle_tunnel_has_nothing_to_verify_and_is_not_rekeyed() -> None:
    peer = Peer()
    check = moved(peer)
    events = run(check, peer, 30.0, sending=False)
    assert [type(e) for _, e in events] == [DataPathUnverified]
    t, ev = events[0]
    assert isinstance(ev, DataPathUnverified) and ev.reason == "idle"
    assert t == pytest.approx(MOVED_AT + 0.2)


@pytest.mark.parametrize(("last_inbound", "inbound_since"), [
    (None, None),  # never
    (MOVED_AT - 3.0, 5.0),  # not within active_window of the move's start
    (9.3, 9.3),  # one answer (a ping), not a steady flow
    (9.3, 8.6),  # a flow of 0.7 s only (sustained: 1 s)
])
def test_one_way_traffic_expects_nothing_back(last_inbound: float | None,
                                              inbound_since: float | None) -> None:
    """The peer was not sending steadily up to shortly before the move."""
    peer = Peer()
    check = moved(peer, last_inbound=last_inbound, inbound_since=inbound_since)
    events = run(check, peer, 30.0)
    assert [type(e) for _, e in events] == [DataPathUnverified]
    ev = events[0][1]
    assert isinstance(ev, DataPathUnverified) and ev.reason == "one_way"


def test_the_bound_stretches_with_the_new_paths_rtt() -> None:
    peer = Peer()
    check = moved(peer, srtt=0.25)  # 4 SRTT = 1 s > verify_timeout
    events = run(check, peer, 30.0, rekey_at=MOVED_AT + 1.5)
    t_repair = events[0][0]
    assert isinstance(events[0][1], RepairRequested)
    assert MOVED_AT + 1.0 <= t_repair <= MOVED_AT + 1.0 + 2 * POLL_MAX
    # The repair bound stretches too (4 SRTT = 1 s < repair_timeout: the floor holds).
    assert events[1][0] - t_repair == pytest.approx(2.0, abs=1e-9)


def test_traffic_that_starts_late_gets_its_whole_bound() -> None:
    peer = Peer()
    check = moved(peer)
    run(check, peer, MOVED_AT + 0.15, sending=False)
    events = run(check, peer, 30.0, rekey_at=MOVED_AT + 5)
    t_repair = events[0][0]
    assert isinstance(events[0][1], RepairRequested)
    assert t_repair >= MOVED_AT + 0.15 + 0.2


def test_esp_on_a_child_sa_that_a_rekey_created_counts() -> None:
    peer = Peer()
    check = moved(peer)
    peer.counters[2] = (0, 0)  # the peer rekeyed: a new SA, counted from zero
    peer.receive(uid=2)
    check.observe(peer.sample(), MOVED_AT + 0.01)
    ev = check.next_event()
    assert isinstance(ev, DataPathVerified)


def test_a_deleted_child_sa_does_not_hide_what_the_new_one_got() -> None:
    peer = Peer()
    check = moved(peer)
    del peer.counters[1]
    peer.counters[3] = (1, 4)
    check.observe(peer.sample(), MOVED_AT + 0.01)
    assert isinstance(check.next_event(), DataPathVerified)


def test_a_second_move_replaces_the_check_of_the_first() -> None:
    peer = Peer()
    check = moved(peer)
    run(check, peer, MOVED_AT + 0.1)
    other = path("10.3.0.2", "192.0.2.2")
    check.on_moved(other, NEW, started=MOVED_AT + 0.1, srtt=None, sample=peer.sample(),
                   last_inbound=MOVED_AT - 0.5, inbound_since=1.0, now=MOVED_AT + 0.11)
    events = run(check, peer, 30.0, answering_from=MOVED_AT + 0.2)
    assert [type(e) for _, e in events] == [DataPathVerified]
    assert events[0][1].path == other


def test_cancel_and_a_zero_verify_timeout_check_nothing() -> None:
    peer = Peer()
    check = moved(peer, settings=VerifySettings(verify_timeout=0))
    assert check.phase is Phase.DONE and check.get_timer() is None
    check.observe(peer.sample(), MOVED_AT + 1)
    assert check.next_event() is None
    check = moved(peer)
    check.cancel()
    assert check.get_timer() is None
    check.observe(peer.sample(), MOVED_AT + 1)
    assert check.next_event() is None


def test_polls_are_paced_and_never_past_the_deadline() -> None:
    peer = Peer()
    check = moved(peer)
    times: list[float] = []
    while (t := check.get_timer()) is not None and check.phase is Phase.WATCHING:
        times.append(t)
        peer.send()
        check.observe(peer.sample(), t)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and all(0 < g <= POLL_MAX + 1e-12 for g in gaps)
    # 10 polls per bound: 20 ms apart for the 200 ms floor.
    assert max(gaps) == pytest.approx(0.02)


def test_early_or_repeated_observations_change_nothing() -> None:
    peer = Peer()
    check = moved(peer)
    for _ in range(3):
        check.observe(peer.sample(), MOVED_AT)  # nothing new, bound not reached
    assert check.next_event() is None and check.phase is Phase.WATCHING
