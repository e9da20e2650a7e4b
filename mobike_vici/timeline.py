"""``mobike-vici timeline``: one picture of what a handover did, from the event stream.

Top: the echo RTT through the tunnel from a ``ping -D`` log, with every silence
longer than a few ping intervals shaded as an outage and labelled with its length;
several labelled logs (one per tunnel) share the panel, each in its own colour, and
a log whose replies stop before it ends (``ping -O`` writes a line for every echo
left unanswered) gets an outage that runs to its end: a tunnel lost, not one kept.
Bottom: which local address each connection's IKE_SA used over time. Both: the
events that tell the story (fault, path_down, handover_started, handover_completed,
handover_failed) as vertical marks; time counts from the first fault when there is
one. A ``fault`` event is not one the daemon writes: whoever injects a fault (the
demo, a test, an operator's script) appends
``{"timestamp": ..., "event": "fault", "what": ...}`` to the events file. Nor is
``sa_observed`` (``conn``, ``local``): where an onlooker saw an IKE_SA no daemon
of ours reports on, charon's own for one (read from its ``list-sas``).

Rendered headless with matplotlib's Agg canvas (no display, no global pyplot state).
matplotlib is the ``plot`` extra (``pip install 'mobike-vici[plot]'``), not a dependency
of the daemons: only ``render`` needs it, and without it says so (``PlotUnavailable``).
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
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
LABEL_LINE = 0.014
"""The share of the time axis one upright line of a mark's label takes (7 pt at 100 dpi
on the panel's ~880 pixels)."""
MAX_LINES = 1_000_000
"""Lines read from either input: a bound, not a limit anyone should meet."""

MARKS = {
    "fault": ("black", "fault"),
    "path_down": ("tab:red", "path down"),
    "handover_started": ("tab:orange", "handover started"),
    "handover_completed": ("tab:green", "handover done"),
    "handover_failed": ("tab:purple", "handover failed"),
}
SERIES_COLORS = ("tab:blue", "tab:orange", "tab:cyan", "tab:olive", "tab:pink", "tab:brown")
"""One colour per ping log, none of them a mark's; more logs than colours is an error."""
# Events that say where an IKE_SA is now (its ``local`` field).
_LOCATORS = frozenset({"ike_sa_established", "handover_completed", "ike_sa_moved",
                       "peer_moved", "addresses_updated", "sa_observed"})
_PING = re.compile(r"^\[(\d+(?:\.\d+)?)\].*icmp_seq=(\d+).*time=(\d+(?:\.\d+)?) ms")
_STAMP = re.compile(r"^\[(\d+(?:\.\d+)?)\]")


class TimelineError(Exception):
    """The inputs cannot make a picture; the message says why."""


class PlotUnavailable(TimelineError):
    """matplotlib is not installed (the ``plot`` extra); the message says how to get it."""


PLOT_EXTRA_HINT = "drawing needs matplotlib: pip install 'mobike-vici[plot]'"


def _matplotlib() -> tuple[type[Figure], type[FigureCanvasAgg]]:
    """``(Figure, FigureCanvasAgg)``, imported on first use; PlotUnavailable without it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg as Canvas
        from matplotlib.figure import Figure as Fig
    except ImportError as exc:
        raise PlotUnavailable(f"{PLOT_EXTRA_HINT} ({exc})") from exc
    return Fig, Canvas


@dataclass(frozen=True, slots=True)
class Mark:
    t: float
    name: str
    label: str


@dataclass(frozen=True, slots=True)
class Outage:
    start: float
    end: float
    ongoing: bool = False
    """No reply came back before the log ended: ``end`` is where the log ends."""


@dataclass(frozen=True, slots=True)
class PingLog:
    """One ``ping -D`` log: its replies, and the time of its last stamped line."""

    label: str | None
    replies: list[tuple[float, int, float]]
    last_line: float | None


PingsArg = str | Path | Sequence[tuple[str | None, str | Path]] | None
"""``render``'s ``pings``: one log, or (label, log) pairs, or none."""


