"""Return routability beside charon as responder (RFC 4555 §5.2): `mobike-vici run` on gw.

mob (our daemon with a hand on the wheel, ``mover.py``) sends an authenticated
UPDATE_SA_ADDRESSES from m1's address. charon on gw follows it at once. With the
return path to m1 cut in rtr, nothing charon sends there is answered: the controller
beside charon (``return_routability = always``) sees the move, has charon rekey the
IKE_SA, gets no answer within ``handover_timeout`` and terminates the IKE_SA
(``return_routability_failed``). With the return path intact both rekeys of the check
are answered (``return_routability_ok``) and the tunnel keeps working on m1.

``spoofed_move`` also measures what charon sent towards m1 after the move (tcpdump on
gw's uplink), with or without the controller; ``bench/gateway_rr.py`` reports it.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mobike_vici.lab.charon import Charon
from mobike_vici.lab.native import NativeDaemon
from mobike_vici.lab.netns import Lab, LabError

from .harness import Handover, build, sa_view
from .test_handover import M0, M1, RESUME_TIMEOUT
from .test_return_routability import MOVER, _capture, _cut_return_path

pytestmark = [pytest.mark.netns, pytest.mark.charon]

REPO = Path(__file__).resolve().parents[2]
BOUND = 3.0  # handover_timeout on gw: the longest a false address may get charon's traffic


def packet_times(pcap: Path) -> list[tuple[float, str, str]]:
    """(capture time, destination, kind) of every IP packet in an Ethernet pcap; kind as
    ``count_packets`` has it (``esp``, ``ike``, ``other``)."""
    data = pcap.read_bytes()
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nano = data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
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


@dataclass
class GatewayRun:
    h: Handover
    controller: subprocess.Popen[bytes] | None
    events: Path

    def event_list(self) -> list[dict[str, Any]]:
        if not self.events.exists():
            return []
        out = []
        for line in self.events.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

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
    _cut_return_path(h.topo.rtr, M1)
    dump, pcap = _capture(lab, h.topo.gw)
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


def test_a_move_to_an_address_without_return_path_is_terminated_within_the_bound(
        lab: Lab) -> None:
    run, seen = spoofed_move(lab, controller=True, window=BOUND + 15.0)
    try:
        failed = run.wait_event("return_routability_failed", 1.0)
        assert failed["remote"].startswith(M1) and failed["reason"] == "timeout"
        sent = run.wait_event("return_routability_check_sent", 1.0)
        assert sent["remote"].startswith(M1)
        terminated = run.wait_event("ike_sa_terminated", 5.0)
        assert terminated["reason"] == "return_routability_failed"
        # charon's IKE_SA with those SPIs is gone (not merely rekeyed and kept) ...
        assert seen["sa_gone_after_s"] is not None, seen
        assert "return_routability_ok" not in [e.get("event") for e in run.event_list()]
        # ... and charon's rekey, the check, really went towards m1 (the capture works).
        assert seen["ike_to_m1"] > 0, seen
    finally:
        run.h.close()


def test_a_genuine_move_is_verified_and_the_tunnel_keeps_working(lab: Lab) -> None:
    run = start(lab, controller=True)
    h = run.h
    try:
        before = sa_view(h.gw)
        assert isinstance(h.mob, NativeDaemon)
        h.mob.proc.send_signal(signal.SIGUSR1)
        ok = run.wait_event("return_routability_ok", BOUND + 10.0)
        assert ok["remote"].startswith(M1)
        assert ok["ike_spi"] != before["ike_spi"]  # charon's rekeys, answered from m1
        rekeys = [e for e in run.event_list() if e.get("event") == "ike_sa_rekeyed"]
        assert len(rekeys) == 2 and rekeys[-1]["new_ike_spi"] == ok["ike_spi"], rekeys
        names = [e.get("event") for e in run.event_list()]
        assert "return_routability_failed" not in names and "ike_sa_terminated" not in names
        after = sa_view(h.gw)
        assert after["remote"] == M1 and after["ike_spi"] == ok["ike_spi"]
        # The tunnel works on m1: the stream still arrives, well after the check.
        time.sleep(1.0)
        assert h.wait_resumed(time.monotonic(), RESUME_TIMEOUT) is not None
        assert sa_view(h.gw)["ike_spi"] == ok["ike_spi"]
        # The controller did not take the gateway's SA for one of its own to steer.
        assert "ike_sa_tracked" not in names
    finally:
        h.close()


def test_a_rekey_charon_had_in_flight_before_a_genuine_move_does_not_count(lab: Lab) -> None:
    """charon's own IKE rekey is on its way to m0 (whose return path is cut) when the peer
    moves to m1: charon retransmits it to m1 and it is answered there, but its first copy
    went to m0, so it proves nothing (RFC 4555 §3.7). Only a rekey asked for after the
    move verifies m1."""
    run = start(lab, controller=True, bound=15.0)
    h = run.h
    try:
        _cut_return_path(h.topo.rtr, M0)
        run.gw.swanctl("--rekey", "--ike", "dp")
        time.sleep(0.5)
        assert isinstance(h.mob, NativeDaemon)
        h.mob.proc.send_signal(signal.SIGUSR1)
        sent = run.wait_event("return_routability_check_sent", 10.0)
        assert sent["stale"] == 1, sent
        ok = run.wait_event("return_routability_ok", 25.0)
        assert ok["remote"].startswith(M1)
        rekeys = [e for e in run.event_list() if e.get("event") == "ike_sa_rekeyed"]
        assert len(rekeys) >= 3, rekeys  # the stale one, then the two asked for
        assert ok["ike_spi"] == rekeys[-1]["new_ike_spi"]
        names = [e.get("event") for e in run.event_list()]
        assert "return_routability_failed" not in names
        assert h.wait_resumed(time.monotonic(), RESUME_TIMEOUT) is not None
    finally:
        h.close()


def test_a_restarted_controller_still_sees_the_checked_sa_as_the_peers(lab: Lab) -> None:
    """After the check charon's flag calls the gateway's IKE_SA "initiator" (it started the
    last rekey); a controller started afterwards must not take it for a client SA of its
    own to probe and steer."""
    run = start(lab, controller=True)
    h = run.h
    try:
        assert isinstance(h.mob, NativeDaemon)
        h.mob.proc.send_signal(signal.SIGUSR1)
        run.wait_event("return_routability_ok", BOUND + 10.0)
        assert run.gw.list_sas()["dp"].get("initiator") == "yes"  # charon's own flag
        assert run.controller is not None
        assert lab.stop(run.controller, grace=10.0) == 0
        mark = len(run.event_list())
        again = start_controller(lab, h, run.events, BOUND)
        run.controller = again
        deadline = time.monotonic() + 20.0
        while not any(e.get("event") == "steering_reconciled" for e in run.event_list()[mark:]):
            assert time.monotonic() < deadline, run.event_list()[mark:]
            time.sleep(0.05)
        time.sleep(1.0)  # a tracked SA would have been probed by now
        names = [e.get("event") for e in run.event_list()[mark:]]
        assert "ike_sa_tracked" not in names and "path_up" not in names, names
    finally:
        h.close()
