"""Handover outage per cell: pair x uplink config x traffic x fault, in one run.

The mobile topology (mob with uplinks m0/m1 through rtr to gw, see
mobike_vici/lab/handover.py and lab/charon_controller.py): mob initiates, gw responds.
Pairs (mob-gw):

  native-charon, native-native, charon-charon   the handover lab (tests/mobility)
  charon+controller   charon at both ends, ``mobike-vici run`` beside mob's charon
  charon-alone        the same lab as charon+controller, without the controller

Configs: ``plain``; ``nat-backup`` (a carrier NAT in rtr on the backup uplink m1 only);
``full-tunnel`` (mob asks for 0.0.0.0/0 and ::/0 with virtual IPs of both families).
Traffic, from before the fault on: ``stream`` (a 32-byte UDP datagram every 10 ms from
mob to gw's inner address; nothing answers it) or ``ping`` (a 100 Hz ping to the same
address, so ESP comes back from gw too). Faults:

  silent     rtr drops everything of the active uplink (its link stays up)
  link-down  the active uplink's link goes down in mob
  v4-death   every uplink's IPv4 dies silently in rtr, IPv6 stays (dual stack); also
             whether the same IKE_SA carries traffic 15 s after the fault
  return     the preferred uplink m0 comes back while mob runs on m1 (time to return,
             longest gap in the traffic around it)

Outage = the longest gap in the traffic's arrivals (stream: datagrams at gw; ping:
replies at mob) from just before the fault was injected until the traffic is back
(the first datagram sent, or reply received, after the fault's command returned);
nothing back within ``--cap`` seconds is lost, and counts as the cap in median / p95 /
max. A fresh lab per repetition, except
silent and link-down in the handover lab's pairs, which heal and go again in one lab
(as this bench always did); a lab that does not heal is replaced.

Needs root and strongSwan. Prints one JSON object; never judges the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _overhead import Counters

from mobike_vici.lab import charon_controller as ctl
from mobike_vici.lab.charon import charon_available
from mobike_vici.lab.driver import UplinkDriver
from mobike_vici.lab.handover import STREAM, STREAM_PORT, max_gap, outage, read_arrivals, sa_view
from mobike_vici.lab.handover import build as build_handover
from mobike_vici.lab.native import NativeDaemon
from mobike_vici.lab.netns import Lab, LabError, Netns, is_root
from mobike_vici.lab.topology import Mobile
from mobike_vici.lab.tunnel import INNER_ADDR

HARNESS_PAIRS = {
    "native-charon": (True, False),
    "native-native": (True, True),
    "charon-charon": (False, False),
}
CONTROLLER_PAIRS = ("charon+controller", "charon-alone")
PAIRS = (*HARNESS_PAIRS, *CONTROLLER_PAIRS)
CONFIGS = ("plain", "nat-backup", "full-tunnel")
TRAFFICS = ("stream", "ping")
FAULTS = ("silent", "link-down", "v4-death", "return")
LETTERS = {"a": "link-down", "b": "silent", "c": "return", "f": "v4-death"}
SETTLE = 3.0  # after healing: standby probes (every 2 s) find the healed uplink up again
RETURN_WAIT = 20.0  # after that, at most this long for the SA's return to m0
STILL_UP_AFTER = 15.0
M0 = "10.1.0.2"
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")

PAIR_ENDS = {
    "native-charon": ("mobike-vici native", "charon 5.9.8"),
    "native-native": ("mobike-vici native", "mobike-vici native"),
    "charon-charon": ("charon 5.9.8 (prefer_best_path, lab source routes)", "charon 5.9.8"),
    "charon+controller": ("charon 5.9.8 + mobike-vici run", "charon 5.9.8"),
    "charon-alone": ("charon 5.9.8 (alone, as beside the controller)", "charon 5.9.8"),
}
CONFIG_TEXT = {
    "plain": "routed uplinks m0 (preferred) and m1",
    "nat-backup": "m0 routed, m1 behind a carrier NAT (masquerade in rtr)",
    "full-tunnel": "remote_ts 0.0.0.0/0 and ::/0, virtual IPs of both families",
}
TRAFFIC_TEXT = {
    "stream": "one-way UDP mob -> gw inner address every 10 ms, nothing answers",
    "ping": "ping mob -> gw inner address every 10 ms (ESP both ways)",
}


# -- traffic -----------------------------------------------------------------------------

class Stream:
    """The harness's stream: ``seq sent received`` per arrival, CLOCK_MONOTONIC."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def times(self) -> list[tuple[int, float, float]]:
        return read_arrivals(self.path)

    def outage(self, fault: float) -> float | None:
        return outage(self.times(), fault)


