"""Benchmark: outage of a charon IKE_SA on uplink failures, charon alone vs charon + controller.

Per scenario and mode, several repetitions in fresh namespaces (``lab.topology.mobile``,
charon at both ends, kernel-libipsec): establish on m0, inject the fault, and measure
until charon's SA has moved (same IKE SPIs) and a ping through the tunnel answers
(``outage_s``); with ``--ping``, the outage is the first reply of the 100 Hz ping
stream after the fault (``stream_outage_s``), which the summary then ranks.

- ``link_down``: m0 goes down in mob.
- ``silent``: rtr drops everything from and to m0 (the link stays up).
- ``return``: after a silent failure and the move to m1, m0 comes back; time until
  the SA is on m0 again (the controller waits out ``hold_down`` first, 2 s here).

charon alone never leaves a silently dead path before its retransmissions give up
(165 s), so each measurement is capped (``--cap``, default 20 s) and reported as
``recovered: false``; a run whose set-up failed before the fault is ``setup_failed``
and counted apart (neither recovered nor not). Prints one JSON object (median and
p95 per scenario and mode); never judges the numbers. Needs root.

``median_s``/``p95_s`` are over the recovered runs only; ``median_ms``/``p95_ms``/``max_ms``
rank a run that did not recover last (a rank on one says "lost"), as bench/handover.py.
Probe overhead (``--overhead-window``, 0: off): per mode, one more lab with a 100 Hz
one-way stream through the tunnel and no fault; nftables counters in rtr count the
packets per uplink address and class (bench/_overhead.py). ``--ping``: a 100 Hz ping
through the tunnel from before the fault on (and in the overhead lab), so ESP comes
back from gw all along, as in a conversation.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _overhead import Counters
from _stats import describe_ms

from mobike_vici.lab.netns import Lab, LabError
from tests.controller.support import INNER, Setup, build
from tests.mobility.harness import STREAM, STREAM_PORT

M0: tuple[str, ...] = ("10.1.0.2", "2001:db8:1::2")
M1: tuple[str, ...] = ("10.2.0.2", "2001:db8:2::2")
MODES = ("charon_alone", "charon+controller")
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")
_WATCHED = ("inbound_stalled", "data_path_dead", "data_path_verified",
            "data_path_repair_started", "data_path_repaired", "handover_failed",
            "handover_completed", "path_down")


def _wait(cond: Any, cap: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < cap:
        if cond():
            return time.monotonic() - start
        time.sleep(0.02)
    return None


def return_traffic(setup: Setup) -> Path:
    """A 100 Hz ping from mob's virtual IP through the tunnel (the Lab ends it); its log,
    each reply stamped with the wall clock (``ping -D``)."""
    log = setup.lab.workdir / "ping.log"
    setup.lab.spawn(setup.topo.mob, ["ping", "-D", "-n", "-i", "0.01", "-I", setup.vip(),
                                     INNER], log)
    return log


def _stream_outage(log: Path, fault: float, cap: float) -> float | None:
    """First reply of the ping stream after ``fault`` (wall clock), minus ``fault``."""
    deadline = time.monotonic() + cap
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            m = _REPLY.match(line)
            if m and float(m.group(1)) > fault + 0.005:  # not a reply already under way
                return float(m.group(1)) - fault
        time.sleep(0.05)
    return None


def _icmp_counter(setup: Setup) -> None:
    """Count echo requests from mob's uplinks to the gateway's addresses, in rtr."""
    script = """
