"""One IKE_SA: state, keys, its current path, message IDs and retransmission bookkeeping.

Window size 1 both ways (RFC 7296 §2.3): at most one request of ours outstanding
(``pending``), and for the peer's requests the next expected ID plus the cached
answer to the last one, resent verbatim when that request arrives again.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from ..config.model import ConnectionConfig
from ..ikev2.constants import ExchangeType, HeaderFlag
from ..ikev2.crypto import DhExchange, IkeKeys, IkeSuite, SkCipher, sk_ciphers
from ..ikev2.message import Header
from ..types import Endpoint, IPAddress, Path
from .child_sa import ChildSa, ChildState
from .fragments import REASSEMBLY_TIMEOUT, Reassembly
from .fragments import deadline as reassembly_deadline
from .nat import WireView
from .redirects import RedirectState

if TYPE_CHECKING:
    from .exchanges.base import Task


class IkeState(Enum):
    CONNECTING = "CONNECTING"
    ESTABLISHED = "ESTABLISHED"
    REKEYING = "REKEYING"
    REKEYED = "REKEYED"
    """Replaced by a new IKE_SA; waits for the Delete (ours or the peer's)."""
    DELETING = "DELETING"
    DELETED = "DELETED"


# The state machine as data (h11's _state.py): where each state may go, and which
# exchanges the peer may start in it. IkeSa.set_state is the only writer of
# IkeSa.state after creation.
_TRANSITIONS: dict[IkeState, frozenset[IkeState]] = {
    IkeState.CONNECTING: frozenset({IkeState.ESTABLISHED, IkeState.DELETING,
                                    IkeState.DELETED}),
    IkeState.ESTABLISHED: frozenset({IkeState.REKEYING, IkeState.REKEYED,
                                     IkeState.DELETING, IkeState.DELETED}),
    # An IKE rekey that fails or meets INVALID_KE_PAYLOAD goes back to ESTABLISHED.
    IkeState.REKEYING: frozenset({IkeState.ESTABLISHED, IkeState.REKEYED,
                                  IkeState.DELETING, IkeState.DELETED}),
    IkeState.REKEYED: frozenset({IkeState.DELETING, IkeState.DELETED}),
    # A rekey collision (RFC 7296 §2.25.2) can hand a closing SA's children over.
    IkeState.DELETING: frozenset({IkeState.REKEYED, IkeState.DELETED}),
    IkeState.DELETED: frozenset(),
}

_PEER_MAY_START: dict[IkeState, tuple[ExchangeType, ...]] = {
    IkeState.CONNECTING: (ExchangeType.IKE_AUTH,),  # only when we are the responder
    IkeState.ESTABLISHED: (ExchangeType.INFORMATIONAL, ExchangeType.CREATE_CHILD_SA),
    IkeState.REKEYING: (ExchangeType.INFORMATIONAL, ExchangeType.CREATE_CHILD_SA),
    IkeState.DELETING: (ExchangeType.INFORMATIONAL,),
    IkeState.REKEYED: (ExchangeType.INFORMATIONAL, ExchangeType.CREATE_CHILD_SA),
    IkeState.DELETED: (),
}


class InvalidTransition(RuntimeError):
    """A state change the table does not allow: a bug in the core, never the peer's doing."""


STRICT_TRANSITIONS = os.environ.get("MOBIKE_VICI_STRICT_STATES") == "1"
"""Raise InvalidTransition (the test suite sets the variable, its daemons inherit it).
Otherwise a change the table lacks is made and logged: half-handled input would lose
more than a state the table did not foresee."""


@dataclass(slots=True)
class PendingRequest:
    """Our one outstanding request: resent verbatim until answered or given up."""

    message_id: int
    exchange: ExchangeType
    data: bytes
    path: Path
    task: Task
    first_sent: float
    deadline: float
    retransmitted: int = 0
    fragments: tuple[bytes, ...] = ()
    """The request as RFC 7383 fragments, when it was cut: every resend sends them all."""

    @property
    def datagrams(self) -> tuple[bytes, ...]:
        return self.fragments or (self.data,)


@dataclass(slots=True)
class Probe:
    """One ``Engine.probe`` waiting for an answer on ``path`` (MOBIKE path test)."""

    probe_id: int
    path: Path
    sent: float
    deadline: float
    message_ids: dict[int, float] = field(default_factory=dict)
    """Our requests sent on ``path`` for this probe, and when each left there: a
    response on ``path`` to any of them proves it (the peer may have answered an older
    copy late, or a newer one), its RTT counted from that copy."""
    started: bool = False
    """It had a request of its own (each probe starts at most one; it rides the rest)."""


@dataclass(slots=True)
class CachedResponse:
    message_id: int
    request: bytes
    """The raw request, to recognise a retransmission without decrypting it."""
    response: bytes
    path: Path
    update: bool = False
    """The request was an UPDATE_SA_ADDRESSES: a replay from elsewhere is reported."""
    response_fragments: tuple[bytes, ...] = ()
    """The response as RFC 7383 fragments, when it was cut: resent all together."""

    @property
    def datagrams(self) -> tuple[bytes, ...]:
        return self.response_fragments or (self.response,)


@dataclass(frozen=True, slots=True)
class IkeRekeyCollision:
    """The peer rekeyed this IKE_SA while our rekey of it was outstanding."""

    nonces: tuple[bytes, bytes]
    new_sa: IkeSa
    """The IKE_SA the peer's exchange created."""


@dataclass(slots=True)
class IkeSa:
    conn: ConnectionConfig
    initiator: bool
    """True when we are the original initiator (the I flag we send): RFC 7296's, which
    an IKE rekey hands to whoever started it."""
    spi_i: bytes
    spi_r: bytes
    path: Path
    created: float
    state: IkeState = IkeState.CONNECTING
    esp_path: Path | None = None
    """Where the CHILD_SAs stay while the peer's new ``path`` awaits its return-routability
    check (RFC 4555 §3.7); None when they follow ``path``."""
    # Negotiated in IKE_SA_INIT.
    suite: IkeSuite | None = None
    proposal: str = ""
    sk_d: bytes = field(default=b"", repr=False)
    """Keys CHILD_SAs and the IKE_SA rekey (§2.17, §2.18): kept for the SA's life."""
    sk_p: tuple[bytes, bytes] | None = field(default=None, repr=False)
    """(SK_pi, SK_pr): needed for the AUTH payloads only, dropped once IKE_AUTH is done."""
    cipher_out: SkCipher | None = field(default=None, repr=False)
    cipher_in: SkCipher | None = field(default=None, repr=False)
    dh: DhExchange | None = field(default=None, repr=False)
    """Our DH private value: only until IKE_SA_INIT has given the shared secret."""
    nonce_i: bytes = b""
    nonce_r: bytes = b""
    init_request: bytes = b""
    init_response: bytes = b""
    nat_local: bool = False
    nat_remote: bool = False
    wire: WireView | None = field(default=None, repr=False)
    """The transport's view of our paths (the engine's); None: they are the wire's."""
    peer_sig_hashes: tuple[int, ...] | None = None
    """The peer's SIGNATURE_HASH_ALGORITHMS (RFC 7427); None when it sent none."""
    peer_certreq: bool = False
    """The peer sent a CERTREQ (``send_cert = ifasked`` then sends ours)."""
    peer_fragmentation: bool = False
    """The peer sent IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT (RFC 7383 §2.3)."""
    reassembly: dict[bool, Reassembly] = field(default_factory=dict)
    """Fragments of the peer's request (False) and of the response to ours (True)."""
    # Learned in IKE_AUTH.
    local_id: str = ""
    remote_id: str = ""
    peer_mobike: bool = False
    virtual_ips: tuple[IPAddress, ...] = ()
    leases: tuple[tuple[str, IPAddress], ...] = ()
    """(pool name, address) handed to the peer, released when the SA goes."""
    children: dict[int, ChildSa] = field(default_factory=dict)
    first_initiator: bool | None = None
    """Whether we started the first IKE_SA of this rekey series; None: this is the first
    (``initiator`` tells). See ``mobike_initiator``."""
    # Message IDs and retransmission.
    next_request_id: int = 0
    pending: PendingRequest | None = None
    tasks: deque[Task] = field(default_factory=deque)
    peer_next_id: int = 0
    cached: CachedResponse | None = None
    # Liveness and timers.
    last_received: float = 0.0
    last_sent: float = 0.0
    unanswered_since: float | None = None
    """When the first of our requests left that the peer has not answered: nothing
    from it since (``silent_since_asked``)."""
    dead_at: float | None = None
    """``unanswered_since`` plus the engine's ``dead_after``: the SA is dead then if the
    peer stays silent (None: no bound but the retransmissions')."""
    state_check_at: float | None = None
    """When to ask the peer's IKE port whether it still knows this SA, if it stays
    silent (``EngineSettings.state_check_after``; None: never)."""
    state_check: IkeSa | None = field(default=None, repr=False)
    """The half-open IKE_SA whose IKE_SA_INIT asks it (see ``core/state_check.py``)."""
    check_of: IkeSa | None = field(default=None, repr=False)
    """On such a half-open IKE_SA: the silent IKE_SA it asks for."""
    lost_at: float | None = None
    """The peer answered the check: lost, if still silent then (None: no verdict due)."""
    rekey_at: float | None = None
    rekeyed: bool = False
    ike_collision: IkeRekeyCollision | None = None
    successor: IkeSa | None = None
    """The IKE_SA that took over our CHILD_SAs in a rekey: exchanges still running here
    find their CHILD_SAs there."""
    initial_contact: bool = False
    """The peer sent INITIAL_CONTACT: its older IKE_SAs with the same identities are stale."""
    init_key: tuple[bytes, Endpoint] | None = None
    """(SPIi, remote) of the IKE_SA_INIT that created us as responder."""
    delete_by: float | None = None
    """``delete_ike`` queued the DELETE behind an outstanding request: when it goes
    anyway, answered or not (``EngineSettings.delete_wait``)."""
    delete_reason: str = ""
    """Why the peer's request ended this SA, when it was not a plain Delete."""
    retire_at: float | None = None
    """A replaced (REKEYED) SA is dropped silently here if the peer never deletes it."""
    """Set once a rekey replaced this SA: its deletion then reads "rekeyed"."""
    established_at: float | None = None
    # MOBIKE (RFC 4555).
    natt_supported: bool = False
    """The peer sent NAT detection payloads in IKE_SA_INIT (NAT-T in use)."""
    peer_addrs: tuple[IPAddress, ...] = ()
    """The peer's announced additional addresses (ADDITIONAL_IP*_ADDRESS)."""
    last_update_id: int = -1
    """Message ID of the newest UPDATE_SA_ADDRESSES accepted from the peer (§3.5)."""
    natd_seen: bytes | None = None
    """The peer's last NAT_DETECTION_DESTINATION_IP hash of us (§3.8 rebinding)."""
    verified_peers: dict[Endpoint, None] = field(default_factory=dict)
    """Peer endpoints shown to receive what we send there (§3.7): where the IKE_SA was
    set up, and where a return routability check was answered; oldest first, bounded
    (``exchanges.mobike.remember_verified``). An update back to one needs no check."""
    probes: list[Probe] = field(default_factory=list)
    announced: tuple[IPAddress, ...] | None = None
    """Our address list as last sent to the peer (None: never sent)."""
    redirect: RedirectState = field(default_factory=RedirectState)
    """RFC 5685 (``exchanges/redirect.py``)."""

    def set_state(self, new: IkeState) -> None:
        """Move to ``new`` (staying put is always allowed). A change ``_TRANSITIONS``
        does not list raises InvalidTransition under STRICT_TRANSITIONS, else is logged."""
        if new is not self.state and new not in _TRANSITIONS[self.state]:
            fault = InvalidTransition(f"IKE_SA {self.state.value} -> {new.value}")
            if STRICT_TRANSITIONS:
                raise fault
            logging.getLogger(__name__).error("%s (not in the state table)", fault)
        self.state = new

    def peer_may_start(self) -> tuple[ExchangeType, ...]:
        """The exchanges the peer may start in this SA's state."""
        if self.state == IkeState.CONNECTING and self.initiator:
            return ()
        return _PEER_MAY_START[self.state]

    def set_keys(self, suite: IkeSuite, keys: IkeKeys, *, authenticate: bool) -> None:
        """Keep of ``keys`` what the SA still needs: SK_d, the SK ciphers, and SK_pi/SK_pr
        only when an IKE_AUTH exchange is still to come (not after a rekey)."""
        self.suite = suite
        self.sk_d = keys.sk_d
        self.cipher_out, self.cipher_in = sk_ciphers(suite, keys, self.initiator)
        self.sk_p = (keys.sk_pi, keys.sk_pr) if authenticate else None

    @property
    def fragmentation(self) -> bool:
        """We cut our own large messages: both sides announced support and our
        connection says yes (or force); ``accept`` only takes fragments."""
        return self.peer_fragmentation and self.conn.fragmentation.sends

    @property
    def mobike(self) -> bool:
        """MOBIKE negotiated on this IKE_SA (both sent MOBIKE_SUPPORTED)."""
        return self.conn.mobike and self.peer_mobike

    def lineage(self) -> list[IkeSa]:
        """This SA and the chain of its successors (bounded: each rekey adds one)."""
        out: list[IkeSa] = [self]
        while out[-1].successor is not None and len(out) < 16:
            out.append(out[-1].successor)
        return out

    def holder_of(self, unique_id: int) -> IkeSa | None:
        """The SA in our lineage that holds CHILD_SA ``unique_id`` now."""
        for sa in self.lineage():
            if unique_id in sa.children:
                return sa
        return None

    @property
    def mobike_initiator(self) -> bool:
        """RFC 4555's initiator (§2): the party that started the first IKE_SA, whoever
        rekeyed it since. It alone decides the addresses (as charon's
        COND_ORIGINAL_INITIATOR, which its rekeys inherit)."""
        return self.initiator if self.first_initiator is None else self.first_initiator

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def spi_str(self) -> str:
        return f"{self.spi_i.hex()}_{self.spi_r.hex()}"

    def natd_path(self, path: Path) -> Path:
        """``path`` as NAT detection hashes it: its ends on the wire."""
        return path if self.wire is None else self.wire(self.spi_i, path, self.initiator)

    @property
    def behind_nat(self) -> bool:
        return self.nat_local

    @property
    def nat_any(self) -> bool:
        return self.nat_local or self.nat_remote

    def header(self, exchange: ExchangeType, message_id: int, response: bool) -> Header:
        flags = HeaderFlag.NONE
        if self.initiator:
            flags |= HeaderFlag.INITIATOR
        if response:
            flags |= HeaderFlag.RESPONSE
        return Header(self.spi_i, self.spi_r, 0, exchange, flags, message_id)

    def silent_since_asked(self) -> bool:
        """A request of ours is out on a live SA we initiated and the peer has sent
        nothing, on any path, since the first request it left unanswered. Only the
        original initiator: it detects and repairs failures, while a responder keeps
        retransmitting so that a moving peer has time to come back (RFC 4555 3.11)."""
        return (self.mobike_initiator and self.pending is not None
                and self.unanswered_since is not None
                and self.last_received <= self.unanswered_since
                and self.state in (IkeState.ESTABLISHED, IkeState.REKEYING))

    def deadline(self, keepalive_interval: float, half_open_timeout: float) -> float | None:
        """The earliest moment anything about this SA must happen."""
        times: list[float] = []
        if self.pending is not None:
            times.append(self.pending.deadline)
            if self.delete_by is not None:
                times.append(self.delete_by)
        times.extend(p.deadline for p in self.probes)
        if (reassembly := reassembly_deadline(self.reassembly, REASSEMBLY_TIMEOUT)) is not None:
            times.append(reassembly)
        if self.state == IkeState.CONNECTING:
            # Only a responder's half-open SA times out; an initiator gives up
            # through its retransmissions, as charon does.
            if not self.initiator:
                times.append(self.created + half_open_timeout)
            return min(times) if times else None
        if self.retire_at is not None and self.state not in (IkeState.DELETED,
                                                             IkeState.CONNECTING):
            times.append(self.retire_at)
        if self.state in (IkeState.ESTABLISHED, IkeState.REKEYING):
            if self.conn.dpd_delay > 0 and self.pending is None:
                times.append(self.last_received + self.conn.dpd_delay)
            if self.nat_local and self.path.natt:
                times.append(self.last_sent + keepalive_interval)
            if self.rekey_at is not None:
                times.append(self.rekey_at)
            if self.silent_since_asked():
                times.extend(t for t in (self.dead_at, self.lost_at) if t is not None)
                if self.state_check_at is not None and self.state_check is None:
                    times.append(self.state_check_at)
            for child in self.children.values():
                if child.rekey_at is not None and child.state == ChildState.INSTALLED:
                    times.append(child.rekey_at)
                if child.expire_at is not None:
                    times.append(child.expire_at)
        return min(times) if times else None
