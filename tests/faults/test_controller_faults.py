"""`mobike-vici run` beside charon, faults in the middle of a handover: the controller
SIGKILLed, charon restarted. charon owns the SAs: none may be lost to a controller
crash; after charon's restart the controller's table must be charon's again. Either
way no route or rule of ours is left behind, the operator's routing is untouched,
and the next handover works."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mobike_vici.daemon.control import request
from mobike_vici.lab.charon import start_charon
from mobike_vici.lab.charon_controller import TABLE, Setup, build, snippet_body
from mobike_vici.lab.netns import Lab
from mobike_vici.net.steering import RTPROT_MOBIKE_VICI

from .support import add_operator_routing, operator_view, ours

pytestmark = [pytest.mark.netns, pytest.mark.charon]

M0, M1 = "10.1.0.2", "10.2.0.2"
M0_ANY = (M0, "2001:db8:1::2")
PEER = "192.0.2.2"


@pytest.fixture
def setup(lab: Lab) -> Iterator[Setup]:
    yield from build(lab)


def _up(setup: Setup) -> tuple[str, list[str]]:
    """Operator routing, then the controller, the SA on m0; its SPIs and the operator view."""
    add_operator_routing(setup.topo.mob, via="10.1.0.1", dev="m0")
    operators = operator_view(setup.topo.mob)
    setup.start_controller()
    setup.wait_event("ike_sa_tracked")
    setup.wait_local(M0)
    assert setup.tunnel_ping(), "no traffic through the tunnel before the fault"
    return setup.spi(), operators


def _steering(setup: Setup) -> tuple[list[str], list[str]]:
    """Our table's routes and our rules, as the kernel has them."""
    ns = setup.topo.mob
    routes = [line for family in ("-4", "-6") for line in
              ns.ip(family, "route", "show", "table", str(TABLE), check=False)
              .stdout.splitlines()]
    rules = [line for family in ("-4", "-6") for line in
             ns.ip(family, "-d", "rule", "show").stdout.splitlines() if f"lookup {TABLE}" in line]
    return routes, rules


def _status(setup: Setup) -> dict[str, Any]:
    answer = request(str(setup.control), "status")
    assert answer["ok"] is True, answer
    return answer


def _next_handover_and_clean_stop(setup: Setup, spi: str, operators: list[str]) -> None:
    """m0 back: the controller takes the SA back (preferred, after hold-down), same SPIs;
    then a clean stop leaves nothing of ours and the operator's routing as it was."""
    mark = len(setup.event_list())
    setup.topo.revive(0)
    done = setup.wait_event("handover_completed", lambda e: e["local"].split("[")[0] in M0_ANY,
                            after=mark, timeout=40)
    assert done["ike_spi"] == spi
    sa = setup.wait_local(M0_ANY, timeout=15)
    assert f"{sa['initiator-spi']}_{sa['responder-spi']}" == spi
    assert setup.tunnel_ping()
    assert setup.stop_controller() == 0
    assert _steering(setup) == ([], [])
    assert ours(setup.topo.mob, RTPROT_MOBIKE_VICI) == []
    assert operator_view(setup.topo.mob) == operators


def test_controller_sigkilled_mid_handover(setup: Setup) -> None:
    spi, operators = _up(setup)
    mark = len(setup.event_list())
    setup.topo.kill_silently(0)
    setup.wait_event("handover_started", after=mark, timeout=20)
    setup.kill_controller()
    assert setup.spi() == spi, "charon lost the SA with the controller"
    assert operator_view(setup.topo.mob) == operators

    mark = len(setup.event_list())
    setup.start_controller()
    reconciled = setup.wait_event("steering_reconciled", after=mark)
    assert set(reconciled["adopted"]) <= {PEER}
    setup.wait_event("ike_sa_tracked", lambda e: e["ike_spi"] == spi, after=mark)
    sa = setup.wait_local(M1, timeout=30)
    assert f"{sa['initiator-spi']}_{sa['responder-spi']}" == spi
    assert setup.tunnel_ping()
    # Nothing stale: our table holds the one route to the peer (by m1), and the one rule
    # of its family.
    routes, rules = _steering(setup)
    assert len(routes) == 1 and routes[0].startswith(PEER) and "src 10.2.0.2" in routes[0], routes
    assert len(rules) == 1 and f"proto {RTPROT_MOBIKE_VICI}" in rules[0], rules
    assert [s["ike_spi"] for s in _status(setup)["ike_sas"]] == [spi]
    assert operator_view(setup.topo.mob) == operators
    _next_handover_and_clean_stop(setup, spi, operators)


def test_charon_restarted_mid_handover(setup: Setup, lab: Lab) -> None:
    old_spi, operators = _up(setup)
    mark = len(setup.event_list())
    setup.topo.kill_silently(0)
    setup.wait_event("route_steered", after=mark, timeout=20)
    setup.mob.stop()
    setup.wait_event("vici_disconnected", after=mark)
    setup.mob = start_charon(lab, setup.topo.mob, name="mob", extra_charon=snippet_body())
    setup.wait_event("vici_connected", after=mark, timeout=30)
    setup.wait_event("config_loaded", after=mark)
    # charon sets the SA up again (start_action) along our route to the peer: by m1.
    sa = setup.wait_local(M1, timeout=40)
    spi = f"{sa['initiator-spi']}_{sa['responder-spi']}"
    assert spi != old_spi
    setup.wait_event("ike_sa_tracked", lambda e: e["ike_spi"] == spi, after=mark, timeout=30)
    assert setup.controller is not None and setup.controller.poll() is None
    # The controller's table is charon's: the new SA, and nothing of the one charon lost.
    charon_spis = sorted(f"{s['initiator-spi']}_{s['responder-spi']}"
                         for s in [setup.sa()] if s)
    assert sorted(s["ike_spi"] for s in _status(setup)["ike_sas"]) == charon_spis == [spi]
    assert setup.tunnel_ping()
    routes, _rules = _steering(setup)
    assert len(routes) == 1 and "src 10.2.0.2" in routes[0], routes
    assert operator_view(setup.topo.mob) == operators
    _next_handover_and_clean_stop(setup, spi, operators)