def timestamp(at: float) -> str:
    """``at`` (epoch) as an event's ``timestamp``."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fault_event(what: str, at: float) -> dict[str, object]:
    """The line to append to an events file when injecting a fault at ``at`` (epoch)."""
    return {"timestamp": timestamp(at), "event": "fault", "level": "info", "what": what}


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


def read_ping_log(path: str | Path, label: str | None = None) -> PingLog:
    """The replies of a ``ping -D`` log and where it ends (its last stamped line,
    a reply or, with ``-O``, an echo left unanswered)."""
    replies = []
    last: float | None = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f):
            if n >= MAX_LINES:
                break
            text = line.strip()
            if (m := _PING.match(text)) is not None:
                replies.append((float(m.group(1)), int(m.group(2)), float(m.group(3))))
            if (stamp := _STAMP.match(text)) is not None:
                last = max(last or 0.0, float(stamp.group(1)))
    return PingLog(label, replies, last)


def parse_pings_arg(text: str) -> tuple[str | None, str]:
    """``--pings FILE`` or ``--pings LABEL=FILE``: a name that is a file is a file,
    whatever ``=`` it holds."""
    label, sep, path = text.partition("=")
    if not sep or not label or not path or Path(text).exists():
        return None, text
    return label, path


def outages(replies: list[tuple[float, int, float]], until: float | None = None) -> list[Outage]:
    """Silences between replies longer than ``GAP_INTERVALS`` ping intervals, and one
    from the last reply to ``until`` (where the log ends) when that is as long."""
    times = sorted(t for t, _, _ in replies)
    if len(times) < 3:
        return []
    steps = [b - a for a, b in itertools.pairwise(times)]
    limit = max(MIN_GAP, GAP_INTERVALS * statistics.median(steps))
    out = [Outage(a, b) for a, b in itertools.pairwise(times) if b - a > limit]
    if until is not None and until - times[-1] > limit:
        out.append(Outage(times[-1], until, ongoing=True))
    return out


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


def _clusters(items: list[Mark], width: float, line: float = 0.0) -> list[list[Mark]]:
    """Marks closer than ``width`` share one label (they would print over each other);
    so does a group whose lines, ``line`` wide each and standing left of its mark,
    would reach back over the group before it."""
    groups: list[list[Mark]] = []
    for mark in sorted(items, key=lambda m: m.t):
        if groups and mark.t - groups[-1][0].t < width:
            groups[-1].append(mark)
        else:
            groups.append([mark])
    merged: list[list[Mark]] = []
    for group in groups:
        lines = len({m.label for m in group})
        if merged and group[0].t - lines * line < merged[-1][0].t:
            merged[-1].extend(group)
        else:
            merged.append(group)
    return merged


def _logs(pings: PingsArg) -> list[PingLog]:
    if pings is None:
        return []
    if isinstance(pings, str | Path):
        return [read_ping_log(pings)]
    if len(pings) > len(SERIES_COLORS):
        raise TimelineError(f"{len(pings)} ping logs; at most {len(SERIES_COLORS)} fit a picture")
    return [read_ping_log(path, label) for label, path in pings]


def _draw_pings(ax: Axes, logs: list[PingLog], t0: float) -> None:
    """Each log's RTTs and outages; one unlabelled log keeps the red outages of old."""
    if not logs:
        ax.text(0.5, 0.5, "no ping log (--pings)", transform=ax.transAxes,
                ha="center", color="gray")
        return
    for row, (log, color) in enumerate(zip(logs, SERIES_COLORS, strict=False)):
        shade = "tab:red" if log.label is None else color
        ax.plot([t - t0 for t, _, _ in log.replies], [r for _, _, r in log.replies],
                ".", markersize=3, color=color,
                label=f"{log.label}: echo RTT" if log.label else "echo RTT through the tunnel")
        found = outages(log.replies, log.last_line)
        for gap in found:
            ax.axvspan(gap.start - t0, gap.end - t0, color=shade, alpha=0.2)
        for gap in found if log.label is None else _headline(found):
            _tell(ax, gap, log.label, row, shade, t0)
    ax.set_ylim(bottom=0)


def _headline(found: list[Outage]) -> list[Outage]:
    """Of a labelled log's outages, the one worth words beside other logs: the one that
    never ended (a tunnel lost), else the longest; the short silences stay shaded, untold."""
    lost = [o for o in found if o.ongoing]
    return lost or ([max(found, key=lambda o: o.end - o.start)] if found else [])


def _tell(ax: Axes, gap: Outage, label: str | None, row: int, color: str, t0: float) -> None:
    length = gap.end - gap.start
    text = f"no reply for its last {length:.1f} s" if gap.ongoing else f"outage {length:.2f} s"
    if label is None:
        ax.annotate(text, xy=((gap.start + gap.end) / 2 - t0, 0.5),
                    xycoords=("data", "axes fraction"), ha="center", color=color, fontsize=9)
        return
    # A band that ended gets its words beside it (a short outage is narrower than
    # they are); one that runs to the end, in its middle.
    mid = gap.ongoing
    ax.annotate(f"{label}: {text}",
                xy=((gap.start + gap.end) / 2 - t0 if mid else gap.end - t0, 0.6 - 0.1 * row),
                xycoords=("data", "axes fraction"), xytext=(0 if mid else 4, 0),
                textcoords="offset points", ha="center" if mid else "left", color=color,
                fontsize=9)


