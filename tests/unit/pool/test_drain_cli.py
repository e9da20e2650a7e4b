"""``mobike-vici drain`` against a real control server whose handler plays the daemon:
progress printed from the events, other drains' events ignored, exit status."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mobike_vici import cli
from mobike_vici.daemon.control import ControlServer
from mobike_vici.daemon.feed import EventFeed

Script = Callable[[dict[str, Any], EventFeed], dict[str, Any]]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[str, list[Script], list[dict[str, Any]]]]:
    """A control server on its own loop: each drain request runs the next script."""
    path = str(tmp_path / "ctl")
    loop = asyncio.new_event_loop()
    feeds: list[EventFeed] = []
    scripts: list[Script] = []
    requests: list[dict[str, Any]] = []

    def handler(req: dict[str, Any]) -> dict[str, Any]:
        requests.append(req)
        return scripts.pop(0)(req, feeds[0])

    async def start() -> ControlServer:
        feeds.append(EventFeed(asyncio.get_running_loop()))
        server = ControlServer(path, handler, feeds[0])
        await server.start()
        return server

    server = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield path, scripts, requests
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _events(feed: EventFeed, drain: str, *, stayed: int = 0) -> None:
    """What the daemon emits after answering (the client already follows)."""
    loop = asyncio.get_running_loop()
    seq = [{"event": "drain_started", "drain": drain, "ike_sas": 2},
           {"event": "sa_redirected", "drain": "drain-0", "conn": "old", "remote": "x",
            "gateway": "y", "done": 9, "total": 9},
           {"event": "sa_redirected", "drain": drain, "conn": "rw", "remote": "10.30.1.2",
            "gateway": "10.20.2.2", "done": 1, "total": 2},
           {"event": "sa_redirected", "drain": drain, "conn": "rw", "remote": "10.30.2.2",
            "gateway": "10.20.3.2", "done": 2, "total": 2},
           {"event": "drain_completed", "drain": drain, "redirected": 2, "failed": 0,
            "gone": 0, "remaining": 0, "stayed": stayed, "duration_ms": 510,
            "by_target": {"10.20.2.2": 1, "10.20.3.2": 1},
            "result": "incomplete" if stayed else "completed"}]
    for i, event in enumerate(seq):
        loop.call_later(0.01 * (i + 1), feed.publish, event)


def _started(drain: str, *, stayed: int = 0) -> Script:
    def script(req: dict[str, Any], feed: EventFeed) -> dict[str, Any]:
        _events(feed, drain, stayed=stayed)
        return {"ok": True, "drain": drain, "ike_sas": 2, "rate": req["rate"] or 10.0,
                "targets": [{"gateway": "10.20.2.2", "load": 0}]}
    return script


def test_drain_prints_its_own_progress_and_exits_0(
        daemon: tuple[str, list[Script], list[dict[str, Any]]],
        capsys: pytest.CaptureFixture[str]) -> None:
    path, scripts, requests = daemon
    # Another drain's event on the same stream (drain-0) is never this drain's progress.
    scripts.append(_started("drain-7"))
    assert cli.main(["drain", "--control", path, "--to", "10.20.2.2,10.20.3.2",
                     "--rate", "5/s"]) == 0
    out = capsys.readouterr().out
    assert requests[0] == {"cmd": "drain", "to": ["10.20.2.2", "10.20.3.2"], "rate": 5.0}
    assert "[1/2] rw 10.30.1.2 -> 10.20.2.2" in out
    assert "[2/2] rw 10.30.2.2 -> 10.20.3.2" in out
    assert "old" not in out
    assert "drain-7: 2 redirected (10.20.2.2: 1, 10.20.3.2: 1)" in out


def test_drain_exits_1_when_a_redirected_sa_stayed(
        daemon: tuple[str, list[Script], list[dict[str, Any]]],
        capsys: pytest.CaptureFixture[str]) -> None:
    path, scripts, _ = daemon
    scripts.append(_started("drain-8", stayed=1))
    assert cli.main(["drain", "--control", path]) == 1
    assert "1 redirected IKE_SA(s) still here" in capsys.readouterr().err


def test_drain_refused_for_a_target_down_exits_1(
        daemon: tuple[str, list[Script], list[dict[str, Any]]],
        capsys: pytest.CaptureFixture[str]) -> None:
    path, scripts, _ = daemon
    scripts.append(lambda req, feed: {"ok": False, "reason": "target_down",
                                      "error": "target 10.20.3.2 is down: timed out"})
    assert cli.main(["drain", "--control", path, "--to", "10.20.3.2"]) == 1
    assert "drain refused: target 10.20.3.2 is down" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--rate", "0"], ["--rate", "fast"], ["--to", "gw2"],
                                  ["--to", ","]])
def test_drain_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["drain", *argv])
    assert exc.value.code == 2
