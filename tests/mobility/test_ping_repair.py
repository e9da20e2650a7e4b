"""A ping through the tunnel when the active uplink dies silently: the repair must fire.

Request/reply traffic is what a one-way stream from the gateway hid: after a silent
failure the replies are what stop, so every flow looks one-way, and a check that judges
the flow from what it sees after the fault, or wants a second of it before, never
repairs. Here the tunnel is idle for a while, then our daemon in mob pings gw's inner
address at 100 Hz (nothing else flows) for half a second, charon's address-list
INFORMATIONAL is lost on m0 (for certain: see ``charons_request_lost``) and m0 is
blackholed. With kernel-libipsec charon's CHILD_SA rekey after our move then waits for
that request's retransmission 4 s later (see test_charon_race). Our side must judge the
ping by its replies before the fault, see its pings leave on the new path with no reply,
rekey the CHILD_SA itself, and have the ping answered again well before charon's
retransmission. Before the fix: ``data_path_unverified`` ``one_way`` and 4.1 s.

Run with a carrier NAT on the backup uplink (``nat_backup``) and with a full tunnel,
the two set-ups where the tail was seen. Functional bounds only: the ping answers
within RESUME_BOUND of the fault (charon's retransmission comes at 4 s).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from mobike_vici.lab.charon import Charon
from mobike_vici.lab.handover import Handover, build
from mobike_vici.lab.native import NativeDaemon, named
from mobike_vici.lab.netns import Lab, LabError
from mobike_vici.lab.tunnel import INNER_ADDR

from .test_charon_race import DELAYED, charons_request_lost
from .test_handover import M0, M1, RESUME_TIMEOUT

pytestmark = [pytest.mark.netns, pytest.mark.charon]

PING_INTERVAL = "0.01"
QUIET = 2.5
"""Seconds the tunnel is idle before the ping starts (longer than a pause that ends a
run of the peer's traffic): the ping is a flow of its own, not the set-up's."""
STEADY = 0.5
"""Seconds the ping is answered before the fault: 50 replies, plainly request/reply
traffic (a check that wanted a second of it judged such a flow one-way and never
repaired)."""
RESUME_BOUND = 2.5
"""Functional: the ping must be answered again this soon after the fault (charon's own
retransmission, which ends the outage without a repair, comes 4 s after its request)."""
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")


def _replies(path: Path) -> list[float]:
    """Wall-clock arrival times (ping -D) of the replies so far."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = _REPLY.match(line)
        if m:
            out.append(float(m.group(1)))
    return out


def _start_ping(h: Handover) -> Path:
    """A 100 Hz ping from mob's virtual IP to gw's inner address; returns its output."""
    assert isinstance(h.mob, NativeDaemon)
    status = json.loads(h.mob.status(as_json=True).stdout)
    vip = next(a for a in status["ike_sas"][0]["virtual_ips"] if ":" not in a)
    out = h.lab.workdir / "ping.txt"
    with out.open("wb") as f:
        proc = subprocess.Popen(
            h.topo.mob.argv(["ping", "-n", "-D", "-i", PING_INTERVAL, "-I", vip, INNER_ADDR]),
            stdout=f, stderr=subprocess.STDOUT)
    h.procs.append(proc)
    start = time.time()
    deadline = time.monotonic() + RESUME_TIMEOUT + STEADY
    while True:
        times = [t for t in _replies(out) if t >= start]
        if times and times[-1] - times[0] >= STEADY:
            return out
        if time.monotonic() > deadline or proc.poll() is not None:
            raise LabError(f"no steady ping through the tunnel: {out.read_text()[-500:]}")
        time.sleep(0.05)


def _resumed(out: Path, fault: float, timeout: float) -> float | None:
    """Seconds from the fault to the first reply after the outage it caused (a reply
    to a request sent before the fault comes within a millisecond or so, well inside
    the 0.1 s skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        after = [t for t in _replies(out) if t > fault + 0.1]
        if after:
            return after[0] - fault
        time.sleep(0.02)
    return None


@pytest.mark.parametrize(("nat_backup", "full"), [
    pytest.param(True, False, id="nat-backup"),
    pytest.param(False, True, id="full-tunnel"),
])
def test_ping_answered_again_after_a_silent_death(lab: Lab, nat_backup: bool,
                                                  full: bool) -> None:
    h = build(lab, mob_native=True, gw_native=False, nat_backup=nat_backup,
              full_tunnel=full, stream=False)
    try:
        mob, gw = h.mob, h.gw
        assert isinstance(mob, NativeDaemon) and isinstance(gw, Charon)
        time.sleep(QUIET)
        ping = _start_ping(h)
        charons_request_lost(h)
        h.topo.kill_silently(0)
        fault = time.time()
        resumed = _resumed(ping, fault, RESUME_TIMEOUT)
        moved = mob.wait_event(named("handover_completed"), RESUME_TIMEOUT)
        assert moved["local"].startswith(M1) and moved["old_local"].startswith(M0)

        def verdict(e: dict[str, Any]) -> bool:
            return (e.get("event") in ("data_path_repaired", "data_path_verified",
                                       "data_path_unverified", "handover_failed")
                    and str(e.get("local", "")).startswith(M1))

        with contextlib.suppress(LabError):  # told below
            mob.wait_event(verdict, RESUME_TIMEOUT)
        mob.events.poll()
        told = [f"{e['event']}({e.get('reason') or e.get('dead_ms') or e.get('after_ms')})"
                for e in mob.events.events if e.get("event", "").startswith("data_path")]
        print(f"\nping ({'nat_backup' if nat_backup else 'full tunnel'}): answered again "
              f"{resumed if resumed is None else round(resumed, 3)} s after the fault; "
              + ", ".join(told))
        # The race was on: charon queued its rekey behind its request on the dead path.
        assert DELAYED in gw.log_text()
        assert resumed is not None, "the ping was never answered again"
        assert resumed < RESUME_BOUND, (
            f"answered again only {resumed:.3f} s after the fault: {told}")
        ok = [e for e in mob.events.events
              if e.get("event") in ("data_path_repaired", "data_path_verified")
              and str(e.get("local", "")).startswith(M1)]
        assert ok, f"no data_path_repaired/verified on the new path: {told}"
        assert not mob.events.find(named("data_path_unverified", reason="one_way"))
    finally:
        h.close()
