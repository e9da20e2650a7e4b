"""Detection from the data plane and RTT-bounded move attempts, on a fake clock.

The backend's counter samples are simulated every 25 ms: while the active path lives,
a two-way stream brings packets in and out; once it is dead only outbound packets
count. One-way traffic and idle tunnels must never move, and cost a bounded number of
probes per second.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from mobike_vici.config.mobike import MobikePolicy, PreferRule
from mobike_vici.mobike.events import (
    HandoverCompleted,
    HandoverFailed,
    MoveRequested,
    PathDown,
    PathStalled,
)
from mobike_vici.mobike.failover import (
    FAMILY_DOWN,
    INTERFACE_DOWN,
    attempt_timeout,
    shared_failure,
)
from mobike_vici.mobike.manager import PathManager
from mobike_vici.mobike.paths import LocalAddress, RttEstimator

from .sim import Sim, ip, key, path

SAMPLE = 0.025
ETH = LocalAddress(ip("10.1.0.2"), "eth0")
WWAN = LocalAddress(ip("10.2.0.2"), "wwan0")
ETH6 = LocalAddress(ip("2001:db8:1::2"), "eth0")
WWAN6 = LocalAddress(ip("2001:db8:2::2"), "wwan0")
PEER, PEER2, PEER6 = "192.0.2.1", "192.0.2.9", "2001:db8:f::1"
P_ETH = path("10.1.0.2", PEER)
P_WWAN = path("10.2.0.2", PEER)
POLICY = MobikePolicy(prefer=(PreferRule("metered", interface="wwan*", cost=100),))


@dataclass
class TimedSim(Sim):
    """A backend that gives up a move to a dead path after the attempt's own bound."""

    def _move(self, ev: MoveRequested) -> None:
        if key(ev.path) in self.dead and ev.timeout is not None:
            target, bound = ev.path, ev.timeout
            self.at(self.now + bound,
                    lambda: self.mgr.on_move_failed(target, "timeout", self.now))
            return
        super()._move(ev)


Traffic = Callable[[float, bool], tuple[int, int]]
"""(packets in, packets out) of one sample at ``now``, given whether the active path lives."""


def two_way(_now: float, alive: bool) -> tuple[int, int]:
    return (2 if alive else 0), 2  # 100 Hz both ways, 25 ms samples


def one_way(_now: float, _alive: bool) -> tuple[int, int]:
    return 0, 2


def idle(_now: float, _alive: bool) -> tuple[int, int]:
    return 0, 0


def make(policy: MobikePolicy = POLICY, locals_: tuple[LocalAddress, ...] = (ETH, WWAN),
         peers: tuple[str, ...] = (), rtt: float = 0.002) -> TimedSim:
    mgr = PathManager(policy, P_ETH, locals_, [ip(p) for p in peers], now=0.0,
                      attempt_bounds=True)
    return TimedSim(mgr, rtt=rtt)


def feed(sim: TimedSim, traffic: Traffic, until: float) -> None:
    """Counter samples every SAMPLE seconds up to ``until``, as daemon.traffic sends them."""
    t = sim.now
    while t + SAMPLE <= until:
        t += SAMPLE

        def sample(at: float = t) -> None:
            alive = key(sim.mgr.active_path) not in sim.dead
            inbound, outbound = traffic(at, alive)
            sim.mgr.on_traffic(inbound, outbound, at)

        sim.at(t, sample)
    sim.run_until(until)


def active_probes(sim: TimedSim, p: object, start: float, end: float) -> int:
    return sum(1 for t, q in sim.probes if q == p and start <= t < end)


