"""Events the native core hands to its caller (the daemon turns them into the JSON stream).

Frozen, keyword-only dataclasses, one base class. Events that carry key material
(for the data plane) mark those fields ``repr=False``; the event log never prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ikev2.crypto import ChildKeys, EspSuite
from ..types import IPAddress, Path


@dataclass(frozen=True, kw_only=True, slots=True)
class CoreEvent:
    conn: str
    """Connection name from the config."""
    ike_spi: str
    """``<spi_i>_<spi_r>`` in hex."""


@dataclass(frozen=True, kw_only=True, slots=True)
class IkeSaEstablished(CoreEvent):
    path: Path
    """Where the IKE_SA lives now."""
    initiator: bool
    """True when we are the original initiator."""
    local_id: str
    remote_id: str
    proposal: str
    """The negotiated IKE proposal in strongSwan's syntax, e.g. aes128-sha256-x25519."""
    nat_local: bool = False
    nat_remote: bool = False
    virtual_ips: tuple[IPAddress, ...] = ()
    """Virtual IPs assigned to us (initiator) or to the peer (responder)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class IkeSaDeleted(CoreEvent):
    path: Path
    reason: str
    """deleted_by_peer, deleted_locally, dpd_timeout, retransmits_exceeded, dead_after,
    rekeyed, ..."""


@dataclass(frozen=True, kw_only=True, slots=True)
class IkeSaRekeyed(CoreEvent):
    new_ike_spi: str
    """The IKE SPI pair of the new IKE_SA; ``ike_spi`` is the old one."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ChildSaInstalled(CoreEvent):
    child: str
    """CHILD_SA config name."""
    unique_id: int
    """Our handle for this CHILD_SA, stable across moves, new for a rekeyed SA."""
    spi_in: int
    spi_out: int
    path: Path
    """Outer endpoints of the ESP SA (IKE endpoints)."""
    encap: bool
    """UDP encapsulation (NAT-T or forced)."""
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    """Negotiated traffic selectors as CIDR strings (with [proto/port] when narrowed)."""
    suite: EspSuite
    proposal: str
    keys: ChildKeys = field(repr=False)
    """Key material for the data plane: never logged."""
    initiator: bool
    """True when we initiated the exchange that created this CHILD_SA (IKE_AUTH: the
    IKE_SA's initiator; a rekey: its initiator). Decides which keys are ours: the
    initiator's keys (encr_i/integ_i) protect traffic from that side (RFC 7296 §2.17)."""
    rekey_of: int | None = None
    """unique_id of the CHILD_SA this one replaces."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ChildSaDeleted(CoreEvent):
    child: str
    unique_id: int
    spi_in: int
    spi_out: int
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ChildSaRekeyed(CoreEvent):
    child: str
    old_unique_id: int
    new_unique_id: int
    old_spi_in: int
    new_spi_in: int


@dataclass(frozen=True, kw_only=True, slots=True)
class PacketDropped:
    """Not tied to an SA we trust: garbage, unknown SPI, failed integrity, replay."""

    path: Path
    reason: str
    ike_spi: str | None = None
    authenticated: bool = False
    """The message passed its integrity check (e.g. a replay outside the window): the
    daemon logs these one by one; anonymous drops are counted per reason."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ExchangeFailed(CoreEvent):
    """A request we sent failed or timed out, or the peer answered with an error notify."""

    exchange: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class AuthenticationFailed(CoreEvent):
    """IKE_AUTH failed to authenticate the peer (or the peer refused us)."""

    reason: str
    """id_mismatch, unknown_ca, expired, not_yet_valid, revoked, revocation_unknown,
    ca_constraint, not_a_ca, key_usage, path_length, bad_signature, no_certificate,
    malformed_certificate, certificate_mismatch, constraint, psk_mismatch,
    no_matching_peer_config, rejected_by_peer, ..."""
    detail: str = ""
    """What was wrong, for a person (certificate subjects, the identity)."""
    remote_id: str = ""
    """The identity the peer claimed, when it got that far."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageFragmented(CoreEvent):
    """An IKE message went out as RFC 7383 fragments, or came in as fragments and was
    reassembled (once per message: retransmissions are not reported again)."""

    exchange: str
    sent: bool
    """True: ours, cut; False: the peer's, reassembled."""
    fragments: int
    length: int
    """Bytes of the payloads the fragments carry together."""
    path: Path


