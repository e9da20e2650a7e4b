"""Handover outage: charon <-> charon, native <-> charon and native <-> native in one run.

The mobile topology (mob with uplinks m0/m1 through rtr to gw, see
tests/mobility/harness.py): mob initiates, gw responds, a UDP datagram every 10 ms
goes from mob through the tunnel to gw. Cases, each repeated ``--reps`` times:

  a  link down: the active uplink's link goes down in mob
  b  silent: rtr drops everything of the active uplink (its link stays up)
  c  return: the preferred uplink m0 comes back while mob runs on m1
  f  IPv4 dies while IPv6 remains: rtr drops both uplinks' IPv4 addresses (a fresh
     lab per repetition); outage as for (a, b)

Outage (a, b) = arrival of the first datagram sent after the fault minus the
fault time, capped at ``--cap`` seconds ("lost" beyond). For (c): how long after
m0 came back the SA returned to it, and the longest gap in the stream around the
return (a make-before-break return has none beyond the 10 ms pacing). Each cell gives
median / p95 / max (nearest rank; a lost run ranks last, so a rank on it is "lost").

Probe overhead: once per pair, in its first lab and before any fault, nftables counters
in rtr count what crosses per uplink address for ``--overhead-window`` seconds with the
stream running (bench/_overhead.py): probe packets per second per path, each direction.

With ``--ping`` a 100 Hz ping runs through the tunnel beside the stream, so ESP also
comes back from gw (the stream alone is one-way: nothing answers it), as in a
conversation; a detector that watches inbound ESP has something to watch.

With ``--full-tunnel`` every pair runs a second time with a full tunnel (mob asks for
``0.0.0.0/0`` and ``::/0`` with virtual IPs of both families, as a roaming client does);
those rows are under ``results_full_tunnel``, beside the narrow ones in ``results``.

Needs root and strongSwan. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _overhead import Counters
from _stats import describe_ms

from mobike_vici.lab.charon import charon_available
from mobike_vici.lab.netns import Lab, LabError, is_root
from tests.data.support import INNER_ADDR
from tests.mobility.harness import Handover, build, max_gap

PAIRS = {
    "charon-charon": (False, False),
    "native-charon": (True, False),
    "native-native": (True, True),
}
UPLINKS = ("10.1.0.2", "10.2.0.2")
SETTLE = 3.0  # after healing: standby probes (every 2 s) find the healed uplink up again
TARGETS_MS = {"a_link_down": 50.0, "b_silent": 1000.0}
_R = TypeVar("_R")


def summary(samples: list[float | None]) -> dict[str, Any]:
    got = [s * 1000.0 for s in samples if s is not None]
    out: dict[str, Any] = {
        "reps": len(samples),
        "lost": sum(1 for s in samples if s is None),
        "samples_ms": [round(s * 1000.0, 1) if s is not None else "lost" for s in samples],
    }
    if got:
        out.update(describe_ms(samples))
    else:
        out["median_ms"] = out["p95_ms"] = out["max_ms"] = "lost"
    return out


def machine() -> dict[str, Any]:
    """What else ran: the machine is shared, and load skews every number."""
    one, five, _ = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg_1m": round(one, 2), "loadavg_5m": round(five, 2)}


def probe_overhead(h: Handover, window: float) -> dict[str, Any]:
    """Packets per second per uplink address in steady state (no fault), by class."""
    addrs = [a for up in h.topo.uplinks for a in (up.addr4, up.addr6)]
    counters = Counters(h.topo.rtr, addrs)
    time.sleep(1.0)  # past the set-up's own exchanges
    return counters.window(window, active=h.mob_local())


def uplink_of(h: Handover, local: str | None) -> int | None:
    """The uplink an address belongs to, by its IPv4 or its IPv6 address."""
    if local is None:
        return None
    addr = ipaddress.ip_address(local)
    for index, up in enumerate(h.topo.uplinks):
        if addr in (ipaddress.ip_address(up.addr4), ipaddress.ip_address(up.addr6)):
            return index
    return None


def active_index(h: Handover) -> int:
    index = uplink_of(h, h.mob_local())
    if index is None:
        raise RuntimeError(f"the IKE_SA sits on {h.mob_local()}, on no uplink of mob")
    return index


def wait_uplink(h: Handover, index: int, timeout: float) -> bool:
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


def case_a(h: Handover, cap: float) -> float | None:
    idx = active_index(h)
    fault = h.link_down(idx)
    outage = h.wait_resumed(fault, cap)
    h.link_up(idx)
    time.sleep(SETTLE)
    return outage


def case_b(h: Handover, cap: float) -> float | None:
    idx = active_index(h)
    fault = h.kill_silently(idx)
    outage = h.wait_resumed(fault, cap)
    healed = h.revive(idx)
    if outage is None and h.wait_resumed(healed, 30.0) is None:
        raise RuntimeError("tunnel did not recover after healing")
    time.sleep(SETTLE)
    return outage


def case_c(h: Handover, cap: float) -> dict[str, float | None]:
    lost: dict[str, float | None] = {"return_s": None, "gap": None}
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
    return {"return_s": None if returned is None else returned - up, "gap": gap}


def return_traffic(h: Handover) -> None:
    """A 100 Hz ping from mob through the tunnel to gw's inner address (h.close ends it)."""
    h.procs.append(h.lab.spawn(h.topo.mob, ["ping", "-n", "-q", "-i", "0.01", INNER_ADDR],
                               h.lab.workdir / "ping.log"))


