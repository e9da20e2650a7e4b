"""IKE_AUTH (RFC 7296 §1.2, §2.15) with pre-shared keys or public keys, the first CHILD_SA
and CP (§2.19).

The AUTH payload covers the exact bytes of our IKE_SA_INIT message, the peer's
nonce and prf(SK_p, RestOfIDPayload): a MAC keyed by the PSK, or a signature
(``pubkey.py``: certificates, RFC 7427, trust).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
from collections.abc import Sequence

from ...config.model import AuthClass, ChildConfig, ConnectionConfig, Unique
from ...ikev2.constants import (
    AuthMethod,
    CfgAttr,
    CfgType,
    ExchangeType,
    NotifyType,
    ProtocolId,
)
from ...ikev2.crypto import psk_auth, signed_octets
from ...ikev2.message import Message
from ...ikev2.payloads import (
    CP,
    SA,
    Auth,
    CfgAttribute,
    IDi,
    IDr,
    Notify,
    Payload,
    Proposal,
    TrafficSelector,
    TSi,
    TSr,
    find_notify,
    find_payload,
    first_error,
    id_body,
)
from ...ikev2.proposals import select
from ...types import IPAddress
from ..child_sa import ChildSa
from ..context import Context, candidates
from ..events import AuthenticationFailed, ExchangeFailed, IkeSaEstablished
from ..identity import (
    default_identity,
    find_psk,
    identity_matches,
    identity_to_str,
    is_any_identity,
    parse_identity,
)
from ..ike_sa import IkeSa, IkeState
from ..pool import acquire_from
from ..ts import narrow, resolve
from .base import DropPacket, ExchangeAborted, Outcome, Task, child_offer, notify_name
from .child import child_proposals, install, make_child, proposal_payloads, schedule
from .mobike import (
    answer_mobike,
    mobike_answered,
    mobike_offered,
    offer_mobike,
    remember_verified,
)
from .pubkey import (
    PeerAuthFailed,
    cert_payloads,
    certreq,
    local_pubkey,
    our_id,
    peer_sent_certreq,
    remote_pubkey,
    sign,
    verify_peer,
)

CHILD_ERRORS = frozenset({
    NotifyType.NO_PROPOSAL_CHOSEN, NotifyType.TS_UNACCEPTABLE, NotifyType.SINGLE_PAIR_REQUIRED,
    NotifyType.INTERNAL_ADDRESS_FAILURE, NotifyType.FAILED_CP_REQUIRED,
    NotifyType.INVALID_SELECTORS, NotifyType.NO_ADDITIONAL_SAS,
})
"""Errors about the CHILD_SA only: the IKE_SA still comes up (RFC 7296 §1.2)."""


def local_identity(sa: IkeSa, conn: ConnectionConfig) -> tuple[int, bytes]:
    configured = conn.local[0].id if conn.local else None
    if is_any_identity(configured):
        return default_identity(sa.path.local.addr)
    assert configured is not None
    return parse_identity(configured)


def our_identity(ctx: Context, sa: IkeSa, conn: ConnectionConfig) -> tuple[int, bytes]:
    """The ID we send: with a certificate, its subject DN unless local.id says otherwise."""
    cred = local_pubkey(ctx, conn)
    if cred is None:
        return local_identity(sa, conn)
    configured = conn.local[0].id
    try:
        return our_id(cred, None if is_any_identity(configured)
                      else parse_identity(configured or ""))
    except PeerAuthFailed as exc:
        raise ValueError(exc.detail) from None


def _remote_is_pubkey(ctx: Context, conn: ConnectionConfig) -> bool:
    """The peer proves itself with a signature: a written ``remote { auth = pubkey }``
    (an unwritten section only when the loader found certificates for it)."""
    return remote_pubkey(ctx, conn) is not None or (
        bool(conn.remote) and conn.remote[0].auth == AuthClass.PUBKEY
        and bool(conn.remote[0].file))


def _local_is_pubkey(conn: ConnectionConfig) -> bool:
    return bool(conn.local) and conn.local[0].auth == AuthClass.PUBKEY and bool(
        conn.local[0].file)


def _auth_failed(ctx: Context, sa: IkeSa, conn: ConnectionConfig, reason: str, detail: str,
                 claimed: str = "") -> None:
    ctx.emit(AuthenticationFailed(conn=conn.name, ike_spi=sa.spi_str, reason=reason,
                                  detail=detail, remote_id=claimed))


def _remote_pattern(conn: ConnectionConfig) -> str | None:
    return conn.remote[0].id if conn.remote else None


def _prf_keys(sa: IkeSa) -> None:
    if sa.suite is None or sa.sk_p is None:
        raise DropPacket("IKE_AUTH before keys exist")


def _octets(sa: IkeSa, of_initiator: bool, body: bytes) -> bytes:
    """The initiator's or the responder's signed octets (§2.15)."""
    assert sa.suite is not None and sa.sk_p is not None
    sk_pi, sk_pr = sa.sk_p
    if of_initiator:
        return signed_octets(sa.suite.prf, sa.init_request, sa.nonce_r, sk_pi, body)
    return signed_octets(sa.suite.prf, sa.init_response, sa.nonce_i, sk_pr, body)


def _auth_data(sa: IkeSa, psk: bytes, of_initiator: bool, body: bytes) -> bytes:
    """AUTH over the initiator's or the responder's signed octets."""
    assert sa.suite is not None
    return psk_auth(sa.suite.prf, psk, _octets(sa, of_initiator, body))


def _auth_matches(auth: Auth, expected: bytes) -> bool:
    """Constant time: how much of a forged AUTH matched must not show in the timing."""
    return hmac.compare_digest(auth.data, expected)


def _cp_addresses(cp: CP) -> list[IPAddress]:
    out: list[IPAddress] = []
    for attr in cp.attributes:
        if attr.type == CfgAttr.INTERNAL_IP4_ADDRESS and len(attr.value) == 4:
            out.append(ipaddress.IPv4Address(attr.value))
        elif attr.type == CfgAttr.INTERNAL_IP6_ADDRESS and len(attr.value) == 17:
            out.append(ipaddress.IPv6Address(attr.value[:16]))
    return out


def _cp_attribute(addr: IPAddress, request: bool) -> CfgAttribute:
    if addr.version == 4:
        value = b"" if request and addr.is_unspecified else addr.packed
        return CfgAttribute(CfgAttr.INTERNAL_IP4_ADDRESS, value)
    value = b"" if request and addr.is_unspecified else addr.packed + b"\x80"
    return CfgAttribute(CfgAttr.INTERNAL_IP6_ADDRESS, value)


class IkeAuthTask(Task):
    """The initiator's IKE_AUTH, carrying the first CHILD_SA when one is configured."""

    exchange = ExchangeType.IKE_AUTH

    def __init__(self, child: ChildConfig | None) -> None:
        self.child = child
        self.spi_in = b""
        self.tsi: list[TrafficSelector] = []
        self.tsr: list[TrafficSelector] = []
        self.psk = b""

    def build(self, ctx: Context, sa: IkeSa, now: float) -> list[Payload]:
        conn = sa.conn
        cred = local_pubkey(ctx, conn)
        if cred is None and _local_is_pubkey(conn):
            raise ExchangeAborted("no certificate and private key for local auth pubkey")
        id_type, id_data = our_identity(ctx, sa, conn)
        idi = IDi(id_type, id_data)
        remote_pattern = _remote_pattern(conn)
        if cred is None:
            remote_for_psk: str | tuple[int, bytes] | None = remote_pattern
            if is_any_identity(remote_pattern):
                remote_for_psk = default_identity(sa.path.remote.addr)
            psk = find_psk(ctx.config.secrets, (id_type, id_data), remote_for_psk)
            if psk is None:
                raise ExchangeAborted("no shared key found")
            self.psk = psk
        sa.local_id = identity_to_str(id_type, id_data)
        payloads: list[Payload] = [idi]
        if cred is not None:
            payloads += cert_payloads(ctx, sa.peer_certreq, conn, cred)
        payloads += certreq(ctx, conn)
        others = [o for o in ctx.sas.values() if o is not sa and o.conn.name == conn.name
                  and o.path.remote.addr == sa.path.remote.addr]
        if not others:
            # As charon: only when we hold no other IKE_SA with this peer, since the
            # peer drops every older SA with our identities on INITIAL_CONTACT.
            payloads.append(Notify(NotifyType.INITIAL_CONTACT))
        if not is_any_identity(remote_pattern):
            assert remote_pattern is not None
            # A wildcard pattern (*@example.com) is not sent.
            with contextlib.suppress(ValueError):
                payloads.append(IDr(*parse_identity(remote_pattern)))
        if cred is not None:
            try:
                payloads.append(sign(cred, _octets(sa, True, id_body(idi)),
                                     sa.peer_sig_hashes))
            except PeerAuthFailed as exc:
                raise ExchangeAborted(f"{exc.reason}: {exc.detail}") from None
        else:
            payloads.append(Auth(AuthMethod.SHARED_KEY_MIC,
                                 _auth_data(sa, self.psk, True, id_body(idi))))
        if conn.vips:
            payloads.append(CP(CfgType.CFG_REQUEST,
                               tuple(_cp_attribute(v, True) for v in conn.vips)))
        payloads += offer_mobike(ctx, sa, self.child is None or self.child.mode == "tunnel")
        if self.child is not None:
            self.spi_in = ctx.new_child_spi()
            specs = child_proposals(self.child, pfs=False)
            self.tsi = resolve(self.child.local_ts, sa.path.local.addr, conn.vips)
            self.tsr = resolve(self.child.remote_ts, sa.path.remote.addr)
            payloads += [SA(proposal_payloads(specs, self.spi_in)), TSi(tuple(self.tsi)),
                         TSr(tuple(self.tsr))]
        return payloads

    def process(self, ctx: Context, sa: IkeSa, msg: Message, now: float) -> Outcome:
        payloads = msg.payloads
        error = first_error(payloads)
        if error is not None and error.type not in CHILD_ERRORS:
            if error.type == NotifyType.AUTHENTICATION_FAILED:
                _auth_failed(ctx, sa, sa.conn, "rejected_by_peer",
                             "the peer answered AUTHENTICATION_FAILED")
            raise ExchangeAborted(notify_name(error.type))
        idr = find_payload(payloads, IDr)
        auth = find_payload(payloads, Auth)
        if not isinstance(idr, IDr) or not isinstance(auth, Auth):
            raise ExchangeAborted("IKE_AUTH response without IDr or AUTH")
        conn = sa.conn
        claimed = identity_to_str(idr.id_type, idr.data)
        if not identity_matches(_remote_pattern(conn), idr.id_type, idr.data):
            _auth_failed(ctx, sa, conn, "id_mismatch",
                         f"'{claimed}' does not match remote id", claimed)
            raise ExchangeAborted("peer identity does not match remote id")
        if _remote_is_pubkey(ctx, conn):
            try:
                verify_peer(ctx, conn, idr.id_type, idr.data, auth, payloads,
                            _octets(sa, False, id_body(idr)), now)
            except PeerAuthFailed as exc:
                _auth_failed(ctx, sa, conn, exc.reason, exc.detail, claimed)
                raise ExchangeAborted(f"authentication_failed: {exc.reason}") from None
        else:
            # The key to verify with is looked up for the identity the peer claims.
            psk = find_psk(ctx.config.secrets, our_identity(ctx, sa, conn),
                           (idr.id_type, idr.data))
            if (psk is None or auth.method != AuthMethod.SHARED_KEY_MIC
                    or not _auth_matches(auth, _auth_data(sa, psk, False, id_body(idr)))):
                _auth_failed(ctx, sa, conn, "psk_mismatch",
                             "the peer's AUTH does not verify with our PSK", claimed)
                raise ExchangeAborted("authentication_failed")
        sa.remote_id = identity_to_str(idr.id_type, idr.data)
        mobike_answered(sa, payloads)
        cp = find_payload(payloads, CP)
        if isinstance(cp, CP) and cp.cfg_type == CfgType.CFG_REPLY:
            sa.virtual_ips = tuple(_cp_addresses(cp))
        establish(ctx, sa, now)
        if self.child is not None:
            self._child(ctx, sa, payloads, error, now)
        return Outcome.DONE

    def _child(self, ctx: Context, sa: IkeSa, payloads: Sequence[Payload],
               error: Notify | None, now: float) -> None:
        assert self.child is not None
        fail = notify_name(error.type) if error is not None else ""
        sa_p, tsi, tsr = child_offer(payloads)
        if not fail and not (isinstance(sa_p, SA) and isinstance(tsi, TSi)
                             and isinstance(tsr, TSr)):
            fail = "no CHILD_SA in IKE_AUTH response"
        if not fail:
            assert isinstance(sa_p, SA) and isinstance(tsi, TSi) and isinstance(tsr, TSr)
            ours = child_proposals(self.child, pfs=False)
            chosen = (select(ours, sa_p.proposals, ProtocolId.ESP, skip_dh=True)
                      if len(sa_p.proposals) == 1 else None)
            # With a virtual IP the selectors we proposed were the whole family.
            local_ok = resolve(self.child.local_ts, sa.path.local.addr,
                               sa.virtual_ips or sa.conn.vips)
            local_ts = narrow(tsi.selectors, self.tsi) if self.tsi else []
            if sa.virtual_ips:
                local_ts = narrow(local_ts, local_ok)
            remote_ts = narrow(tsr.selectors, self.tsr)
            if chosen is None or len(chosen.spi) != 4:
                fail = "peer chose an ESP proposal we did not offer"
            elif not local_ts or not remote_ts:
                fail = "TS_UNACCEPTABLE"
            else:
                child = make_child(ctx, sa, self.child, chosen, self.spi_in, chosen.spi,
                                   local_ts, remote_ts, sa.nonce_i, sa.nonce_r, now)
                install(ctx, sa, child)
                return
        ctx.release_child_spi(self.spi_in)
        ctx.emit(ExchangeFailed(conn=sa.conn.name, ike_spi=sa.spi_str,
                                exchange="IKE_AUTH", reason=f"child {self.child.name}: {fail}"))


