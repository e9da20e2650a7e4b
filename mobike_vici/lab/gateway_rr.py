"""Return routability beside charon as responder (RFC 4555 §5.2), the lab half:
charon on gw, our daemon with a hand on the wheel on mob (``programs/mover.py``), which
sends an authenticated UPDATE_SA_ADDRESSES from m1's address on SIGUSR1; optionally
`mobike-vici run` beside gw's charon (``return_routability = always``).

``spoofed_move`` measures what charon sent towards m1 after such a move with m1's return
path cut (tcpdump on gw's uplink), with or without the controller; the tests in
tests/mobility judge it, ``bench/gateway_rr.py`` reports it.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobike_vici.lab.charon import Charon
from mobike_vici.lab.charon_controller import REPO, read_events
from mobike_vici.lab.handover import MOVER, Handover, build, sa_view
from mobike_vici.lab.native import NativeDaemon
from mobike_vici.lab.netns import Lab, LabError, Netns

M0, M1 = "10.1.0.2", "10.2.0.2"
BOUND = 3.0  # handover_timeout on gw: the longest a false address may get charon's traffic


def cut_return_path(rtr: Netns, *addrs: str) -> None:
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


def capture(lab: Lab, ns: Netns) -> tuple[subprocess.Popen[bytes], Path]:
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


def packet_times(pcap: Path) -> list[tuple[float, str, str]]:
    """(capture time, destination, kind) of every IP packet in an Ethernet pcap; kind as
    ``count_packets`` has it (``esp``, ``ike``, ``other``)."""
    data = pcap.read_bytes()
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nano = data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    if struct.unpack(order + "I", data[20:24])[0] != 1:
        raise LabError("not an Ethernet capture")
    out: list[tuple[float, str, str]] = []
    offset = 24
    while offset + 16 <= len(data):
        sec, frac, incl = struct.unpack(order + "III", data[offset:offset + 12])
        frame = data[offset + 16:offset + 16 + incl]
        offset += 16 + incl
        when = sec + frac / (1e9 if nano else 1e6)
        ip = frame[14:]
        if frame[12:14] == b"\x08\x00" and len(ip) >= 20:
            proto, dst, payload = ip[9], str(ipaddress.IPv4Address(ip[16:20])), \
                ip[(ip[0] & 0x0F) * 4:]
        elif frame[12:14] == b"\x86\xdd" and len(ip) >= 40:
            proto, dst, payload = ip[6], str(ipaddress.IPv6Address(ip[24:40])), ip[40:]
        else:
            continue
        kind = "other"
        if proto == 50:
            kind = "esp"
        elif proto == 17 and len(payload) >= 12:
            ports = struct.unpack("!HH", payload[:4])
            if 4500 in ports:
                kind = "ike" if payload[8:12] == bytes(4) else "esp"
            elif 500 in ports:
                kind = "ike"
        out.append((when, dst, kind))
    return out

def count_packets(pcap: Path) -> Counter[tuple[str, str]]:
    """(destination, kind) -> packets, from ``packet_times``."""
    return Counter((dst, kind) for _, dst, kind in packet_times(pcap))


@dataclass
class GatewayRun:
    h: Handover
    controller: subprocess.Popen[bytes] | None
    events: Path

    def event_list(self) -> list[dict[str, Any]]:
        return read_events(self.events)

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.event_list():
                if ev.get("event") == name:
                    return ev
            time.sleep(0.05)
        raise AssertionError(f"no {name} within {timeout}s:\n"
                             + "\n".join(json.dumps(e) for e in self.event_list()[-30:]))

    @property
    def gw(self) -> Charon:
        assert isinstance(self.h.gw, Charon)
        return self.h.gw

    def gw_spi(self) -> str | None:
        sa = self.gw.list_sas().get("dp")
        if not sa:
            return None
        return f"{int(sa['initiator-spi'], 16):016x}_{int(sa['responder-spi'], 16):016x}"


def start(lab: Lab, *, controller: bool, bound: float = BOUND) -> GatewayRun:
    """charon on gw, the mover on mob, the stream flowing; `mobike-vici run` on gw."""
    h = build(lab, mob_native=True, gw_native=False,
              mob_program=(sys.executable, str(MOVER), "--move-from", M1))
    events = lab.workdir / "gw-rr-events.jsonl"
    run = GatewayRun(h, None, events)
    if not controller:
        return run
    run.controller = start_controller(lab, h, events, bound)
    run.wait_event("steering_reconciled", 20.0)
    return run


def start_controller(lab: Lab, h: Handover, events: Path, bound: float
                     ) -> subprocess.Popen[bytes]:
    """`mobike-vici run` attached to gw's charon, ``handover_timeout`` = ``bound``."""
    conf = lab.workdir / "gw-rr.conf"
    conf.write_text((lab.workdir / "gw.conf").read_text()
                    + f"mobike {{\n  return_routability = always\n"
                      f"  handover_timeout = {bound}s\n}}\n")
    assert isinstance(h.gw, Charon)
    argv = [sys.executable, "-m", "mobike_vici", "run", "--config", str(conf),
            "--vici", h.gw.uri, "--events", str(events),
            "--control", str(lab.workdir / "gw-rr.sock"),
            "--strongswan-conf", str(h.gw.rundir / "strongswan.conf")]
    return lab.spawn(h.topo.gw, argv, lab.workdir / "gw-rr.out",
                     env={"PYTHONPATH": str(REPO)})


