"""The flood window of a false peer address on a charon gateway, with and without the controller.

The mobile topology (tests/mobility): our daemon on mob (``mover.py``) sends an
authenticated UPDATE_SA_ADDRESSES from m1's address while rtr drops everything towards
m1, the way a peer that lies about its address points the gateway at a victim. charon
on gw follows at once. Measured from tcpdump on gw's uplink, per run: ESP and IKE
packets charon sent towards m1 after the move (count, first and last, seconds after the
move), and when charon's IKE_SA was gone. ``charon`` runs charon alone; ``controller``
adds ``mobike-vici run`` on gw with ``return_routability = always`` and
``handover_timeout = --bound``. Each run watches for ``--window`` seconds (a run ends
one second after the SA is gone). ``genuine``: the same move with the return path
intact, beside the controller: how long the check took (``return_routability_ok``) and
the outage of the stream through the tunnel (mob to gw, the direction charon does
not move).

Needs root and strongSwan. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobike_vici.lab.charon import charon_available
from mobike_vici.lab.gateway_rr import spoofed_move, start
from mobike_vici.lab.handover import outage
from mobike_vici.lab.netns import Lab, LabError, is_root


def genuine(lab: Lab, bound: float) -> dict[str, Any]:
    run = start(lab, controller=True, bound=bound)
    try:
        assert run.h.mob.proc is not None
        moved = time.monotonic()
        run.h.mob.proc.send_signal(signal.SIGUSR1)
        ok = run.wait_event("return_routability_ok", bound + 10.0)
        time.sleep(1.0)
        gap = outage(run.h.arrivals(), moved)
        return {"check_ms": ok["duration_ms"],
                "stream_mob_to_gw_outage_ms": round(gap * 1000, 1) if gap is not None else None}
    finally:
        run.h.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--bound", type=float, default=3.0)
    args = parser.parse_args(argv)
    if not is_root() or not charon_available():
        print(json.dumps({"error": "needs root and strongSwan (charon)"}))
        return 2
    rows: dict[str, list[dict[str, Any]]] = {"charon": [], "controller": [], "genuine": []}
    for _ in range(args.reps):
        try:
            with Lab() as lab:
                rows["genuine"].append(genuine(lab, args.bound))
        except (LabError, AssertionError) as exc:
            rows["genuine"].append({"error": str(exc)[-300:]})
        for name, controller in (("charon", False), ("controller", True)):
            try:
                with Lab() as lab:
                    run, seen = spoofed_move(lab, controller=controller, window=args.window,
                                             bound=args.bound)
                    run.h.close()
                    rows[name].append(seen)
            except LabError as exc:
                rows[name].append({"error": str(exc)})
    print(json.dumps({"bench": "gateway_rr", "host": platform.node(),
                      "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "window_s": args.window, "bound_s": args.bound, "results": rows},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