def establish(ctx: Context, sa: IkeSa, now: float) -> None:
    # Both AUTH payloads are computed and checked: SK_pi/SK_pr have no further use.
    sa.sk_p = None
    sa.set_state(IkeState.ESTABLISHED)
    sa.established_at = now
    sa.rekey_at = schedule(ctx, sa.conn.rekey_time, sa.conn.rand_time, now)
    # The peer set the IKE_SA up from this address: its AUTH signs what we sent there.
    remember_verified(sa, sa.path.remote)
    ctx.emit(IkeSaEstablished(
        conn=sa.conn.name, ike_spi=sa.spi_str, path=sa.path, initiator=sa.initiator,
        local_id=sa.local_id, remote_id=sa.remote_id, proposal=sa.proposal,
        nat_local=sa.nat_local, nat_remote=sa.nat_remote,
        virtual_ips=sa.virtual_ips,
    ))


# ---------------------------------------------------------------------------
# Responder
# ---------------------------------------------------------------------------


class AuthFailed(Exception):
    """Answer AUTHENTICATION_FAILED and drop the IKE_SA."""


def _pick_connection(
    ctx: Context, sa: IkeSa, idi: IDi, idr: IDr | None, signed: bool
) -> tuple[ConnectionConfig, bytes | None] | None:
    """The connection for the initiator's identities; with a PSK when it authenticates
    with one. ``signed``: its AUTH is a signature, so pubkey connections come first."""
    fallback: tuple[ConnectionConfig, bytes | None] | None = None
    for conn in candidates(ctx.config, sa.path) or [sa.conn]:
        if sa.suite is not None and conn is not sa.conn and conn.proposals != sa.conn.proposals:
            continue  # the IKE proposal was chosen from sa.conn's set
        if not identity_matches(_remote_pattern(conn), idi.id_type, idi.data):
            continue
        try:
            ours = our_identity(ctx, sa, conn)
        except ValueError:
            continue
        pinned = not is_any_identity(conn.local[0].id if conn.local else None)
        if idr is not None and pinned and (int(idr.id_type), idr.data) != (int(ours[0]), ours[1]):
            continue
        if _remote_is_pubkey(ctx, conn):
            if signed:
                return conn, None
            fallback = fallback or (conn, None)
            continue
        psk = find_psk(ctx.config.secrets, ours, (idi.id_type, idi.data))
        if psk is not None:
            if not signed:
                return conn, psk
            fallback = fallback or (conn, psk)
    return fallback


