"""The data-plane watch on a fake clock: stalls only while outbound flows, bursts decide,
moves are verified, repaired once, or failed."""

from __future__ import annotations

import pytest

from mobike_vici.mobike.data_watch import (
    ActivePathDead,
    DataPathFailed,
    DataPathRepaired,
    DataPathVerified,
    DataWatch,
    InboundStalled,
    RepairNeeded,
    WatchEvent,
    WatchSettings,
)

S = WatchSettings()


def drain(w: DataWatch) -> list[WatchEvent]:
    out = []
    while (e := w.next_event()) is not None:
        out.append(e)
    return out


def stream(w: DataWatch, start: float, end: float, *, inbound: bool = True,
           step: float = 0.01) -> float:
    """A two-way (or, inbound=False, one-way) 100 Hz flow; returns the end time."""
    t = start
    while t < end:
        w.on_outbound(t)
        if inbound:
            w.on_inbound(t + 0.001)
        t = round(t + step, 6)
    return t


def run_timer(w: DataWatch, until: float) -> int:
    """Fire the watch's timer up to ``until``, sending due burst probes; probes sent."""
    sent = 0
    for _ in range(100):
        when = w.get_timer()
        if when is None or when > until:
            break
        w.handle_timer(when)
        sent += w.probes_due(when)
    return sent


def test_a_two_way_flow_that_keeps_flowing_raises_nothing() -> None:
    w = DataWatch(now=0.0)
    w.set_rtt(0.001)
    stream(w, 0.0, 5.0)
    assert drain(w) == []
    assert w.get_timer() is None


def test_inbound_stopping_while_outbound_flows_makes_one_burst_and_a_dead_path() -> None:
    w = DataWatch(now=0.0)
    w.set_rtt(0.001)
    stream(w, 0.0, 1.0)
    t = 1.0
    events: list[WatchEvent] = []
    probes = 0
    while not events and t < 2.0:
        w.on_outbound(t)
        probes += w.probes_due(t)
        events += drain(w)
        t = round(t + 0.01, 6)
    assert [type(e) for e in events] == [InboundStalled]
    stalled = events[0]
    assert isinstance(stalled, InboundStalled)
    assert S.stall_floor < stalled.silent_s <= S.stall_floor + 0.011
    assert probes == 1  # the first probe of the burst goes at once
    probes += run_timer(w, t + 1.0)
    assert probes == S.burst
    (dead,) = drain(w)
    assert dead == ActivePathDead(missed=S.burst)


def test_the_stall_bound_follows_the_smoothed_rtt_above_its_floor() -> None:
    w = DataWatch(now=0.0)
    w.set_rtt(0.1)  # 4 RTTs = 0.4 s
    stream(w, 0.0, 1.0)
    w.on_outbound(1.3)
    assert drain(w) == []
    w.on_outbound(1.45)
    assert [type(e) for e in drain(w)] == [InboundStalled]


def test_any_answer_during_the_burst_clears_it() -> None:
    for answer in ("probe", "esp"):
        w = DataWatch(now=0.0)
        stream(w, 0.0, 1.0)
        w.on_outbound(1.2)
        assert w.probes_due(1.2) == 1
        assert w.suspect
        if answer == "probe":
            w.on_probe_reply(1.21)
        else:
            w.on_inbound(1.21)
        drain(w)
        run_timer(w, 5.0)
        assert drain(w) == [], answer
        assert not w.suspect


def test_one_way_traffic_costs_at_most_one_burst_per_inbound_packet() -> None:
    w = DataWatch(now=0.0)
    stream(w, 0.0, 0.5)
    # From now on the peer only answers once a second (one-way flow with rare replies).
    bursts = replies = 0
    t = 0.5
    while t < 10.5:
        w.on_outbound(t)
        if abs(t - round(t)) < 1e-9:
            w.on_inbound(t + 0.001)
            replies += 1
        for e in drain(w):
            bursts += isinstance(e, InboundStalled)
            w.on_probe_reply(t)  # the path answers: nothing more
        t = round(t + 0.01, 6)
    assert replies == 10
    assert 1 <= bursts <= replies + 1  # one per silence: after the stream, after each reply


