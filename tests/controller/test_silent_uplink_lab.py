"""`mobike-vici run` beside a dual-stack charon: the uplink the IKE_SA is on dies
silently, both address families at once (a dead router beyond the link).

The IKE_SA sits on m0's IPv6 address. When that path is found dead, m0's IPv4 path
still looks up to the path manager (its last standby probe answered, seconds before),
and it ranks above m1. The controller must not steer charon onto it unless it answers
a probe now: the tunnel comes back on m1, and no route ever points charon at m0."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mobike_vici.lab.charon_controller import INNER, Setup, build, mobile_conf
from mobike_vici.lab.netns import Lab

from .test_controller_observe import move_when_free

pytestmark = [pytest.mark.netns, pytest.mark.charon]

M0_V4, M0_V6 = "10.1.0.2", "2001:db8:1::2"
M1_ANY = ("10.2.0.2", "2001:db8:2::2")
GW6 = "2001:db8:ff::2"
BACK_WITHIN = 30.0  # generous: the functional bound for the tunnel to come back
_REPLY = re.compile(r"icmp_seq=(\d+)")


@pytest.fixture
def setup(lab: Lab) -> Iterator[Setup]:
    conf = mobile_conf().replace("remote_addrs = 192.0.2.2",
                                 f"remote_addrs = 192.0.2.2, {GW6}")
    yield from build(lab, mob_conf=conf)


def _replies(log: Path) -> int:
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(1 for line in text.splitlines() if "bytes from" in line)


def _moved_to_m0_v6(setup: Setup) -> None:
    """The controller runs and has moved charon's IKE_SA from m0's IPv4 to its IPv6."""
    setup.start_controller()
    setup.wait_event("ike_sa_tracked")
    setup.wait_local(M0_V4)
    setup.wait_event("path_up", lambda e: e["local"].startswith(M0_V6))
    got = move_when_free(setup, M0_V6)
    assert got.returncode == 0, got.stderr
    setup.wait_local(M0_V6)


def test_a_silently_dead_uplinks_other_family_is_not_chosen_without_an_answer(
        setup: Setup) -> None:
    _moved_to_m0_v6(setup)
    # The move across families lands where asked, with no detour through m1 (charon's
    # MOBIKE check is given no other pair that could answer).
    detours = [e for e in setup.event_list() if e["event"] == "addresses_updated"
               and e["local"].split("[")[0] in M1_ANY]
    assert not detours, detours
    assert setup.tunnel_ping(), "no traffic through the tunnel on m0's IPv6"
    stream = setup.lab.workdir / "stream.txt"
    setup.lab.spawn(setup.topo.mob, ["ping", "-n", "-i", "0.01", "-I", setup.vip(), INNER],
                    stream)
    time.sleep(2.5)  # m0's IPv4 path answers its standby probes meanwhile: up
    assert _replies(stream) > 0, "the 100 Hz ping gets no replies before the fault"
    mark = len(setup.event_list())

    setup.topo.kill_silently(0)

    setup.wait_local(M1_ANY, timeout=BACK_WITHIN)
    before = _replies(stream)
    deadline = time.monotonic() + BACK_WITHIN
    while _replies(stream) <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _replies(stream) > before, "the tunnel did not come back on m1"
    time.sleep(1.0)
    events = setup.event_list()[mark:]
    # m0 is found dead first (by the data plane, or its probes on a slow machine), on the
    # family charon was on: the controller's active path is always charon's.
    dead = [e for e in events if e["event"] == "path_down"]
    assert dead and dead[0]["local"].split("[")[0] == M0_V6, events
    onto_m0 = [e for e in events if e["event"] == "route_steered"
               and str(e.get("local", "")).split("[")[0] in (M0_V4, M0_V6)]
    assert not onto_m0, f"charon was steered onto the dead uplink: {onto_m0}"
    assert "handover_escalated" not in [e["event"] for e in events]
    # The controller's active path is where charon is, after every move.
    done = [e for e in setup.event_list() if e["event"] == "handover_completed"]
    assert done and all(e["local"] == e.get("charon_local", e["local"]) for e in done), done


def test_an_idle_tunnels_silently_dead_uplink_is_left_for_the_other_uplink(
        setup: Setup) -> None:
    """No traffic: the path manager's probes, not the data plane, find charon's path dead
    (probe_timeout). That is a silent death too: m0's IPv4 path, up from its last standby
    probe, must answer before charon is steered onto it."""
    _moved_to_m0_v6(setup)
    time.sleep(2.5)  # m0's IPv4 path answers its standby probes meanwhile: up
    mark = len(setup.event_list())

    setup.topo.kill_silently(0)

    setup.wait_local(M1_ANY, timeout=BACK_WITHIN)
    events = setup.event_list()[mark:]
    dead = [e for e in events if e["event"] == "path_down"]
    assert dead and dead[0]["local"].split("[")[0] == M0_V6, events
    assert dead[0]["reason"] == "probe_timeout", dead[0]
    onto_m0 = [e for e in events if e["event"] == "route_steered"
               and str(e.get("local", "")).split("[")[0] in (M0_V4, M0_V6)]
    assert not onto_m0, f"charon was steered onto the dead uplink: {onto_m0}"
    assert setup.tunnel_ping(), "no traffic through the tunnel on m1"
