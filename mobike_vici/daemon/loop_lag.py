"""Event-loop lag: how late a periodic timer fires, the last few minutes of it.

A daemon whose loop falls behind answers probes late and moves late, long before
anything else shows it; a soak run asks for this figure (``status`` ``loop_lag``,
metric ``mobike_loop_lag_p99_seconds``). One timer every ``INTERVAL``; the lag is
the difference between when it was due and when it ran.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

INTERVAL = 0.1
"""Seconds between samples: cheap, and fine enough to see a 20 ms stall."""
WINDOW = 3000
"""Samples kept (5 minutes at INTERVAL): a bounded memory of recent lag."""


class LoopLag:
    """Samples the running loop's lag; ``snapshot()`` gives p99 and max of the window."""

    def __init__(self, interval: float = INTERVAL, window: int = WINDOW) -> None:
        self.interval = interval
        self._samples: deque[float] = deque(maxlen=window)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self.max_ever = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._arm(loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.record(max(0.0, now - self._due))
        self._arm(now)

    def record(self, lag: float) -> None:
        """One sample in seconds (the timer calls it; tests feed it directly)."""
        self._samples.append(lag)
        self.max_ever = max(self.max_ever, lag)

    def snapshot(self) -> dict[str, float | int | None]:
        """``p99_ms`` and ``max_ms`` over the window, ``max_ever_ms`` since the start."""
        ranked = sorted(self._samples)
        n = len(ranked)
        p99 = ranked[max(0, math.ceil(0.99 * n) - 1)] if n else None
        return {"samples": n, "interval_ms": round(self.interval * 1000.0, 1),
                "p99_ms": None if p99 is None else round(p99 * 1000.0, 2),
                "max_ms": round(ranked[-1] * 1000.0, 2) if n else None,
                "max_ever_ms": round(self.max_ever * 1000.0, 2)}
