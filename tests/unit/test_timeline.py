"""The timeline picture, from an event stream and ping log recorded in a lab run
(tests/mobility/test_observe.py, a silent failure of the active uplink)."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import pytest

from mobike_vici import cli
from mobike_vici.timeline import (
    SERIES_COLORS,
    TimelineError,
    active_paths,
    fault_event,
    marks,
    outages,
    parse_pings_arg,
    read_events,
    read_ping_log,
    render,
)

DATA = Path(__file__).parent / "data"
EVENTS = DATA / "timeline_events.jsonl"
PINGS = DATA / "timeline_pings.txt"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.slow
def test_renders_the_recorded_handover(tmp_path: Path) -> None:
    out = render(EVENTS, tmp_path / "t.png", pings=PINGS)
    assert png_size(out) == (1000, 600)
    assert out.stat().st_size > 20_000  # a drawn picture, not an empty canvas


def test_what_the_picture_is_made_of() -> None:
    events = read_events(EVENTS)
    names = [m.name for m in marks(events)]
    assert names == ["fault", "path_down", "handover_started", "handover_completed"]
    assert [a for _, a in active_paths(events)["dp"]] == ["10.1.0.2", "10.2.0.2"]
    gaps = outages(read_ping_log(PINGS).replies)
    assert len(gaps) == 1
    fault = next(m.t for m in marks(events) if m.name == "fault")
    done = next(m.t for m in marks(events) if m.name == "handover_completed")
    # the silence spans the fault and ends after the handover
    assert gaps[0].start <= fault + 0.1 and gaps[0].end >= done
    assert 0.2 < gaps[0].end - gaps[0].start < 5.0


@pytest.mark.slow
def test_without_pings_and_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bare.png"
    assert cli.main(["timeline", str(EVENTS), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert png_size(out) == (1000, 600)


def test_no_events_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n" + json.dumps({"event": "x"}) + "\n")
    with pytest.raises(TimelineError):
        render(bad, tmp_path / "x.png")
    assert cli.main(["timeline", str(bad), "-o", str(tmp_path / "x.png")]) == 2
    assert "no events with a timestamp" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_outages_ignore_the_ping_rhythm() -> None:
    steady = [(100.0 + i * 0.05, i, 0.5) for i in range(40)]
    assert outages(steady) == []
    gap = steady[:20] + [(t + 1.0, s, r) for t, s, r in steady[20:]]
    (o,) = outages(gap)
    assert o.end - o.start == pytest.approx(1.05)


def test_fault_event_round_trips(tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    lines = [fault_event("m0 cut", 1_700_000_000.25),
             {"timestamp": "2023-11-14T22:13:21.000000Z", "event": "path_down",
              "local": "10.1.0.2[4500]"}]
    events.write_text("".join(json.dumps(x) + "\n" for x in lines))
    got = marks(read_events(events))
    assert [(m.name, m.label) for m in got] == [("fault", "fault: m0 cut"),
                                                ("path_down", "path down 10.1.0.2")]
    assert got[0].t == pytest.approx(1_700_000_000.25)


@pytest.mark.slow
def test_a_crowd_of_marks_keeps_its_labels_inside_the_picture(tmp_path: Path) -> None:
    # A loud failure as the demo records it: the fault, each family's path_down
    # twice and the whole handover within 10 ms share one label; written as one
    # long line it ran off the axes and collapsed the layout (matplotlib warned
    # and drew the axes squashed).
    t = 1_800_000_000.0
    lines = [
        {"timestamp": fault_event("x", t)["timestamp"], "event": "ike_sa_established",
         "conn": "demo", "local": "10.1.0.2[4500]"},
        fault_event("loud failure (m0 link down)", t + 1.0),
        *({"timestamp": fault_event("x", t + 1.0 + d)["timestamp"], **extra} for d, extra in [
            (0.001, {"event": "path_down", "local": "10.1.0.2[4500]"}),
            (0.002, {"event": "path_down", "local": "2001:db8:1::2[4500]"}),
            (0.003, {"event": "handover_started", "conn": "demo"}),
            (0.004, {"event": "path_down", "local": "10.1.0.2[4500]"}),
            (0.005, {"event": "path_down", "local": "2001:db8:1::2[4500]"}),
            (0.009, {"event": "handover_completed", "conn": "demo",
                     "local": "10.2.0.2[4500]", "old_local": "10.1.0.2[4500]"}),
        ]),
        fault_event("end", t + 3.0),
    ]
    events = tmp_path / "crowd.jsonl"
    events.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = render(events, tmp_path / "crowd.png")
    assert png_size(out) == (1000, 600)


CHARON_EVENTS = DATA / "charon_demo_events.jsonl"
KEPT = DATA / "charon_demo_ping_controlled.txt"
LOST = DATA / "charon_demo_ping_alone.txt"
"""Recorded by `mobike-vici demo --backend charon` (pings cut to 1.5 s before the fault
and 6 s after): charon + controller moved off the silently dead uplink, charon alone
stayed on it."""


@pytest.mark.slow
def test_two_labelled_tunnels_in_one_picture(tmp_path: Path) -> None:
    out = render(CHARON_EVENTS, tmp_path / "two.png",
                 pings=[("charon + mobike-vici run", KEPT), ("charon alone", LOST)])
    assert png_size(out) == (1000, 600)
    assert out.stat().st_size > 20_000
    # The same picture from the command line, LABEL=FILE repeated.
    cli_out = tmp_path / "cli.png"
    assert cli.main(["timeline", str(CHARON_EVENTS), "--pings", f"kept={KEPT}",
                     "--pings", f"lost={LOST}", "-o", str(cli_out)]) == 0
    assert png_size(cli_out) == (1000, 600)


def test_a_lost_tunnel_is_an_outage_to_the_end_of_its_log() -> None:
    fault = next(m.t for m in marks(read_events(CHARON_EVENTS)) if m.name == "fault")
    kept, lost = read_ping_log(KEPT, "kept"), read_ping_log(LOST, "lost")
    back, *later = outages(kept.replies, kept.last_line)
    assert not back.ongoing and back.start <= fault + 0.1 and 0.2 < back.end - fault < 5.0
    assert not any(o.ongoing for o in later)  # kept: replies to the end of its log
    (gone,) = outages(lost.replies, lost.last_line)
    assert gone.ongoing and gone.start <= fault + 0.1
    assert lost.last_line is not None and gone.end == lost.last_line > fault + 5.0
    # Without where the log ends (no -O lines), a silence at the end is not told.
    assert outages(lost.replies) == []
    # Each connection's path: the controlled one moved, the one alone did not.
    paths = active_paths(read_events(CHARON_EVENTS))
    assert [a for _, a in paths["controlled"]] == ["10.1.0.2", "10.2.0.2"]
    assert [a for _, a in paths["alone"]] == ["10.1.0.2"]


def test_pings_argument_forms(tmp_path: Path) -> None:
    assert parse_pings_arg("ping.log") == (None, "ping.log")
    assert parse_pings_arg("charon alone=a.log") == ("charon alone", "a.log")
    odd = tmp_path / "x=y.log"
    odd.write_text("")
    assert parse_pings_arg(str(odd)) == (None, str(odd))
    assert parse_pings_arg("=a.log") == (None, "=a.log")


def test_more_logs_than_colours_is_a_clear_error(tmp_path: Path) -> None:
    many = [(f"t{n}", PINGS) for n in range(len(SERIES_COLORS) + 1)]
    with pytest.raises(TimelineError, match="at most"):
        render(EVENTS, tmp_path / "many.png", pings=many)


def test_a_label_that_would_reach_over_the_one_before_joins_it() -> None:
    # As in the charon demo: the fault, then 0.6 s later three marks of the move, on a
    # 22 s axis; upright and left of their line, the three reach back over the fault's.
    from mobike_vici.timeline import CLUSTER, LABEL_LINE, Mark, _clusters

    crowd = [Mark(0.0, "fault", "fault: m0"), Mark(0.6, "path_down", "path down"),
             Mark(0.61, "handover_started", "handover started"),
             Mark(0.7, "handover_completed", "handover done")]
    assert len(_clusters(crowd, CLUSTER * 22)) == 2
    assert [len(g) for g in _clusters(crowd, CLUSTER * 22, LABEL_LINE * 22)] == [4]
    # Far enough apart, each keeps its own label.
    apart = [crowd[0], Mark(5.0, "path_down", "path down")]
    assert len(_clusters(apart, CLUSTER * 22, LABEL_LINE * 22)) == 2


def test_a_lost_tunnel_is_told_by_its_loss_not_by_a_hiccup_before_it() -> None:
    # charon alone's log had a 0.11 s silence before the fault; the picture named it
    # beside "no reply for its last 20 s", as if it were the outage that mattered.
    from mobike_vici.timeline import Outage, _headline

    hiccup, lost = Outage(10.0, 10.11), Outage(12.0, 32.0, ongoing=True)
    assert _headline([hiccup, lost]) == [lost]
    assert _headline([hiccup, Outage(12.0, 12.7)]) == [Outage(12.0, 12.7)]
    assert _headline([]) == []
