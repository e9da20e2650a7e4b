"""What the controller beside charon owes charon's own moves, for one IKE_SA, sans I/O.

charon moves an IKE_SA by itself too (MOBIKE after a route change, or onto an
address the peer announced). Two rules follow (never undo what the peer did right):

- **Adopt a verified move.** A move charon made to a path the controller did not
  steer to (``on_moved(steered=False)``) is remembered; once the data path verifies
  there (ESP from the peer arrived, ``on_verified``) the controller takes that path as
  the active one and drops its own pending move and escalation.
- **Escalate only a dead IKE_SA.** Reauthentication and reinitiation delete the
  IKE_SA; they are allowed only when its path (where charon has it) has shown no sign
  of life for ``escalate_after`` seconds. Signs of life (``on_alive``): an answered
  probe on that path, ESP from the peer on it, charon's MOBIKE exchange landing on it.

Time comes in as ``now``; nothing escapes the public methods.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..types import Path


def same_addresses(a: Path, b: Path) -> bool:
    """The same pair of addresses (ports may float with NAT-T)."""
    return a.local.addr == b.local.addr and a.remote.addr == b.remote.addr


@dataclass(frozen=True, slots=True)
class OwnMove:
    """A move charon made by itself, not yet verified."""

    old: Path
    """Where the IKE_SA was before."""
    path: Path
    """Where charon put it."""
    at: float
    """When charon reported it (``ike-update``)."""


class Follow:
    """charon's path of one IKE_SA, its last sign of life, and its unverified own move."""

    def __init__(self, path: Path, now: float) -> None:
        self.path = path
        self.alive_at = now
        """The last sign of life on ``path`` (tracking the IKE_SA counts as one: charon
        reported it established, or it would not be listed)."""
        self.own_move: OwnMove | None = None

    def on_moved(self, old: Path, new: Path, now: float, *, steered: bool) -> None:
        """charon reported the IKE_SA on ``new`` (``ike-update``). Its exchange was
        answered there: a sign of life. ``steered``: the controller asked for this path."""
        if same_addresses(self.path, new) and same_addresses(old, new):
            return
        self.path = new
        self.alive_at = max(self.alive_at, now)
        if steered:
            self.own_move = None
        elif self.own_move is not None:
            # Moved again before verifying: still charon's move, from where it began.
            self.own_move = OwnMove(self.own_move.old, new, self.own_move.at)
        else:
            self.own_move = OwnMove(old, new, now)

    def on_alive(self, path: Path, now: float) -> None:
        """A sign of life on ``path``; counts only where charon has the IKE_SA now."""
        if same_addresses(path, self.path):
            self.alive_at = max(self.alive_at, now)

    def on_verified(self, path: Path, now: float) -> OwnMove | None:
        """ESP from the peer arrived on ``path`` after a move: the move to adopt, if it
        was charon's own (and is where charon still has the IKE_SA), else None."""
        self.on_alive(path, now)
        move = self.own_move
        if move is None or not same_addresses(move.path, path) \
                or not same_addresses(self.path, path):
            return None
        self.own_move = None
        return move

    def escalation_hold(self, now: float, escalate_after: float,
                        last_inbound: float | None = None) -> float | None:
        """None when reauthentication or reinitiation may go ahead now; else the instant
        to ask again (the path showed life less than ``escalate_after`` ago).
        ``last_inbound``: the last ESP from the peer on charon's path, if watched."""
        alive = self.alive_at if last_inbound is None else max(self.alive_at, last_inbound)
        until = alive + escalate_after
        return None if now >= until else until
