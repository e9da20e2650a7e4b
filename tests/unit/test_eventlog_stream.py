"""The events file behind every logger: reopened on SIGHUP, filtered by --log-level."""

from __future__ import annotations

import json
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
