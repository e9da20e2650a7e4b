"""The escalation ladder of a controller-driven move: route, reauth, reinitiate, give up."""

from __future__ import annotations

import ipaddress

from mobike_vici.mobike import steer_plan
from mobike_vici.mobike.steer_plan import Action, Deadlines, Stage
from mobike_vici.types import Endpoint, Path


def _path(local: str, remote: str = "192.0.2.2", lport: int = 4500) -> Path:
    return Path(Endpoint(ipaddress.ip_address(local), lport),
                Endpoint(ipaddress.ip_address(remote), 4500))


OLD, NEW = _path("10.1.0.2"), _path("10.2.0.2")
D = Deadlines(route=2.0, reauth=5.0, reinitiate=10.0)


def test_a_new_plan_waits_for_the_route_deadline() -> None:
    plan = steer_plan.start("a_b", NEW, OLD, 100.0, D)
    assert plan.stage == Stage.ROUTE and plan.deadline == 102.0
    same, action = steer_plan.on_timer(plan, 101.9, D)
    assert action is None and same == plan


def test_the_ladder_escalates_one_rung_per_deadline_then_gives_up() -> None:
    plan = steer_plan.start("a_b", NEW, OLD, 0.0, D)
    plan, action = steer_plan.on_timer(plan, 2.0, D)
    assert (plan.stage, action, plan.deadline) == (Stage.REAUTH, Action.REAUTH, 7.0)
    plan, action = steer_plan.on_timer(plan, 6.0, D)
    assert action is None
    plan, action = steer_plan.on_timer(plan, 7.5, D)
    assert (plan.stage, action, plan.deadline) == (Stage.REINITIATE, Action.REINITIATE, 17.5)
    plan, action = steer_plan.on_timer(plan, 17.5, D)
    assert (plan.stage, action) == (Stage.FAILED, Action.GIVE_UP)
    assert plan.finished
    again, action = steer_plan.on_timer(plan, 1000.0, D)
    assert action is None and again == plan


def test_reached_compares_addresses_not_ports() -> None:
    plan = steer_plan.start("a_b", NEW, OLD, 0.0, D)
    assert steer_plan.reached(plan, _path("10.2.0.2", lport=4501))
    assert not steer_plan.reached(plan, OLD)
    assert not steer_plan.reached(plan, _path("10.2.0.2", remote="192.0.2.3"))

