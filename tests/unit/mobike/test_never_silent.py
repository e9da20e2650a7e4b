"""An IKE_SA with no working path is never left silent; dual stack failover (fake clock).

Mob has two uplinks with an IPv4 and an IPv6 address each; the peer has one of each
family. The policy is what the native backend gives an IKE_SA set up over IPv4 (the
other family last), and move attempts are bounded by the target's RTT, as there.
"""

from __future__ import annotations

import pytest

from mobike_vici.config.mobike import MobikePolicy, PreferRule
from mobike_vici.mobike.events import (
    HandoverCompleted,
    HandoverFailed,
    MoveRequested,
    PathUp,
)
from mobike_vici.mobike.manager import PathManager
from mobike_vici.mobike.paths import LocalAddress, PathState
from mobike_vici.types import Path

from .sim import Sim, ip, key, path

PEER4, PEER6 = "192.0.2.2", "2001:db8:ff::2"
M0_4 = LocalAddress(ip("10.1.0.2"), "m0")
M0_6 = LocalAddress(ip("2001:db8:1::2"), "m0")
M1_4 = LocalAddress(ip("10.2.0.2"), "m1")
M1_6 = LocalAddress(ip("2001:db8:2::2"), "m1")
P0_4, P1_4 = path("10.1.0.2", PEER4), path("10.2.0.2", PEER4)
P0_6, P1_6 = path("2001:db8:1::2", PEER6), path("2001:db8:2::2", PEER6)
ALL = (P0_4, P1_4, P0_6, P1_6)
V4, V6 = {key(P0_4), key(P1_4)}, {key(P0_6), key(P1_6)}
POLICY = MobikePolicy(family=4, prefer=(PreferRule("backup", interface="m1", cost=10),
                                        PreferRule("_other_family", family=6,
                                                   cost=1_000_000)))


class SilentSim(Sim):
    """A backend whose update to a dead path is never answered (its bound ends it),
    and, like the engine facing a peer with a window of 1, whose probes on other
    paths wait behind that update: none of them is answered while it is in flight."""

    def _move(self, ev: MoveRequested) -> None:
        if key(ev.path) not in self.dead:
            super()._move(ev)

    def flush(self) -> None:
        wanted = self.mgr.wanted_path
        if wanted is None:
            super().flush()
            return
        held = {key(p) for p in ALL} - {key(wanted)} - self.dead
        self.dead |= held
        try:
            super().flush()
        finally:
            self.dead -= held


def dual_stack(dead: set[tuple[object, object]] | None = None) -> SilentSim:
    mgr = PathManager(POLICY, P0_4, (M0_4, M0_6, M1_4, M1_6), [ip(PEER4), ip(PEER6)],
                      now=0.0, attempt_bounds=True)
    sim = SilentSim(mgr, rtt=0.002)
    sim.dead |= dead or set()  # type: ignore[arg-type]
    return sim


def probe_times(sim: Sim, p: Path, start: float) -> list[float]:
    return [t for t, q in sim.probes if q == p and t >= start]


def ipv6_down_early() -> SilentSim:
    """IPv6 lost while the IKE_SA came up: both IPv6 paths down by probe timeouts;
    then it works again, before IPv4 dies."""
    sim = dual_stack(dead=set(V6))
    sim.run_until(1.0)
    for p in (P0_6, P1_6):
        assert sim.mgr.table.health(key(p)).state == PathState.DOWN
    sim.dead -= V6
    return sim


def test_with_no_working_path_every_pair_is_probed_every_second() -> None:
    sim = dual_stack()
    sim.run_until(3.0)
    sim.dead |= V4 | V6
    sim.run_until(15.0)
    for p in ALL:
        times = probe_times(sim, p, 4.0)
        gaps = [b - a for a, b in zip([4.0, *times], [*times, 15.0], strict=True)]
        assert max(gaps) <= 1.0, (p, max(gaps))


def test_a_failed_move_goes_on_to_the_next_candidate_at_once() -> None:
    sim = ipv6_down_early()
    sim.run_until(1.2)
    sim.dead |= V4
    sim.run_until(4.0)
    failed = [(t, e) for t, e in sim.of(HandoverFailed) if e.path == P1_4]
    assert failed, "the move to the other IPv4 uplink did not fail"
    t_fail = failed[0][0]
    after = [(t, e) for t, e in sim.of(MoveRequested) if t >= t_fail]
    assert after and after[0][0] == t_fail
    assert after[0][1].path.local.addr.version == 6  # not the dead family again


def test_a_path_marked_down_early_is_up_within_a_second_of_answering() -> None:
    sim = dual_stack(dead=V4 | V6)
    sim.run_until(3.0)
    assert all(sim.mgr.table.health(key(p)).state == PathState.DOWN for p in ALL)
    sim.dead -= {key(P1_6)}
    sim.run_until(4.0)
    ups = [t for t, e in sim.of(PathUp) if e.path == P1_6 and t >= 3.0]
    assert ups and ups[0] <= 4.0


def test_a_late_answer_brings_its_path_up() -> None:
    mgr = dual_stack().mgr
    now, ids = 0.0, []
    while mgr.table.health(key(P1_6)).state != PathState.DOWN:
        ids += [r.probe_id for r in mgr.probes_to_send(now) if r.path == P1_6]
        now += 0.05
        mgr.handle_timer(now)
    assert ids
    mgr.on_probe_reply(ids[-1], now + 0.1)  # answered after its timeout
    assert mgr.table.health(key(P1_6)).state == PathState.UP


@pytest.mark.slow
def test_ipv4_dead_and_ipv6_alive_moves_to_ipv6_within_about_a_second() -> None:
    sim = ipv6_down_early()
    sim.run_until(1.2)
    sim.dead |= V4
    sim.run_until(20.0)
    done = [(t, e) for t, e in sim.of(HandoverCompleted)]
    assert done and done[0][1].path.local.addr.version == 6
    assert done[0][0] - 1.2 <= 1.5
    assert sim.mgr.active_path.local.addr.version == 6
    assert len(done) == 1  # and it stays


def test_the_backend_s_rtt_is_the_path_s_rtt() -> None:
    # A probe may wait in the backend for a request to ride: the wait is no RTT.
    mgr = dual_stack().mgr
    (req, *_) = [r for r in mgr.probes_to_send(0.0) if r.path == P1_6]
    mgr.on_probe_reply(req.probe_id, 0.4, rtt=0.002)
    assert mgr.table.health(key(P1_6)).rtt.srtt == 0.002