def _draw_paths(ax: Axes, events: list[dict[str, object]], t0: float, t_end: float) -> None:
    """The local address of each connection's IKE_SA as a step line; a second
    connection on the same address runs a hair below the first, not hidden by it."""
    paths = active_paths(events)
    addrs = sorted({a for steps in paths.values() for _, a in steps})
    for row, (conn, steps) in enumerate(paths.items()):
        xs = [t - t0 for t, _ in steps] + [t_end - t0]
        ys = [addrs.index(a) - 0.08 * row for _, a in steps]
        ax.step(xs, [*ys, ys[-1]], where="post", linewidth=2, label=conn)
    ax.set_yticks(range(len(addrs)), addrs)
    ax.set_ylim(-0.5, max(len(addrs) - 0.5, 0.5))
    ax.set_ylabel("local address")
    if len(paths) > 1:
        ax.legend(loc="upper left", fontsize=7)


def render(events_path: str | Path, output: str | Path, *, pings: PingsArg = None,
           title: str | None = None) -> Path:
    """Draw the picture to ``output`` (PNG); returns its path. ``pings``: one ``ping -D``
    log, or (label, log) pairs, one per tunnel (a label of None draws as one log)."""
    figure, canvas = _matplotlib()  # first: a missing extra is told before any reading
    events = read_events(events_path)
    logs = _logs(pings)
    stamps = [float(events[0]["_t"]), float(events[-1]["_t"])]  # type: ignore[arg-type]
    for log in logs:
        stamps += [t for t, _, _ in log.replies[:1] + log.replies[-1:]]
        stamps += [log.last_line] if log.last_line is not None else []
    t_start, t_end = min(stamps), max(stamps)
    all_marks = marks(events)
    faults = [m.t for m in all_marks if m.name == "fault"]
    # Aligned on the fault: what came before it is negative time.
    t0 = faults[0] if faults else t_start

    fig = figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    canvas(fig)
    rtt_ax, path_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    fig.suptitle(title or "mobike-vici: handover timeline")
    _draw_pings(rtt_ax, logs, t0)
    rtt_ax.set_ylabel("RTT (ms)")
    _draw_paths(path_ax, events, t0, t_end)
    path_ax.set_xlabel("seconds since the fault" if faults else "seconds")

    seen: set[str] = set()
    for mark in all_marks:
        color = MARKS[mark.name][0]
        for ax in (rtt_ax, path_ax):
            ax.axvline(mark.t - t0, color=color, linestyle="--", linewidth=1,
                       label=MARKS[mark.name][1] if ax is rtt_ax and mark.name not in seen
                       else None)
        seen.add(mark.name)
    span = max(t_end - t_start, 1.0)
    for group in _clusters(all_marks, CLUSTER * span, LABEL_LINE * span):
        # One line per distinct label: turned upright, lines stand side by side,
        # where one joined line ran off the axes and collapsed the layout.
        text = "\n".join(dict.fromkeys(m.label for m in group))
        rtt_ax.annotate(text, xy=(group[0].t - t0, 1.0),
                        xycoords=("data", "axes fraction"), rotation=90, va="top",
                        ha="right", fontsize=7, color=MARKS[group[0].name][0])
    handles, names = rtt_ax.get_legend_handles_labels()
    top = list(zip(handles, names, strict=True))
    if any(log.label is not None for log in logs):
        # Labelled tunnels get their own legend inside the panel; the marks stay on top.
        mark_names = {name for _, name in MARKS.values()}
        series = [(h, n) for h, n in top if n not in mark_names]
        top = [(h, n) for h, n in top if n in mark_names]
        rtt_ax.add_artist(rtt_ax.legend([h for h, _ in series], [n for _, n in series],
                                        loc="upper right", fontsize=8, markerscale=3))
    rtt_ax.legend([h for h, _ in top], [n for _, n in top], loc="lower left",
                  bbox_to_anchor=(0.0, 1.0), ncol=6, fontsize=7, frameon=False)
    path_ax.set_xlim(t_start - t0, max(t_end, t_start + 1.0) - t0)
    out = Path(output)
    fig.savefig(out, format="png")
    return out
