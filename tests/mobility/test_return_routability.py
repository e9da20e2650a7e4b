"""Return routability for ESP (RFC 4555 §3.7) between two of our daemons, with traffic.

mob sends an authenticated UPDATE_SA_ADDRESSES from m1's address while rtr drops
everything towards m1 (gw can hear m1 but cannot answer it). gw's IKE_SA follows the
update at once (§3.5), but its CHILD_SA must stay where the peer is known to answer:
tcpdump in gw counts zero ESP packets towards m1, some IKE there (gw answered the update
and sent its COOKIE2 check: the capture works), ESP towards m0 all along, and the
traffic keeps flowing both ways.
"""

from __future__ import annotations

import ipaddress
import re
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mobike_vici.lab.native import NativeDaemon
from mobike_vici.lab.netns import Lab, LabError, Netns
from tests.data.support import INNER_ADDR

from .harness import HERE, build, sa_view
from .test_handover import M0, M1, RESUME_TIMEOUT

pytestmark = pytest.mark.netns

MOVER = HERE / "mover.py"
PINGS = 25


def count_packets(pcap: Path) -> Counter[tuple[str, str]]:
    """(destination, kind) of every IP packet in an Ethernet pcap; kind is ``esp`` (plain
    ESP, or UDP 4500 with a non-zero SPI where IKE has its zero marker), ``ike`` or
    ``other``."""
    data = pcap.read_bytes()
    magic = data[:4]
    order = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    assert struct.unpack(order + "I", data[20:24])[0] == 1, "not an Ethernet capture"
    out: Counter[tuple[str, str]] = Counter()
    offset = 24
    while offset + 16 <= len(data):
        incl = struct.unpack(order + "I", data[offset + 8:offset + 12])[0]
        frame = data[offset + 16:offset + 16 + incl]
        offset += 16 + incl
        ethertype = frame[12:14]
        ip = frame[14:]
        if ethertype == b"\x08\x00" and len(ip) >= 20:
            proto, dst = ip[9], str(ipaddress.IPv4Address(ip[16:20]))
            payload = ip[(ip[0] & 0x0F) * 4:]
        elif ethertype == b"\x86\xdd" and len(ip) >= 40:
            proto, dst = ip[6], str(ipaddress.IPv6Address(ip[24:40]))
            payload = ip[40:]
        else:
            continue
        kind = "other"
        if proto == 50:
            kind = "esp"
        elif proto == 17 and len(payload) >= 8:
            ports = struct.unpack("!HH", payload[:4])
            body = payload[8:]
            if 4500 in ports and len(body) >= 4:
                kind = "ike" if body[:4] == bytes(4) else "esp"
            elif 500 in ports:
                kind = "ike"
        out[(dst, kind)] += 1
    return out


def _cut_return_path(rtr: Netns, *addrs: str) -> None:
    """rtr drops what it forwards towards ``addrs``, nothing from them."""
    rules = "\n".join(f"        {'ip6' if ':' in a else 'ip'} daddr {a} drop" for a in addrs)
    rtr.run("nft", "-f", "-", input_text=f"""
table inet rr_test {{
    chain forward {{
        type filter hook forward priority -10; policy accept;
{rules}
    }}
}}
""")


def _capture(lab: Lab, ns: Netns) -> tuple[subprocess.Popen[bytes], Path]:
    """tcpdump on gw's uplink, everything towards mob's uplinks, written as it comes."""
    pcap = lab.workdir / "gw-eth0.pcap"
    log = lab.workdir / "tcpdump.log"
    dump = lab.spawn(ns, ["tcpdump", "-i", "eth0", "-n", "-U", "-w", str(pcap),
                          "dst net 10.0.0.0/8 or dst net 2001:db8::/32"], log)
    deadline = time.monotonic() + 10.0
    while "listening on" not in (log.read_text(errors="replace") if log.exists() else ""):
        if time.monotonic() > deadline:
            raise LabError(f"tcpdump did not start: {log.read_text(errors='replace')}")
        time.sleep(0.05)
    return dump, pcap


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
        _cut_return_path(h.topo.rtr, M1)
        dump, pcap = _capture(lab, h.topo.gw)
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