table inet mvbench {
    chain count_probes { type filter hook forward priority -10; policy accept;
        iifname "r0" icmp type echo-request counter
        iifname "r1" icmp type echo-request counter
        iifname "r0" icmpv6 type echo-request counter
        iifname "r1" icmpv6 type echo-request counter
    }
}
"""
    setup.topo.rtr.run("nft", "-f", "-", input_text=script)


def _icmp_count(setup: Setup) -> dict[str, int]:
    """Echo requests so far per uplink (m0 via r0, m1 via r1)."""
    out = setup.topo.rtr.run("nft", "list", "table", "inet", "mvbench", check=False).stdout
    counts = {"m0": 0, "m1": 0}
    for line in out.splitlines():
        m = re.search(r'iifname "r(\d)".*packets (\d+)', line)
        if m:
            counts[f"m{m.group(1)}"] += int(m.group(2))
    return counts


def _one(scenario: str, controller: bool, cap: float, ping: bool = False) -> dict[str, Any]:
    with Lab() as lab:
        gen = build(lab, prefer_best_path=controller)
        setup = next(gen)
        try:
            # Before the fault: a failure here says nothing about recovery.
            try:
                if controller:
                    setup.start_controller()
                    setup.wait_event("ike_sa_tracked")
                else:
                    setup.mob.load_all(setup.conf)
                setup.wait_local("10.1.0.2")
                spi = setup.spi()
                if not setup.tunnel_ping():
                    raise AssertionError("no ping through the tunnel before the fault")
                _icmp_counter(setup)
                t_start = time.monotonic()
                stream_log = return_traffic(setup) if ping else None
                if stream_log is not None:
                    time.sleep(1.0)
            except (AssertionError, LabError) as exc:
                return {"setup_failed": (str(exc).splitlines() or [type(exc).__name__])[0]}
            target = M1
            if scenario == "return":
                setup.topo.kill_silently(0)
                try:
                    setup.wait_local(M1, timeout=cap)
                except AssertionError:  # never left m0 (charon alone): nothing returns
                    return {"recovered": False, "outage_s": None, "left_m0": False}
                setup.topo.revive(0)
                target = M0
            elif scenario == "silent":
                setup.topo.kill_silently(0)
            else:
                setup.topo.link_down(0)
            t0 = time.monotonic()
            fault = time.time()

            def moved() -> bool:
                sa = setup.sa()
                return sa.get("local-host") in target and setup.spi() == spi

            took = _wait(moved, cap)
            if took is None:
                return {"recovered": False, "outage_s": None}
            vip = setup.vip()
            left = max(1.0, cap - (time.monotonic() - t0))
            pinged = _wait(lambda: setup.topo.mob.ping("10.88.0.1", source=vip, wait=1.0),
                           left)
            total = time.monotonic() - t0
            out: dict[str, Any] = {
                "recovered": pinged is not None, "moved_s": round(took, 4),
                "outage_s": round(total, 4) if pinged is not None else None}
            if stream_log is not None:
                gap = _stream_outage(stream_log, fault, 2.0)
                out["stream_outage_s"] = round(gap, 4) if gap is not None else None
            span = time.monotonic() - t_start
            out["probe_pps"] = {k: round(v / span, 2) for k, v in _icmp_count(setup).items()}
            if controller:
                names = [e["event"] for e in setup.event_list()]
                out["events"] = {n: names.count(n) for n in _WATCHED if n in names}
            return out
        except AssertionError:
            return {"recovered": False, "outage_s": None}
        finally:
            gen.close()


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    measured = [r for r in runs if "setup_failed" not in r]
    key = "stream_outage_s" if any("stream_outage_s" in r for r in measured) else "outage_s"
    outages = sorted(r[key] for r in measured if r.get(key) is not None)
    out: dict[str, Any] = {"runs": runs, "recovered": f"{len(outages)}/{len(measured)}",
                           "setup_failed": len(runs) - len(measured)}
    if outages:
        out["median_s"] = round(statistics.median(outages), 4)
        out["p95_s"] = round(outages[min(len(outages) - 1,
                                         round(0.95 * (len(outages) - 1)))], 4)
        out["max_s"] = round(outages[-1], 4)
    if measured:
        out["measure"] = key
        out.update(describe_ms([r.get(key) for r in measured]))
    return out


def overhead(controller: bool, window: float, ping: bool = False) -> dict[str, Any]:
    """Probe packets per second per uplink address, steady state with a one-way stream."""
    with Lab() as lab:
        gen = build(lab, prefer_best_path=controller)
        setup = next(gen)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            if controller:
                setup.start_controller()
                setup.wait_event("ike_sa_tracked")
            else:
                setup.mob.load_all(setup.conf)
            setup.wait_local("10.1.0.2")
            if not setup.tunnel_ping():
                return {"setup_failed": "no ping through the tunnel"}
            if ping:
                return_traffic(setup)
            sink = lab.workdir / "arrivals.txt"
            procs.append(lab.spawn(setup.topo.gw, [sys.executable, str(STREAM), "recv", INNER,
                                                   str(STREAM_PORT), str(sink)],
                                   lab.workdir / "recv.log"))
            time.sleep(0.5)
            procs.append(lab.spawn(setup.topo.mob, [sys.executable, str(STREAM), "send", INNER,
                                                    str(STREAM_PORT), "0.01"],
                                   lab.workdir / "send.log"))
            counters = Counters(setup.topo.rtr, [*M0, *M1])
            time.sleep(1.0)
            out = counters.window(window, active=setup.sa().get("local-host"))
            out["stream_arrivals"] = len(sink.read_text().splitlines())
            return out
        except (AssertionError, LabError) as exc:
            return {"setup_failed": (str(exc).splitlines() or [type(exc).__name__])[0]}
        finally:
            for proc in procs:
                lab.stop(proc, grace=1.0)
            gen.close()


def run_scenarios(scenarios: list[str], reps: int, cap: float,
                  overhead_window: float = 0.0, ping: bool = False) -> dict[str, Any]:
    """charon alone and charon+controller, side by side, per scenario (also used by handover.py)."""
    out: dict[str, Any] = {
        scenario: {
            mode: _summary([_one(scenario, mode == "charon+controller", cap, ping)
                            for _ in range(reps)])
            for mode in MODES
        }
        for scenario in scenarios
    }
    if overhead_window > 0:
        out["probe_overhead"] = {mode: overhead(mode == "charon+controller", overhead_window,
                                                ping)
                                 for mode in MODES}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--cap", type=float, default=20.0)
    ap.add_argument("--scenarios", default="link_down,silent,return")
    ap.add_argument("--overhead-window", type=float, default=10.0,
                    help="seconds of steady state per mode to count probes in (0: off)")
    ap.add_argument("--ping", action="store_true",
                    help="a 100 Hz ping through the tunnel from before the fault on")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/handover_controller.py needs root (network namespaces)", file=sys.stderr)
        return 2
    started = time.monotonic()
    load_before = os.getloadavg()
    result: dict[str, Any] = {"bench": "handover_controller", "cap_s": args.cap,
                              "reps": args.reps,
                              "scenarios": run_scenarios(args.scenarios.split(","),
                                                         args.reps, args.cap,
                                                         args.overhead_window, args.ping)}
    result["return_traffic"] = "ping 100 Hz" if args.ping else None
    result["machine"] = {"cpus": os.cpu_count(),
                         "loadavg_1m_before": round(load_before[0], 2),
                         "loadavg_1m_after": round(os.getloadavg()[0], 2)}
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
