"""The path manager against a fake network: failover, hold-down, damping, pacing."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from mobike_vici.config.mobike import MobikePolicy, PreferRule
from mobike_vici.mobike.events import (
    HandoverCompleted,
    HandoverFailed,
    HandoverStarted,
    MoveRequested,
    PathDown,
    PathSelected,
    PathUp,
)
from mobike_vici.mobike.manager import UNACCEPTABLE_RETRY, PathManager
from mobike_vici.mobike.paths import LocalAddress, PathState

from .sim import Sim, ip, key, path

ETH = LocalAddress(ip("10.1.0.2"), "eth0")
WWAN = LocalAddress(ip("10.2.0.2"), "wwan0")
ETH1 = LocalAddress(ip("10.3.0.2"), "eth1")
PEER = "192.0.2.1"
P_ETH = path("10.1.0.2", PEER)
P_WWAN = path("10.2.0.2", PEER)
P_ETH1 = path("10.3.0.2", PEER)

# eth* preferred, the metered uplink last.
POLICY = MobikePolicy(prefer=(
    PreferRule("wired", interface="eth*", cost=10),
    PreferRule("metered", interface="wwan*", cost=100),
))


def make(policy: MobikePolicy = POLICY, locals_: tuple[LocalAddress, ...] = (ETH, WWAN),
         active: object = P_ETH, **kw: object) -> Sim:
    mgr = PathManager(policy, active, locals_, now=0.0, **kw)  # type: ignore[arg-type]
    return Sim(mgr)


def moves(sim: Sim) -> list[tuple[float, MoveRequested]]:
    return sim.of(MoveRequested)


def test_start_selects_initial_path_and_brings_paths_up() -> None:
    sim = make()
    sim.run_until(3.0)
    assert sim.events[0][1] == PathSelected(path=P_ETH, reason="initial")
    ups = {e.path for _, e in sim.of(PathUp)}
    assert ups == {P_ETH, P_WWAN}
    assert not moves(sim)
    assert sim.mgr.active_path == P_ETH


@pytest.mark.parametrize("death", [5.0, 5.05, 5.11, 5.19, 5.2])
def test_silently_dead_active_path_left_within_one_second(death: float) -> None:
    sim = make()
    sim.run_until(death)
    sim.dead.add(key(P_ETH))
    sim.run_until(death + 1.0)
    downs = [(t, e) for t, e in sim.of(PathDown) if e.path == P_ETH]
    assert downs and downs[0][1].reason == "probe_timeout"
    assert downs[0][0] - death <= 0.7 + 1e-9  # probe_interval * misses + probe_timeout
    (t_move, mv), = moves(sim)
    assert mv.path == P_WWAN and mv.old_path == P_ETH and mv.reason == "failover"
    assert t_move - death < 1.0
    done = sim.of(HandoverCompleted)
    assert done and done[0][1].duration_ms == pytest.approx(sim.rtt * 1000)
    assert done[0][0] - death < 1.0
    assert sim.mgr.active_path == P_WWAN


def test_link_down_requests_move_at_once() -> None:
    sim = make()
    sim.run_until(4.0)
    sim.mgr.on_link_down("eth0", 4.0)
    sim.flush()
    (t, mv), = moves(sim)
    assert t == 4.0 and mv.path == P_WWAN
    down = [e for _, e in sim.of(PathDown) if e.path == P_ETH]
    assert [e.reason for e in down] == ["link_down"]
    kinds = [type(e) for _, e in sim.events[-4:]]
    assert kinds == [PathDown, PathSelected, HandoverStarted, MoveRequested]


def test_return_to_preferred_path_only_after_hold_down() -> None:
    sim = make()
    sim.run_until(2.0)
    sim.mgr.on_link_down("eth0", 2.0)
    sim.run_until(5.0)
    assert sim.mgr.active_path == P_WWAN
    sim.mgr.on_link_up("eth0", 5.0)
    sim.run_until(30.0)
    up_again = [t for t, e in sim.of(PathUp) if e.path == P_ETH and t >= 5.0]
    back = [(t, e) for t, e in moves(sim) if e.path == P_ETH]
    assert up_again and back
    assert back[0][0] - up_again[0] >= POLICY.hold_down
    assert back[0][0] - up_again[0] <= POLICY.hold_down + 0.1  # woken by the timer, not late
    assert back[0][1].reason == "preferred"
    assert sim.mgr.active_path == P_ETH


@pytest.mark.slow
def test_a_single_miss_restarts_hold_down() -> None:
    sim = make()
    sim.run_until(2.0)
    sim.mgr.on_link_down("eth0", 2.0)
    sim.run_until(3.0)
    sim.mgr.on_link_up("eth0", 3.0)
    sim.run_until(8.0)
    # eth0 drops one probe window at t=8 (standby probes every 2 s), then recovers.
    sim.dead.add(key(P_ETH))
    sim.run_until(10.5)
    sim.dead.discard(key(P_ETH))
    sim.run_until(40.0)
    back = [t for t, e in moves(sim) if e.path == P_ETH]
    assert back and back[0] >= 10.5 + POLICY.hold_down - 0.5
    assert back[0] > 3.0 + POLICY.hold_down + 5  # not the first hold-down's end


@pytest.mark.slow
def test_flapping_link_one_hertz_moves_are_bounded() -> None:
    policy = dataclasses.replace(POLICY, hold_down=0.0, max_moves_per_minute=6)
    sim = make(policy)
    sim.run_until(3.0)
    t = 3.0
    while t < 123.0:
        sim.mgr.on_link_down("eth0", t)
        sim.run_until(t + 0.5)
        sim.mgr.on_link_up("eth0", t + 0.5)
        sim.run_until(t + 1.0)
        t += 1.0
    times = [t for t, _ in moves(sim)]
    preferred = [t for t, e in moves(sim) if e.reason == "preferred"]
    assert preferred, "returns happen while the budget lasts"
    for start in times:
        window = [x for x in times if start <= x < start + 60.0]
        assert len(window) <= policy.max_moves_per_minute + 1  # +1: a forced failover
        assert len([x for x in preferred if start <= x < start + 60.0]) <= 6
    assert len(times) <= 2 * (2 * policy.max_moves_per_minute + 1)  # two minutes


@pytest.mark.slow
def test_flapping_with_default_hold_down_never_returns() -> None:
    sim = make()
    sim.run_until(3.0)
    t = 3.0
    while t < 63.0:
        sim.mgr.on_link_down("eth0", t)
        sim.run_until(t + 0.5)
        sim.mgr.on_link_up("eth0", t + 0.5)
        sim.run_until(t + 1.0)
        t += 1.0
    assert [e.path for _, e in moves(sim)] == [P_WWAN]


@pytest.mark.slow
def test_unacceptable_addresses_tries_next_path_and_shelves_the_refused_one() -> None:
    policy = MobikePolicy(prefer=(
        PreferRule("wired", interface="eth0", cost=10),
        PreferRule("second", interface="eth1", cost=20),
        PreferRule("metered", interface="wwan*", cost=100),
    ))
    sim = make(policy, (ETH, ETH1, WWAN))
    sim.refuse[key(P_ETH1)] = "unacceptable_addresses"
    sim.run_until(3.0)
    sim.mgr.on_link_down("eth0", 3.0)
    sim.run_until(10.0)
    targets = [e.path for _, e in moves(sim)]
    assert targets == [P_ETH1, P_WWAN]
    failed = sim.of(HandoverFailed)
    assert failed[0][1].reason == "unacceptable_addresses"
    assert sim.mgr.active_path == P_WWAN
    refused_at = failed[0][0]
    later = [t for t, p in sim.probes if p == P_ETH1 and t > refused_at]
    sim.run_until(refused_at + UNACCEPTABLE_RETRY - 1)
    later = [t for t, p in sim.probes if p == P_ETH1 and t > refused_at]
    assert later == []
    sim.run_until(refused_at + UNACCEPTABLE_RETRY + 3)
    assert any(t >= refused_at + UNACCEPTABLE_RETRY for t, p in sim.probes if p == P_ETH1)


def test_probes_bounded_in_flight_when_everything_is_dead() -> None:
    locals_ = tuple(LocalAddress(ip(f"10.{i}.0.2"), f"eth{i}") for i in range(1, 5))
    policy = dataclasses.replace(MobikePolicy(), max_probes_in_flight=3)
    mgr = PathManager(policy, path("10.1.0.2", PEER), locals_,
                      [ip("192.0.2.2"), ip("192.0.2.3")], now=0.0)
    sim = Sim(mgr)
    sim.dead.update(key(p) for p in mgr.table.candidates())
    sim.run_until(30.0)
    assert len(mgr.table.candidates()) == 12
    assert sim.max_in_flight_seen == 3
    assert all(mgr.table.health(k).state == PathState.DOWN for k in mgr.table.candidate_keys())


@pytest.mark.slow
def test_idle_standby_probes_are_rare_and_active_is_watched() -> None:
    sim = make()
    sim.run_until(60.0)
    active = [t for t, p in sim.probes if p == P_ETH]
    standby = [t for t, p in sim.probes if p == P_WWAN]
    assert len(active) >= 60 / POLICY.probe_interval - 2
    assert len(standby) <= 60 / POLICY.standby_probe_interval + 2
    gaps = [b - a for a, b in itertools.pairwise(standby)]
    assert min(gaps) >= POLICY.standby_probe_interval - 1e-9


def test_rtt_is_smoothed_per_path() -> None:
    sim = make()
    sim.rtt = 0.05
    sim.run_until(20.0)
    h = sim.mgr.table.health(key(P_ETH))
    assert h.rtt.srtt == pytest.approx(0.05)
    assert h.rtt.rttvar < 0.01  # constant RTT: the variation decays


def test_active_path_failed_from_ike_retransmits() -> None:
    sim = make()
    sim.run_until(3.0)
    sim.mgr.on_active_path_failed(3.0)
    sim.flush()
    (t, mv), = moves(sim)
    assert t == 3.0 and mv.path == P_WWAN
    assert [e.reason for _, e in sim.of(PathDown)] == ["ike_retransmit"]


def test_a_path_failed_with_a_hold_is_neither_probed_nor_chosen_until_it_ends() -> None:
    """A data path found dead while IKE and probes pass there (``data_path_dead``): its
    answered probes would bring it back after hold-down, and the move back would find it
    as dead, so it stays out of the choice, unprobed, for the hold; then it is chosen again
    (the retry)."""
    sim = make()
    sim.run_until(3.0)
    sim.mgr.on_active_path_failed(3.0, reason="data_path_dead", hold=10.0)
    sim.flush()
    (t, mv), = moves(sim)
    assert t == 3.0 and mv.path == P_WWAN
    assert [e.reason for _, e in sim.of(PathDown)] == ["data_path_dead"]
    sim.run_until(12.9)
    assert len(moves(sim)) == 1
    assert not [p for t, p in sim.probes if t > 3.0 and p == P_ETH]
    sim.run_until(13.0 + POLICY.hold_down + 2.0)
    back = moves(sim)[1:]
    assert back and back[0][1].path == P_ETH and back[0][0] >= 13.0 + POLICY.hold_down


def test_address_removed_drops_paths_and_fails_over() -> None:
    sim = make()
    sim.run_until(3.0)
    sim.mgr.on_address_removed(ETH.addr, 3.0)
    sim.flush()
    assert P_ETH not in sim.mgr.table.candidates()
    (t, mv), = moves(sim)
    assert mv.path == P_WWAN and t == 3.0
    sim.run_until(4.0)
    assert sim.mgr.active_path == P_WWAN
    assert all(p != P_ETH for t, p in sim.probes if t > 3.0)


def test_family_mismatch_is_no_candidate() -> None:
    v6 = LocalAddress(ip("2001:db8:1::2"), "eth0")
    mgr = PathManager(POLICY, P_ETH, (ETH, v6), [ip("2001:db8:ff::1")], now=0.0)
    cands = set(mgr.table.candidates())
    assert cands == {P_ETH, path("2001:db8:1::2", "2001:db8:ff::1")}


def test_peer_addresses_update_adds_paths() -> None:
    sim = make()
    sim.run_until(1.0)
    sim.mgr.on_peer_addresses([ip("198.51.100.1")], 1.0)
    assert set(sim.mgr.table.candidates()) == {
        P_ETH, P_WWAN, path("10.1.0.2", "198.51.100.1"), path("10.2.0.2", "198.51.100.1")}
    sim.mgr.on_peer_addresses([], 2.0)
    assert set(sim.mgr.table.candidates()) == {P_ETH, P_WWAN}


def test_no_candidate_up_tries_unknown_path() -> None:
    sim = make()
    sim.mgr.on_link_down("eth0", 0.0)
    sim.flush()
    (_, mv), = moves(sim)
    assert mv.path == P_WWAN  # not probed yet, but better than a dead link


def test_responder_does_not_probe_and_moves_only_when_its_address_goes() -> None:
    sim = make(initiator=False)
    sim.run_until(30.0)
    assert sim.probes == [] and moves(sim) == []
    sim.mgr.on_address_removed(ETH.addr, 30.0)
    sim.flush()
    assert [e.path for _, e in moves(sim)] == [P_WWAN]


def test_handover_timeout_when_backend_never_reports() -> None:
    mgr = PathManager(POLICY, P_ETH, (ETH, WWAN), now=0.0)
    mgr.on_link_down("eth0", 1.0)
    evs = []
    while (e := mgr.next_event()) is not None:
        evs.append(e)
    assert any(isinstance(e, MoveRequested) for e in evs)
    assert mgr.wanted_path == P_WWAN
    timer = mgr.get_timer()
    assert timer is not None and timer <= 1.0 + POLICY.handover_timeout
    mgr.handle_timer(1.0 + POLICY.handover_timeout)
    evs = []
    while (e := mgr.next_event()) is not None:
        evs.append(e)
    assert any(isinstance(e, HandoverFailed) and e.reason == "handover_timeout" for e in evs)


def test_ports_follow_the_active_path() -> None:
    mgr = PathManager(POLICY, path("10.1.0.2", PEER, 500, 500), (ETH, WWAN), now=0.0)
    assert path("10.2.0.2", PEER, 500, 500) in mgr.table.candidates()
    mgr.on_move_completed(path("10.1.0.2", PEER, 4500, 4500), 1.0)
    assert path("10.2.0.2", PEER, 4500, 4500) in mgr.table.candidates()


def test_unknown_ids_and_interfaces_are_ignored() -> None:
    mgr = PathManager(POLICY, P_ETH, (ETH, WWAN), now=0.0)
    mgr.on_probe_reply(12345, 1.0)
    mgr.on_probe_failed(999, 1.0)
    mgr.on_probe_sent(77, 1.0)
    mgr.on_link_down("nope0", 1.0)
    mgr.on_move_failed(path("10.9.9.9", PEER), "timeout", 1.0)
    assert mgr.active_path == P_ETH


def drain(mgr: PathManager) -> list[object]:
    out: list[object] = []
    while (e := mgr.next_event()) is not None:
        out.append(e)
    return out


def test_route_change_probes_at_once() -> None:
    mgr = PathManager(POLICY, P_ETH, (ETH, WWAN), now=0.0)
    first = mgr.probes_to_send(0.0)
    for req in first:
        mgr.on_probe_reply(req.probe_id, 0.01)
    assert mgr.probes_to_send(0.05) == []  # nothing due yet
    mgr.on_route_changed(0.05)
    again = mgr.probes_to_send(0.05)
    assert {r.path for r in again} == {P_ETH, P_WWAN}


def test_queued_probe_is_timed_from_when_it_left() -> None:
    mgr = PathManager(POLICY, P_ETH, (ETH,), now=0.0)
    (req,) = mgr.probes_to_send(0.0)
    mgr.on_probe_sent(req.probe_id, 0.25)  # the backend held it back (IKE window)
    mgr.handle_timer(0.4)
    assert mgr.in_flight() >= 1  # 0.3 s from 0.25 has not passed
    mgr.on_probe_reply(req.probe_id, 0.3)
    h = mgr.table.health(key(P_ETH))
    assert h.state == PathState.UP
    assert h.rtt.srtt == pytest.approx(0.05)


def test_peer_moved_us() -> None:
    other = path("10.1.0.2", "198.51.100.1")
    mgr = PathManager(POLICY, P_ETH, (ETH, WWAN), [ip("198.51.100.1")], now=0.0,
                      initiator=False)
    drain(mgr)
    mgr.on_active_path_changed(other, 1.0)
    assert mgr.active_path == other
    assert drain(mgr) == [PathSelected(path=other, reason="peer")]


def test_target_lost_during_move_is_replaced() -> None:
    policy = MobikePolicy(prefer=(PreferRule("eth1", interface="eth1", cost=20),
                                  PreferRule("metered", interface="wwan*", cost=100),
                                  PreferRule("eth0", interface="eth0", cost=10)))
    mgr = PathManager(policy, P_ETH, (ETH, ETH1, WWAN), now=0.0)
    drain(mgr)
    mgr.on_link_down("eth0", 1.0)
    requested = [e for e in drain(mgr) if isinstance(e, MoveRequested)]
    assert [e.path for e in requested] == [P_ETH1]
    mgr.on_link_down("eth1", 1.1)
    evs = drain(mgr)
    failed = [e for e in evs if isinstance(e, HandoverFailed)]
    assert failed and failed[0].path == P_ETH1 and failed[0].reason == "target_down"
    assert [e.path for e in evs if isinstance(e, MoveRequested)] == [P_WWAN]
    assert mgr.wanted_path == P_WWAN


def _until(mgr: PathManager, now: float, stop: float, done: object) -> tuple[float, list[int]]:
    """Run the manager's probes and timers without answering them."""
    sent: list[int] = []
    while not done() and now < stop:  # type: ignore[operator]
        now += 0.01
        sent += [r.probe_id for r in mgr.probes_to_send(now)]
        mgr.handle_timer(now)
    return now, sent