# ---------------------------------------------------------------- MOBIKE (RFC 4555)


@dataclass(frozen=True, kw_only=True, slots=True)
class IkeSaMoved(CoreEvent):
    """Our UPDATE_SA_ADDRESSES was answered: the IKE_SA now lives on ``new_path``."""

    old_path: Path
    new_path: Path
    duration: float
    """Seconds from ``Engine.move`` to the answer."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerMoved(CoreEvent):
    """The peer's UPDATE_SA_ADDRESSES was accepted (after the return-routability check
    where the policy wants one), or, without MOBIKE, the NAT before the peer rebound
    (RFC 7296 §2.23): IKE_SA and CHILD_SAs now use ``new_path``."""

    old_path: Path
    new_path: Path


@dataclass(frozen=True, kw_only=True, slots=True)
class ChildSaUpdated(CoreEvent):
    """A CHILD_SA keeps its SPIs and keys but its outer endpoints changed: the data
    plane moves it in place."""

    child: str
    unique_id: int
    spi_in: int
    spi_out: int
    path: Path
    encap: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class MoveFailed(CoreEvent):
    """``Engine.move`` did not happen; the SA stays on its old path.

    reason: unacceptable_addresses, unexpected_nat_detected, timeout, superseded,
    not_mobike."""

    path: Path
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class UpdateRejected(CoreEvent):
    """An authenticated UPDATE_SA_ADDRESSES from the peer that we did not act on.

    reason: stale (replayed or older than one already seen), unacceptable_addresses,
    unexpected_nat_detected, not_mobike."""

    path: Path
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerAddressesUpdated(CoreEvent):
    """The peer announced its additional addresses (full replacement)."""

    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class NatMappingChanged(CoreEvent):
    """NAT detection in a liveness check shows the NAT in front of us rebound (§3.8);
    as original initiator we send UPDATE_SA_ADDRESSES on the current path."""

    path: Path


@dataclass(frozen=True, kw_only=True, slots=True)
class ProbeResult(CoreEvent):
    """The answer to ``Engine.probe``: ok on a response received on ``path``, not ok
    ``probe_timeout`` seconds after sending; ``rtt`` is None when not ok."""

    path: Path
    probe_id: int
    ok: bool
    rtt: float | None


@dataclass(frozen=True, kw_only=True, slots=True)
class IkeSaRedirected(CoreEvent):
    """We followed a gateway's REDIRECT (RFC 5685) as the client."""

    gateway: IPAddress
    """Where we went."""
    from_gateway: IPAddress
    """The gateway that sent the REDIRECT."""
    phase: str
    """``ike_sa_init`` (before any SA existed: the same IKE_SA starts over there) or
    ``established`` (a new IKE_SA and its CHILD_SAs are up there; this one, ``ike_spi``,
    is being deleted)."""
    new_ike_spi: str
    outage: float | None = None
    """Seconds from the REDIRECT to the new IKE_SA being up (``established`` only)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RedirectRefused(CoreEvent):
    """A REDIRECT we did not follow, or one whose new IKE_SA failed (the old one stays)."""

    gateway: str
    reason: str
    """not_an_address, unresolved, loop_detected, malformed, not_initiator,
    new_ike_sa_failed, identity_changed (a REDIRECT without our nonce is a packet_dropped
    instead)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RedirectResolving(CoreEvent):
    """An established IKE_SA was redirected to an FQDN: the daemon resolves ``gateway``
    and answers with ``Engine.redirect_resolved`` (the core does no I/O)."""

    gateway: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ClientRedirected(CoreEvent):
    """As gateway, we answered an IKE_SA_INIT with a REDIRECT (``conn`` is empty: no
    connection was chosen)."""

    path: Path
    gateway: IPAddress


Event = (
    IkeSaEstablished | IkeSaDeleted | IkeSaRekeyed | ChildSaInstalled | ChildSaDeleted
    | ChildSaRekeyed | PacketDropped | ExchangeFailed | AuthenticationFailed
    | IkeSaMoved | PeerMoved
    | ChildSaUpdated | MoveFailed | UpdateRejected | PeerAddressesUpdated
    | NatMappingChanged | ProbeResult | MessageFragmented
    | IkeSaRedirected | RedirectRefused | RedirectResolving | ClientRedirected
)
