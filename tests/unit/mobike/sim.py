"""A fake network and backend around one PathManager, driven by a fake clock."""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from mobike_vici.mobike.events import Event, MoveRequested
from mobike_vici.mobike.manager import PathManager
from mobike_vici.mobike.paths import Key
from mobike_vici.types import Endpoint, Path

ip = ipaddress.ip_address
E = TypeVar("E", bound=Event)


def path(local: str, remote: str, lport: int = 4500, rport: int = 4500) -> Path:
    return Path(Endpoint(ip(local), lport), Endpoint(ip(remote), rport))


def key(p: Path) -> Key:
    return (p.local.addr, p.remote.addr)


@dataclass
class Sim:
    """Replies to probes on live paths after ``rtt``; carries out moves like a backend.

    ``dead`` holds (local, remote) address pairs that silently drop everything.
    ``refuse`` maps a path key to the reason the peer rejects a move there.
    """

    mgr: PathManager
    rtt: float = 0.02
    now: float = 0.0
    dead: set[Key] = field(default_factory=set)
    refuse: dict[Key, str] = field(default_factory=dict)
    rtt_of: dict[Key, float] = field(default_factory=dict)
    """Probe round trips of paths slower (or faster) than ``rtt``."""
    events: list[tuple[float, Event]] = field(default_factory=list)
    probes: list[tuple[float, Path]] = field(default_factory=list)
    max_in_flight_seen: int = 0
    _queue: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    _seq: int = 0

    def at(self, t: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, action))

    def flush(self) -> None:
        for req in self.mgr.probes_to_send(self.now):
            self.probes.append((self.now, req.path))
            if key(req.path) not in self.dead:
                rtt = self.rtt_of.get(key(req.path), self.rtt)
                self.at(self.now + rtt, self._replier(req.probe_id))
        self.max_in_flight_seen = max(self.max_in_flight_seen, self.mgr.in_flight())
        while (ev := self.mgr.next_event()) is not None:
            self.events.append((self.now, ev))
            if isinstance(ev, MoveRequested):
                self._move(ev)

    def _replier(self, probe_id: int) -> Callable[[], None]:
        return lambda: self.mgr.on_probe_reply(probe_id, self.now)

    def _move(self, ev: MoveRequested) -> None:
        target = ev.path
        k = key(target)
        if k in self.refuse:
            reason = self.refuse[k]
            self.at(self.now + self.rtt, lambda: self.mgr.on_move_failed(target, reason, self.now))
        elif k in self.dead:
            self.at(self.now + 2.0, lambda: self.mgr.on_move_failed(target, "timeout", self.now))
        else:
            self.at(self.now + self.rtt, lambda: self.mgr.on_move_completed(target, self.now))

    def run_until(self, end: float) -> None:
        """Advance the clock to ``end``, waking at every timer and queued action."""
        self.flush()
        stalls = 0
        while True:
            timer = self.mgr.get_timer()
            queued = self._queue[0][0] if self._queue else None
            nxt = min(t for t in (timer, queued, float("inf")) if t is not None)
            if nxt > end:
                self.now = end
                self.flush()
                return
            self.now = max(self.now, nxt)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, action = heapq.heappop(self._queue)
                action()
                self.flush()
            if timer is not None and timer <= self.now:
                self.mgr.handle_timer(self.now)
            self.flush()
            again = self.mgr.get_timer()
            # A timer that stays in the past after handle_timer and probes_to_send would
            # spin a real event loop.
            stalls = stalls + 1 if again is not None and again <= self.now else 0
            if stalls > 3:
                raise AssertionError(f"timer stuck at {again} (now {self.now})")

    def of(self, kind: type[E]) -> list[tuple[float, E]]:
        return [(t, e) for t, e in self.events if isinstance(e, kind)]
