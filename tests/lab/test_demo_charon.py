"""`mobike-vici demo --backend charon`: charon with the controller keeps its tunnel through a
silent failure of the active uplink, charon alone beside it loses its own; and without
strongSwan the demo says what to install."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mobike_vici.demo as demo
import mobike_vici.demo_charon as demo_charon
from mobike_vici.lab.netns import list_namespaces
from mobike_vici.timeline import read_events, read_ping_log
from tests.lab.test_demo import _events, _png_size

M0, M1 = "10.1.0.2", "10.2.0.2"


def test_without_strongswan_it_names_the_bootstrap_option(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    monkeypatch.setattr(demo, "is_root", lambda: True)
    monkeypatch.setattr(demo, "missing_tools", lambda: [])
    monkeypatch.setattr(demo_charon, "charon_available", lambda: False)
    code = demo.run_demo(out=io.StringIO(), output_dir=tmp_path / "out", backend="charon")
    assert code == 2
    assert "scripts/bootstrap.sh --with-strongswan" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


@pytest.mark.netns
@pytest.mark.charon
def test_charon_demo_keeps_one_tunnel_and_shows_the_other_lost(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "mobike_vici", "demo", "--backend", "charon",
                             "--output-dir", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stdout + stderr
    lines = stdout.splitlines()
    assert all(line.startswith("demo: ") for line in lines) and len(lines) <= 20, stdout
    story = [
        "demo: building two mobile clients",
        f"demo: raw events: {out / 'events.jsonl'}",
        "demo: tunnels up after ",
        "demo: fault, in both at the same instant: m0 silently dropped in rtr (link up)",
        f"demo:   charon + mobike-vici run: moved {M0}[4500] -> {M1}[4500], outage ",
        "demo:   charon alone: still down after ",
        f"demo: picture: {out / 'timeline.png'}",
        "demo: OK",
    ]
    found = [next((n for n, line in enumerate(lines) if line.startswith(want)), -1)
             for want in story]
    assert -1 not in found and found == sorted(found), (found, stdout)
    # charon alone did what it could: its dead peer detection retransmitted on the dead path.
    tries = re.search(r"dead peer detection retransmitted (\d+) times", lines[found[5]])
    assert tries is not None and int(tries.group(1)) >= 1, lines[found[5]]

    # The recorded events: the fault once, the controller's move off m0, and charon
    # alone seen on m0 when the tunnels came up and again at the end.
    events = _events(out / "events.jsonl")
    [fault] = [ev for ev in events if ev["event"] == "fault"]
    fault_t = next(float(ev["_t"]) for ev in read_events(out / "events.jsonl")  # type: ignore[arg-type]
                   if ev["event"] == "fault")
    moved = [ev for ev in events if ev["side"] == "controlled"
             and ev["event"] == "handover_completed"]
    assert moved and str(moved[0]["old_local"]).startswith(M0), moved
    assert str(moved[0]["local"]).startswith(M1), moved
    seen = [ev for ev in events if ev["event"] == "sa_observed"]
    assert [(ev["conn"], ev["local"]) for ev in seen] == [("alone", M0), ("alone", M0)], seen
    assert events.index(seen[0]) < events.index(fault) < events.index(seen[1])

    # The pings: the controlled tunnel answered again after the fault; charon alone's
    # stopped within moments of it and its ping went on, unanswered, to the end.
    kept = read_ping_log(out / "ping-controlled.log")
    lost = read_ping_log(out / "ping-alone.log")
    assert any(t < fault_t for t, _, _ in kept.replies), "no steady pings before the fault"
    assert any(t < fault_t for t, _, _ in lost.replies), "no steady pings before the fault"
    after = [t for t, _, _ in kept.replies if t > fault_t]
    assert after and after[0] - fault_t < 10.0, "the controlled tunnel never answered again"
    assert after[-1] - fault_t > 10.0, "the controlled tunnel did not stay up"
    assert not [t for t, _, _ in lost.replies if t > fault_t + 0.5], "charon alone recovered"
    assert lost.last_line is not None and lost.last_line - fault_t > 10.0

    # One picture of both.
    assert _png_size(out / "timeline.png") == (1000, 600)
    assert (out / "timeline.png").stat().st_size > 20_000
    assert not [ns for ns in list_namespaces() if ns.startswith(f"mv-{proc.pid}-")]