# -- the manager under traffic ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("death", [3.0, 3.013, 3.07, 3.11, 3.19])
def test_inbound_stall_with_outbound_flowing_probes_at_once_and_leaves_fast(
        death: float) -> None:
    sim = make()
    feed(sim, two_way, death)
    sim.dead.add(key(P_ETH))
    feed(sim, two_way, death + 1.0)
    stalls = [t for t, e in sim.of(PathStalled) if e.path == P_ETH]
    assert stalls and stalls[0] - death <= POLICY.stall_timeout + 2 * SAMPLE + 1e-9
    # A probe leaves with the stall (or one just sent counts with the short timeout),
    # not at the next scheduled probe.
    assert any(stalls[0] - POLICY.stall_probe_timeout <= t <= stalls[0] and p == P_ETH
               for t, p in sim.probes)
    downs = [t for t, e in sim.of(PathDown) if e.path == P_ETH]
    bound = POLICY.stall_timeout + 2 * SAMPLE + POLICY.probe_misses * POLICY.stall_probe_timeout
    assert downs and downs[0] - death <= bound + 1e-9
    assert downs[0] - death < 0.3  # the probe schedule alone needs up to 0.7 s
    (t_move, mv), = sim.of(MoveRequested)
    assert mv.path == P_WWAN and t_move == downs[0]
    assert sim.mgr.active_path == P_WWAN


def test_the_same_death_without_traffic_keeps_the_probe_schedule() -> None:
    sim = make()
    feed(sim, idle, 3.0)
    sim.dead.add(key(P_ETH))
    feed(sim, idle, 4.0)
    assert not sim.of(PathStalled)
    downs = [t for t, e in sim.of(PathDown) if e.path == P_ETH]
    assert downs and 0.3 < downs[0] - 3.0 <= 0.7 + 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("traffic", [one_way, idle], ids=["one_way", "idle"])
def test_a_quiet_peer_never_moves_and_probes_stay_bounded(traffic: Traffic) -> None:
    sim = make()
    feed(sim, traffic, 60.0)
    assert not sim.of(MoveRequested)
    assert not sim.of(PathDown)
    rate = active_probes(sim, P_ETH, 10.0, 60.0) / 50.0
    schedule = 1 / POLICY.probe_interval
    assert rate <= schedule * 1.1, rate  # one-way traffic costs what an idle tunnel does
    stalls = sim.of(PathStalled)
    assert len(stalls) <= (1 if traffic is one_way else 0)


@pytest.mark.slow
def test_a_known_quiet_peer_gets_the_doubled_stall_timeout() -> None:
    # Answers take 70 ms at the moment (a loaded peer): more than stall_probe_timeout,
    # less than twice it. The RTT estimate was made when answers took 2 ms.
    sim = make()
    feed(sim, one_way, 5.0)
    sim.rtt = 0.07
    feed(sim, one_way, 35.0)
    assert not sim.of(PathDown)
    assert not sim.of(MoveRequested)


def test_one_way_traffic_bursts_of_probes_are_rate_limited_from_the_first_second() -> None:
    sim = make()
    feed(sim, one_way, 1.0)
    assert active_probes(sim, P_ETH, 0.0, 1.0) <= 1 / POLICY.stall_timeout + 1


@pytest.mark.slow
def test_a_slow_quiet_peer_is_given_its_rtt_not_the_stall_floor() -> None:
    # Answers take 60 ms: more than stall_probe_timeout, well inside SRTT + 4 RTTVAR.
    sim = make(rtt=0.06)
    feed(sim, one_way, 30.0)
    assert not sim.of(PathDown)
    assert not sim.of(MoveRequested)


def test_one_way_traffic_on_a_path_that_dies_is_still_left_fast() -> None:
    sim = make()
    feed(sim, one_way, 5.0)
    sim.dead.add(key(P_ETH))
    feed(sim, one_way, 6.0)
    downs = [t for t, e in sim.of(PathDown) if e.path == P_ETH]
    # At worst a whole backed-off window (probe_interval), then the burst with the
    # doubled timeout of a peer known to be quiet.
    bound = (POLICY.probe_interval + 2 * SAMPLE
             + POLICY.probe_misses * 2 * POLICY.stall_probe_timeout)
    assert downs and downs[0] - 5.0 <= bound + 1e-9


@pytest.mark.slow
def test_flapping_under_traffic_stays_damped_by_hold_down() -> None:
    sim = make()
    feed(sim, two_way, 2.0)
    sim.dead.add(key(P_ETH))
    feed(sim, two_way, 3.0)
    assert sim.mgr.active_path == P_WWAN
    sim.dead.discard(key(P_ETH))
    feed(sim, two_way, 3.0 + POLICY.hold_down - 1.0)
    assert sim.mgr.active_path == P_WWAN  # back only after hold-down
    feed(sim, two_way, 3.0 + POLICY.hold_down + 5.0)
    assert sim.mgr.active_path == P_ETH
    assert len(sim.of(MoveRequested)) == 2