class Ping:
    """A 100 Hz ping; each reply stamped with the wall clock (``ping -D``), turned into
    CLOCK_MONOTONIC with the offset taken when it started."""

    def __init__(self, path: Path, offset: float) -> None:
        self.path, self.offset = path, offset

    @classmethod
    def start(cls, lab: Lab, ns: Netns, dest: str, source: str | None = None) -> Ping:
        log = lab.workdir / "ping.log"
        argv = ["ping", "-D", "-n", "-i", "0.01", *(["-I", source] if source else []), dest]
        lab.spawn(ns, argv, log)
        return cls(log, time.time() - time.monotonic())

    def times(self) -> list[tuple[int, float, float]]:
        text = self.path.read_text(errors="replace") if self.path.exists() else ""
        out = []
        for line in text.splitlines():
            m = _REPLY.match(line)
            if m:
                at = float(m.group(1)) - self.offset
                out.append((0, at, at))
        return out

    def outage(self, fault: float) -> float | None:
        # 5 ms: not a reply already under way when the fault hit (RTT here is < 1 ms).
        after = [t for _, _, t in self.times() if t > fault + 0.005]
        return min(after) - fault if after else None


Traffic = Stream | Ping


# -- one lab with its tunnel up and the traffic flowing ------------------------------------

@dataclass
class Rig(UplinkDriver):
    """What a fault needs of either lab: the uplinks, where the SA is, the traffic."""

    lab: Lab
    topo: Mobile
    traffic: Traffic
    local: Callable[[], str | None]
    ike_spi: Callable[[], str | None]
    events: Callable[[], list[str]]
    lab_routes: bool  # charon in the handover lab: the lab keeps its per-uplink tables
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                close()
        self.closers.clear()

    def mob_local(self) -> str | None:
        return self.local()

    def outage_after(self, fault: float) -> float | None:
        return self.traffic.outage(fault)

    def arrivals(self) -> list[tuple[int, float, float]]:
        return self.traffic.times()


def _safe(read: Callable[[], str | None]) -> Callable[[], str | None]:
    def call() -> str | None:
        try:
            return read()
        except (LabError, KeyError, IndexError, ValueError, StopIteration, OSError,
                subprocess.SubprocessError):  # a status that times out under load
            return None
    return call


def harness_rig(lab: Lab, pair: str, config: str, traffic: str) -> Rig:
    mob_native, gw_native = HARNESS_PAIRS[pair]
    h = build_handover(lab, mob_native=mob_native, gw_native=gw_native,
                       nat_backup=config == "nat-backup", full_tunnel=config == "full-tunnel")
    closers: list[Callable[[], None]] = [h.close]
    flow: Traffic = Stream(h.arrivals_path)
    if traffic == "ping":
        sender = h.procs.pop()  # the stream's sender: a ping cell carries ping only
        sender.kill()
        sender.wait()
        flow = Ping.start(lab, h.topo.mob, INNER_ADDR)
    mob = h.mob

    def events() -> list[str]:
        if not isinstance(mob, NativeDaemon):
            return []
        mob.events.poll()
        return [str(e.get("event")) for e in mob.events.events]

    rig = Rig(lab, h.topo, flow, _safe(h.mob_local), _safe(lambda: sa_view(mob)["ike_spi"]),
              events, lab_routes=not mob_native, closers=closers)
    if rig.wait_resumed(time.monotonic(), 15.0) is None:
        rig.close()
        raise LabError(f"no {traffic} through the tunnel")
    return rig


def controller_confs(config: str) -> tuple[str, str]:
    """(mob, gw) swanctl.conf of the controller's lab for ``config``."""
    if config != "full-tunnel":
        return ctl.mobile_conf(), ctl.gateway_conf()
    return ctl.full_tunnel_confs()


