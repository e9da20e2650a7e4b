"""`mobike-vici run` beside a real charon: silent failures, link loss, return, restarts, cleanup."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mobike_vici.lab.charon_controller import Setup, build
from mobike_vici.lab.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.charon]

M0, M1 = "10.1.0.2", "10.2.0.2"
M1_ANY = (M1, "2001:db8:2::2")
M0_ANY = (M0, "2001:db8:1::2")  # charon alone may pick m1's IPv6 path (the gateway announced it)


@pytest.fixture
def setup(lab: Lab) -> Iterator[Setup]:
    yield from build(lab)


def _up(setup: Setup) -> str:
    """Controller running, the SA established on m0 and tracked; its IKE SPIs."""
    setup.start_controller()
    tracked = setup.wait_event("ike_sa_tracked")
    setup.wait_local(M0)
    assert tracked["local"].startswith(M0)
    assert setup.tunnel_ping(), "no traffic through the tunnel before the test"
    return setup.spi()


def test_silent_blackhole_moves_charon_to_the_other_uplink_with_the_same_spi(
        setup: Setup) -> None:
    spi = _up(setup)
    mark = len(setup.event_list())
    setup.topo.kill_silently(0)
    sa = setup.wait_local(M1, timeout=30)
    assert f"{sa['initiator-spi']}_{sa['responder-spi']}" == spi
    done = setup.wait_event("handover_completed", lambda e: e["local"].startswith(M1),
                            after=mark)
    assert done["ike_spi"] == spi
    assert done["old_local"].startswith(M0)
    assert done["duration_ms"] >= 0
    setup.wait_event("handover_started", after=mark)
    setup.wait_event("path_down", lambda e: e["local"].startswith(M0), after=mark)
    setup.wait_event("addresses_updated", lambda e: e["local"].startswith(M1), after=mark)
    assert setup.tunnel_ping(), "traffic did not resume on the second uplink"


def test_link_down_moves_with_the_same_spi_and_traffic_resumes(setup: Setup) -> None:
    spi = _up(setup)
    mark = len(setup.event_list())
    setup.topo.link_down(0)
    sa = setup.wait_local(M1_ANY, timeout=30)
    assert f"{sa['initiator-spi']}_{sa['responder-spi']}" == spi
    setup.wait_event("addresses_updated", lambda e: e["local"].startswith(M1_ANY), after=mark)
    setup.wait_event("path_down", lambda e: e["reason"] == "link_down", after=mark)
    setup.wait_event("handover_completed", after=mark)
    assert not [e for e in setup.event_list()[mark:] if e["event"] == "handover_escalated"]
    assert setup.spi() == spi
    assert setup.tunnel_ping()


def test_the_preferred_uplink_is_taken_back_after_hold_down(setup: Setup) -> None:
    spi = _up(setup)
    setup.topo.kill_silently(0)
    setup.wait_local(M1, timeout=30)
    mark = len(setup.event_list())
    setup.topo.revive(0)
    back = setup.wait_event("handover_completed", lambda e: e["local"].split("[")[0] in M0_ANY,
                            after=mark, timeout=40)
    started = setup.wait_event("handover_started", lambda e: e["local"].split("[")[0] in M0_ANY,
                               after=mark)
    assert started["reason"] == "preferred"
    setup.wait_local(M0_ANY, timeout=10)
    moves = [e for e in setup.event_list()[mark:] if e["event"] == "handover_started"]
    assert len(moves) <= 3, f"the controller keeps moving: {len(moves)} handovers"
    assert back["ike_spi"] == spi
    sa = setup.wait_local(M0_ANY, timeout=10)
    assert f"{sa['initiator-spi']}_{sa['responder-spi']}" == spi
    assert back["charon_local"].split("[")[0] == sa["local-host"]
    assert setup.tunnel_ping()


def test_charon_restart_is_followed_and_resynced(setup: Setup, lab: Lab) -> None:
    from mobike_vici.lab.charon import start_charon
    from mobike_vici.lab.charon_controller import snippet_body

    _up(setup)
    mark = len(setup.event_list())
    setup.mob.stop()
    setup.wait_event("vici_disconnected", after=mark)
    setup.mob = start_charon(lab, setup.topo.mob, name="mob", extra_charon=snippet_body())
    setup.wait_event("vici_connected", after=mark, timeout=30)
    setup.wait_event("config_loaded", after=mark)
    tracked = setup.wait_event("ike_sa_tracked", after=mark, timeout=30)
    setup.wait_local(M0)
    assert tracked["ike_spi"] == setup.spi()
    assert setup.controller is not None and setup.controller.poll() is None
    # The controller still steers the new SA.
    mark = len(setup.event_list())
    setup.topo.kill_silently(0)
    setup.wait_local(M1, timeout=30)
    setup.wait_event("handover_completed", after=mark)
    assert setup.tunnel_ping()


def test_sigkill_and_restart_keeps_the_sa_and_a_clean_stop_leaves_nothing(
        setup: Setup) -> None:
    spi = _up(setup)
    setup.topo.kill_silently(0)
    setup.wait_local(M1, timeout=30)
    setup.kill_controller()
    assert "4555" in setup.our_rules_and_routes(), "the steering route should outlive a crash"
    mark = len(setup.event_list())
    setup.start_controller()
    reconciled = setup.wait_event("steering_reconciled", after=mark)
    assert reconciled["adopted"] == ["192.0.2.2"]
    setup.wait_event("ike_sa_tracked", lambda e: e["ike_spi"] == spi, after=mark)
    sa = setup.wait_local(M1, timeout=10)
    assert f"{sa['initiator-spi']}_{sa['responder-spi']}" == spi
    assert setup.tunnel_ping()
    assert setup.stop_controller() == 0
    assert setup.our_rules_and_routes() == ""
    cleared = [e for e in setup.event_list()[mark:] if e["event"] == "steering_cleared"]
    assert cleared and cleared[-1]["removed"] >= 1


def test_status_shows_charons_sas_with_the_path_table(setup: Setup) -> None:
    import json
    import subprocess
    import sys

    from mobike_vici.lab.charon_controller import REPO

    spi = _up(setup)
    out = subprocess.run(
        [*setup.topo.mob.argv([sys.executable, "-m", "mobike_vici", "status", "--json",
                               "--control", str(setup.control)])],
        capture_output=True, text=True, timeout=30, env={"PYTHONPATH": str(REPO)},
        check=False)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    (sa,) = answer["ike_sas"]
    assert sa["ike_spi"] == spi
    locals_ = {p["local"].split("[")[0] for p in sa["paths"]}
    assert {M0, M1} <= locals_
    assert next(p for p in sa["paths"] if p["active"])["local"].startswith(M0)


@pytest.fixture
def full_tunnel(lab: Lab) -> Iterator[Setup]:
    from mobike_vici.lab.charon_controller import mobile_conf

    yield from build(lab, mob_conf=mobile_conf(remote_ts="0.0.0.0/0"))


def test_full_tunnel_survives_a_silent_blackhole(full_tunnel: Setup) -> None:
    setup = full_tunnel
    spi = _up(setup)
    mark = len(setup.event_list())
    setup.topo.kill_silently(0)
    sa = setup.wait_local(M1, timeout=30)
    assert f"{sa['initiator-spi']}_{sa['responder-spi']}" == spi
    setup.wait_event("handover_completed", lambda e: e["local"].startswith(M1), after=mark)
    assert setup.tunnel_ping()


def test_gateway_terminates_a_peer_that_moves_outside_its_allowed_prefixes(
        setup: Setup) -> None:
    from mobike_vici.lab.charon_controller import gateway_conf

    conf = setup.lab.workdir / "gw-policy.conf"
    conf.write_text(gateway_conf(allowed="10.1.0.0/24"))
    setup.start_gw_controller(conf)
    setup.wait_event("config_loaded", path=setup.gw_events)
    spi = _up(setup)  # mob's controller too; it stays on m0 while m0 works
    # The move from m0 to m1 is outside what the gateway allows.
    setup.topo.link_down(0)
    moved = setup.wait_event("addresses_updated", lambda e: e["ike_spi"] == spi,
                             path=setup.gw_events)
    assert moved["old_remote"].startswith(M0)
    assert not moved["remote"].startswith(M0)
    rejected = setup.wait_event("update_rejected", path=setup.gw_events)
    assert rejected["reason"] == "peer_address_not_allowed"
    setup.wait_event("ike_sa_terminated", lambda e: e["ike_spi"] == spi, path=setup.gw_events)

    def gone() -> bool:
        sa = setup.gw.list_sas().get("rw")
        return sa is None or f"{sa['initiator-spi']}_{sa['responder-spi']}" != spi

    import time
    deadline = time.monotonic() + 20
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(), setup.gw.list_sas()


@pytest.fixture
def stubborn(lab: Lab) -> Iterator[Setup]:
    yield from build(lab, prefer_best_path=False)


def test_without_prefer_best_path_the_move_is_escalated_and_said_so(stubborn: Setup) -> None:
    setup = stubborn
    _up(setup)
    setup.wait_event("prefer_best_path_off")
    mark = len(setup.event_list())
    setup.topo.kill_silently(0)
    escalated = setup.wait_event("handover_escalated", after=mark)
    assert escalated["stage"] in ("reauth", "reinitiate")
    setup.wait_local(M1_ANY, timeout=40)
    done = setup.wait_event("handover_completed", after=mark, timeout=40)
    assert done["escalation"] in ("reauth", "reinitiate")
    assert setup.tunnel_ping()