def respond_auth(ctx: Context, sa: IkeSa, msg: Message, now: float) -> list[Payload]:
    """Verify the initiator, answer with our AUTH and the first CHILD_SA.

    Raises AuthFailed (the engine answers AUTHENTICATION_FAILED and drops the SA).
    """
    _prf_keys(sa)
    payloads = msg.payloads
    idi = find_payload(payloads, IDi)
    auth = find_payload(payloads, Auth)
    idr = find_payload(payloads, IDr)
    if not isinstance(idi, IDi) or not isinstance(auth, Auth):
        raise AuthFailed("IKE_AUTH request without IDi or AUTH")
    picked = _pick_connection(ctx, sa, idi, idr if isinstance(idr, IDr) else None,
                              auth.method != AuthMethod.SHARED_KEY_MIC)
    claimed = identity_to_str(idi.id_type, idi.data)
    if picked is None:
        _auth_failed(ctx, sa, sa.conn, "no_matching_peer_config",
                     f"no connection accepts '{claimed}'", claimed)
        raise AuthFailed("no matching peer config")
    conn, psk = picked
    if psk is None:
        try:
            verify_peer(ctx, conn, idi.id_type, idi.data, auth, payloads,
                        _octets(sa, True, id_body(idi)), now)
        except PeerAuthFailed as exc:
            _auth_failed(ctx, sa, conn, exc.reason, exc.detail, claimed)
            raise AuthFailed(f"{exc.reason}: {exc.detail}") from None
    elif auth.method != AuthMethod.SHARED_KEY_MIC or not _auth_matches(
            auth, _auth_data(sa, psk, True, id_body(idi))):
        _auth_failed(ctx, sa, conn, "psk_mismatch", "AUTH does not verify with the PSK",
                     claimed)
        raise AuthFailed("AUTH payload does not verify")
    sa.conn = conn
    sa.remote_id = claimed
    id_type, id_data = our_identity(ctx, sa, conn)
    sa.local_id = identity_to_str(id_type, id_data)
    our_idr = IDr(id_type, id_data)
    cred = local_pubkey(ctx, conn)
    if cred is None and _local_is_pubkey(conn):
        raise AuthFailed("no certificate and private key for local auth pubkey")
    sa.peer_mobike = mobike_offered(payloads)
    sa.initial_contact = find_notify(payloads, NotifyType.INITIAL_CONTACT) is not None
    ike_count, peer_children = ctx.peer_load(sa)
    replaces = sa.initial_contact and conn.unique != Unique.NEVER  # the old ones go
    if not replaces and ike_count >= ctx.settings.max_ike_sas_per_peer:
        raise AuthFailed("too many IKE_SAs for this peer")
    reply: list[Payload] = [our_idr]
    if cred is not None:
        reply += cert_payloads(ctx, sa.peer_certreq or peer_sent_certreq(payloads), conn, cred)
        try:
            reply.append(sign(cred, _octets(sa, False, id_body(our_idr)), sa.peer_sig_hashes))
        except PeerAuthFailed as exc:
            raise AuthFailed(f"{exc.reason}: {exc.detail}") from None
    else:
        # Our PSK for the identities now known (ours may differ from the pick's guess).
        mine = psk if psk is not None else find_psk(ctx.config.secrets, (id_type, id_data),
                                                    (idi.id_type, idi.data))
        if mine is None:
            raise AuthFailed("no shared key found")
        reply.append(Auth(AuthMethod.SHARED_KEY_MIC,
                          _auth_data(sa, mine, False, id_body(our_idr))))
    cp = find_payload(payloads, CP)
    cp_failed = False
    if isinstance(cp, CP) and cp.cfg_type == CfgType.CFG_REQUEST and conn.pools:
        attrs = _assign(ctx, sa, conn, cp)
        if attrs:
            reply.append(CP(CfgType.CFG_REPLY, tuple(attrs)))
        else:
            cp_failed = True
    reply += answer_mobike(ctx, sa, conn, payloads)
    establish(ctx, sa, now)
    # The peer's CHILD_SAs are unchanged since the count above unless establishing
    # replaced its old IKE_SAs: one walk over the SAs per IKE_AUTH, not two.
    child_reply, child = _respond_child(ctx, sa, conn, payloads, cp_failed, now,
                                        None if replaces else peer_children)
    reply += child_reply
    if child is not None:
        install(ctx, sa, child)
    return reply


