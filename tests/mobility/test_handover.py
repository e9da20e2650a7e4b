"""Handovers of the native daemon in the mobile topology, with traffic through the tunnel:
(a) the active uplink goes down, (b) it is silently blackholed, (c) the preferred
uplink comes back (after hold-down, not while it flaps). Our daemon initiates from
mob; gw runs our daemon or charon.

Each case runs with a narrow selector and with a full tunnel (``0.0.0.0/0`` and
``::/0`` with virtual IPs of both families: then IKE, probes and ESP must keep out of
the tunnel's own default routes on every uplink).

Each case checks: the stream through the tunnel resumes, the IKE SPIs are the same
before and after, both ends show the new endpoints (charon's list-sas included), and
the CHILD SPIs agree between the ends. Between two of our daemons the CHILD SPIs are
also unchanged; charon 5.9.8 with kernel-libipsec rekeys its CHILD_SAs after every
accepted move (see harness.build), so against charon they only have to agree.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mobike_vici.lab.gateway_rr import M0, M1
from mobike_vici.lab.handover import Handover, build, sa_view
from mobike_vici.lab.native import NativeDaemon, named
from mobike_vici.lab.netns import Lab
from tests.pki import with_certificates

pytestmark = pytest.mark.netns

RESUME_TIMEOUT = 10.0  # functional: the targets are 50 ms and 1 s
SETTLE_TIMEOUT = 15.0
TUNNELS = [
    pytest.param(False, id="narrow"),
    pytest.param(True, id="full"),
]
"""The selector variants every mobility case runs with (test_cases.py uses it too)."""
GW_KINDS = [
    pytest.param((gw_native, full), id=f"{pair}-{tunnel}", marks=marks)
    for gw_native, pair, marks in ((True, "native-native", ()),
                                   (False, "native-charon", (pytest.mark.charon,)))
    for full, tunnel in ((False, "narrow"), (True, "full"))
]


@pytest.fixture
def scenario(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Handover]:
    gw_native, full = request.param
    h = build(lab, mob_native=True, gw_native=gw_native, full_tunnel=full)
    try:
        yield h
    finally:
        h.close()


def _agreed(h: Handover, local: str) -> tuple[dict[str, object], dict[str, object]] | None:
    mob, gw = h.views()
    if mob["local"] != local or gw["remote"] != local:
        return None
    if mob["child_spis"] != gw["child_spis"]:
        return None  # charon's old CHILD_SA of a rekey not yet gone
    return mob, gw


def _wait_agreed(h: Handover, local: str) -> tuple[dict[str, object], dict[str, object]]:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        got = _agreed(h, local)
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"ends do not agree on {local}: {h.views()}")
        time.sleep(0.1)


def _check_same_sa(h: Handover, before: dict[str, object], local: str) -> None:
    mob, gw = _wait_agreed(h, local)
    assert mob["ike_spi"] == before["ike_spi"] == gw["ike_spi"]
    if isinstance(h.gw, NativeDaemon):
        assert mob["child_spis"] == before["child_spis"]


def _mob(h: Handover) -> NativeDaemon:
    assert isinstance(h.mob, NativeDaemon)
    return h.mob


@pytest.mark.parametrize("scenario", GW_KINDS, indirect=True)
def test_a_link_down(scenario: Handover) -> None:
    h = scenario
    before = sa_view(h.mob)
    assert before["local"] == M0
    fault = h.link_down(0)
    assert h.wait_resumed(fault, RESUME_TIMEOUT) is not None, "stream did not resume"
    _check_same_sa(h, before, M1)
    ev = _mob(h).wait_event(named("handover_completed"), 5)
    assert ev["local"].startswith(M1) and ev["old_local"].startswith(M0)
    assert _mob(h).events.find(lambda e: e.get("event") == "path_down"
                               and e.get("reason") == "link_down") is not None


@pytest.mark.parametrize("scenario", GW_KINDS, indirect=True)
def test_b_silent_blackhole(scenario: Handover) -> None:
    h = scenario
    before = sa_view(h.mob)
    fault = h.kill_silently(0)
    assert h.wait_resumed(fault, RESUME_TIMEOUT) is not None, "stream did not resume"
    _check_same_sa(h, before, M1)
    # The one-way stream's stall probes m0 at once; one unanswered while m1 answers
    # the same request decides (the race), not a second timeout.
    down = _mob(h).wait_event(lambda e: e.get("event") == "path_down"
                              and e.get("reason") in ("probe_race", "probe_timeout")
                              and str(e.get("local", "")).startswith(M0), 5)
    assert down["reason"] == "probe_race", down


@pytest.mark.parametrize("gw_native", [pytest.param(True, id="native-native"),
                                       pytest.param(False, id="native-charon",
                                                    marks=pytest.mark.charon)])
def test_b_silent_blackhole_with_certificates(lab: Lab, gw_native: bool) -> None:
    """Authenticated by certificates, the client roams as with a PSK (the IKE_SA moves,
    it is not re-authenticated)."""
    h = build(lab, mob_native=True, gw_native=gw_native, credentials=with_certificates)
    try:
        established = _mob(h).wait_event(named("ike_sa_established"), 5)
        assert (established["local_id"], established["remote_id"]) == (
            "initiator@dataplane", "responder@dataplane")
        before = sa_view(h.mob)
        fault = h.kill_silently(0)
        assert h.wait_resumed(fault, RESUME_TIMEOUT) is not None, "stream did not resume"
        _check_same_sa(h, before, M1)
        assert _mob(h).events.find(lambda e: e.get("event") == "handover_completed") is not None
    finally:
        h.close()


@pytest.mark.parametrize("scenario", GW_KINDS, indirect=True)
def test_c_return_after_hold_down_without_flapping(scenario: Handover) -> None:
    h = scenario
    before = sa_view(h.mob)
    fault = h.link_down(0)
    assert h.wait_resumed(fault, RESUME_TIMEOUT) is not None
    _wait_agreed(h, M1)
    mob = _mob(h)
    # 1 Hz flapping of the preferred uplink, shorter than the hold-down: no move back.
    for _ in range(4):
        h.link_up(0)
        time.sleep(0.5)
        h.link_down(0)
        time.sleep(0.5)
    assert sa_view(h.mob)["local"] == M1, "moved back while the uplink flapped"
    mob.events.poll()
    assert not [e for e in mob.events.events if _to(e, "handover_started", M0)], \
        "a handover toward the flapping uplink"
    h.link_up(0)
    # Back to the preferred uplink once it has been healthy for the hold-down.
    assert h.wait_local(M0, 30.0), "did not return to the preferred uplink"
    assert h.wait_resumed(time.monotonic(), RESUME_TIMEOUT) is not None
    _check_same_sa(h, before, M0)
    returned = mob.wait_event(lambda e: _to(e, "handover_completed", M0), 5)
    assert returned["old_local"].startswith(M1)


def _to(event: dict[str, object], name: str, local: str) -> bool:
    return event.get("event") == name and str(event.get("local", "")).startswith(local)