def spoofed_move(lab: Lab, *, controller: bool, window: float, bound: float = BOUND
                 ) -> tuple[GatewayRun, dict[str, Any]]:
    """The mover claims m1 while rtr drops everything towards m1; after ``window`` seconds
    (or the controller's verdict plus a second), what charon sent towards m1."""
    run = start(lab, controller=controller, bound=bound)
    h = run.h
    before = sa_view(h.gw)
    assert before["remote"] == M0
    cut_return_path(h.topo.rtr, M1)
    dump, pcap = capture(lab, h.topo.gw)
    assert isinstance(h.mob, NativeDaemon)
    moved_wall = time.time()
    h.mob.proc.send_signal(signal.SIGUSR1)
    h.mob.wait_event(lambda e: e.get("event") == "mover_moving", 10.0)
    deadline = time.monotonic() + window
    while sa_view(h.gw)["remote"] != M1:
        if time.monotonic() > deadline:
            raise LabError("charon never followed the update to m1")
        time.sleep(0.05)
    verdict: dict[str, Any] | None = None
    gone_after: float | None = None
    while time.monotonic() < deadline:
        if controller and verdict is None:
            verdict = next((e for e in run.event_list()
                            if e.get("event", "").startswith("return_routability_")
                            and e["event"] in ("return_routability_ok",
                                               "return_routability_failed")), None)
        if gone_after is None and run.gw_spi() != before["ike_spi"]:
            gone_after = time.time() - moved_wall
            deadline = min(deadline, time.monotonic() + 1.0)  # what is still on its way
        time.sleep(0.1)
    lab.stop(dump, grace=5.0)
    towards = [(t - moved_wall, kind) for t, dst, kind in packet_times(pcap) if dst == M1]
    esp = [t for t, kind in towards if kind == "esp"]
    ike = [t for t, kind in towards if kind == "ike"]
    return run, {
        "controller": controller, "window_s": window, "bound_s": bound if controller else None,
        "verdict": verdict.get("event") if verdict else None,
        "sa_gone_after_s": round(gone_after, 3) if gone_after is not None else None,
        "esp_to_m1": len(esp),
        "esp_first_s": round(min(esp), 3) if esp else None,
        "esp_last_s": round(max(esp), 3) if esp else None,
        "ike_to_m1": len(ike),
        "ike_last_s": round(max(ike), 3) if ike else None,
        "old_ike_spi": before["ike_spi"],
    }
