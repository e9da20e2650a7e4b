"""OperatorChoices: prefer and move over every IKE_SA of a connection, remembered for
the connection's later IKE_SAs, with the first refusal reported."""

from __future__ import annotations

from mobike_vici.mobike.choices import OperatorChoices
from mobike_vici.mobike.manager import PathManager

from .test_manager import make
from .test_operator import WWAN_IP


def _two_ready() -> dict[str, PathManager]:
    sims = [make(), make()]
    for sim in sims:
        sim.run_until(1.0)  # both paths up, so a move there is allowed
    return {"sa1": sims[0].mgr, "sa2": sims[1].mgr}


def test_prefer_reaches_every_ike_sa_and_later_ones_inherit_it() -> None:
    choices, touched = OperatorChoices(), []
    managers = _two_ready()
    assert choices.prefer("home", managers, WWAN_IP, 1.0, touched.append) is None
    assert touched == ["sa1", "sa2"]
    assert all(m.preferred_local == WWAN_IP for m in managers.values())
    later = make().mgr
    choices.inherit("home", later, 2.0)
    assert later.preferred_local == WWAN_IP
    other = make().mgr
    choices.inherit("office", other, 2.0)  # another connection keeps the policy alone
    assert other.preferred_local is None


def test_clear_forgets_the_choice_for_later_ike_sas() -> None:
    choices = OperatorChoices()
    managers = _two_ready()
    choices.prefer("home", managers, WWAN_IP, 1.0, lambda _spi: None)
    assert choices.prefer("home", managers, None, 2.0, lambda _spi: None) is None
    later = make().mgr
    choices.inherit("home", later, 3.0)
    assert later.preferred_local is None


def test_move_stops_at_the_first_refusal_and_remembers_nothing() -> None:
    choices, touched = OperatorChoices(), []
    fresh = {"sa1": make().mgr}  # no probe answered yet: the path is unverified
    assert choices.move("home", fresh, WWAN_IP, 0.0, touched.append) == "path_unverified"
    assert touched == ["sa1"]
    later = make().mgr
    choices.inherit("home", later, 1.0)
    assert later.preferred_local is None
    assert choices.move("home", {}, WWAN_IP, 0.0, touched.append) == "no_ike_sa"


def test_move_applies_to_every_ike_sa_and_sticks_for_later_ones() -> None:
    choices, touched = OperatorChoices(), []
    managers = _two_ready()
    assert choices.move("home", managers, WWAN_IP, 1.0, touched.append) is None
    assert touched == ["sa1", "sa2"]
    later = make().mgr
    choices.inherit("home", later, 2.0)
    assert later.preferred_local == WWAN_IP
