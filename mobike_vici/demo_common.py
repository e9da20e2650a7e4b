"""What both demos share (``demo``: the native daemons; ``demo_charon``: charon and the
controller): exit codes, the raw event record, and the ping through the tunnel."""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path
from typing import TextIO

from mobike_vici.eventlog import open_events_file
from mobike_vici.lab.native import Event
from mobike_vici.lab.netns import Lab
from mobike_vici.lab.topology import Mobile
from mobike_vici.timeline import fault_event

EXIT_OK, EXIT_FAILED, EXIT_NEED_ROOT = 0, 1, 2
INNER_ADDR = "10.88.0.1"
PING_INTERVAL = "0.01"
_REPLY = re.compile(rb"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+).* time=")
"""An echo reply; not an ICMP error ("From ... Destination Net Unreachable") nor, with
``-O``, an echo left unanswered ("no answer yet for icmp_seq=...")."""


class Record:
    """Where the raw events go: ``events.jsonl`` always, the terminal too with --verbose.

    Each line is the daemon's event with the ``side`` that wrote it; an injected
    fault is a ``fault`` line (side ``demo``), the mark the timeline draws for it.
    """

    def __init__(self, path: Path, out: TextIO, verbose: bool) -> None:
        self.path = path
        self.out = out
        self.verbose = verbose
        self.faults: list[dict[str, object]] = []
        self._file = open_events_file(str(fresh(path)))

    def event(self, label: str, ev: Event) -> None:
        print(json.dumps({"side": label, **ev}), file=self._file, flush=True)
        if self.verbose:
            print(f"[{label}] {json.dumps(ev)}", file=self.out, flush=True)

    def fault(self, what: str, at: float) -> None:
        line = fault_event(what, at)
        self.faults.append(line)
        self.event("demo", line)

    def detail(self, text: str) -> None:
        """A line only --verbose shows (routes, status, where the lab lives)."""
        if self.verbose:
            print(f"demo: {text}", file=self.out, flush=True)

    def close(self) -> None:
        self._file.close()


def fresh(path: Path) -> Path:
    """``path`` with nothing at it: a rerun into the same directory starts over, and a
    symbolic link left there is removed rather than followed."""
    path.unlink(missing_ok=True)
    return path


def say(out: TextIO, text: str) -> None:
    print(f"demo: {text}", file=out, flush=True)


def echo_replies(log: bytes) -> list[float]:
    """The times of the echo replies in a ``ping -D`` log."""
    return [float(m.group(1)) for line in log.splitlines()
            if (m := _REPLY.match(line)) is not None]


class Pinger:
    """``ping -D`` every 10 ms through the tunnel; reply times on the wall clock.

    ``target``: the address to ping (the gateway's inner one); ``source``: the address
    to ping from (a virtual IP); ``unanswered``: ``-O``, a line for every echo left
    unanswered, so the log shows how long it ran."""

    def __init__(self, lab: Lab, topo: Mobile, log: Path, *, target: str = INNER_ADDR,
                 source: str | None = None, unanswered: bool = False) -> None:
        self.log = fresh(log)
        argv = ["ping", "-n", "-D", "-i", PING_INTERVAL]
        argv += ["-I", source] if source is not None else []
        argv += ["-O"] if unanswered else []
        self.proc = lab.spawn(topo.mob, [*argv, target], self.log)

    def replies(self) -> list[float]:
        return echo_replies(self.log.read_bytes()) if self.log.exists() else []

    def replies_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first reply after it, None if none yet."""
        return next((t - moment for t in self.replies() if t > moment), None)

    def gap(self, start: float, end: float) -> float:
        """The longest silence between replies from ``start`` to the first reply after
        ``end``: the outage as the traffic saw it (a reply already under way when
        the fault hit does not hide it)."""
        times = self.replies()
        before = [t for t in times if t <= start]
        after = [t for t in times if t > end]
        inside = [t for t in times if start < t <= end]
        points = [before[-1] if before else start, *inside, *after[:1]]
        return max((b - a for a, b in itertools.pairwise(points)), default=0.0)

    def wait(self, moment: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.replies_after(moment)
            if got is not None:
                return got
            time.sleep(0.02)
        return None