def case_f(h: Handover, cap: float) -> float | None:
    """IPv4 dies on both uplinks, IPv6 stays (the lab is not reused after this)."""
    for up in h.topo.uplinks:
        h.lab.blackhole(h.topo.rtr, up.addr4)
    fault = time.monotonic()
    return h.wait_resumed(fault, cap)


def run_pair(name: str, reps: int, cases: str, cap: float,
             full_tunnel: bool = False, overhead_window: float = 0.0,
             ping: bool = False) -> dict[str, Any]:
    mob_native, gw_native = PAIRS[name]
    out: dict[str, Any] = {}

    def start(lab: Lab) -> Handover:
        h = build(lab, mob_native=mob_native, gw_native=gw_native, full_tunnel=full_tunnel)
        if ping:
            return_traffic(h)
        return h

    def overhead(h: Handover) -> None:
        if overhead_window > 0 and "probe_overhead" not in out:
            out["probe_overhead"] = probe_overhead(h, overhead_window)

    def fresh_lab_each(run: Callable[[Handover, float], _R]) -> list[_R]:
        """``run`` once per repetition, each in a lab of its own."""
        results = []
        for _ in range(reps):
            with Lab() as lab:
                h = start(lab)
                try:
                    overhead(h)
                    results.append(run(h, cap))
                finally:
                    h.close()
        return results

    for case in cases:
        if case == "f":
            out["f_ipv4_dies"] = summary(fresh_lab_each(case_f))
            continue
        if case == "c":
            # A fresh lab per repetition: two moves per run, and back-to-back runs
            # would soon meet max_moves_per_minute (flap damping), not the hold-down.
            runs = fresh_lab_each(case_c)
            out["c_return"] = {"return_after_ms": summary([r["return_s"] for r in runs]),
                               "max_gap_ms": summary([r["gap"] for r in runs])}
            continue
        with Lab() as lab:
            h = start(lab)
            try:
                overhead(h)
                if case == "a":
                    out["a_link_down"] = summary([case_a(h, cap) for _ in range(reps)])
                elif case == "b":
                    out["b_silent"] = summary([case_b(h, cap) for _ in range(reps)])
            finally:
                h.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--cases", default="abcf")
    parser.add_argument("--pairs", default=",".join(PAIRS))
    parser.add_argument("--cap", type=float, default=20.0,
                        help="seconds after which an outage counts as lost")
    parser.add_argument("--controller", action=argparse.BooleanOptionalAction, default=True,
                        help="also run charon alone vs charon+controller (mobike-vici run)")
    parser.add_argument("--full-tunnel", action="store_true",
                        help="also run every pair with a full tunnel (0.0.0.0/0 and ::/0)")
    parser.add_argument("--overhead-window", type=float, default=10.0,
                        help="seconds of steady state per pair to count probes in (0: off)")
    parser.add_argument("--ping", action="store_true",
                        help="a 100 Hz ping through the tunnel beside the one-way stream")
    args = parser.parse_args(argv)
    if not is_root() or not charon_available():
        print(json.dumps({"error": "needs root and strongSwan (charon)"}))
        return 2
    started = time.monotonic()
    load_before = machine()
    results: dict[str, Any] = {name: run_pair(name, args.reps, args.cases, args.cap,
                                              overhead_window=args.overhead_window,
                                              ping=args.ping)
                               for name in args.pairs.split(",")}
    full: dict[str, Any] | None = None
    if args.full_tunnel:
        full = {name: run_pair(name, args.reps, args.cases, args.cap, full_tunnel=True,
                               overhead_window=args.overhead_window, ping=args.ping)
                for name in args.pairs.split(",")}
    if args.controller:
        # Same scenarios for the controller beside charon (its own harness, same lab).
        from handover_controller import run_scenarios

        results["charon+controller-charon"] = run_scenarios(
            ["link_down", "silent", "return"], args.reps, args.cap,
            overhead_window=args.overhead_window, ping=args.ping)
    print(json.dumps({
        "benchmark": "handover",
        "reps": args.reps,
        "cap_s": args.cap,
        "stream_interval_ms": 10,
        "return_traffic": "ping 100 Hz" if args.ping else None,
        "targets_ms": TARGETS_MS,
        "python": platform.python_version(),
        "machine": {"before": load_before, "after": machine()},
        "results": results,
        **({"results_full_tunnel": full} if full is not None else {}),
        "elapsed_s": round(time.monotonic() - started, 1),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
