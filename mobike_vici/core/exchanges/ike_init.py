"""IKE_SA_INIT (RFC 7296 §1.2, §2.6 COOKIE, §1.3... INVALID_KE, §2.23 NAT detection)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from ...config.model import ConnectionConfig
from ...ikev2.constants import (
    HEADER_LENGTH,
    DhId,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
    ProtocolId,
)
from ...ikev2.crypto import derive_ike_keys, dh_generate, dh_public_length
from ...ikev2.message import Header, Message, encode_message
from ...ikev2.payloads import (
    KE,
    SA,
    Nonce,
    Notify,
    P,
    Payload,
    Proposal,
    find_notify,
    find_payload,
    first_error,
)
from ...ikev2.proposals import ProposalSpec, ike_suite, select, to_payload
from ...types import IKE_PORT, NATT_PORT, Endpoint, Path
from ..context import Context, ike_proposals
from ..ike_sa import IkeSa
from ..naming import ike_suite_name
from ..nat import NAT_HASH_LENGTH, nat_verdict, natd_notifies
from .base import DropPacket, ExchangeAborted, Outcome, Task, notify_name
from .pubkey import certreq, hash_notify, peer_hashes, peer_sent_certreq
from .redirect import follow_init_redirect, offer, peer_supports

ZERO_SPI = bytes(8)
MAX_RETRIES = 5
"""Bound on COOKIE / INVALID_KE round trips before we give up (charon uses 5 too)."""
MIN_NONCE = 16
MAX_NONCE = 256


def _payload(payloads: Sequence[Payload], cls: type[P]) -> P:
    found = find_payload(payloads, cls)
    if found is None:
        raise DropPacket(f"IKE_SA_INIT without {cls.__name__}")
    return found


def _nat_detection(ctx: Context, conn: ConnectionConfig, spi_i: bytes, spi_r: bytes,
                   path: Path) -> list[Payload]:
    # As charon with encap=yes: a source hash that cannot match makes the peer
    # believe we are behind a NAT, so both ends UDP-encapsulate ESP.
    source = ctx.random_bytes(NAT_HASH_LENGTH) if conn.encap else None
    return natd_notifies(spi_i, spi_r, path, source)


def _detect_nat(sa: IkeSa, payloads: Sequence[Payload], spi_r: bytes, path: Path) -> None:
    """Record which side is behind a NAT, as seen from the peer's hashes."""
    verdict = nat_verdict(payloads, sa.spi_i, spi_r, sa.natd_path(path))
    if verdict is None:
        return
    sa.natt_supported = True
    sa.nat_remote, sa.nat_local = verdict.remote, verdict.local


def _finish_keys(sa: IkeSa, shared: bytes) -> None:
    assert sa.suite is not None
    keys = derive_ike_keys(sa.suite, sa.nonce_i, sa.nonce_r, shared, sa.spi_i, sa.spi_r)
    sa.set_keys(sa.suite, keys, authenticate=True)
    sa.proposal = ike_suite_name(sa.suite)
    sa.dh = None  # the private value has served its one purpose


def _groups(specs: Sequence[ProposalSpec]) -> list[DhId]:
    return [g for spec in specs for g in spec.dh]


def float_to_natt(path: Path) -> Path:
    """The path with both ports moved from 500 to 4500 (RFC 7296 §2.23)."""
    local = path.local
    remote = path.remote
    if local.port == IKE_PORT:
        local = Endpoint(local.addr, NATT_PORT)
    if remote.port == IKE_PORT:
        remote = Endpoint(remote.addr, NATT_PORT)
    return Path(local, remote)


