"""`mobike-vici run` beside charon: a request of charon's own is in flight on the uplink
that dies silently.

charon runs one exchange at a time. A CHILD_SA rekey sent into a silently dead uplink
holds the MOBIKE update the controller's route asks for; charon retransmits it from the
IKE_SA's old address (only a MOBIKE exchange re-resolves its source), so while the
uplink stays dead no retransmission is answered, and the IKE_SA stays on the dead path
until charon gives up on it. The controller sends charon's request once more itself,
over the path it steers charon to: the peer answers there, the rekey completes and
charon's update follows. The same for charon's DPD (``check_current_path`` after a route
event): its retransmission probes every path, but only at ``retransmit_timeout``."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from mobike_vici.lab.charon_controller import INNER, Setup, build
from mobike_vici.lab.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.charon]

M0_V4, M1_V4 = "10.1.0.2", "10.2.0.2"
BACK_WITHIN = 30.0  # generous: the functional bound (charon alone: 136 s of retransmits)
_REKEY_SENT = re.compile(r"generating CREATE_CHILD_SA request (\d+) \[ N\(REKEY_SA\)")
_DPD = "checking if current path still works using DPD"
_INFORMATIONAL = re.compile(r"generating INFORMATIONAL request (\d+) \[")
# charon's default, not the snippet's 1 s: a wide margin between the controller's move
# (detection takes a few hundred ms) and charon's own retransmission.
SLOW_RETRANSMIT = "\n    retransmit_timeout = 4.0\n"


@pytest.fixture
def setup(lab: Lab) -> Iterator[Setup]:
    yield from build(lab)


@pytest.fixture
def slow_setup(lab: Lab) -> Iterator[Setup]:
    yield from build(lab, mob_charon=SLOW_RETRANSMIT)


def _rekeys_sent(setup: Setup) -> list[int]:
    return [int(m.group(1)) for m in _REKEY_SENT.finditer(setup.mob.log_text())]


def test_a_child_sa_rekey_lost_on_a_silently_dead_uplink_does_not_hold_the_move(
        setup: Setup) -> None:
    _on_m0_with_traffic(setup)
    before = _rekeys_sent(setup)
    mark = len(setup.event_list())

    setup.topo.kill_silently(0)
    setup.mob.swanctl("--rekey", "--child", "net")  # its request leaves into the dead uplink

    setup.wait_local(M1_V4, timeout=BACK_WITHIN)
    rekeys = _rekeys_sent(setup)[len(before):]
    assert rekeys, "charon sent no CHILD_SA rekey"
    events = setup.event_list()[mark:]
    relayed = [e for e in events if e["event"] == "ike_request_relayed"]
    assert any(e["message_id"] == rekeys[0] and e["local"].startswith(M1_V4)
               for e in relayed), (rekeys, relayed)
    assert setup.tunnel_ping(), "no traffic through the tunnel on m1"


def _on_m0_with_traffic(setup: Setup) -> None:
    setup.start_controller()
    setup.wait_event("ike_sa_tracked")
    setup.wait_local(M0_V4)
    setup.wait_event("path_up", lambda e: e["local"].startswith(M1_V4))
    assert setup.tunnel_ping(), "no traffic through the tunnel on m0"
    stream = setup.lab.workdir / "stream.txt"
    setup.lab.spawn(setup.topo.mob, ["ping", "-n", "-i", "0.02", "-I", setup.vip(), INNER],
                    stream)
    time.sleep(1.0)


def test_a_dpd_lost_on_a_silently_dead_uplink_does_not_wait_for_its_retransmission(
        slow_setup: Setup) -> None:
    setup = slow_setup
    _on_m0_with_traffic(setup)
    lines_before = len(setup.mob.log_text().splitlines())

    setup.topo.kill_silently(0)
    # A route event that keeps charon's path: charon checks it with a DPD, on m0.
    setup.topo.mob.ip("route", "add", "198.51.100.0/24", "via", "10.1.0.1", "dev", "m0")

    setup.wait_local(M1_V4, timeout=BACK_WITHIN)
    log = setup.mob.log_text().splitlines()[lines_before:]
    checks = [i for i, line in enumerate(log) if _DPD in line]
    assert checks, "charon did not check its path with a DPD"
    sent = next((m for line in log[checks[0]:] if (m := _INFORMATIONAL.search(line))), None)
    assert sent is not None, log
    mid = int(sent.group(1))
    update = next(i for i, line in enumerate(log) if "N(UPD_SA_ADDR)" in line)
    retransmitted = [i for i, line in enumerate(log)
                     if f"retransmit 1 of request with message ID {mid}" in line
                     or "path probing attempt 1" in line]
    assert not retransmitted or update < retransmitted[0], (
        "charon's update waited for its DPD's retransmission:\n"
        + "\n".join(log[checks[0]:update + 1]))
    relayed = [e for e in setup.event_list() if e["event"] == "ike_request_relayed"]
    assert any(e["message_id"] == mid for e in relayed), (mid, relayed)
