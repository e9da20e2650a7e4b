"""`mobike-vici demo`: configs it writes are valid, it refuses without root, and it runs."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

import mobike_vici.demo as demo
import mobike_vici.demo_common as demo_common
from mobike_vici.config import load_string
from mobike_vici.config.model import StartAction
from mobike_vici.lab.netns import Netns, list_namespaces
from mobike_vici.lab.topology import TwoHosts


def _topo() -> TwoHosts:
    return TwoHosts(Netns("a", "host_a"), Netns("b", "host_b"))


def test_demo_configs_load_and_say_what_the_demo_needs() -> None:
    topo = _topo()
    ini = load_string(demo.initiator_config(topo), "initiator.conf")
    res = load_string(demo.responder_config(topo), "responder.conf")
    ini_conn = ini.connection("demo")
    res_conn = res.connection("demo")
    assert ini_conn.remote_addrs == (topo.b4,)
    assert [c.start_action for c in ini_conn.children] == [StartAction.START]
    assert [str(v) for v in ini_conn.vips] == ["0.0.0.0", "::"]
    # A roaming client's full tunnel: everything goes through it, both families.
    assert [str(t.network) for c in ini_conn.children for t in c.remote_ts] == ["0.0.0.0/0", "::/0"]
    assert [str(t.network) for c in res_conn.children for t in c.local_ts] == ["0.0.0.0/0", "::/0"]
    assert res_conn.pools == ("demo_pool", "demo_pool6")
    assert [p.name for p in res.pools] == ["demo_pool", "demo_pool6"]
    assert [c.start_action for c in res_conn.children] == [StartAction.NONE]
    assert len(ini.secrets) == 1 and len(res.secrets) == 1


def test_demo_without_root_exits_2_with_reason(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo, "is_root", lambda: False)
    assert demo.run_demo(out=io.StringIO()) == 2
    assert "needs root" in capsys.readouterr().err


def test_demo_output_dir_that_cannot_be_one_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo, "is_root", lambda: True)
    monkeypatch.setattr(demo, "missing_tools", lambda: [])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert demo.run_demo(out=io.StringIO(), output_dir=blocker) == 1
    assert "cannot write the output directory" in capsys.readouterr().err
    assert blocker.read_text() == "not a directory"


def test_demo_events_file_replaces_a_link_instead_of_following_it(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep me\n")
    (tmp_path / "events.jsonl").symlink_to(target)
    record = demo.Record(tmp_path / "events.jsonl", io.StringIO(), verbose=False)
    record.fault("a test fault", 1_800_000_000.0)
    record.close()
    assert target.read_text() == "keep me\n"
    assert not (tmp_path / "events.jsonl").is_symlink()
    [line] = (tmp_path / "events.jsonl").read_text().splitlines()
    assert json.loads(line)["event"] == "fault" and json.loads(line)["side"] == "demo"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _events(path: Path) -> list[dict[str, object]]:
    """Every line of the events file, each of which must be a JSON object."""
    lines = path.read_text().splitlines()
    assert lines, path
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(obj, dict) for obj in parsed)
    return parsed


@pytest.mark.netns
def test_demo_tells_a_short_story_and_keeps_the_rest(tmp_path: Path) -> None:
    # Only this process's namespaces: a parallel run's come and go on their own.
    ours = f"mv-{os.getpid()}-"
    before = {ns for ns in list_namespaces() if ns.startswith(ours)}
    out = io.StringIO()
    code = demo.run_demo(out=out, output_dir=tmp_path)
    text = out.getvalue()
    assert code == 0, text
    lines = text.splitlines()
    # The terminal gets a narrative, not the event stream: a few "demo:" lines.
    assert all(line.startswith("demo: ") for line in lines), text
    assert len(lines) <= 20, text
    events_file, png = tmp_path / "events.jsonl", tmp_path / "timeline.png"
    story = [
        "demo: building a mobile client and a gateway",
        f"demo: raw events: {events_file}",
        "demo: tunnel up after ",
        "demo: fault 1: loud failure (m0 link down)",
        "demo:   moved 10.1.0.2[4500] -> 10.2.0.2[4500], outage ",
        "demo: fault 2: silent failure (m1 blackholed in rtr, link up)",
        "demo:   moved 10.2.0.2[4500] -> 10.1.0.2[4500], outage ",
        f"demo: picture: {png}",
        "demo: OK",
    ]
    found = [next((n for n, line in enumerate(lines) if line.startswith(want)), -1)
             for want in story]
    assert -1 not in found and found == sorted(found), (found, text)
    assert "(noticed as link_down," in lines[found[4]]
    # The ping is one-way traffic the moment m1 goes silent: the stall sets the probes off.
    assert "(noticed as a stall, nothing back for " in lines[found[6]]
    # Then either the stalled path's probes went unanswered, or a race decided first:
    # a candidate answered while the stalled path stayed silent (mobike/race.py).
    assert (" ms, then unanswered probes, " in lines[found[6]]
            or " ms, then an unanswered probe while the other uplink answered, "
            in lines[found[6]]), lines[found[6]]

    # The raw events: every line JSON, each with the side that wrote it.
    events = _events(events_file)
    seen: dict[str, set[str]] = {"initiator": set(), "responder": set(), "demo": set()}
    for ev in events:
        seen[str(ev["side"])].add(str(ev["event"]))
    for side in ("initiator", "responder"):
        assert set(demo.REQUIRED_EVENTS) <= seen[side], (side, seen[side])
    assert {"handover_started", "handover_completed", "path_down"} <= seen["initiator"]
    faults = [ev["what"] for ev in events if ev["event"] == "fault"]
    assert faults == ["loud failure (m0 link down)",
                      "silent failure (m1 blackholed in rtr, link up)"]
    assert (tmp_path / "ping.log").stat().st_size > 0

    # One picture of the run.
    assert _png_size(png) == (1000, 600)
    assert png.stat().st_size > 20_000  # drawn, not an empty canvas
    assert {ns for ns in list_namespaces() if ns.startswith(ours)} <= before


@pytest.mark.netns
def test_demo_cli_verbose_prints_the_events_too(tmp_path: Path) -> None:
    import sys

    proc = subprocess.run([sys.executable, "-m", "mobike_vici", "demo", "--verbose",
                           "--output-dir", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo: OK" in proc.stdout
    raw = [line for line in proc.stdout.splitlines() if line.startswith("[initiator] ")]
    assert raw and all(json.loads(line.partition("] ")[2])["event"] for line in raw)
    # What the terminal showed is what the file kept.
    kept = [ev for ev in _events(tmp_path / "out" / "events.jsonl") if ev["side"] == "initiator"]
    assert len(kept) == len(raw)
    assert f"demo: picture: {tmp_path / 'out' / 'timeline.png'}" in proc.stdout
    assert _png_size(tmp_path / "out" / "timeline.png") == (1000, 600)


@pytest.mark.netns
def test_demo_cli_default_output_dir_is_named(tmp_path: Path) -> None:
    import sys

    proc = subprocess.run([sys.executable, "-m", "mobike_vici", "demo"], capture_output=True,
                          text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    named = [line.removeprefix("demo: raw events: ").split(" ")[0]
             for line in proc.stdout.splitlines() if line.startswith("demo: raw events: ")]
    assert len(named) == 1, proc.stdout
    where = Path(named[0]).parent
    try:
        assert where.name.startswith("mobike-vici-demo-")
        assert _events(where / "events.jsonl")
        assert f"demo: picture: {where / 'timeline.png'}" in proc.stdout
        assert _png_size(where / "timeline.png") == (1000, 600)
    finally:
        if where.name.startswith("mobike-vici-demo-"):
            shutil.rmtree(where)


def test_only_echo_replies_count_as_replies() -> None:
    # A router's ICMP error and ping -O's unanswered echo were taken for replies:
    # a tunnel with no route behind it looked up, a lost one looked alive.
    log = b"""PING 10.88.0.1 (10.88.0.1) 56(84) bytes of data.
[1795810483.239214] From 10.1.0.1 icmp_seq=1 Destination Net Unreachable
[1795810483.253783] no answer yet for icmp_seq=2
[1795810483.263783] 64 bytes from 10.88.0.1: icmp_seq=3 ttl=64 time=0.245 ms
"""
    assert demo_common.echo_replies(log) == [1795810483.263783]
