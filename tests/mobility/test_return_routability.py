"""Return routability for ESP (RFC 4555 §3.7) between two of our daemons, with traffic.

mob sends an authenticated UPDATE_SA_ADDRESSES from m1's address while rtr drops
everything towards m1 (gw can hear m1 but cannot answer it). gw's IKE_SA follows the
update at once (§3.5), but its CHILD_SA must stay where the peer is known to answer:
tcpdump in gw counts zero ESP packets towards m1, some IKE there (gw answered the update
and sent its COOKIE2 check: the capture works), ESP towards m0 all along, and the
traffic keeps flowing both ways.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from mobike_vici.lab.gateway_rr import M0, M1, capture, count_packets, cut_return_path
from mobike_vici.lab.handover import MOVER, build, sa_view
from mobike_vici.lab.native import NativeDaemon
from mobike_vici.lab.netns import Lab, Netns
from mobike_vici.lab.tunnel import INNER_ADDR

from .test_handover import RESUME_TIMEOUT

pytestmark = pytest.mark.netns

PINGS = 25


def _pinger(ns: Netns) -> subprocess.Popen[str]:
    """Echoes through the tunnel for a few seconds: gw answers them in ESP."""
    return subprocess.Popen(ns.argv(["ping", "-n", "-i", "0.2", "-W", "1", "-c", str(PINGS),
                                     INNER_ADDR]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _received(pinger: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = pinger.communicate(timeout=PINGS * 0.2 + 15)
    found = re.search(r"(\d+) received", out)
    return (int(found.group(1)) if found else 0), out


def _wait_remote(gw: NativeDaemon, wanted: tuple[str, ...], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while sa_view(gw)["remote"] not in wanted:
        assert time.monotonic() < deadline, f"gw never saw the update from {wanted}"
        time.sleep(0.1)


def test_update_from_an_address_without_return_path_sends_no_esp_there(lab: Lab) -> None:
    h = build(lab, mob_native=True, gw_native=True,
              mob_program=(sys.executable, str(MOVER), "--move-from", M1))
    pinger: subprocess.Popen[str] | None = None
    try:
        gw, mob = h.gw, h.mob
        assert isinstance(gw, NativeDaemon) and isinstance(mob, NativeDaemon)
        before = sa_view(gw)
        assert before["remote"] == M0
        cut_return_path(h.topo.rtr, M1)
        dump, pcap = capture(lab, h.topo.gw)
        pinger = _pinger(h.topo.mob)
        time.sleep(0.5)
        mob.proc.send_signal(signal.SIGUSR1)
        moved_at = time.monotonic()
        mob.wait_event(lambda e: e.get("event") == "mover_moving", 10.0)
        # gw's IKE_SA follows the update at once (RFC 4555 §3.5) ...
        _wait_remote(gw, (M1,))
        # ... the traffic keeps flowing both ways on the old path ...
        received, out = _received(pinger)
        assert received >= PINGS - 2, out
        assert h.wait_resumed(time.monotonic(), RESUME_TIMEOUT) is not None
        assert time.monotonic() - moved_at > 3.0  # the window was long enough to matter
        lab.stop(dump, grace=5.0)
        # ... and not one ESP packet went towards the address that cannot answer.
        seen = count_packets(pcap)
        assert seen[(M1, "esp")] == 0, seen
        assert seen[(M1, "ike")] > 0, seen  # the update's answer and the COOKIE2 check
        assert seen[(M0, "esp")] > PINGS // 2, seen
        after = sa_view(gw)
        assert after["ike_spi"] == before["ike_spi"]
        assert after["child_spis"] == before["child_spis"]
        gw.events.poll()
        names = [e.get("event") for e in gw.events.events]
        assert "child_sa_updated" not in names and "peer_moved" not in names
    finally:
        if pinger is not None and pinger.poll() is None:
            pinger.kill()
            pinger.wait()
        h.close()

