"""Rate-limited ``packet_dropped`` reporting for unauthenticated drops.

Anyone can send garbage, so one log line per dropped datagram lets anyone fill the
disk. Drops are counted per reason instead: the first drop of a reason is reported
at once (``count`` 1), later ones in the same interval are summed into one event
when the interval ends (``count`` = drops in ``interval`` seconds), and a reason
that stays quiet for a whole interval starts afresh. Under a flood that is one
event per reason per interval. Drops of authenticated messages are not
rate-limited; the daemon logs those one by one.

Pure: the daemon passes the clock in and asks ``next_deadline`` when to call
``flush``.
"""

from __future__ import annotations

from dataclasses import dataclass

Fields = dict[str, object]

DEFAULT_INTERVAL = 1.0
"""Seconds summed into one ``packet_dropped`` event per reason."""
MAX_REASONS = 64
"""Reasons counted at once; drops with further reasons share ``OTHER`` (reasons
can carry decoder text, so the table must not grow with what attackers send)."""
OTHER = "other"


@dataclass(slots=True)
class _Window:
    ends: float
    count: int
    sample: Fields
    """Fields of the first drop in the window (addresses, SPIs): one example."""


class DropLog:
    def __init__(self, interval: float = DEFAULT_INTERVAL, max_reasons: int = MAX_REASONS):
        if interval <= 0 or max_reasons < 1:
            raise ValueError("interval and max_reasons must be positive")
        self.interval = interval
        self.max_reasons = max_reasons
        self._windows: dict[str, _Window] = {}
        self.total = 0
        """Unauthenticated drops since start, reported or not."""

    def record(self, reason: str, fields: Fields, now: float) -> Fields | None:
        """Count one drop; the event to log now (the first of its reason), or None."""
        self.total += 1
        if reason not in self._windows and len(self._windows) >= self.max_reasons:
            reason = OTHER
        window = self._windows.get(reason)
        if window is None:
            self._windows[reason] = _Window(now + self.interval, 0, {})
            return {**fields, "reason": reason, "count": 1, "interval": 0.0}
        if window.count == 0:
            window.sample = fields
        window.count += 1
        return None

    def flush(self, now: float) -> list[Fields]:
        """The summaries of every interval that has ended by ``now``."""
        out: list[Fields] = []
        for reason, window in list(self._windows.items()):
            if now < window.ends:
                continue
            if window.count == 0:
                del self._windows[reason]  # quiet for an interval: next drop is news
                continue
            out.append({**window.sample, "reason": reason, "count": window.count,
                        "interval": self.interval})
            window.count = 0
            window.sample = {}
            window.ends = now + self.interval
        return out

    def next_deadline(self) -> float | None:
        """When ``flush`` has something to do next (None: nothing counted)."""
        return min((w.ends for w in self._windows.values()), default=None)