# -- move attempts ---------------------------------------------------------------------


def test_attempt_timeout_from_rtt_with_floor_and_cap() -> None:
    rtt = RttEstimator()
    assert attempt_timeout(rtt, 0.3, 10.0) is None  # unmeasured: the backend's bound
    rtt.sample(0.002)
    assert attempt_timeout(rtt, 0.3, 10.0) == pytest.approx(0.3)  # the floor
    slow = RttEstimator(srtt=0.2, rttvar=0.05)
    assert attempt_timeout(slow, 0.3, 10.0) == pytest.approx(4 * (0.2 + 0.2))
    worse = RttEstimator(srtt=2.0, rttvar=1.0)
    assert attempt_timeout(worse, 0.3, 5.0) == pytest.approx(5.0)  # the cap


def test_move_requests_carry_the_targets_rtt_bound() -> None:
    sim = make(rtt=0.15)
    feed(sim, idle, 3.0)
    sim.mgr.on_link_down("eth0", 3.0)
    sim.flush()
    (_, mv), = sim.of(MoveRequested)
    assert mv.path == P_WWAN and mv.timeout is not None
    assert 4 * 0.15 <= mv.timeout < POLICY.handover_timeout


def test_without_attempt_bounds_a_move_keeps_the_handover_timeout() -> None:
    # The controller steers charon through several stages: no RTT bound there.
    mgr = PathManager(POLICY, P_ETH, (ETH, WWAN), now=0.0)
    sim = SilentSim(mgr, rtt=0.002)
    sim.run_until(3.0)
    sim.dead.add(key(P_WWAN))
    sim.mgr.on_link_down("eth0", 3.0)
    sim.run_until(3.0 + POLICY.handover_timeout - 0.5)
    (_, mv), = sim.of(MoveRequested)
    assert mv.timeout is None
    assert not [e for _, e in sim.of(HandoverFailed) if e.reason != "target_down"]


def test_shared_failure_names_interface_first_then_family() -> None:
    a4, b4, a6 = ip("10.1.0.2"), ip("10.2.0.2"), ip("2001:db8:1::2")
    p1, p2, p6 = ip(PEER), ip(PEER2), ip(PEER6)
    ifs = {a4: "eth0", a6: "eth0", b4: "wwan0"}
    keys = [(a4, p1), (a4, p2), (b4, p1), (b4, p2), (a6, p6)]

    def ifname(k: tuple[object, object]) -> str:
        return ifs[k[0]]  # type: ignore[index]

    assert shared_failure((a4, p1), (a4, p2), ifname, keys) == (INTERFACE_DOWN, [(a6, p6)])
    assert shared_failure((a4, p1), (b4, p1), ifname, keys) == (FAMILY_DOWN, [(a4, p2),
                                                                              (b4, p2)])
    assert shared_failure((a4, p1), (a6, p6), ifname, keys) == (INTERFACE_DOWN, [(a4, p2)])
    assert shared_failure((b4, p1), (a6, p6), ifname, keys) is None


@pytest.mark.slow
def test_ipv4_dying_while_ipv6_remains_is_left_within_a_second() -> None:
    # Case (f): every IPv4 path dies at once; IPv6 (the costlier family) lives.
    policy = MobikePolicy(prefer=(PreferRule("v6", family=6, cost=50),))
    sim = make(policy, (ETH, WWAN, ETH6, WWAN6), peers=(PEER, PEER2, PEER6))
    feed(sim, two_way, 4.0)
    v4 = [k for k in sim.mgr.table.candidate_keys() if k[0].version == 4]
    sim.dead.update(v4)
    feed(sim, two_way, 8.0)
    assert sim.mgr.active_path.local.addr.version == 6
    (t_done, _), = sim.of(HandoverCompleted)
    assert t_done - 4.0 < 1.0
    tried = [e.path for _, e in sim.of(MoveRequested)]
    # Under traffic the stall's race probes every candidate first: straight to IPv6,
    # never a dead IPv4 candidate in turn.
    assert [p.local.addr.version for p in tried] == [6]