def controller_rig(lab: Lab, pair: str, config: str, traffic: str) -> Rig:
    controller = pair == "charon+controller"
    mob_conf, gw_conf = controller_confs(config)
    gen = ctl.build(lab, mob_conf=mob_conf, gw_conf=gw_conf, prefer_best_path=controller,
                    nat_backup=config == "nat-backup")
    setup = next(gen)
    closers: list[Callable[[], None]] = [gen.close]
    try:
        # As in the handover lab: rtr drops a packet from m0's address that leaks out
        # through m1 (BCP 38), so an SA that has not moved really is cut off.
        setup.topo.rtr.sysctl("net.ipv4.conf.all.rp_filter", "1")
        if controller:
            setup.start_controller()
            setup.wait_event("ike_sa_tracked")
        else:
            setup.mob.load_all(setup.conf)
        setup.wait_local(M0)
        vip = next(v for v in setup.sa().get("local-vips", []) if ":" not in v)
        if not setup.topo.mob.ping(ctl.INNER, source=vip, wait=2.0) and not setup.tunnel_ping():
            raise LabError("no ping through the tunnel")
        flow: Traffic
        if traffic == "ping":
            flow = Ping.start(lab, setup.topo.mob, ctl.INNER, source=vip)
        else:
            sink = lab.workdir / "arrivals.txt"
            sink.write_text("")
            procs = [lab.spawn(setup.topo.gw, [sys.executable, str(STREAM), "recv", ctl.INNER,
                                               str(STREAM_PORT), str(sink)],
                               lab.workdir / "recv.log")]
            time.sleep(0.5)
            procs.append(lab.spawn(setup.topo.mob, [sys.executable, str(STREAM), "send",
                                                    ctl.INNER, str(STREAM_PORT), "0.01"],
                                   lab.workdir / "send.log"))

            def stop_stream() -> None:
                for proc in procs:
                    lab.stop(proc, grace=1.0)

            closers.append(stop_stream)
            flow = Stream(sink)
    except Exception as exc:
        for close in reversed(closers):
            close()
        if isinstance(exc, LabError):
            raise
        raise LabError((str(exc).splitlines() or [type(exc).__name__])[0]) from exc

    def events() -> list[str]:
        return [str(e.get("event")) for e in setup.event_list()]

    rig = Rig(lab, setup.topo, flow, _safe(lambda: setup.sa().get("local-host")),
              _safe(lambda: setup.spi() if setup.sa().get("state") == "ESTABLISHED" else None),
              events, lab_routes=False, closers=closers)
    if rig.wait_resumed(time.monotonic(), 15.0) is None:
        rig.close()
        raise LabError(f"no {traffic} through the tunnel")
    return rig


def make_rig(lab: Lab, pair: str, config: str, traffic: str) -> Rig:
    if pair in HARNESS_PAIRS:
        return harness_rig(lab, pair, config, traffic)
    return controller_rig(lab, pair, config, traffic)


# -- faults --------------------------------------------------------------------------------

def uplink_of(h: Any, local: str | None) -> int | None:
    """The uplink an address belongs to, by its IPv4 or its IPv6 address."""
    if local is None:
        return None
    addr = ipaddress.ip_address(local)
    for index, up in enumerate(h.topo.uplinks):
        if addr in (ipaddress.ip_address(up.addr4), ipaddress.ip_address(up.addr6)):
            return index
    return None


def active(h: Any) -> tuple[str | None, int]:
    """Where the IKE_SA sits, and its uplink, from one reading (two could disagree)."""
    local = h.mob_local()
    index = uplink_of(h, local)
    if index is None:
        raise RuntimeError(f"the IKE_SA sits on {local}, on no uplink of mob")
    return local, index


def back_on_preferred(h: Any) -> None:
    """After healing, until the SA is back on m0 (hold-down, 10 s by default), so that
    return cannot race the next run's fault: under load one status takes seconds, and
    a fault on the uplink read before the return hit the one the traffic had left."""
    wait_uplink(h, 0, RETURN_WAIT)


