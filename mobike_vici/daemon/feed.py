"""The live event feed behind ``mobike-vici events``: recent events and followers.

Fed by the event log's tap with each finished event (redacted, plain values, the
same object the stream writes). Keeps the last ``BACKLOG`` events for a reader who
just connected and hands new ones to every follower's bounded queue. A follower
that falls ``FOLLOWER_QUEUE`` events behind is cut off with an ``events_lost``
line rather than let the daemon's memory grow.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

JsonObject = dict[str, Any]

BACKLOG = 256
"""Recent events kept for ``mobike-vici events`` (without ``--follow``, all it shows)."""
FOLLOWER_QUEUE = 1024
"""Events queued per follower before it is cut off."""
MAX_FOLLOWERS = 16
"""Followers at one time; one more is refused."""

LOST = "events_lost"


class Follower:
    """One reader of the live feed; ``None`` from ``get`` means it was cut off."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self.queue: asyncio.Queue[JsonObject | None] = asyncio.Queue(FOLLOWER_QUEUE + 1)
        self.lost = False

    def wants(self, event: JsonObject) -> bool:
        return not self.names or event.get("event") in self.names

    def offer(self, event: JsonObject) -> None:
        if self.lost or not self.wants(event):
            return
        if self.queue.qsize() >= FOLLOWER_QUEUE:
            self.lost = True
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait(event)


class EventFeed:
    """Subscribe ``feed.publish`` to an ``EventTap``; readers use ``recent``/``follow``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.get_ident()
        self._recent: deque[JsonObject] = deque(maxlen=BACKLOG)
        self._followers: set[Follower] = set()

    def publish(self, event: JsonObject) -> None:
        """The tap's subscriber; safe from any thread (a few events come from workers)."""
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self._deliver, event)
        else:
            self._deliver(event)

    def _deliver(self, event: JsonObject) -> None:
        self._recent.append(event)
        for follower in list(self._followers):
            follower.offer(event)

    def recent(self, names: Iterable[str] = ()) -> list[JsonObject]:
        wanted = frozenset(names)
        return [e for e in self._recent if not wanted or e.get("event") in wanted]

    def follow(self, names: Iterable[str] = ()) -> Follower | None:
        """A new follower, or None when ``MAX_FOLLOWERS`` are already there."""
        if len(self._followers) >= MAX_FOLLOWERS:
            return None
        follower = Follower(frozenset(names))
        self._followers.add(follower)
        return follower

    def unfollow(self, follower: Follower) -> None:
        self._followers.discard(follower)
