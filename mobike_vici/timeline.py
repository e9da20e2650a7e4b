"""``mobike-vici timeline``: one picture of what a handover did, from the event stream.

Top: the echo RTT through the tunnel from a ``ping -D`` log, with every silence
longer than a few ping intervals shaded as an outage and labelled with its length.
Bottom: which local address each connection's IKE_SA used over time. Both: the
events that tell the story (fault, path_down, handover_started, handover_completed,
handover_failed) as vertical marks. A ``fault`` event is not one the daemon writes:
whoever injects a fault (the demo, a test, an operator's script) appends
``{"timestamp": ..., "event": "fault", "what": ...}`` to the events file.

Rendered headless with matplotlib's Agg canvas (no display, no global pyplot state).
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

WIDTH_IN, HEIGHT_IN, DPI = 10.0, 6.0, 100
"""The picture: 1000 x 600 pixels."""
GAP_INTERVALS = 3.0
"""A silence longer than this many ping intervals is an outage."""
MIN_GAP = 0.05
"""... and never shorter than this (seconds), whatever the interval."""
CLUSTER = 0.02
"""Marks within this share of the time axis get one label."""
MAX_LINES = 1_000_000
"""Lines read from either input: a bound, not a limit anyone should meet."""

MARKS = {
    "fault": ("black", "fault"),
    "path_down": ("tab:red", "path down"),
    "handover_started": ("tab:orange", "handover started"),
    "handover_completed": ("tab:green", "handover done"),
    "handover_failed": ("tab:purple", "handover failed"),
}
# Events that say where an IKE_SA is now (its ``local`` field).
_LOCATORS = frozenset({"ike_sa_established", "handover_completed", "ike_sa_moved",
                       "peer_moved", "addresses_updated"})
_PING = re.compile(r"^\[(\d+(?:\.\d+)?)\].*icmp_seq=(\d+).*time=(\d+(?:\.\d+)?) ms")


class TimelineError(Exception):
    """The inputs cannot make a picture; the message says why."""


@dataclass(frozen=True, slots=True)
class Mark:
    t: float
    name: str
    label: str


@dataclass(frozen=True, slots=True)
class Outage:
    start: float
    end: float


def fault_event(what: str, at: float) -> dict[str, object]:
    """The line to append to an events file when injecting a fault at ``at`` (epoch)."""
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"timestamp": stamp, "event": "fault", "level": "info", "what": what}


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _addr(endpoint: object) -> str:
    text = str(endpoint)
    return text.rsplit("[", 1)[0] if text.endswith("]") else text


def read_events(path: str | Path) -> list[dict[str, object]]:
    """The event objects with a readable timestamp; other lines are skipped."""
    out: list[dict[str, object]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f):
            if n >= MAX_LINES:
                break
            try:
                obj = json.loads(line)
                obj["_t"] = _epoch(str(obj["timestamp"]))
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(obj, dict):
                out.append(obj)
    if not out:
        raise TimelineError(f"{path}: no events with a timestamp")
    return sorted(out, key=lambda e: float(e["_t"]))  # type: ignore[arg-type]


def read_pings(path: str | Path) -> list[tuple[float, int, float]]:
    """(epoch, icmp_seq, rtt_ms) of every reply in a ``ping -D`` log."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f):
            if n >= MAX_LINES:
                break
            m = _PING.match(line.strip())
            if m:
                out.append((float(m.group(1)), int(m.group(2)), float(m.group(3))))
    return out


def outages(replies: list[tuple[float, int, float]]) -> list[Outage]:
    """Silences between replies longer than ``GAP_INTERVALS`` ping intervals."""
    times = sorted(t for t, _, _ in replies)
    if len(times) < 3:
        return []
    steps = [b - a for a, b in itertools.pairwise(times)]
    limit = max(MIN_GAP, GAP_INTERVALS * statistics.median(steps))
    return [Outage(a, b) for a, b in itertools.pairwise(times) if b - a > limit]


def marks(events: Iterable[dict[str, object]]) -> list[Mark]:
    out = []
    for e in events:
        name = str(e.get("event"))
        if name in MARKS:
            label = MARKS[name][1]
            if name == "fault" and e.get("what"):
                label = f"fault: {e['what']}"
            elif name == "path_down" and e.get("local"):
                label = f"path down {_addr(e['local'])}"
            out.append(Mark(float(e["_t"]), name, label))  # type: ignore[arg-type]
    return out