class IkeInitTask(Task):
    """The initiator's IKE_SA_INIT, repeated with a COOKIE or another DH group on demand."""

    exchange = ExchangeType.IKE_SA_INIT

    def __init__(self, eager_until: float | None = None) -> None:
        self.cookie = b""
        self.group: DhId | None = None
        self.retries = 0
        self.eager_until = eager_until
        """Until then the request is resent every ``EngineSettings.eager_resend`` (a peer
        known to be restarting answers as soon as it is up); after, charon's schedule."""

    def build(self, ctx: Context, sa: IkeSa, now: float) -> list[Payload]:
        specs = ike_proposals(sa.conn)
        if self.group is None:
            groups = _groups(specs)
            if not groups:
                raise ExchangeAborted("no DH group configured")
            self.group = groups[0]
        # A COOKIE covers Ni, so a retry keeps the nonce (§2.6); the DH value is
        # regenerated only when the peer asked for another group.
        if sa.dh is None or sa.dh.group != self.group:
            sa.dh = dh_generate(self.group, ctx.random_bytes)
        if not sa.nonce_i:
            sa.nonce_i = ctx.random_bytes(ctx.settings.nonce_size)
        proposals = tuple(to_payload(spec, i + 1, b"") for i, spec in enumerate(specs))
        payloads: list[Payload] = []
        if self.cookie:
            # §2.6: the COOKIE notify comes first.
            payloads.append(Notify(NotifyType.COOKIE, self.cookie))
        payloads += [SA(proposals), KE(self.group, sa.dh.public), Nonce(sa.nonce_i)]
        payloads += _nat_detection(ctx, sa.conn, sa.spi_i, ZERO_SPI, sa.natd_path(sa.path))
        payloads += hash_notify(ctx, sa.conn)
        if sa.conn.fragmentation.announces:
            payloads.append(Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        return payloads + offer(sa)

    def process(self, ctx: Context, sa: IkeSa, msg: Message, now: float) -> Outcome:
        payloads = msg.payloads
        if follow_init_redirect(ctx, sa, payloads, now):
            self.cookie = b""  # the new gateway's, if it wants one
            return Outcome.RETRY
        cookie = find_notify(payloads, NotifyType.COOKIE)
        if cookie is not None:
            if self.retries >= MAX_RETRIES or not 1 <= len(cookie.data) <= 64:
                raise ExchangeAborted("too many COOKIE requests")
            self.retries += 1
            self.cookie = cookie.data
            return Outcome.RETRY
        invalid_ke = find_notify(payloads, NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            if len(invalid_ke.data) != 2:
                raise DropPacket("malformed INVALID_KE_PAYLOAD")
            wanted = int.from_bytes(invalid_ke.data, "big")
            acceptable = _groups(ike_proposals(sa.conn))
            if wanted not in acceptable or wanted == self.group or self.retries >= MAX_RETRIES:
                raise ExchangeAborted(f"peer wants DH group {wanted}")
            self.retries += 1
            self.group = DhId(wanted)
            return Outcome.RETRY
        error = first_error(payloads)
        if error is not None:
            if self.eager_until is not None and now < self.eager_until:
                # A peer known to be restarting answers before its config is loaded
                # (charon between its start and swanctl --load-all): ask again.
                raise DropPacket(f"{notify_name(error.type)} from a restarting peer")
            raise ExchangeAborted(notify_name(error.type))
        sa_payload = _payload(payloads, SA)
        ke = _payload(payloads, KE)
        nonce = _payload(payloads, Nonce)
        assert isinstance(sa_payload, SA) and isinstance(ke, KE) and isinstance(nonce, Nonce)
        if msg.header.spi_r == ZERO_SPI:
            raise DropPacket("IKE_SA_INIT response without responder SPI")
        if len(sa_payload.proposals) != 1:
            raise DropPacket("IKE_SA_INIT response must hold one proposal")
        chosen = sa_payload.proposals[0]
        # The peer must pick something we offered, with one transform per type.
        if select(ike_proposals(sa.conn), [chosen], ProtocolId.IKE) is None:
            raise ExchangeAborted("peer chose a proposal we did not offer")
        suite = ike_suite(chosen)
        if ke.group != suite.dh or sa.dh is None or ke.group != sa.dh.group:
            raise ExchangeAborted("KE group differs from the chosen proposal")
        if not MIN_NONCE <= len(nonce.data) <= MAX_NONCE:
            raise DropPacket("nonce size out of range")
        try:
            shared = sa.dh.shared_secret(ke.data)
        except ValueError as exc:
            raise ExchangeAborted("invalid DH public value") from exc
        sa.spi_r = msg.header.spi_r
        sa.suite = suite
        sa.nonce_r = nonce.data
        _finish_keys(sa, shared)
        _detect_nat(sa, payloads, sa.spi_r, sa.path)
        sa.peer_sig_hashes = peer_hashes(payloads)
        sa.peer_certreq = peer_sent_certreq(payloads)
        # RFC 7383 §2.3: a responder answers with it only when we sent it.
        sa.peer_fragmentation = (sa.conn.fragmentation.announces and find_notify(
            payloads, NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None)
        # charon floats to 4500 for IKE_AUTH when behind NAT or MOBIKE is wanted.
        if sa.nat_any or sa.conn.mobike or sa.conn.encap:
            sa.path = float_to_natt(sa.path)
        return Outcome.DONE


# ---------------------------------------------------------------------------
# Responder
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class InitReply:
    """The answer to an IKE_SA_INIT request: with ``sa`` set, a new half-open SA."""

    payloads: list[Payload]
    sa: IkeSa | None = None
    reason: str = ""


def _promote(spec: ProposalSpec, group: int) -> ProposalSpec:
    """Put the group the peer already sent first, as charon does, to avoid a round trip."""
    if group not in spec.dh:
        return spec
    dh = (DhId(group), *[g for g in spec.dh if g != group])
    return dataclasses.replace(spec, dh=dh)


def _choose(
    candidates: Sequence[ConnectionConfig], theirs: Sequence[Proposal], ke_group: int
) -> tuple[ConnectionConfig, Proposal] | None:
    for conn in candidates:
        ours = [_promote(spec, ke_group) for spec in ike_proposals(conn)]
        chosen = select(ours, theirs, ProtocolId.IKE)
        if chosen is not None:
            return conn, chosen
    return None


def _error(ntype: NotifyType, reason: str, data: bytes = b"") -> InitReply:
    return InitReply([Notify(ntype, data)], None, reason)


_NOTIFY_COOKIE = int(NotifyType.COOKIE)


@dataclass(frozen=True, slots=True)
class InitScan:
    """What the DoS checks need of an IKE_SA_INIT request, before it is decoded."""

    nonce: bytes
    cookie: bytes | None
    """The COOKIE notify's data when it is the first payload (RFC 7296 §2.6)."""
    ke_group: int | None
    """The KE payload's DH group: what a full answer would cost us."""


def stateless_response(header: Header, payloads: list[Payload]) -> bytes:
    """An IKE_SA_INIT response that creates no state (COOKIE, INVALID_KE_PAYLOAD, an
    error)."""
    answer = Header(header.spi_i, ZERO_SPI, 0, ExchangeType.IKE_SA_INIT,
                    HeaderFlag.RESPONSE, 0)
    return encode_message(answer, payloads)


def init_scan(header: Header, data: bytes) -> InitScan:
    """Find Ni, a leading COOKIE and the KE group of an IKE_SA_INIT request by walking
    the generic payload headers only: under a flood, requests that will be refused
    (no valid COOKIE, a source over its cap, the DH budget spent) are refused before
    anything else of them is decoded (the SA payload is the expensive part). Each
    step consumes at least 4 bytes. Raises DropPacket for a chain that does not fit
    the datagram, a missing or odd-sized Nonce, SPIi 0.
    """
    if header.spi_i == ZERO_SPI:
        raise DropPacket("IKE_SA_INIT with zero initiator SPI")
    if header.length != len(data):
        raise DropPacket("malformed message: length field differs from the datagram")
    kind = header.next_payload
    offset = HEADER_LENGTH
    nonce: bytes | None = None
    cookie: bytes | None = None
    group: int | None = None
    first = True
    while kind != PayloadType.NONE:
        if offset + 4 > len(data):
            raise DropPacket("malformed message: payload chain overruns the datagram")
        following = data[offset]
        length = int.from_bytes(data[offset + 2:offset + 4], "big")
        if length < 4 or offset + length > len(data):
            raise DropPacket("malformed message: payload length out of range")
        body = data[offset + 4:offset + length]
        if kind == PayloadType.NONCE and nonce is None:
            nonce = body
        elif kind == PayloadType.KE and group is None and len(body) >= 2:
            group = int.from_bytes(body[:2], "big")
        # §2.6: a COOKIE counts only as the first payload (no SPI: 4 bytes, then data).
        elif (first and kind == PayloadType.NOTIFY and len(body) >= 4 and body[1] == 0
                and int.from_bytes(body[2:4], "big") == _NOTIFY_COOKIE):
            cookie = body[4:]
        first = False
        kind = following
        offset += length
    if nonce is None:
        raise DropPacket("IKE_SA_INIT without Nonce")
    if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
        raise DropPacket("nonce size out of range")
    return InitScan(nonce, cookie, group)


def respond_init(
    ctx: Context,
    msg: Message,
    path: Path,
    candidates: Sequence[ConnectionConfig],
    now: float,
) -> InitReply:
    """Answer an IKE_SA_INIT request; raise DropPacket for malformed ones. COOKIEs,
    caps and the DH budget are the engine's, before this is called (``init_scan``)."""
    payloads = msg.payloads
    sa_payload = _payload(payloads, SA)
    ke = _payload(payloads, KE)
    nonce = _payload(payloads, Nonce)
    assert isinstance(sa_payload, SA) and isinstance(ke, KE) and isinstance(nonce, Nonce)
    if not MIN_NONCE <= len(nonce.data) <= MAX_NONCE:
        raise DropPacket("nonce size out of range")
    spi_i = msg.header.spi_i
    if spi_i == ZERO_SPI:
        raise DropPacket("IKE_SA_INIT with zero initiator SPI")
    if not candidates:
        return _error(NotifyType.NO_PROPOSAL_CHOSEN, "no_matching_connection")
    choice = _choose(candidates, sa_payload.proposals, ke.group)
    if choice is None:
        return _error(NotifyType.NO_PROPOSAL_CHOSEN, "no_proposal_chosen")
    conn, chosen = choice
    suite = ike_suite(chosen)
    if ke.group != suite.dh:
        return _error(NotifyType.INVALID_KE_PAYLOAD, "invalid_ke_payload",
                      int(suite.dh).to_bytes(2, "big"))
    if len(ke.data) != dh_public_length(suite.dh):
        # Checked before our key generation, the costly part for an unauthenticated peer.
        raise DropPacket("invalid DH public value")
    dh = dh_generate(suite.dh, ctx.random_bytes)
    try:
        shared = dh.shared_secret(ke.data)
    except ValueError as exc:
        raise DropPacket("invalid DH public value") from exc
    sa = IkeSa(conn=conn, initiator=False, spi_i=spi_i, spi_r=ctx.new_ike_spi(), path=path,
               created=now)
    sa.suite = suite
    sa.nonce_i = nonce.data
    sa.nonce_r = ctx.random_bytes(ctx.settings.nonce_size)
    _finish_keys(sa, shared)
    _detect_nat(sa, payloads, ZERO_SPI, path)
    sa.peer_sig_hashes = peer_hashes(payloads)
    sa.peer_certreq = peer_sent_certreq(payloads)
    sa.redirect.supported = peer_supports(payloads)
    reply: list[Payload] = [SA((chosen,)), KE(suite.dh, dh.public), Nonce(sa.nonce_r)]
    reply += _nat_detection(ctx, conn, sa.spi_i, sa.spi_r, path)
    # RFC 7427 §4 and a CERTREQ (RFC 7296 §3.7): a peer with send_cert = ifasked
    # (charon's default) sends its certificate only when asked.
    # Any candidate may end up chosen in IKE_AUTH (by identity): ask for what they need.
    signing = next((c for c in candidates if hash_notify(ctx, c)), conn)
    reply += hash_notify(ctx, signing) + certreq(ctx, signing)
    if (conn.fragmentation.announces
            and find_notify(payloads, NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None):
        # RFC 7383 §2.3: announced back only to an initiator that announced it.
        sa.peer_fragmentation = True
        reply.append(Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
    return InitReply(reply, sa)
