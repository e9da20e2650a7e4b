"""Reassembly of IKE fragments (RFC 7383 §2.6): one message per direction per IKE_SA.

Only fragments that passed their own integrity check come here (the engine opens
each one first), so a forger without the SA's keys never creates or grows state.
What an authentic peer can make us hold is bounded too: at most
``MAX_FRAGMENTS`` pieces and ``MAX_MESSAGE_LENGTH`` bytes per message, two
messages (a request and a response) per IKE_SA, for at most ``timeout`` seconds.
A responder's IKE_SA is half-open until its IKE_AUTH completes, so the
reassembly of a half-open SA lives and dies with it: the half-open limits and
half_open_timeout bound it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ikev2.message import MAX_MESSAGE_LENGTH, Fragment

MAX_FRAGMENTS = 128
"""Fragments one message may be cut into. The 10000-byte message limit cut into
fragments no smaller than charon's IPv4 minimum (576) needs under 30; 128 leaves room
for small sizes while capping the bookkeeping per message."""
REASSEMBLY_TIMEOUT = 30.0
"""Seconds the fragments of one message may take to arrive; a peer resends all of
them every retransmission (charon: after 4, 7.2, 13 s...), so one missing fragment
is filled in by the next round long before."""


@dataclass(slots=True)
class Reassembly:
    """The pieces of one message seen so far."""

    message_id: int
    exchange: int
    total: int
    started: float
    pieces: dict[int, bytes] = field(default_factory=dict)
    first_payload: int = 0
    size: int = 0

    @property
    def complete(self) -> bool:
        return len(self.pieces) == self.total


@dataclass(frozen=True, slots=True)
class Added:
    """What one fragment did: ``reason`` set when it was dropped, ``done`` with the
    pieces in order when the message is complete."""

    reason: str = ""
    done: tuple[bytes, ...] | None = None
    first_payload: int = 0


def add_fragment(slots: dict[bool, Reassembly], response: bool, message_id: int,
                 exchange: int, fragment: Fragment, now: float, timeout: float) -> Added:
    """File an authentic ``fragment`` of message ``message_id`` (a response when
    ``response``); the caller has checked that this message ID is the one expected.

    RFC 7383 §2.6: a duplicate is dropped; a larger Total Fragments than before means
    the peer re-fragmented (smaller, after a PMTU change), so what we had is thrown
    away and reassembly starts over; a smaller one is dropped.
    """
    if fragment.total > MAX_FRAGMENTS:
        return Added(reason=f"too many fragments ({fragment.total} > {MAX_FRAGMENTS})")
    current = slots.get(response)
    if current is not None and (current.message_id != message_id
                                or current.exchange != exchange
                                or now >= current.started + timeout):
        del slots[response]  # an older message, or one given up on
        current = None
    if current is not None and fragment.total < current.total:
        return Added(reason="fragment with fewer Total Fragments than before")
    if current is None or fragment.total > current.total:
        current = Reassembly(message_id, exchange, fragment.total, now)
        slots[response] = current
    if fragment.number in current.pieces:
        return Added(reason="duplicate fragment")
    if current.size + len(fragment.data) > MAX_MESSAGE_LENGTH:
        del slots[response]
        return Added(reason=f"fragmented message longer than {MAX_MESSAGE_LENGTH} bytes")
    current.pieces[fragment.number] = fragment.data
    current.size += len(fragment.data)
    if fragment.number == 1:
        current.first_payload = fragment.first_payload
    if not current.complete:
        return Added()
    del slots[response]
    pieces = tuple(current.pieces[n] for n in range(1, current.total + 1))
    return Added(done=pieces, first_payload=current.first_payload)


def expire(slots: dict[bool, Reassembly], now: float, timeout: float) -> None:
    """Forget messages whose fragments did not all come within ``timeout``."""
    for key in [k for k, r in slots.items() if now >= r.started + timeout]:
        del slots[key]


def deadline(slots: dict[bool, Reassembly], timeout: float) -> float | None:
    return min((r.started + timeout for r in slots.values()), default=None)
