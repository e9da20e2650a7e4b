"""False moves: a tunnel whose peer is merely quiet must never move.

One lab per mode, ``--duration`` seconds (default 600) in two phases: first a one-way
stream (a 32-byte UDP datagram every 10 ms from mob through the tunnel to a sink on gw
that never answers, so nothing comes back inside the tunnel), then nothing at all
(idle; ``--idle-share`` of the time, default half). No fault is injected, so every
move, handover or path_down is a false one. Modes:

- ``native-charon``: our daemon in mob, charon as the gateway (mobike_vici/lab/handover.py)
- ``native-native``: our daemon at both ends
- ``charon+controller``: charon at both ends, ``mobike-vici run`` beside the mobile
  charon (mobike_vici/lab/charon_controller.py)

Per phase: the initiator's events by name (those that say it thought a path died or
moved: ``suspect_events``), the SA's local address sampled every ``--sample`` seconds
(``local_address_changes``: moves seen from outside, whatever the events say), the
stream datagrams that arrived, and the packets per second per uplink address and class
that rtr forwarded (nftables counters, bench/_overhead.py): the probes sent.
``false_moves`` is handover_started events plus address changes that no such event
explains; the goal is zero. Prints one JSON object; never judges. Needs root and
strongSwan.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _overhead import Counters, rates

from mobike_vici.lab.charon import charon_available
from mobike_vici.lab.charon_controller import INNER
from mobike_vici.lab.charon_controller import build as build_controller
from mobike_vici.lab.handover import STREAM, STREAM_PORT, sa_view
from mobike_vici.lab.handover import build as build_handover
from mobike_vici.lab.native import NativeDaemon
from mobike_vici.lab.netns import Lab, LabError, is_root

MODES = ("native-charon", "native-native", "charon+controller")
UPLINK_ADDRS = ("10.1.0.2", "2001:db8:1::2", "10.2.0.2", "2001:db8:2::2")
SUSPECT_WORDS = ("handover", "move", "path_down", "repair", "data_path", "suspect",
                 "routability")
"""Event names with one of these in them say the initiator thought something moved or died."""


def suspect(names: Counter[str]) -> dict[str, int]:
    """The events among ``names`` that would be a false alarm without a fault (pure)."""
    return {name: n for name, n in sorted(names.items())
            if any(word in name for word in SUSPECT_WORDS)}


def changes(samples: Iterable[str | None]) -> int:
    """How often consecutive known samples differ (pure; None = not known then)."""
    count, last = 0, None
    for value in samples:
        if value is None:
            continue
        if last is not None and value != last:
            count += 1
        last = value
    return count


def false_moves(names: Counter[str], address_changes: int) -> int:
    """Moves started, or seen from outside when no event said so (pure)."""
    started = names.get("handover_started", 0)
    return max(started, address_changes)


class Run:
    """One mode's lab, reduced to what the soak needs."""

    def __init__(self, lab: Lab, events: Callable[[], list[dict[str, Any]]],
                 local: Callable[[], str | None], arrivals: Callable[[], int],
                 stop_stream: Callable[[], None], counters: Counters) -> None:
        self.lab, self.events, self.local = lab, events, local
        self.arrivals, self.stop_stream, self.counters = arrivals, stop_stream, counters


def _safe_local(read: Callable[[], str | None]) -> Callable[[], str | None]:
    def local() -> str | None:
        try:
            return read()
        except (LabError, KeyError, IndexError, ValueError, StopIteration, OSError,
                subprocess.SubprocessError):  # a status that times out under load
            return None
    return local


