"""The events file behind every logger: reopened on SIGHUP, filtered by --log-level."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TextIO

import pytest
import structlog

from mobike_vici.eventlog import EventLog, EventStream, configure, make_logger


def test_reopen_follows_a_rename_and_every_logger_writes_one_json_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    stream = EventStream(str(path))
    try:
        configure(stream, "info")  # what the daemons do: libraries' loggers join the stream
        log = EventLog(make_logger(stream, level="info"))  # type: ignore[arg-type]
        log.emit("path_up", local="10.1.0.2[4500]")
        structlog.get_logger("mobike_vici.vici").info("vici_connected", uri="unix:///x")
        path.rename(tmp_path / "events.jsonl.1")
        stream.reopen()
        log.emit("config_reloaded", policy_changed=False)
        structlog.get_logger("mobike_vici.net").debug("net_resynced")  # below --log-level
        log.emit("probe_result", ok=True)  # a debug event
    finally:
        stream.close()
        structlog.reset_defaults()
    old = [json.loads(line) for line in (tmp_path / "events.jsonl.1").read_text().splitlines()]
    new = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["event"] for e in old] == ["path_up", "vici_connected"]
    assert [e["event"] for e in new] == ["config_reloaded"]
    assert all({"timestamp", "level"} <= e.keys() for e in old + new)


def test_a_failed_reopen_keeps_writing_to_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    opened: list[str] = []

    def opener(name: str) -> TextIO:
        if opened:
            raise PermissionError(13, "Permission denied", name)
        opened.append(name)
        return open(name, "a", buffering=1, encoding="utf-8")

    stream = EventStream(str(path), opener)
    try:
        with pytest.raises(PermissionError):
            stream.reopen()
        stream.write("still here\n")
    finally:
        stream.close()
    assert path.read_text() == "still here\n"


def _journal_env(monkeypatch: pytest.MonkeyPatch, f: TextIO) -> None:
    """What systemd sets when it hands ``f`` to journald: its device and inode."""
    st = os.fstat(f.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")


def test_lines_to_journald_carry_their_syslog_priority(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """journald reads ``<N>`` as the entry's priority and strips it: the message is the JSON,
    and ``journalctl -p warning`` finds the warnings."""
    with open(tmp_path / "journal", "w") as f:
        _journal_env(monkeypatch, f)
        log = EventLog.to_stream(f, level="debug")
        log.emit("path_down", reason="probe_timeout")  # a warning event
        log.emit("path_up", rtt_ms=1.0)
        log.write("debug", "probe_result", {})
        log.write("error", "engine_error", {})
        configure(f, "info")
        try:
            structlog.get_logger().warning("vici_disconnected", uri="x")
        finally:
            structlog.reset_defaults()
    got = (tmp_path / "journal").read_text().splitlines()
    assert [line[:3] for line in got] == ["<4>", "<6>", "<7>", "<3>", "<4>"]
    assert [json.loads(line[3:])["event"] for line in got] == [
        "path_down", "path_up", "probe_result", "engine_error", "vici_disconnected"]


def test_files_pipes_and_other_streams_stay_pure_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$JOURNAL_STREAM names one stream: the events file (--events), a redirect, or a
    stream inherited from a journald-run parent get pure JSON lines."""
    with open(tmp_path / "journal", "w") as journal:
        _journal_env(monkeypatch, journal)
        events = EventStream(str(tmp_path / "events.jsonl"))
        EventLog.to_stream(events).emit("path_down", reason="probe_timeout")  # type: ignore[arg-type]
        events.close()
        with open(tmp_path / "redirected", "w") as other:
            EventLog.to_stream(other).emit("path_down", reason="probe_timeout")
    for name in ("events.jsonl", "redirected"):
        line = (tmp_path / name).read_text()
        assert json.loads(line)["event"] == "path_down", name
    assert (tmp_path / "journal").read_text() == ""


def test_the_tap_sees_the_event_not_the_priority(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``mobike-vici events`` and the metrics read the tap: plain events, whatever the sink."""
    seen: list[dict[str, object]] = []
    with open(tmp_path / "journal", "w") as f:
        _journal_env(monkeypatch, f)
        log = EventLog.to_stream(f)
        assert log.tap is not None
        log.tap.subscribe(seen.append)
        log.emit("path_down", reason="probe_timeout")
    assert [e["event"] for e in seen] == ["path_down"]
    assert (tmp_path / "journal").read_text().startswith('<4>{"timestamp"')
