"""EventFile follows a JSON-lines file written in pieces (no root needed)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from mobike_vici.lab.native import EventFile, named
from mobike_vici.lab.netns import LabError


def test_partial_lines_wait_for_their_end(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    ev = EventFile(path)
    assert ev.poll() == []  # file not there yet
    line = json.dumps({"event": "ike_sa_established", "conn": "home"})
    path.write_text(line[:10])
    assert ev.poll() == []
    with open(path, "a") as f:
        f.write(line[10:] + "\nnot json\n[1]\n")
    new = ev.poll()
    assert new == [{"event": "ike_sa_established", "conn": "home"}]
    assert ev.garbage == ["not json", "[1]"]
    assert ev.poll() == []


def test_named_predicate_matches_fields() -> None:
    pred = named("child_sa_installed", conn="home")
    assert pred({"event": "child_sa_installed", "conn": "home", "level": "info"})
    assert not pred({"event": "child_sa_installed", "conn": "other"})
    assert not pred({"event": "ike_sa_established", "conn": "home"})


def test_wait_for_sees_a_later_event(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"event": "path_up"}) + "\n")
    ev = EventFile(path)

    def writer() -> None:
        time.sleep(0.2)
        with open(path, "a") as f:
            f.write(json.dumps({"event": "path_selected", "local": "10.1.0.2[500]"}) + "\n")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        found = ev.wait_for(named("path_selected"), timeout=10)
    finally:
        thread.join()
    assert found["local"] == "10.1.0.2[500]"
    assert [e["event"] for e in ev.events] == ["path_up", "path_selected"]


def test_wait_for_gives_up_when_writer_died(tmp_path: Path) -> None:
    ev = EventFile(tmp_path / "events.jsonl")
    with pytest.raises(LabError, match="exited"):
        ev.wait_for(named("never"), timeout=30, alive=lambda: False)


def test_wait_for_times_out(tmp_path: Path) -> None:
    ev = EventFile(tmp_path / "events.jsonl")
    with pytest.raises(LabError, match="within"):
        ev.wait_for(named("never"), timeout=0.1)
