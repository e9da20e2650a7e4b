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
from pathlib import Path

import pytest

from mobike_vici.lab.native import NativeDaemon
from mobike_vici.lab.netns import Lab, LabError, Netns
from tests.data.support import INNER_ADDR

from .harness import HERE, build, sa_view
from .test_handover import M0, M1, RESUME_TIMEOUT

pytestmark = pytest.mark.netns

MOVER = HERE / "mover.py"
ESP = "(ip proto 50 or (udp port 4500 and udp[8:4] != 0))"
"""Plain ESP, or ESP-in-UDP (a non-zero SPI where IKE has the zero non-ESP marker)."""
IKE = "(udp port 4500 and udp[8:4] = 0)"
PINGS = 25


def _count(pcap: Path, ns: Netns, expression: str) -> int:
    proc = ns.run("tcpdump", "-n", "-r", str(pcap), expression, check=False)
    if proc.returncode != 0:
        raise LabError(f"tcpdump -r failed: {proc.stderr.strip()}")
    return len([line for line in proc.stdout.splitlines() if line.strip()])


def _cut_return_path(lab: Lab, rtr: Netns, addr: str) -> None:
    """rtr drops what it forwards towards ``addr``, nothing from it."""
    rtr.run("nft", "-f", "-", input_text=f"""
table inet rr_test {{
    chain forward {{
        type filter hook forward priority -10; policy accept;
        ip daddr {addr} drop
    }}
}}
""")


def _wait_listening(log: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while "listening on" not in (log.read_text(errors="replace") if log.exists() else ""):
        if time.monotonic() > deadline:
            raise LabError(f"tcpdump did not start: {log.read_text(errors='replace')}")
        time.sleep(0.05)


def test_update_from_an_address_without_return_path_sends_no_esp_there(lab: Lab) -> None:
    h = build(lab, mob_native=True, gw_native=True,
              mob_program=(sys.executable, str(MOVER), "--move-from", M1))
    pinger: subprocess.Popen[str] | None = None
    try:
        gw, mob = h.gw, h.mob
        assert isinstance(gw, NativeDaemon) and isinstance(mob, NativeDaemon)
        before = sa_view(gw)
        assert before["remote"] == M0
        _cut_return_path(lab, h.topo.rtr, M1)
        pcap = lab.workdir / "gw-eth0.pcap"
        dump_log = lab.workdir / "tcpdump.log"
        dump = lab.spawn(h.topo.gw, ["tcpdump", "-i", "eth0", "-n", "-U", "-w", str(pcap),
                                     f"ip dst {M1} or ip dst {M0}"], dump_log)
        _wait_listening(dump_log)
        ping = h.topo.mob.argv(["ping", "-n", "-i", "0.2", "-W", "1", "-c", str(PINGS),
                                INNER_ADDR])
        pinger = subprocess.Popen(ping, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        time.sleep(0.5)
        mob.proc.send_signal(signal.SIGUSR1)
        moved_at = time.monotonic()
        mob.wait_event(lambda e: e.get("event") == "mover_moving", 10.0)
        # gw's IKE_SA follows the update at once (RFC 4555 §3.5) ...
        deadline = time.monotonic() + 10.0
        while sa_view(gw)["remote"] != M1:
            assert time.monotonic() < deadline, "gw never saw the update from m1"
            time.sleep(0.1)
        out, _ = pinger.communicate(timeout=PINGS * 0.2 + 15)
        # ... the traffic keeps flowing both ways on the old path ...
        received = int(re.search(r"(\d+) received", out).group(1))  # type: ignore[union-attr]
        assert received >= PINGS - 2, out
        assert h.wait_resumed(time.monotonic(), RESUME_TIMEOUT) is not None
        assert time.monotonic() - moved_at > 3.0  # the window was long enough to matter
        lab.stop(dump, grace=5.0)
        # ... and not one ESP packet went towards the address that cannot answer.
        assert _count(pcap, h.topo.gw, f"ip dst {M1} and {ESP}") == 0
        assert _count(pcap, h.topo.gw, f"ip dst {M1} and {IKE}") > 0
        assert _count(pcap, h.topo.gw, f"ip dst {M0} and {ESP}") > PINGS // 2
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