def start(mode: str, lab: Lab, closers: list[Callable[[], None]]) -> Run:
    if mode in ("native-charon", "native-native"):
        h = build_handover(lab, mob_native=True, gw_native=mode == "native-native")
        closers.append(h.close)
        mob = h.mob
        assert isinstance(mob, NativeDaemon)

        def events() -> list[dict[str, Any]]:
            mob.events.poll()
            return list(mob.events.events)

        def stop() -> None:
            proc = h.procs[1]  # the sender; the receiver stays as the sink
            if proc.poll() is None:
                proc.kill()
                proc.wait()

        return Run(lab, events, _safe_local(lambda: sa_view(mob)["local"]),
                   lambda: len(h.arrivals()), stop, Counters(h.topo.rtr, UPLINK_ADDRS))
    gen = build_controller(lab, prefer_best_path=True)
    setup = next(gen)
    closers.append(gen.close)
    setup.start_controller()
    setup.wait_event("ike_sa_tracked")
    setup.wait_local("10.1.0.2")
    if not setup.tunnel_ping():
        raise LabError("no ping through the tunnel")
    sink = lab.workdir / "arrivals.txt"
    sink.write_text("")
    recv = lab.spawn(setup.topo.gw, [sys.executable, str(STREAM), "recv", INNER,
                                     str(STREAM_PORT), str(sink)], lab.workdir / "recv.log")
    time.sleep(0.5)
    send = lab.spawn(setup.topo.mob, [sys.executable, str(STREAM), "send", INNER,
                                      str(STREAM_PORT), "0.01"], lab.workdir / "send.log")
    closers.append(lambda: _stop(lab, [recv, send]))
    return Run(lab, setup.event_list, _safe_local(lambda: setup.sa().get("local-host")),
               lambda: len(sink.read_text().splitlines()), lambda: _stop(lab, [send]),
               Counters(setup.topo.rtr, UPLINK_ADDRS))


def _stop(lab: Lab, procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        lab.stop(proc, grace=1.0)


def phase(run: Run, name: str, seconds: float, sample: float) -> dict[str, Any]:
    seen_before = len(run.events())
    arrived_before = run.arrivals()
    first = run.local()
    locals_: list[str | None] = [first]
    before, t0 = run.counters.read(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(min(sample, max(0.0, seconds - (time.monotonic() - t0))))
        locals_.append(run.local())
    after, t1 = run.counters.read(), time.monotonic()
    seen = run.events()
    names = Counter(str(e.get("event")) for e in seen[seen_before:])
    moved = changes(locals_)
    per = rates(before, after, t1 - t0)
    return {
        "phase": name,
        "seconds": round(t1 - t0, 1),
        "false_moves": false_moves(names, moved),
        "local_address_changes": moved,
        "local_first": first,
        "local_last": locals_[-1],
        "suspect_events": suspect(names),
        "events_by_name": dict(sorted(names.items())),
        "events_in_stream": len(seen),  # since start: shows the stream was read at all
        "stream_arrivals": run.arrivals() - arrived_before,
        "probe_pps_total": round(sum(s["probe_pps_out"] + s["probe_pps_in"]
                                     for s in per.values()), 2),
        "probe_packets_total": round(sum(s["probe_pps_out"] + s["probe_pps_in"]
                                         for s in per.values()) * (t1 - t0)),
        "per_address": per,
    }


def soak(mode: str, duration: float, idle_share: float, sample: float) -> dict[str, Any]:
    closers: list[Callable[[], None]] = []
    with Lab() as lab:
        try:
            try:
                run = start(mode, lab, closers)
            except (AssertionError, LabError) as exc:
                return {"setup_failed": (str(exc).splitlines() or [type(exc).__name__])[0]}
            one_way = duration * (1.0 - idle_share)
            phases = [phase(run, "one_way", one_way, sample)]
            run.stop_stream()
            phases.append(phase(run, "idle", duration - one_way, sample))
            return {"false_moves": sum(p["false_moves"] for p in phases), "phases": phases}
        finally:
            for close in reversed(closers):
                close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds per mode")
    ap.add_argument("--idle-share", type=float, default=0.5,
                    help="the share of --duration with no traffic at all (after the stream)")
    ap.add_argument("--modes", default="native-charon,charon+controller",
                    help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--sample", type=float, default=2.0,
                    help="seconds between looks at the SA's local address")
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    if unknown := [m for m in modes if m not in MODES]:
        ap.error(f"unknown mode(s): {', '.join(unknown)}")
    if not 0.0 <= args.idle_share <= 1.0:
        ap.error("--idle-share is a share, 0..1")
    if not is_root() or not charon_available():
        print(json.dumps({"error": "needs root and strongSwan (charon)"}))
        return 2
    started = time.monotonic()
    load_before = os.getloadavg()
    results = {mode: soak(mode, args.duration, args.idle_share, args.sample) for mode in modes}
    print(json.dumps({
        "benchmark": "false_moves",
        "duration_s": args.duration,
        "idle_share": args.idle_share,
        "stream_interval_ms": 10,
        "results": results,
        "machine": {"cpus": os.cpu_count(), "loadavg_1m_before": round(load_before[0], 2),
                    "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "elapsed_s": round(time.monotonic() - started, 1),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