def test_late_reply_to_a_probe_sent_into_an_outage_is_no_rtt_sample() -> None:
    # A link flap: the first probe after the link came back waited a second for ARP
    # and was answered after it timed out. That measured the outage, not the path: an
    # SRTT of a second would stretch the next silent death's burst to seconds.
    mgr = PathManager(POLICY, P_ETH, (ETH,), now=0.0)
    (req,) = mgr.probes_to_send(0.0)
    mgr.on_probe_reply(req.probe_id, 0.001)
    h = mgr.table.health(key(P_ETH))
    mgr.on_link_down("eth0", 1.0)
    mgr.on_link_up("eth0", 1.5)
    now, sent = _until(mgr, 1.5, 10.0, lambda: h.last_probe is not None and h.last_probe >= 1.5)
    assert sent and h.state != PathState.UP
    now, _ = _until(mgr, now, now + 1.0, lambda: False)  # the probe times out
    drain(mgr)
    mgr.on_probe_reply(sent[0], now)
    assert h.state == PathState.UP
    assert PathUp(path=P_ETH, rtt_ms=pytest.approx(1000.0, abs=100.0)) in drain(mgr)
    assert h.rtt.srtt == pytest.approx(0.001)


def test_a_slow_path_learns_its_rtt_from_late_replies() -> None:
    # A path slower than probe_timeout answers every probe late: those RTTs are its
    # own and stretch its timeout, or it would flap for ever.
    sim = make(locals_=(ETH,))
    sim.rtt = 2 * POLICY.probe_timeout
    sim.run_until(20.0)
    h = sim.mgr.table.health(key(P_ETH))
    assert h.rtt.srtt is not None and h.rtt.srtt > POLICY.probe_timeout
    assert h.state == PathState.UP