def _assign(ctx: Context, sa: IkeSa, conn: ConnectionConfig, cp: CP) -> list[CfgAttribute]:
    pools = [ctx.pools[name] for name in conn.pools if name in ctx.pools]
    attrs: list[CfgAttribute] = []
    for attr in cp.attributes:
        if attr.type == CfgAttr.INTERNAL_IP4_ADDRESS:
            requested: IPAddress = (ipaddress.IPv4Address(attr.value) if len(attr.value) == 4
                                    else ipaddress.IPv4Address(0))
        elif attr.type == CfgAttr.INTERNAL_IP6_ADDRESS:
            requested = (ipaddress.IPv6Address(attr.value[:16]) if len(attr.value) == 17
                         else ipaddress.IPv6Address(0))
        else:
            continue
        family = [p for p in pools if p.first.version == requested.version]
        got = acquire_from(family, sa.remote_id, peer=sa.path.remote.addr,
                           requested=requested) if family else None
        if got is not None:
            pool, address = got
            sa.leases += ((pool.name, address),)
            sa.virtual_ips += (address,)
            attrs.append(_cp_attribute(address, False))
    return attrs


def _respond_child(
    ctx: Context, sa: IkeSa, conn: ConnectionConfig, payloads: Sequence[Payload],
    cp_failed: bool, now: float, peer_children: int | None,
) -> tuple[list[Payload], ChildSa | None]:
    sa_p, tsi, tsr = child_offer(payloads)
    if not (isinstance(sa_p, SA) and isinstance(tsi, TSi) and isinstance(tsr, TSr)):
        return [], None  # childless (RFC 6023) or nothing asked for
    if cp_failed:
        return [Notify(NotifyType.INTERNAL_ADDRESS_FAILURE)], None
    if child_cap_reached(ctx, sa, peer_children):
        ctx.emit(ExchangeFailed(conn=sa.conn.name, ike_spi=sa.spi_str, exchange="CHILD_SA",
                                reason="NO_ADDITIONAL_SAS"))
        return [Notify(NotifyType.NO_ADDITIONAL_SAS)], None
    return respond_child_sa(ctx, sa, conn.children, sa_p.proposals, tsi.selectors,
                            tsr.selectors, sa.nonce_i, sa.nonce_r, now, pfs=False)


