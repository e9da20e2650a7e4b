"""Benchmark: outage when charon has a request in flight on the uplink that dies silently.

charon + ``mobike-vici run`` on the mobile topology (the lab of tests/controller), a
100 Hz ping through the tunnel. Each repetition: charon's IKE_SA on m0, rtr blackholes
m0, and right after charon is made to send a request there:

- ``rekey``: a CHILD_SA rekey (``swanctl --rekey``);
- ``dpd``: a route event that keeps charon's path, which it checks with a DPD
  (``check_current_path``).

The blackhole lasts ``--hold`` seconds, then heals, and the controller brings charon
back to m0 before the next repetition. The outage is the longest gap between ping
replies from the fault to ``--hold`` + 5 s after it. Prints one JSON object, never
judges the numbers; ``load`` is the 1-minute load average before and after. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time

from mobike_vici.lab.charon_controller import INNER, Setup, build
from mobike_vici.lab.netns import Lab
from mobike_vici.lab.pinger import outage, replies

M0_V4, M1_V4 = "10.1.0.2", "10.2.0.2"
M0_ANY = (M0_V4, "2001:db8:1::2")  # back on m0: the controller keeps either family
KINDS = ("rekey", "dpd")


def _provoke(setup: Setup, kind: str, rep: int) -> None:
    if kind == "rekey":
        setup.mob.swanctl("--rekey", "--child", "net")
    else:  # any route via m0 is a route event for charon; a new prefix each time
        setup.topo.mob.ip("route", "add", f"198.51.100.{4 * rep}/30", "via", "10.1.0.1",
                          "dev", "m0")


def run_kind(kind: str, reps: int, hold: float) -> dict[str, object]:
    outages: list[float] = []
    with Lab() as lab:
        gen = build(lab)
        setup = next(gen)
        try:
            setup.start_controller()
            setup.wait_event("ike_sa_tracked")
            setup.wait_local(M0_V4)
            setup.wait_event("path_up", lambda e: e["local"].startswith(M1_V4))
            log = lab.workdir / "ping.log"
            lab.spawn(setup.topo.mob, [sys.executable, "-m", "mobike_vici.lab.pinger", INNER,
                                       "0.01", str(log)], lab.workdir / "pinger.out")
            for rep in range(reps):
                setup.wait_local(M0_ANY, timeout=60.0)
                time.sleep(3.0)  # standby probes of m1 answered, charon settled
                start = time.monotonic()
                setup.topo.kill_silently(0)
                _provoke(setup, kind, rep)
                time.sleep(hold)
                setup.topo.revive(0)
                time.sleep(5.0)
                outages.append(round(outage(replies(log), start, start + hold + 5.0), 3))
        finally:
            gen.close()
    return {"outages_s": outages, "median_s": round(statistics.median(outages), 3),
            "max_s": max(outages)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--hold", type=float, default=3.0, help="seconds the blackhole lasts")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {KINDS}")
    args = ap.parse_args(argv)
    kinds = args.kinds.split(",")
    if bad := [k for k in kinds if k not in KINDS]:
        ap.error(f"unknown kind(s): {', '.join(bad)}")
    if os.geteuid() != 0:
        print("bench/request_in_flight.py needs root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the lab cleans up
    load_before = os.getloadavg()[0]
    out: dict[str, object] = {"reps": args.reps, "hold_s": args.hold}
    for kind in kinds:
        out[kind] = run_kind(kind, args.reps, args.hold)
    out["load"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
