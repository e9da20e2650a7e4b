"""``events`` over the control socket: recent events, filters, following, slow readers,
and the tap that feeds it from the event log."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mobike_vici.daemon import feed as feed_mod
from mobike_vici.daemon.control import ControlServer, follow_events
from mobike_vici.daemon.feed import EventFeed
from mobike_vici.eventlog import EventLog


class Daemon:
    """A control server with a feed on a loop in a thread; ``log`` writes to both."""

    def __init__(self, path: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.stream = io.StringIO()
        self.log = EventLog.to_stream(self.stream)
        self.server = ControlServer(path, lambda req: {"ok": False})
        self.server.feed = EventFeed(self.loop)
        assert self.log.tap is not None
        self.log.tap.subscribe(self.server.feed.publish)
        self.loop.run_until_complete(self.server.start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def emit(self, name: str, **fields: object) -> None:
        done = threading.Event()

        def run() -> None:
            self.log.emit(name, **fields)
            done.set()
        self.loop.call_soon_threadsafe(run)
        assert done.wait(5)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(str(tmp_path / "ctl"))
    try:
        yield d
    finally:
        d.close()


def test_recent_events_filtered_and_as_written(daemon: Daemon) -> None:
    daemon.emit("path_up", conn="home", rtt_ms=1.0)
    daemon.emit("path_down", conn="home", reason="probe_timeout", psk="hunter2")
    got = list(follow_events(daemon.server.path, ["path_down"], follow=False))
    assert [e["event"] for e in got] == ["path_down"]
    assert got[0]["psk"] == "<redacted>"  # the same redaction as the stream
    written = [json.loads(line) for line in daemon.stream.getvalue().splitlines()]
    assert got[0] == written[1]
    everything = list(follow_events(daemon.server.path, [], follow=False))
    assert [e["event"] for e in everything] == ["path_up", "path_down"]


def test_follow_sees_new_events(daemon: Daemon) -> None:
    daemon.emit("path_up", conn="old")
    seen: list[dict[str, object]] = []
    stream = follow_events(daemon.server.path, ["handover_completed"], follow=True)

    def reader() -> None:
        for e in stream:
            seen.append(e)
            if len(seen) == 2:
                return
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    deadline = 50
    while not daemon.server.feed._followers and deadline:  # type: ignore[union-attr]
        threading.Event().wait(0.05)
        deadline -= 1
    daemon.emit("handover_completed", conn="a")
    daemon.emit("path_down", conn="a")
    daemon.emit("handover_completed", conn="b")
    t.join(10)
    assert [e["conn"] for e in seen] == ["a", "b"]


def test_a_slow_follower_is_cut_off_not_buffered_forever() -> None:
    loop = asyncio.new_event_loop()
    try:
        feed = EventFeed(loop)
        follower = feed.follow([])
        assert follower is not None
        for i in range(feed_mod.FOLLOWER_QUEUE + 10):
            feed.publish({"event": "x", "i": i})
        assert follower.lost
        assert follower.queue.qsize() == feed_mod.FOLLOWER_QUEUE + 1
        items = [follower.queue.get_nowait() for _ in range(follower.queue.qsize())]
        assert items[-1] is None
    finally:
        loop.close()


def test_followers_are_bounded() -> None:
    loop = asyncio.new_event_loop()
    try:
        feed = EventFeed(loop)
        got = [feed.follow([]) for _ in range(feed_mod.MAX_FOLLOWERS + 1)]
        assert got[-1] is None and all(f is not None for f in got[:-1])
    finally:
        loop.close()


def test_backlog_is_bounded() -> None:
    loop = asyncio.new_event_loop()
    try:
        feed = EventFeed(loop)
        for i in range(feed_mod.BACKLOG * 2):
            feed.publish({"event": "x", "i": i})
        recent = feed.recent()
        assert len(recent) == feed_mod.BACKLOG and recent[-1]["i"] == feed_mod.BACKLOG * 2 - 1
    finally:
        loop.close()


def test_a_broken_subscriber_does_not_silence_the_stream() -> None:
    out = io.StringIO()
    log = EventLog.to_stream(out)
    assert log.tap is not None
    calls: list[str] = []

    def broken(event: dict[str, object]) -> None:
        calls.append(str(event["event"]))
        raise RuntimeError

    log.tap.subscribe(broken)
    log.emit("path_up")
    log.emit("path_down")
    assert calls == ["path_up"]  # dropped after it raised
    assert len(out.getvalue().splitlines()) == 2
