"""The pool as this gateway sees it: each peer up or not, its load, and where to send the
next IKE_SA.

Pure: the daemon asks ``due(now)`` which peers to read, fetches their pages, and hands
each answer (or its failure) to ``on_answer``/``on_failure``. A peer is a target only
while its last read succeeded and is fresh (``STALE_POLLS`` intervals); a peer never
read, or one that stopped answering, is never a target.

A peer's load is its last *settled* read plus the redirects we sent it since. A read is
settled when every redirect of ours to that peer sent before it had left this gateway
(its client has the new IKE_SA up at the target: charon's client deletes the old one
last) at least ``SETTLE_MARGIN`` before the read was sent, so the target's page surely
counts them; other reads only say the peer is up. Each redirect is thus counted exactly
once, which spreads a drain of many IKE_SAs evenly at any rate (a read taken while
clients are half-way, counted at the target from IKE_SA_INIT and still here, would
count them twice or not at all).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..config.pool import PoolGateway, PoolSettings
from ..types import IPAddress

SETTLE_MARGIN = 0.5
"""Seconds the target's own page may lag its charon (VICI events to its daemon)."""
FORGET = 60.0
"""Seconds after which a redirect that never left is no longer counted on its target
(its client never got there)."""
STALE_POLLS = 3
"""A load older than this many poll intervals is not trusted: the peer is down."""
MAX_ASSIGNED = 100_000
"""Bound on the redirects remembered in all (a drain of this gateway's SAs)."""


@dataclass(slots=True)
class Assignment:
    """One redirect of ours, counted on its target until a read shows it."""

    address: IPAddress
    at: float
    left: float | None = None
    """When the IKE_SA was seen gone from this gateway (its client is at the target)."""


@dataclass(slots=True)
class Peer:
    gateway: PoolGateway
    up: bool = False
    load: int = 0
    """IKE_SAs at the last read."""
    base: int = 0
    """IKE_SAs at the last settled read (see the module docstring)."""
    read_at: float | None = None
    """When the request behind ``load`` was sent."""
    error: str = "not read yet"
    next_poll: float = 0.0
    polling: bool = False
    assigned: int = 0
    """Our redirects to this peer since its last settled read."""

    @property
    def effective_load(self) -> int:
        return self.base + self.assigned


@dataclass(frozen=True, slots=True)
class PeerChanged:
    """A peer went up or down (the daemon emits ``pool_peer_up`` / ``pool_peer_down``)."""

    address: IPAddress
    up: bool
    load: int
    error: str


