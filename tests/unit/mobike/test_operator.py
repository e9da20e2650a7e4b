"""The operator's inputs to the path manager: ``prefer`` (through hold-down and damping)
and ``move`` (now, refused when the path is not fit), and the probe loss ratio."""

from __future__ import annotations

import dataclasses

import pytest

from mobike_vici.mobike.events import HandoverStarted, MoveRequested, PathDown, PreferenceChanged
from mobike_vici.mobike.paths import LOSS_WINDOW

from .sim import ip, key
from .test_manager import ETH, P_ETH, P_WWAN, POLICY, WWAN, make

WWAN_IP = ip("10.2.0.2")
ETH_IP = ip("10.1.0.2")


@pytest.mark.slow
def test_prefer_moves_after_hold_down_and_emits_the_change() -> None:
    sim = make()
    sim.run_until(1.0)  # both paths up since about t=0.2
    assert sim.mgr.set_preferred_local(WWAN_IP, 1.0) is None
    sim.run_until(20.0)
    (_t, changed), = sim.of(PreferenceChanged)
    assert changed.preferred_local == WWAN_IP and changed.source == "prefer"
    moves = sim.of(MoveRequested)
    assert [m.path for _, m in moves] == [P_WWAN]
    # healthy since its first reply, so the move waits out hold_down from there
    assert moves[0][0] >= POLICY.hold_down
    assert moves[0][1].reason == "preferred"
    assert sim.mgr.active_path == P_WWAN


@pytest.mark.slow
def test_prefer_respects_damping() -> None:
    policy = dataclasses.replace(POLICY, max_moves_per_minute=0, hold_down=0.5)
    sim = make(policy)
    sim.run_until(2.0)
    sim.mgr.set_preferred_local(WWAN_IP, 2.0)
    sim.run_until(30.0)
    assert not sim.of(MoveRequested)
    assert sim.mgr.active_path == P_ETH


@pytest.mark.slow
def test_clear_returns_to_policy() -> None:
    sim = make()
    sim.run_until(1.0)
    sim.mgr.set_preferred_local(WWAN_IP, 1.0)
    sim.run_until(15.0)
    assert sim.mgr.active_path == P_WWAN
    assert sim.mgr.set_preferred_local(None, 15.0) is None
    sim.run_until(40.0)
    assert [e.source for _, e in sim.of(PreferenceChanged)] == ["prefer", "clear"]
    assert sim.mgr.active_path == P_ETH
    assert sim.mgr.preferred_local is None


@pytest.mark.slow
def test_move_now_skips_hold_down_and_sticks() -> None:
    sim = make()
    sim.run_until(1.0)
    assert sim.mgr.request_move(WWAN_IP, 1.0) is None
    sim.flush()
    (t, started), = sim.of(HandoverStarted)
    assert t == 1.0 and started.reason == "operator" and started.path == P_WWAN
    sim.run_until(60.0)  # the better-by-policy eth path does not pull it back
    assert sim.mgr.active_path == P_WWAN
    assert [e.source for _, e in sim.of(PreferenceChanged)] == ["move"]


def test_move_refusals() -> None:
    policy = dataclasses.replace(POLICY, exclude_interfaces=("eth1",))
    from mobike_vici.mobike.paths import LocalAddress

    excl = LocalAddress(ip("10.3.0.2"), "eth1")
    sim = make(policy, locals_=(ETH, WWAN, excl))
    assert sim.mgr.request_move(WWAN_IP, 0.0) == "path_unverified"
    sim.run_until(1.0)
    assert sim.mgr.request_move(ip("10.3.0.2"), 1.0) == "excluded"
    assert sim.mgr.set_preferred_local(ip("10.3.0.2"), 1.0) == "excluded"
    assert sim.mgr.request_move(ip("10.9.9.9"), 1.0) == "no_such_path"
    assert sim.mgr.request_move(ETH_IP, 1.0) == "already_active"
    sim.dead.add(key(P_WWAN))
    sim.run_until(12.0)
    assert any(e.path == P_WWAN for _, e in sim.of(PathDown))
    assert sim.mgr.request_move(WWAN_IP, 12.0) == "path_down"
    sim.mgr.on_link_down("wwan0", 12.0)
    assert sim.mgr.request_move(WWAN_IP, 12.0) == "link_down"
    assert not sim.of(MoveRequested) and not sim.of(PreferenceChanged)


def test_responder_refuses_moves() -> None:
    sim = make(initiator=False)
    assert sim.mgr.request_move(WWAN_IP, 0.0) == "responder"


@pytest.mark.parametrize("dead_after", [1.0])
def test_loss_ratio_follows_probe_fates(dead_after: float) -> None:
    sim = make()
    sim.run_until(dead_after)
    by_path = {p.path: p for p in sim.mgr.paths()}
    assert by_path[P_ETH].loss == 0.0
    sim.dead.add(key(P_ETH))
    sim.run_until(dead_after + 30.0)
    by_path = {p.path: p for p in sim.mgr.paths()}
    loss = by_path[P_ETH].loss
    assert loss is not None and loss > 0.5
    assert by_path[P_WWAN].loss == 0.0
    assert len(sim.mgr.table.health(key(P_ETH)).outcomes) <= LOSS_WINDOW