def active_paths(events: Iterable[dict[str, object]]) -> dict[str, list[tuple[float, str]]]:
    """Per connection, (time, local address) each time its IKE_SA was seen somewhere."""
    out: dict[str, list[tuple[float, str]]] = {}
    for e in events:
        name = e.get("event")
        initial = name == "path_selected" and e.get("reason") == "initial"
        if (name in _LOCATORS or initial) and e.get("local"):
            conn = str(e.get("conn") or "?")
            steps = out.setdefault(conn, [])
            local = _addr(e["local"])
            if not steps or steps[-1][1] != local:
                steps.append((float(e["_t"]), local))  # type: ignore[arg-type]
    return out


def _clusters(items: list[Mark], width: float) -> list[list[Mark]]:
    """Marks closer than ``width`` share one label (they would print over each other)."""
    groups: list[list[Mark]] = []
    for mark in sorted(items, key=lambda m: m.t):
        if groups and mark.t - groups[-1][0].t < width:
            groups[-1].append(mark)
        else:
            groups.append([mark])
    return groups


def render(events_path: str | Path, output: str | Path, *, pings: str | Path | None = None,
           title: str | None = None) -> Path:
    """Draw the picture to ``output`` (PNG); returns its path."""
    events = read_events(events_path)
    replies = read_pings(pings) if pings is not None else []
    starts = [float(events[0]["_t"])] + ([replies[0][0]] if replies else [])  # type: ignore[arg-type]
    ends = [float(events[-1]["_t"])] + ([replies[-1][0]] if replies else [])  # type: ignore[arg-type]
    t0, t_end = min(starts), max(ends)

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    rtt_ax, path_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    fig.suptitle(title or "mobike-vici: handover timeline")

    if replies:
        rtt_ax.plot([t - t0 for t, _, _ in replies], [r for _, _, r in replies],
                    ".", markersize=3, color="tab:blue", label="echo RTT through the tunnel")
        for gap in outages(replies):
            rtt_ax.axvspan(gap.start - t0, gap.end - t0, color="tab:red", alpha=0.2)
            rtt_ax.annotate(f"outage {gap.end - gap.start:.2f} s",
                            xy=((gap.start + gap.end) / 2 - t0, 0.5),
                            xycoords=("data", "axes fraction"), ha="center",
                            color="tab:red", fontsize=9)
        rtt_ax.set_ylim(bottom=0)
    else:
        rtt_ax.text(0.5, 0.5, "no ping log (--pings)", transform=rtt_ax.transAxes,
                    ha="center", color="gray")
    rtt_ax.set_ylabel("RTT (ms)")

    paths = active_paths(events)
    addrs = sorted({a for steps in paths.values() for _, a in steps})
    for conn, steps in paths.items():
        xs = [t - t0 for t, _ in steps] + [t_end - t0]
        ys = [addrs.index(a) for _, a in steps]
        path_ax.step(xs, [*ys, ys[-1]], where="post", linewidth=2, label=conn)
    path_ax.set_yticks(range(len(addrs)), addrs)
    path_ax.set_ylim(-0.5, max(len(addrs) - 0.5, 0.5))
    path_ax.set_ylabel("local address")
    path_ax.set_xlabel("seconds")

    seen: set[str] = set()
    all_marks = marks(events)
    for mark in all_marks:
        color = MARKS[mark.name][0]
        for ax in (rtt_ax, path_ax):
            ax.axvline(mark.t - t0, color=color, linestyle="--", linewidth=1,
                       label=MARKS[mark.name][1] if ax is rtt_ax and mark.name not in seen
                       else None)
        seen.add(mark.name)
    for group in _clusters(all_marks, CLUSTER * max(t_end - t0, 1.0)):
        # One line per distinct label: turned upright, lines stand side by side,
        # where one joined line ran off the axes and collapsed the layout.
        text = "\n".join(dict.fromkeys(m.label for m in group))
        rtt_ax.annotate(text, xy=(group[0].t - t0, 1.0),
                        xycoords=("data", "axes fraction"), rotation=90, va="top",
                        ha="right", fontsize=7, color=MARKS[group[0].name][0])
    rtt_ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=6, fontsize=7,
                  frameon=False)
    if len(paths) > 1:
        path_ax.legend(loc="upper left", fontsize=7)
    path_ax.set_xlim(0, max(t_end - t0, 1.0))
    out = Path(output)
    fig.savefig(out, format="png")
    return out
