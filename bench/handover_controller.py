"""Benchmark: outage of a charon IKE_SA on uplink failures, charon alone vs charon + controller.

The controller's cells of bench/handover.py (pairs ``charon-alone`` and
``charon+controller``, a fresh lab per repetition), under the scenario names this
bench always had:

- ``link_down``: the active uplink m0 goes down in mob.
- ``silent``: rtr drops everything from and to the active uplink (the link stays up).
- ``return``: m0 comes back while the SA is on m1: time until it is on m0 again.
- ``v4_death``: every uplink's IPv4 dies silently, IPv6 stays.

charon alone never leaves a silently dead path before its retransmissions give up
(165 s), so a run is capped (``--cap``) and then counts as lost. ``--ping``: the
traffic is a 100 Hz ping through the tunnel (ESP both ways), else the one-way stream.
Prints one JSON object (bench/handover.py's); never judges the numbers. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from handover import CONTROLLER_PAIRS, run

SCENARIOS = {"link_down": "link-down", "silent": "silent", "return": "return",
             "v4_death": "v4-death"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--cap", type=float, default=20.0)
    ap.add_argument("--scenarios", default="link_down,silent,return",
                    help=f"comma-separated, of {', '.join(SCENARIOS)}")
    ap.add_argument("--overhead-window", type=float, default=10.0,
                    help="seconds of steady state per mode to count probes in (0: off)")
    ap.add_argument("--ping", action="store_true",
                    help="a 100 Hz ping through the tunnel instead of the one-way stream")
    args = ap.parse_args(argv)
    names = args.scenarios.split(",")
    if bad := [n for n in names if n not in SCENARIOS]:
        ap.error(f"unknown scenario(s): {', '.join(bad)}")
    if os.geteuid() != 0:
        print("bench/handover_controller.py needs root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the lab cleans up
    out = run(list(CONTROLLER_PAIRS), ["plain"], ["ping" if args.ping else "stream"],
              [SCENARIOS[n] for n in names], args.reps, args.cap, args.overhead_window)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