class PoolView:
    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.peers: dict[IPAddress, Peer] = {g.address: Peer(g) for g in settings.gateways}
        self.assignments: dict[str, Assignment] = {}  # by IKE SPI, oldest first

    def set_settings(self, settings: PoolSettings) -> None:
        """A reloaded ``pool { }``: peers still listed keep what is known of them."""
        old = self.peers
        self.settings = settings
        self.peers = {g.address: old.get(g.address) or Peer(g) for g in settings.gateways}
        for g in settings.gateways:
            self.peers[g.address].gateway = g
            self.peers[g.address].assigned = 0
        for a in self.assignments.values():
            self._count(a.address, +1)

    # -- reading the peers --------------------------------------------------------------

    def due(self, now: float) -> list[PoolGateway]:
        """Peers to read now (each marked in flight until its answer or failure)."""
        out = []
        for peer in self.peers.values():
            if not peer.polling and now >= peer.next_poll:
                peer.polling = True
                peer.next_poll = now + self.settings.poll_interval
                out.append(peer.gateway)
        return out

    def next_deadline(self) -> float | None:
        pending = [p.next_poll for p in self.peers.values() if not p.polling]
        return min(pending) if pending else None

    def on_answer(self, address: IPAddress, load: int, sent_at: float
                  ) -> PeerChanged | None:
        """A read sent at ``sent_at`` answered ``load`` IKE_SAs."""
        peer = self.peers.get(address)
        if peer is None:
            return None
        peer.polling = False
        was = peer.up
        peer.up, peer.load, peer.read_at, peer.error = True, load, sent_at, ""
        for key, a in list(self.assignments.items()):
            if a.address == address and a.at < sent_at - FORGET:
                self._drop(key)  # never left us: its client did not get there
        before = [key for key, a in self.assignments.items()
                  if a.address == address and a.at <= sent_at]
        if all(self._settled(key, sent_at) for key in before):
            peer.base = load
            for key in before:
                self._drop(key)
        return None if was else PeerChanged(address, True, load, "")

    def on_failure(self, address: IPAddress, error: str) -> PeerChanged | None:
        peer = self.peers.get(address)
        if peer is None:
            return None
        peer.polling = False
        was = peer.up
        peer.up, peer.error = False, error
        return PeerChanged(address, False, peer.load, error) if was else None

    def expire(self, now: float) -> list[PeerChanged]:
        """Peers whose last good read is too old are down (a hung read, a stopped poll)."""
        limit = STALE_POLLS * self.settings.poll_interval + self.settings.peer_timeout
        changed = []
        for peer in self.peers.values():
            if peer.up and (peer.read_at is None or now - peer.read_at > limit):
                peer.up, peer.error = False, "stale"
                changed.append(PeerChanged(peer.gateway.address, False, peer.load, "stale"))
        return changed

    # -- choosing a target --------------------------------------------------------------

    def is_up(self, address: IPAddress) -> bool:
        peer = self.peers.get(address)
        return peer is not None and peer.up

    def choose(self, *, exclude: Iterable[IPAddress] = (),
               among: Iterable[IPAddress] | None = None,
               below: int | None = None) -> PoolGateway | None:
        """The up peer with the least load (ours in flight counted), not in ``exclude``
        and, when given, in ``among`` and with a load under ``below``; ties go to the
        order of ``gateways``."""
        skip = set(exclude)
        allowed = None if among is None else set(among)
        best: Peer | None = None
        for peer in self.peers.values():
            if not peer.up or peer.gateway.address in skip:
                continue
            if allowed is not None and peer.gateway.address not in allowed:
                continue
            if below is not None and peer.effective_load >= below:
                continue
            if best is None or peer.effective_load < best.effective_load:
                best = peer
        return None if best is None else best.gateway

    def assign(self, address: IPAddress, key: str, now: float) -> None:
        """The IKE_SA ``key`` redirected to ``address`` at ``now``: counted there until a
        settled read shows it."""
        self._drop(key)
        self.assignments[key] = Assignment(address, now)
        self._count(address, +1)
        while len(self.assignments) > MAX_ASSIGNED:
            self._drop(next(iter(self.assignments)))

    def pending(self) -> list[str]:
        """Redirected IKE_SAs not yet seen leaving (the daemon watches for them)."""
        return [key for key, a in self.assignments.items() if a.left is None]

    def left(self, key: str, now: float) -> None:
        """The redirected IKE_SA ``key`` is gone from this gateway."""
        a = self.assignments.get(key)
        if a is not None and a.left is None:
            a.left = now

    def _settled(self, key: str, sent_at: float) -> bool:
        left = self.assignments[key].left
        return left is not None and left + SETTLE_MARGIN <= sent_at

    def _drop(self, key: str) -> None:
        a = self.assignments.pop(key, None)
        if a is not None:
            self._count(a.address, -1)

    def _count(self, address: IPAddress, delta: int) -> None:
        peer = self.peers.get(address)
        if peer is not None:
            peer.assigned += delta

    def snapshot(self) -> list[dict[str, object]]:
        return [{"gateway": str(p.gateway.address), "up": p.up, "load": p.load,
                 "assigned": p.assigned, "error": p.error or None}
                for p in self.peers.values()]
