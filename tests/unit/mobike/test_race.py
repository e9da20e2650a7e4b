"""A stalled active path raced against the candidates (fake clock).

The first unanswered probe of a stall sends every candidate a probe with the active
path's next one; the best candidate that answers wins when the active path stays
silent for a few of its RTTs. Without the race a one-way flow waited for a second
doubled stall probe timeout, and a dual-stack IPv4 death first tried the other IPv4
uplink (up by its last standby probe, dead in the same fault).
"""

from __future__ import annotations

import pytest

from mobike_vici.mobike.events import HandoverCompleted, MoveRequested, PathDown
from mobike_vici.mobike.race import LOST, RACE_FLOOR, Race

from .sim import key
from .test_never_silent import P0_6, P1_6, V4, dual_stack
from .test_stall import (
    P_ETH,
    P_WWAN,
    POLICY,
    SAMPLE,
    TimedSim,
    Traffic,
    feed,
    make,
    one_way,
    two_way,
)

DEATHS = [5.0, 5.013, 5.05, 5.07, 5.11, 5.149, 5.17, 5.19]
EPS = 1e-9


def first_down(sim: TimedSim, death: float) -> tuple[float, str]:
    downs = [(t, e.reason) for t, e in sim.of(PathDown) if e.path == P_ETH and t >= death]
    assert downs, "the dead active path was never found down"
    return downs[0]


@pytest.mark.parametrize("death", DEATHS)
def test_one_way_flow_on_a_dead_path_is_outraced_one_probe_timeout_sooner(
        death: float) -> None:
    sim = make()
    feed(sim, one_way, death)
    sim.dead.add(key(P_ETH))
    feed(sim, one_way, death + 1.0)
    t_down, reason = first_down(sim, death)
    assert reason == LOST
    # A whole backed-off stall window at worst, one doubled stall probe timeout, then
    # the candidate's answer and the active path's head start.
    bound = (POLICY.probe_interval + 2 * SAMPLE + 2 * POLICY.stall_probe_timeout
             + RACE_FLOOR)
    assert t_down - death <= bound + EPS
    (t_move, mv), = sim.of(MoveRequested)
    assert mv.path == P_WWAN and t_move == t_down
    assert sim.mgr.active_path == P_WWAN


@pytest.mark.parametrize("death", DEATHS)
def test_request_reply_flow_on_a_dead_path_is_outraced_too(death: float) -> None:
    sim = make()
    feed(sim, two_way, death)
    sim.dead.add(key(P_ETH))
    feed(sim, two_way, death + 1.0)
    t_down, reason = first_down(sim, death)
    assert reason == LOST
    bound = POLICY.stall_timeout + 2 * SAMPLE + POLICY.stall_probe_timeout + RACE_FLOOR
    assert t_down - death <= bound + EPS


@pytest.mark.parametrize("traffic", [two_way, one_way], ids=["request_reply", "one_way"])
def test_dual_stack_ipv4_death_waits_for_slow_ipv6_answers_not_the_stale_ipv4(
        traffic: Traffic) -> None:
    # IPv6 answers take longer than the stalled path's second probe timeout: the
    # active path is down before any candidate answered. The other IPv4 uplink is up
    # by its last standby probe, but its race probe is unanswered: the choice waits
    # for the race's answers.
    sim = dual_stack()
    feed(sim, traffic, 5.0)  # type: ignore[arg-type]
    for p in (P0_6, P1_6):
        sim.rtt_of[key(p)] = 0.15
    sim.dead |= V4
    feed(sim, traffic, 8.0)  # type: ignore[arg-type]
    moves = [e.path for _, e in sim.of(MoveRequested)]
    assert moves and all(p.local.addr.version == 6 for p in moves), moves


@pytest.mark.parametrize("traffic", [two_way, one_way], ids=["request_reply", "one_way"])
@pytest.mark.parametrize("death", [5.0, 5.05, 5.11, 5.17])
def test_dual_stack_ipv4_death_moves_straight_to_the_ipv6_that_answered(
        traffic: Traffic, death: float) -> None:
    sim = dual_stack()
    feed(sim, traffic, death)  # type: ignore[arg-type]
    sim.dead |= V4
    feed(sim, traffic, death + 3.0)  # type: ignore[arg-type]
    moves = [e.path for _, e in sim.of(MoveRequested)]
    # Not the other IPv4 uplink first (up by its standby probe, dead in the same fault).
    assert moves and all(p.local.addr.version == 6 for p in moves), moves
    (t_done, _), = sim.of(HandoverCompleted)
    assert t_done - death < 0.35


def test_an_active_path_answering_within_its_head_start_is_kept() -> None:
    # Answers on the active path take just over the doubled stall probe timeout: the
    # first stall probe is missed, the candidate answers at once, and the active
    # path's late answer comes within its head start: no move, no down.
    sim = make()
    feed(sim, one_way, 5.0)
    sim.rtt_of[key(P_ETH)] = 2 * POLICY.stall_probe_timeout + RACE_FLOOR / 2
    feed(sim, one_way, 35.0)
    assert not sim.of(MoveRequested)
    assert not [e for _, e in sim.of(PathDown) if e.path == P_ETH]
    active = {round(t, 6) for t, p in sim.probes if p == P_ETH and t >= 5.0}
    raced = [t for t, p in sim.probes if p == P_WWAN and t >= 5.0 and round(t, 6) in active]
    assert raced, "no race ran: the case tests nothing"


def test_a_quiet_peer_that_answers_never_races() -> None:
    sim = make()
    feed(sim, one_way, 60.0)
    standby = [t for t, p in sim.probes if p == P_WWAN and t >= 10.0]
    assert len(standby) <= 50.0 / POLICY.standby_probe_interval + 1
    assert not sim.of(MoveRequested)


def test_race_head_start_is_the_candidate_s_rtts_with_a_floor() -> None:
    race = Race(since=1.0)
    assert not race.due(5.0)  # no candidate answered: no verdict
    race.on_candidate_answer(1.002, 0.002)
    assert race.decide_at == pytest.approx(1.0 + RACE_FLOOR)
    slow = Race(since=1.0)
    slow.on_candidate_answer(1.03, 0.03)
    assert slow.decide_at == pytest.approx(1.12)
    slow.on_candidate_answer(1.04, 0.002)  # a faster candidate decides sooner
    assert slow.decide_at == pytest.approx(1.04)
    assert slow.due(1.04) and not slow.due(1.039)