def child_cap_reached(ctx: Context, sa: IkeSa, peer_children: int | None = None) -> bool:
    """A new CHILD_SA would exceed max_child_sas_per_peer (the caller answers
    NO_ADDITIONAL_SAS; the engine reports it as ExchangeFailed). ``peer_children``:
    the peer's CHILD_SA count when the caller has just taken it."""
    children = peer_children if peer_children is not None else ctx.peer_load(sa)[1]
    return children >= ctx.settings.max_child_sas_per_peer


def respond_child_sa(
    ctx: Context, sa: IkeSa, configs: Sequence[ChildConfig], proposals: Sequence[Proposal],
    tsi: Sequence[TrafficSelector], tsr: Sequence[TrafficSelector], nonce_i: bytes,
    nonce_r: bytes,
    now: float, pfs: bool, shared: bytes | None = None,
) -> tuple[list[Payload], ChildSa | None]:
    """Pick a child config by selectors, then a proposal; answer errors as notifies."""
    ts_failed = True
    for config in configs:
        ours_local = resolve(config.local_ts, sa.path.local.addr)
        ours_remote = resolve(config.remote_ts, sa.path.remote.addr, sa.virtual_ips)
        narrowed_i = narrow(tsi, ours_remote)
        narrowed_r = narrow(tsr, ours_local)
        if not narrowed_i or not narrowed_r:
            continue
        ts_failed = False
        chosen = select(child_proposals(config, pfs), proposals, ProtocolId.ESP,
                        skip_dh=not pfs)
        if chosen is None or len(chosen.spi) != 4:
            continue
        spi_in = ctx.new_child_spi()
        child = make_child(ctx, sa, config, chosen, spi_in, chosen.spi, narrowed_r,
                           narrowed_i, nonce_i, nonce_r, now, shared, initiator=False)
        ours = Proposal(chosen.num, chosen.protocol, spi_in, chosen.transforms)
        return [SA((ours,)), TSi(tuple(narrowed_i)), TSr(tuple(narrowed_r))], child
    notify = NotifyType.TS_UNACCEPTABLE if ts_failed else NotifyType.NO_PROPOSAL_CHOSEN
    ctx.emit(ExchangeFailed(conn=sa.conn.name, ike_spi=sa.spi_str, exchange="CHILD_SA",
                            reason=notify.name))
    return [Notify(notify)], None
