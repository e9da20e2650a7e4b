"""One drain: every IKE_SA of this gateway redirected to the pool's other gateways, at a
bounded rate, each to the least loaded target at its turn.

Pure: the daemon asks ``next_at()`` when the next redirect may leave, ``take(view, now)``
for it, sends it (VICI ``redirect``), and reports ``on_result``. The pace is one redirect
per ``1/rate`` seconds with no burst, so a thousand clients never re-key at the same
gateway in the same instant. A drain stops (``stopped`` set) when no target is up.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from ..config.pool import PoolGateway
from ..types import IPAddress
from .view import PoolView

MAX_DRAIN_SAS = 1_000_000
"""Bound on the IKE_SAs one drain takes (the gateway's table at its start)."""


@dataclass(frozen=True, slots=True)
class DrainSa:
    """One IKE_SA to redirect, as the gateway listed it at the drain's start."""

    ike_id: int
    """charon's unique id (VICI ``redirect``'s ``ike-id``)."""
    conn: str
    ike_spi: str
    local: IPAddress
    """The address the client reached us at: never a target (nor any other such)."""
    remote: IPAddress


@dataclass(frozen=True, slots=True)
class Redirect:
    sa: DrainSa
    gateway: PoolGateway


class Drain:
    def __init__(self, drain_id: str, sas: Iterable[DrainSa], *, rate: float,
                 to: tuple[IPAddress, ...] | None, now: float,
                 own: frozenset[IPAddress] = frozenset(), room: int | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.id = drain_id
        self.rate = rate
        self.to = to
        self.started = now
        self.queue: deque[DrainSa] = deque()
        for sa in sas:
            if len(self.queue) >= MAX_DRAIN_SAS:
                break
            self.queue.append(sa)
        self.total = len(self.queue)
        self.own = own | {sa.local for sa in self.queue}
        self.room = room
        """``max_ike_sas``: only a peer with fewer IKE_SAs than this is a target."""
        """Every address clients reached this gateway at: none is a target."""
        self.in_flight = 0
        self.redirected = 0
        self.failed = 0
        self.gone = 0
        self.stopped: str | None = None
        """Why the drain ended early (``no_target``; ``pool_full``: every target that
        answers is at ``room``; ``cancelled``), else None."""
        self._next = now
        self.by_target: dict[str, int] = {}
        self.sent: list[str] = []
        """IKE SPIs of the redirects charon accepted (the daemon checks they leave)."""

    @property
    def remaining(self) -> int:
        return len(self.queue)

    @property
    def done(self) -> bool:
        return self.in_flight == 0 and (not self.queue or self.stopped is not None)

    def next_at(self) -> float | None:
        """When ``take`` may give the next redirect; None when nothing is left to send."""
        if self.stopped is not None or not self.queue:
            return None
        return self._next

    def take(self, view: PoolView, now: float) -> Redirect | None:
        """The next redirect if its time has come, spread by load; None before its time
        or when nothing is left. No target up: the drain stops (``no_target``)."""
        if self.stopped is not None or not self.queue or now < self._next:
            return None
        sa = self.queue[0]
        target = view.choose(exclude=self.own, among=self.to, below=self.room)
        if target is None:
            self.stopped = "no_target"
            if self.room is not None and view.choose(exclude=self.own, among=self.to):
                self.stopped = "pool_full"
            return None
        self.queue.popleft()
        view.assign(target.address, sa.ike_spi, now)
        self.in_flight += 1
        self._next = max(self._next, now) + 1.0 / self.rate
        return Redirect(sa, target)

    def skip_gone(self, sa: DrainSa) -> None:
        """``sa`` left before its turn (the client went away, or moved itself)."""
        self.queue.remove(sa)
        self.gone += 1

    def on_result(self, redirect: Redirect, ok: bool) -> None:
        self.in_flight -= 1
        if ok:
            self.redirected += 1
            key = str(redirect.gateway.address)
            self.by_target[key] = self.by_target.get(key, 0) + 1
        else:
            self.failed += 1

    def cancel(self) -> None:
        self.stopped = self.stopped or "cancelled"

    def progress(self) -> dict[str, object]:
        return {"drain": self.id, "total": self.total, "redirected": self.redirected,
                "failed": self.failed, "gone": self.gone, "remaining": self.remaining,
                "in_flight": self.in_flight, "stopped": self.stopped,
                "by_target": dict(self.by_target)}