def test_ipv4_dying_on_an_idle_tunnel_sets_the_family_aside() -> None:
    # No traffic, no stall race: the probe schedule finds the death and the failed
    # attempt on the other IPv4 uplink sets what both share aside.
    policy = MobikePolicy(prefer=(PreferRule("v6", family=6, cost=50),))
    sim = make(policy, (ETH, WWAN, ETH6, WWAN6), peers=(PEER, PEER2, PEER6))
    feed(sim, idle, 4.0)
    v4 = [k for k in sim.mgr.table.candidate_keys() if k[0].version == 4]
    sim.dead.update(v4)
    feed(sim, idle, 8.0)
    assert sim.mgr.active_path.local.addr.version == 6
    tried = [e.path for _, e in sim.of(MoveRequested)]
    # One failed attempt at most per thing that could have died (the interface, the
    # family), never every IPv4 candidate in turn.
    assert len(tried) <= 3 and tried[-1].local.addr.version == 6
    aside = {e.reason for _, e in sim.of(PathDown)} & {FAMILY_DOWN, INTERFACE_DOWN}
    assert aside


@pytest.mark.slow
def test_a_candidate_set_aside_comes_back_when_probes_answer() -> None:
    policy = MobikePolicy(prefer=(PreferRule("v6", family=6, cost=50),))
    sim = make(policy, (ETH, WWAN, ETH6, WWAN6), peers=(PEER, PEER2, PEER6))
    feed(sim, idle, 4.0)
    v4 = [k for k in sim.mgr.table.candidate_keys() if k[0].version == 4]
    sim.dead.update(v4)
    feed(sim, idle, 6.0)
    aside = [e.path for _, e in sim.of(PathDown) if e.reason in (FAMILY_DOWN, INTERFACE_DOWN)]
    assert aside
    sim.dead.clear()
    feed(sim, two_way, 12.0)
    states = {p.path: p.state.name for p in sim.mgr.paths()}
    assert all(states[p] == "UP" for p in aside)


@pytest.mark.slow
def test_a_quiet_move_target_failure_for_another_reason_sets_nothing_aside() -> None:
    sim = make(dataclasses.replace(POLICY), (ETH, WWAN, ETH6), peers=(PEER, PEER6))
    feed(sim, idle, 3.0)
    sim.refuse[key(P_WWAN)] = "no_additional_addresses"
    sim.dead.add(key(P_ETH))
    feed(sim, idle, 5.0)
    assert not [e for _, e in sim.of(PathDown) if e.reason in (FAMILY_DOWN, INTERFACE_DOWN)]


@dataclass
class SilentSim(Sim):
    """A backend whose update to a dead path waits forever (behind an unanswered request)."""

    def _move(self, ev: MoveRequested) -> None:
        if key(ev.path) not in self.dead:
            super()._move(ev)


def test_an_attempt_the_backend_never_reports_on_ends_at_its_own_bound() -> None:
    policy = MobikePolicy(prefer=(PreferRule("v6", family=6, cost=50),))
    mgr = PathManager(policy, P_ETH, (ETH, WWAN, ETH6), [ip(PEER6)], now=0.0,
                      attempt_bounds=True)
    sim = SilentSim(mgr, rtt=0.002)
    sim.run_until(4.0)
    sim.dead.update({key(P_ETH), key(P_WWAN)})
    sim.mgr.on_link_down("eth0", 4.0)  # eth0's IPv4 and IPv6 both: wwan's IPv4 is next
    sim.run_until(4.0 + POLICY.handover_timeout / 2)
    (_, first), *_ = sim.of(MoveRequested)
    assert first.path == P_WWAN and first.timeout is not None
    failed = [(t, e) for t, e in sim.of(HandoverFailed) if e.path == P_WWAN]
    assert failed and failed[0][1].reason == "attempt_timeout"
    assert failed[0][0] - 4.0 == pytest.approx(first.timeout)