def test_a_peer_never_heard_and_an_idle_tunnel_raise_nothing() -> None:
    w = DataWatch(now=0.0)
    stream(w, 0.0, 3.0, inbound=False)  # one-way from the start: no silence "began"
    assert drain(w) == []
    idle = DataWatch(now=0.0)
    stream(idle, 0.0, 0.5)
    assert run_timer(idle, 60.0) == 0  # nothing goes out: nothing is suspected
    assert drain(idle) == []


def test_bursts_are_damped_by_rearm_gap() -> None:
    w = DataWatch(now=0.0)
    stream(w, 0.0, 1.0)
    w.on_outbound(1.2)
    w.on_probe_reply(1.21)
    w.on_inbound(1.22)  # re-arms the detector...
    w.on_outbound(1.5)  # ...but a second burst within rearm_gap is refused
    assert [type(e) for e in drain(w)] == [InboundStalled]
    w.on_inbound(2.0)
    w.on_outbound(2.5)
    assert [type(e) for e in drain(w)] == [InboundStalled]


def test_a_move_is_verified_by_inbound_esp_on_the_new_path() -> None:
    w = DataWatch(now=0.0)
    stream(w, 0.0, 1.0)
    w.on_moved(1.5)
    assert w.verifying
    w.on_outbound(1.51)
    w.on_inbound(1.56)
    (ok,) = drain(w)
    assert isinstance(ok, DataPathVerified)
    assert ok.wait_s == pytest.approx(0.06)
    assert not w.verifying


def test_a_silent_new_path_is_repaired_once_then_reported() -> None:
    w = DataWatch(now=0.0)
    w.set_rtt(0.001)
    stream(w, 0.0, 1.0)
    last_in = 1.0 - 0.01 + 0.001
    w.on_moved(1.5)
    w.on_outbound(1.6)
    run_timer(w, 1.5 + S.verify_floor)
    (repair,) = drain(w)
    assert isinstance(repair, RepairNeeded)
    assert repair.waited_s == pytest.approx(S.verify_floor)
    w.on_outbound(2.0)
    assert drain(w) == []  # no stall burst while the repair is under way
    w.on_inbound(2.1)
    (fixed,) = drain(w)
    assert isinstance(fixed, DataPathRepaired)
    assert fixed.dead_s == pytest.approx(2.1 - last_in)

    w2 = DataWatch(now=0.0)
    stream(w2, 0.0, 1.0)
    w2.on_moved(1.5)
    w2.on_outbound(1.6)
    run_timer(w2, 1.5 + S.verify_floor + 1.9 * S.verify_floor)
    assert [type(e) for e in drain(w2)] == [RepairNeeded]  # the rekey gets twice the bound
    run_timer(w2, 10.0)
    assert [type(e) for e in drain(w2)] == [DataPathFailed]
    assert not w2.verifying


def test_a_move_with_nothing_going_out_is_not_judged() -> None:
    w = DataWatch(now=0.0)
    stream(w, 0.0, 1.0)
    w.on_moved(1.5)
    run_timer(w, 10.0)
    assert drain(w) == []
    assert not w.verifying


def test_a_refused_repair_is_a_failure_at_once() -> None:
    w = DataWatch(now=0.0)
    stream(w, 0.0, 1.0)
    w.on_moved(1.5)
    w.on_outbound(1.6)
    run_timer(w, 1.5 + S.verify_floor)
    drain(w)
    w.on_repair_failed(2.0)
    (failed,) = drain(w)
    assert failed == DataPathFailed(reason="repair_refused")


def test_the_verify_bound_follows_the_rtt_of_a_slow_path() -> None:
    w = DataWatch(now=0.0)
    w.set_rtt(0.2)  # 8 RTTs = 1.6 s
    stream(w, 0.0, 1.0)
    w.on_moved(1.5)
    w.on_outbound(1.6)
    run_timer(w, 1.5 + 1.5)
    assert drain(w) == []
    run_timer(w, 1.5 + 1.7)
    assert [type(e) for e in drain(w)] == [RepairNeeded]