def wait_uplink(h: Any, index: int, timeout: float) -> bool:
    """Until the IKE_SA sits on uplink ``index`` (either address family)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if uplink_of(h, h.mob_local()) == index:
                return True
        except (LabError, KeyError, IndexError, ValueError):
            pass
        time.sleep(0.1)
    return False


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def measure(h: Any, before: float, fault: float, cap: float) -> dict[str, Any]:
    """``outage_s``: the longest gap in the traffic's arrivals from ``before`` (taken just
    before the fault was injected) to its first arrival after ``fault`` (when the fault's
    command returned); None when nothing came within ``cap``. The command's own latency
    (under load, ``ip netns exec nft`` may take 100 ms or more) cannot shorten it.
    ``first_after_s``: that first arrival minus ``fault``, this bench's older measure,
    which errs short by that latency."""
    got = h.wait_resumed(fault, cap)
    if got is None:
        return {"outage_s": None, "first_after_s": None}
    return {"outage_s": _round(max_gap(h.arrivals(), before, fault + got)),
            "first_after_s": _round(got)}


def case_a(h: Any, cap: float) -> dict[str, Any]:
    """Link down on the active uplink; the link comes back after the measurement."""
    local, idx = active(h)
    before = time.monotonic()
    fault = h.link_down(idx)
    out = {**measure(h, before, fault, cap), "from": local, "to": h.mob_local()}
    h.link_up(idx)
    time.sleep(SETTLE)
    back_on_preferred(h)
    return out


def case_b(h: Any, cap: float) -> dict[str, Any]:
    """The active uplink dies silently in rtr; it is healed after the measurement."""
    local, idx = active(h)
    before = time.monotonic()
    fault = h.kill_silently(idx)
    out: dict[str, Any] = {**measure(h, before, fault, cap), "from": local,
                           "to": h.mob_local()}
    healed = h.revive(idx)
    if out["outage_s"] is None and h.wait_resumed(healed, 30.0) is None:
        out["spoilt"] = "the tunnel did not recover after healing"
    time.sleep(SETTLE)
    back_on_preferred(h)
    return out


def case_c(h: Any, cap: float) -> dict[str, Any]:
    """The preferred uplink comes back: time to return, longest traffic gap around it."""
    lost: dict[str, Any] = {"outage_s": None, "return_s": None, "gap_s": None}
    if not wait_uplink(h, 0, 30.0):
        return lost  # never on the preferred uplink: nothing to return to
    fault = h.link_down(0)
    if h.wait_resumed(fault, cap) is None or not wait_uplink(h, 1, cap):
        h.link_up(0)
        return lost  # the first move failed: a return cannot be measured
    time.sleep(SETTLE)
    up = h.link_up(0)
    back = wait_uplink(h, 0, 40.0)
    returned = time.monotonic() if back else None
    time.sleep(0.5)
    gap = max_gap(h.arrivals(), up, time.monotonic()) if back else None
    return {"outage_s": _round(gap), "return_s": _round(None if returned is None
                                                        else returned - up),
            "gap_s": _round(gap)}


def case_f(h: Any, cap: float) -> dict[str, Any]:
    """IPv4 dies on both uplinks, IPv6 stays (the lab is not reused after this); then,
    15 s after the fault, is the same IKE_SA there and does the traffic still flow?"""
    spi = h.ike_spi()
    local = h.mob_local()
    before = time.monotonic()
    fault = h.kill_family(4)
    out: dict[str, Any] = {**measure(h, before, fault, cap), "from": local,
                           "to": h.mob_local()}
    time.sleep(max(0.0, fault + STILL_UP_AFTER - time.monotonic()))
    now = time.monotonic()
    flowing = h.wait_resumed(now, 2.0) is not None
    same = spi is not None and h.ike_spi() == spi
    out.update({"local_at_15s": h.mob_local(), "same_ike_sa": same,
                "traffic_at_15s": flowing, "same_ike_sa_up_15s": same and flowing})
    return out


CASES: dict[str, Callable[[Any, float], dict[str, Any]]] = {
    "link-down": case_a, "silent": case_b, "return": case_c, "v4-death": case_f}


# -- statistics ----------------------------------------------------------------------------

def cell_stats(samples: list[float | None], cap: float) -> dict[str, Any]:
    """n, median, p95 (nearest rank), max in seconds, a lost sample counted as ``cap``;
    ``lost`` says how many were."""
    n = len(samples)
    out: dict[str, Any] = {"n": n, "lost": sum(1 for s in samples if s is None),
                           "samples": [s if s is not None else "lost" for s in samples]}
    if not n:
        out.update({"median": None, "p95": None, "max": None})
        return out
    ranked = sorted(cap if s is None else s for s in samples)
    median = (ranked[(n - 1) // 2] + ranked[n // 2]) / 2.0
    p95 = ranked[max(0, math.ceil(0.95 * n) - 1)]
    out.update({"median": round(median, 4), "p95": round(p95, 4), "max": round(ranked[-1], 4)})
    return out


def summarize(runs: list[dict[str, Any]], cap: float) -> dict[str, Any]:
    measured = [r for r in runs if "setup_failed" not in r and "run_failed" not in r]
    out = cell_stats([r.get("outage_s") for r in measured], cap)
    out["setup_failed"] = len(runs) - len(measured)
    if any("first_after_s" in r for r in measured):
        older = cell_stats([r.get("first_after_s") for r in measured], cap)
        out["first_after"] = {k: older[k] for k in ("median", "p95", "max")}
    if any("same_ike_sa_up_15s" in r for r in measured):
        up = sum(1 for r in measured if r.get("same_ike_sa_up_15s"))
        out["same_ike_sa_up_15s"] = f"{up}/{len(measured)}"
    if any("return_s" in r for r in measured):
        out["return"] = cell_stats([r.get("return_s") for r in measured], cap)
    return out


# -- cells ---------------------------------------------------------------------------------

def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def run_cell(pair: str, config: str, traffic: str, fault: str, reps: int, cap: float,
             overheads: dict[str, Any], overhead_window: float) -> dict[str, Any]:
    """``reps`` repetitions of one cell; its runs and their statistics."""
    reuse = pair in HARNESS_PAIRS and fault in ("silent", "link-down")
    runs: list[dict[str, Any]] = []
    loads = [loadavg()]
    rig: Rig | None = None
    lab: Lab | None = None
    try:
        for _ in range(reps):
            if rig is None:
                lab = Lab()
                lab.__enter__()
                try:
                    rig = make_rig(lab, pair, config, traffic)
                except (LabError, AssertionError, RuntimeError, subprocess.SubprocessError,
                        OSError) as exc:
                    runs.append({"setup_failed": (str(exc).splitlines()
                                                  or [type(exc).__name__])[0][:200]})
                    lab.__exit__(None, None, None)
                    lab = None
                    continue
                if overhead_window > 0 and pair not in overheads:
                    addrs = [a for up in rig.topo.uplinks for a in (up.addr4, up.addr6)]
                    counters = Counters(rig.topo.rtr, addrs)
                    time.sleep(1.0)
                    overheads[pair] = counters.window(overhead_window, active=rig.mob_local())
            seen = len(rig.events())
            try:
                run = CASES[fault](rig, cap)
            except (LabError, RuntimeError, subprocess.SubprocessError) as exc:
                # The bench's own failure (e.g. the SA's address unreadable under load),
                # not a measurement: not counted, as a set-up failure, and a fresh lab.
                why = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
                run = {"run_failed": why, "spoilt": why}
            names = Counter(rig.events()[seen:])
            if names:
                run["events"] = dict(sorted(names.items()))
            runs.append(run)
            loads.append(loadavg())
            if not reuse or "spoilt" in run:
                rig.close()
                rig = None
                assert lab is not None
                lab.__exit__(None, None, None)
                lab = None
    finally:
        if rig is not None:
            rig.close()
        if lab is not None:
            lab.__exit__(None, None, None)
    mob, gw = PAIR_ENDS[pair]
    cell: dict[str, Any] = {
        "cell": f"{pair}/{config}/{traffic}/{fault}",
        "pair": pair, "mob": mob, "gw": gw,
        "config": config, "config_text": CONFIG_TEXT[config],
        "traffic": traffic, "traffic_text": TRAFFIC_TEXT[traffic], "fault": fault,
        "fresh_lab_per_rep": not reuse, "unit": "s", "cap_s": cap,
        **summarize(runs, cap),
        "loadavg_1m": {"min": min(loads), "max": max(loads)},
        "runs": runs,
    }
    return cell


def table_row(cell: dict[str, Any]) -> str:
    extra = ""
    if "same_ike_sa_up_15s" in cell:
        extra = f" same_ike_sa_up_15s={cell['same_ike_sa_up_15s']}"
    return (f"{cell['cell']}: n={cell['n']} median={cell['median']} p95={cell['p95']} "
            f"max={cell['max']} lost={cell['lost']} setup_failed={cell['setup_failed']}"
            f"{extra}")


def run(pairs: list[str], configs: list[str], traffics: list[str], faults: list[str],
        reps: int, cap: float, overhead_window: float = 0.0,
        progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every cell, pair after pair; the JSON (also used by handover_controller.py)."""
    started = time.monotonic()
    load_before = loadavg()
    overheads: dict[str, Any] = {}
    cells = []
    for pair in pairs:
        for fault in faults:
            for config in configs:
                for traffic in traffics:
                    cell = run_cell(pair, config, traffic, fault, reps, cap, overheads,
                                    overhead_window)
                    cells.append(cell)
                    if progress is not None:
                        progress(cell)
    return {
        "benchmark": "handover",
        "reps": reps, "cap_s": cap,
        "stream_interval_ms": 10, "ping_interval_ms": 10,
        "python": platform.python_version(),
        "machine": {"cpus": os.cpu_count(), "loadavg_1m_before": load_before,
                    "loadavg_1m_after": loadavg()},
        "table": [table_row(c) for c in cells],
        "cells": cells,
        **({"probe_overhead": overheads} if overheads else {}),
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def _names(text: str, known: tuple[str, ...], what: str,
           parser: argparse.ArgumentParser) -> list[str]:
    names = [n for n in text.split(",") if n]
    if bad := [n for n in names if n not in known]:
        parser.error(f"unknown {what}: {', '.join(bad)} (known: {', '.join(known)})")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--pairs", default="charon-charon,native-charon,native-native",
                        help=f"comma-separated, of {', '.join(PAIRS)}")
    parser.add_argument("--controller", action=argparse.BooleanOptionalAction, default=True,
                        help="also charon-alone and charon+controller")
    parser.add_argument("--cases", default="abcf",
                        help="letters: a link-down, b silent, c return, f v4-death")
    parser.add_argument("--fault", default=None,
                        help=f"comma-separated, of {', '.join(FAULTS)} (instead of --cases)")
    parser.add_argument("--dual-stack", action="store_true",
                        help="add the v4-death fault (the lab is always dual stack)")
    parser.add_argument("--traffic", choices=("stream", "ping", "both"), default=None)
    parser.add_argument("--ping", action="store_true", help="the same as --traffic ping")
    parser.add_argument("--nat", action="store_true",
                        help="also every cell with a carrier NAT on the backup uplink")
    parser.add_argument("--full-tunnel", action="store_true",
                        help="also every cell with a full tunnel (0.0.0.0/0 and ::/0)")
    parser.add_argument("--no-plain", action="store_true",
                        help="leave the plain config out (with --nat or --full-tunnel)")
    parser.add_argument("--cap", type=float, default=20.0,
                        help="seconds after which an outage counts as lost")
    parser.add_argument("--overhead-window", type=float, default=10.0,
                        help="seconds of steady state per pair to count probes in (0: off)")
    parser.add_argument("--progress", action="store_true",
                        help="each cell's table row on stderr as it ends")
    parser.add_argument("--jsonl", type=Path, default=None,
                        help="also append each cell's JSON to this file as it ends")
    args = parser.parse_args(argv)
    pairs = _names(args.pairs, PAIRS, "pair", parser)
    if args.controller:
        pairs += [p for p in CONTROLLER_PAIRS if p not in pairs]
    if args.fault is not None:
        faults = _names(args.fault, FAULTS, "fault", parser)
    else:
        if bad := [c for c in args.cases if c not in LETTERS]:
            parser.error(f"unknown case(s): {''.join(bad)}")
        faults = [LETTERS[c] for c in args.cases]
    if args.dual_stack and "v4-death" not in faults:
        faults.append("v4-death")
    traffic = args.traffic or ("ping" if args.ping else "stream")
    traffics = list(TRAFFICS) if traffic == "both" else [traffic]
    configs = [*([] if args.no_plain else ["plain"]), *(["nat-backup"] if args.nat else []),
               *(["full-tunnel"] if args.full_tunnel else [])]
    if not configs:
        parser.error("--no-plain leaves no config: add --nat or --full-tunnel")
    if not is_root() or not charon_available():
        print(json.dumps({"error": "needs root and strongSwan (charon)"}))
        return 2
    # Stopped from outside: unwind, so the lab ends its processes and namespaces.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def progress(cell: dict[str, Any]) -> None:
        if args.progress:
            print(table_row(cell), file=sys.stderr, flush=True)
        if args.jsonl is not None:
            with args.jsonl.open("a") as f:
                f.write(json.dumps(cell) + "\n")

    out = run(pairs, configs, traffics, faults, args.reps, args.cap, args.overhead_window,
              progress)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
