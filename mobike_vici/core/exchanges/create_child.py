"""CREATE_CHILD_SA (RFC 7296 §1.3, §2.8, §2.18): more CHILD_SAs, rekeying them and the IKE_SA.

Additional CHILD_SA: SA, Ni, [KE for PFS], TSi, TSr; the responder picks the
first child config whose selectors fit.

CHILD_SA rekey: N(REKEY_SA) naming the old SA by the sender's inbound SPI, SA,
Ni, [KE for PFS], TSi, TSr; the rekey initiator deletes the old SA afterwards.
IKE_SA rekey: SA with the new 8-byte SPI, Ni, KE; the CHILD_SAs move to the new
IKE_SA, the rekey initiator deletes the old one. The initiator of the rekey is
the original initiator of the new IKE_SA.

Collisions (§2.8.1, §2.8.2): when both ends rekey the same CHILD_SA or the
IKE_SA at once, both answer as usual; the exchange that carries the lowest of
the four nonces loses and its initiator deletes the SA it created. CHILD_SA
requests while we rekey the IKE_SA get TEMPORARY_FAILURE (§2.25.2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ...config.model import ChildConfig
from ...ikev2.constants import DhId, ExchangeType, NotifyType, ProtocolId
from ...ikev2.crypto import DhExchange, derive_ike_keys, dh_generate
from ...ikev2.message import Message
from ...ikev2.payloads import (
    KE,
    SA,
    Nonce,
    Notify,
    Payload,
    Proposal,
    TrafficSelector,
    TSi,
    TSr,
    find_notify,
    find_payload,
    first_error,
)
from ...ikev2.proposals import ProposalSpec, ike_suite, preferred_dh, select
from ..child_sa import ChildSa, ChildState, RekeyCollision
from ..context import Context, ike_proposals
from ..events import ChildSaRekeyed
from ..ike_sa import IkeRekeyCollision, IkeSa, IkeState
from ..naming import ike_suite_name
from ..ts import narrow, resolve
from .base import DropPacket, ExchangeAborted, Outcome, Task, child_offer, notify_name
from .child import child_proposals, install, make_child, proposal_payloads, schedule
from .handover import hand_over, migrate_tasks
from .ike_auth import child_cap_reached
from .ike_init import MAX_NONCE, MIN_NONCE
from .informational import DeleteChildTask, DeleteIkeTask


def _nonce(payloads: Sequence[Payload]) -> bytes:
    nonce = find_payload(payloads, Nonce)
    if not isinstance(nonce, Nonce) or not MIN_NONCE <= len(nonce.data) <= MAX_NONCE:
        raise DropPacket("CREATE_CHILD_SA without a valid nonce")
    return nonce.data


def _promote(specs: Sequence[ProposalSpec], group: int) -> list[ProposalSpec]:
    out = []
    for spec in specs:
        if group in spec.dh:
            spec = dataclasses.replace(
                spec, dh=(DhId(group), *[g for g in spec.dh if g != group]))
        out.append(spec)
    return out


def _shared(dh: DhExchange | None, ke: KE | None) -> bytes | None:
    if dh is None:
        return None
    if ke is None or ke.group != dh.group:
        raise ExchangeAborted("KE missing or of another group", keep_sa=True)
    try:
        return dh.shared_secret(ke.data)
    except ValueError as exc:
        raise ExchangeAborted("invalid DH public value", keep_sa=True) from exc


def lowest_nonce_loses(ours: tuple[bytes, bytes], theirs: tuple[bytes, bytes]) -> bool:
    """True when our exchange (its Ni, Nr) holds the lowest of the four nonces."""
    return min(ours) < min(theirs)


# ---------------------------------------------------------------------------
# CHILD_SA rekey
# ---------------------------------------------------------------------------


class _ChildOfferTask(Task):
    """A CREATE_CHILD_SA of ours that offers a new CHILD_SA: its SPI, nonce and DH."""

    exchange = ExchangeType.CREATE_CHILD_SA

    def __init__(self, group: DhId | None) -> None:
        self.group = group
        self.spi_in = b""
        self.nonce = b""
        self.dh: DhExchange | None = None

    def _offer(self, ctx: Context, config: ChildConfig) -> list[Payload]:
        """SA, Nonce and (with PFS) KE for ``config``; the task's group, if it has one
        (the peer asked for it), goes first."""
        specs = child_proposals(config, pfs=True)
        group = self.group or preferred_dh(specs)
        if group is not None:
            specs = tuple(_promote(specs, group))
            self.dh = dh_generate(group, ctx.random_bytes)
        self.spi_in = ctx.new_child_spi()
        self.nonce = ctx.random_bytes(ctx.settings.nonce_size)
        payloads: list[Payload] = [SA(proposal_payloads(specs, self.spi_in)), Nonce(self.nonce)]
        if self.dh is not None:
            payloads.append(KE(self.dh.group, self.dh.public))
        return payloads


class ChildRekeyTask(_ChildOfferTask):
    """Rekey one CHILD_SA; the old one is deleted once the new one is installed.

    ``answer_lost``: the CHILD_SA was REKEYED by the peer, but our answer never reached
    it (it did not know the SA that answer made), so it is the one to rekey."""

    def __init__(self, unique_id: int, group: DhId | None = None, *,
                 answer_lost: bool = False) -> None:
        super().__init__(group)
        self.unique_id = unique_id
        self.answer_lost = answer_lost
        self.replaced: ChildSa | None = None
        self.was = ChildState.INSTALLED

    def build(self, ctx: Context, sa: IkeSa, now: float) -> list[Payload]:
        old = sa.children.get(self.unique_id)
        usable = (ChildState.INSTALLED, ChildState.REKEYED) if self.answer_lost else (
            ChildState.INSTALLED,)
        if old is None or old.state not in usable:
            raise ExchangeAborted("CHILD_SA to rekey is gone", keep_sa=True)
        self.was = old.state
        old.state = ChildState.REKEYING
        old.rekey_at = None  # this exchange is the rekey; a failure schedules a retry
        old.collision = None
        self.replaced = old
        return [Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, old.spi_in),
                *self._offer(ctx, old.config), TSi(old.local_ts), TSr(old.remote_ts)]

    def process(self, ctx: Context, sa: IkeSa, msg: Message, now: float) -> Outcome:
        # An IKE_SA rekey may have moved the CHILD_SA on while we waited.
        owner = sa.holder_of(self.unique_id) or sa
        old = owner.children.get(self.unique_id)
        try:
            return self._process(ctx, sa, owner, msg, old, now)
        except ExchangeAborted:
            ctx.release_child_spi(self.spi_in)
            if old is not None and old.state == ChildState.REKEYING:
                old.state = self.was
                if self.was == ChildState.INSTALLED:
                    # Try again later, as charon does after a failed rekey.
                    old.rekey_at = now + 60.0
            raise

    def _process(self, ctx: Context, sa: IkeSa, owner: IkeSa, msg: Message,
                 old: ChildSa | None, now: float) -> Outcome:
        payloads = msg.payloads
        invalid_ke = find_notify(payloads, NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None and len(invalid_ke.data) == 2 and old is not None:
            wanted = int.from_bytes(invalid_ke.data, "big")
            groups = [g for s in child_proposals(old.config, True) for g in s.dh]
            if wanted in groups and wanted != self.group:
                ctx.release_child_spi(self.spi_in)
                old.state = self.was
                # A new exchange (new message ID) with the group the peer wants.
                owner.tasks.appendleft(ChildRekeyTask(self.unique_id, DhId(wanted),
                                                      answer_lost=self.answer_lost))
                return Outcome.DONE
        if (find_notify(payloads, NotifyType.CHILD_SA_NOT_FOUND) is not None
                and old is not None and not self.answer_lost
                and (known := _known_instead(owner, old)) is not None):
            # The peer lacks the SA our answer to its rekey made: that answer got lost,
            # and until its retransmission it has only the SA it rekeyed. Rekey that
            # one; its retransmission later meets our DELETE of it, and the SA our
            # answer made goes (§2.8.1: it resolves the collision as usual).
            ctx.release_child_spi(self.spi_in)
            old.state = ChildState.INSTALLED
            owner.tasks.appendleft(ChildRekeyTask(known.unique_id, answer_lost=True))
            return Outcome.DONE
        error = first_error(payloads)
        if error is not None:
            raise ExchangeAborted(f"CHILD_SA rekey: {notify_name(error.type)}", keep_sa=True)
        replaced = old or self.replaced
        if replaced is None:
            raise ExchangeAborted("CHILD_SA deleted while rekeying", keep_sa=True)
        new, nonce_r = self._new_child(ctx, sa, replaced, payloads, now)
        if old is None:
            # The peer deleted the old SA meanwhile (it won a collision, §2.8.1, or
            # closed it): our new SA exists on its side, so take it and delete it
            # rather than leave the peer holding half of a pair.
            install(ctx, owner, new, rekey_of=replaced.unique_id)
            owner.tasks.appendleft(DeleteChildTask([new.unique_id], "rekey_collision"))
            return Outcome.DONE
        collision = old.collision
        install(ctx, owner, new, rekey_of=old.unique_id)
        if collision is not None and lowest_nonce_loses((self.nonce, nonce_r),
                                                         collision.nonces):
            # We lost: the peer's new SA replaces the old one and the peer deletes
            # the old one; ours is redundant and we delete it (§2.8.1).
            owner.tasks.appendleft(DeleteChildTask([new.unique_id], "rekey_collision"))
            return Outcome.DONE
        old.state = ChildState.REKEYED
        old.rekey_at = None
        ctx.emit(ChildSaRekeyed(
            conn=sa.conn.name, ike_spi=owner.spi_str, child=old.name,
            old_unique_id=old.unique_id, new_unique_id=new.unique_id,
            old_spi_in=old.spi_in_int, new_spi_in=new.spi_in_int,
        ))
        owner.tasks.appendleft(DeleteChildTask([old.unique_id], "rekeyed"))
        return Outcome.DONE

    def _new_child(self, ctx: Context, sa: IkeSa, old: ChildSa, payloads: Sequence[Payload],
                   now: float) -> tuple[ChildSa, bytes]:
        new = _child_from_response(ctx, sa, old.config, payloads, self.spi_in, self.nonce,
                                   self.dh, (old.local_ts, old.remote_ts), now,
                                   "CHILD_SA rekey response incomplete")
        return new, _nonce(payloads)


class ChildCreateTask(_ChildOfferTask):
    """An additional CHILD_SA on an established IKE_SA (no REKEY_SA notify)."""

    def __init__(self, config: ChildConfig, group: DhId | None = None) -> None:
        super().__init__(group)
        self.config = config
        self.tsi: list[TrafficSelector] = []
        self.tsr: list[TrafficSelector] = []

    def build(self, ctx: Context, sa: IkeSa, now: float) -> list[Payload]:
        offer = self._offer(ctx, self.config)
        self.tsi = resolve(self.config.local_ts, sa.path.local.addr, sa.virtual_ips)
        self.tsr = resolve(self.config.remote_ts, sa.path.remote.addr)
        return [*offer, TSi(tuple(self.tsi)), TSr(tuple(self.tsr))]

    def process(self, ctx: Context, sa: IkeSa, msg: Message, now: float) -> Outcome:
        try:
            return self._process(ctx, sa, msg, now)
        except ExchangeAborted:
            ctx.release_child_spi(self.spi_in)
            raise

    def _process(self, ctx: Context, sa: IkeSa, msg: Message, now: float) -> Outcome:
        payloads = msg.payloads
        owner = sa.lineage()[-1]
        invalid_ke = find_notify(payloads, NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None and len(invalid_ke.data) == 2:
            wanted = int.from_bytes(invalid_ke.data, "big")
            groups = [g for s in child_proposals(self.config, True) for g in s.dh]
            if wanted in groups and wanted != self.group:
                ctx.release_child_spi(self.spi_in)
                owner.tasks.appendleft(ChildCreateTask(self.config, DhId(wanted)))
                return Outcome.DONE
        error = first_error(payloads)
        if error is not None:
            raise ExchangeAborted(f"CHILD_SA {self.config.name}: {notify_name(error.type)}",
                                  keep_sa=True)
        new = _child_from_response(ctx, sa, self.config, payloads, self.spi_in, self.nonce,
                                   self.dh, (self.tsi, self.tsr), now,
                                   "CREATE_CHILD_SA response incomplete")
        install(ctx, owner, new)
        return Outcome.DONE


def _known_instead(sa: IkeSa, child: ChildSa) -> ChildSa | None:
    """The CHILD_SA the peer rekeyed into ``child`` through our answer, when the peer
    still has it (never deleted it, as it would on getting that answer)."""
    if child.answers_rekey_of is None:
        return None
    original = sa.children.get(child.answers_rekey_of)
    return original if original is not None and original.state == ChildState.REKEYED else None


def _child_from_response(
    ctx: Context, sa: IkeSa, config: ChildConfig, payloads: Sequence[Payload], spi_in: bytes,
    nonce_i: bytes, dh: DhExchange | None,
    proposed: tuple[Sequence[TrafficSelector], Sequence[TrafficSelector]], now: float,
    incomplete: str,
) -> ChildSa:
    """The CHILD_SA a CREATE_CHILD_SA response (new or rekeyed) gives us as its initiator."""
    sa_p, tsi, tsr = child_offer(payloads)
    if not (isinstance(sa_p, SA) and isinstance(tsi, TSi) and isinstance(tsr, TSr)):
        raise ExchangeAborted(incomplete, keep_sa=True)
    ours = child_proposals(config, pfs=True)
    chosen = select(ours, sa_p.proposals, ProtocolId.ESP) if len(sa_p.proposals) == 1 else None
    if chosen is None or len(chosen.spi) != 4:
        raise ExchangeAborted("peer chose an ESP proposal we did not offer", keep_sa=True)
    ke = find_payload(payloads, KE)
    shared = _shared(dh, ke if isinstance(ke, KE) else None)
    local_ts = narrow(tsi.selectors, proposed[0])
    remote_ts = narrow(tsr.selectors, proposed[1])
    if not local_ts or not remote_ts:
        raise ExchangeAborted("TS_UNACCEPTABLE", keep_sa=True)
    return make_child(ctx, sa, config, chosen, spi_in, chosen.spi, local_ts, remote_ts,
                      nonce_i, _nonce(payloads), now, shared, initiator=True)


# ---------------------------------------------------------------------------
# IKE_SA rekey
# ---------------------------------------------------------------------------


def _successor(ctx: Context, old: IkeSa, initiator: bool, spi_i: bytes, spi_r: bytes,
               chosen: Proposal, nonce_i: bytes, nonce_r: bytes, shared: bytes,
               now: float) -> IkeSa:
    """The new IKE_SA of a rekey exchange, registered but not yet holding the CHILD_SAs."""
    assert old.sk_d and old.suite is not None
    suite = ike_suite(chosen)
    new = IkeSa(conn=old.conn, initiator=initiator, spi_i=spi_i, spi_r=spi_r, path=old.path,
                created=now, last_received=now, last_sent=now,
                first_initiator=old.mobike_initiator)
    keys = derive_ike_keys(suite, nonce_i, nonce_r, shared, spi_i, spi_r,
                           old_sk_d=old.sk_d, old_prf=old.suite.prf)
    # A rekeyed IKE_SA is never authenticated again: SK_pi/SK_pr are not kept.
    new.set_keys(suite, keys, authenticate=False)
    new.proposal = ike_suite_name(suite)
    new.nonce_i, new.nonce_r = nonce_i, nonce_r
    new.nat_local, new.nat_remote = old.nat_local, old.nat_remote
    new.local_id, new.remote_id = old.local_id, old.remote_id
    new.peer_mobike = old.peer_mobike
    new.natt_supported = old.natt_supported
    new.peer_fragmentation = old.peer_fragmentation  # negotiated once, kept by rekeys
    new.peer_addrs = old.peer_addrs
    new.verified_peers = dict(old.verified_peers)
    new.set_state(IkeState.ESTABLISHED)
    new.established_at = now
    new.rekey_at = schedule(ctx, old.conn.rekey_time, old.conn.rand_time, now)
    ctx.new_sas.append(new)
    return new


class IkeRekeyTask(Task):
    exchange = ExchangeType.CREATE_CHILD_SA

    def __init__(self, group: DhId | None = None) -> None:
        self.group = group
        self.spi = b""
        self.nonce = b""
        self.dh: DhExchange | None = None

    def build(self, ctx: Context, sa: IkeSa, now: float) -> list[Payload]:
        if sa.state != IkeState.ESTABLISHED or sa.suite is None:
            raise ExchangeAborted("IKE_SA not established", keep_sa=True)
        sa.set_state(IkeState.REKEYING)
        group = self.group or sa.suite.dh
        specs = _promote(ike_proposals(sa.conn), group)
        self.dh = dh_generate(group, ctx.random_bytes)
        self.spi = ctx.new_ike_spi()
        self.nonce = ctx.random_bytes(ctx.settings.nonce_size)
        proposals = tuple(_with_spi(p, self.spi) for p in proposal_payloads(specs, self.spi))
        return [SA(proposals), Nonce(self.nonce), KE(group, self.dh.public)]

    def process(self, ctx: Context, sa: IkeSa, msg: Message, now: float) -> Outcome:
        try:
            return self._process(ctx, sa, msg, now)
        except ExchangeAborted:
            ctx.release_ike_spi(self.spi)
            if sa.state == IkeState.REKEYING:
                sa.set_state(IkeState.ESTABLISHED)
                sa.rekey_at = now + 60.0
            raise

    def _process(self, ctx: Context, sa: IkeSa, msg: Message, now: float) -> Outcome:
        payloads = msg.payloads
        invalid_ke = find_notify(payloads, NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None and len(invalid_ke.data) == 2:
            wanted = int.from_bytes(invalid_ke.data, "big")
            groups = [g for s in ike_proposals(sa.conn) for g in s.dh]
            if wanted in groups and wanted != self.group:
                ctx.release_ike_spi(self.spi)
                sa.set_state(IkeState.ESTABLISHED)
                sa.tasks.appendleft(IkeRekeyTask(DhId(wanted)))
                return Outcome.DONE
        error = first_error(payloads)
        if error is not None:
            raise ExchangeAborted(f"IKE_SA rekey: {notify_name(error.type)}", keep_sa=True)
        sa_p, ke = find_payload(payloads, SA), find_payload(payloads, KE)
        if not isinstance(sa_p, SA) or not isinstance(ke, KE) or len(sa_p.proposals) != 1:
            raise ExchangeAborted("IKE_SA rekey response incomplete", keep_sa=True)
        nonce_r = _nonce(payloads)
        chosen = sa_p.proposals[0]
        if (select(ike_proposals(sa.conn), [chosen], ProtocolId.IKE) is None
                or len(chosen.spi) != 8 or chosen.spi == bytes(8)):
            raise ExchangeAborted("peer chose an IKE proposal we did not offer", keep_sa=True)
        shared = _shared(self.dh, ke)
        assert shared is not None
        ours = _successor(ctx, sa, True, self.spi, chosen.spi, chosen, self.nonce, nonce_r,
                          shared, now)
        collision = sa.ike_collision
        sa.ike_collision = None
        if collision is not None and lowest_nonce_loses((self.nonce, nonce_r),
                                                         collision.nonces):
            # §2.8.2: our exchange holds the lowest nonce, so the peer's new SA wins;
            # we delete the one we created, the peer deletes the old one.
            hand_over(ctx, sa, collision.new_sa, now)
            ours.rekeyed = True
            ours.tasks.append(DeleteIkeTask("rekey_collision"))
            return Outcome.DONE
        if collision is not None:
            # The peer deletes the SA its exchange created; should it never learn that
            # exchange completed (its response got lost), we drop it after a while.
            collision.new_sa.rekeyed = True
            collision.new_sa.retire_at = now + ctx.settings.retransmit.give_up_after()
            ctx.touch(collision.new_sa)
        hand_over(ctx, sa, ours, now)
        migrate_tasks(sa, list(sa.tasks))
        sa.tasks.clear()
        sa.tasks.append(DeleteIkeTask("rekeyed"))
        return Outcome.DONE


def _with_spi(p: Proposal, spi: bytes) -> Proposal:
    return Proposal(p.num, p.protocol, spi, p.transforms)


# ---------------------------------------------------------------------------
# Responder
# ---------------------------------------------------------------------------


def respond_create_child(ctx: Context, sa: IkeSa, msg: Message, now: float) -> list[Payload]:
    payloads = msg.payloads
    sa_p = find_payload(payloads, SA)
    if not isinstance(sa_p, SA) or not sa_p.proposals:
        return [Notify(NotifyType.INVALID_SYNTAX)]
    nonce = _nonce(payloads)
    ke = find_payload(payloads, KE)
    ke = ke if isinstance(ke, KE) else None
    if sa.state == IkeState.REKEYED:
        return [Notify(NotifyType.TEMPORARY_FAILURE)]
    if all(p.protocol == ProtocolId.IKE for p in sa_p.proposals):
        return _respond_ike_rekey(ctx, sa, sa_p, nonce, ke, now)
    if sa.state == IkeState.REKEYING:
        return [Notify(NotifyType.TEMPORARY_FAILURE)]  # §2.25.2
    rekey = find_notify(payloads, NotifyType.REKEY_SA)
    tsi, tsr = find_payload(payloads, TSi), find_payload(payloads, TSr)
    if not isinstance(tsi, TSi) or not isinstance(tsr, TSr):
        return [Notify(NotifyType.INVALID_SYNTAX)]
    if rekey is None:
        return _respond_new_child(ctx, sa, sa_p, nonce, ke, tsi, tsr, now)
    old = next((c for c in sa.children.values() if c.spi_out == rekey.spi), None)
    if old is None or old.state == ChildState.REKEYED:
        return [Notify(NotifyType.CHILD_SA_NOT_FOUND, b"", ProtocolId.ESP, rekey.spi)]
    if old.state == ChildState.DELETING:
        return [Notify(NotifyType.TEMPORARY_FAILURE)]  # §2.25.1
    reply, new = _negotiate(ctx, sa, old.config, sa_p.proposals, ke, nonce, tsi, tsr,
                            old.local_ts, old.remote_ts, now)
    if new is None:
        return reply
    new.answers_rekey_of = old.unique_id
    install(ctx, sa, new, rekey_of=old.unique_id)
    if old.state == ChildState.REKEYING:
        # Collision: remember the peer's exchange; our response decides who lost.
        nonce_r = _nonce(reply)
        old.collision = RekeyCollision((nonce, nonce_r), new.unique_id)
    else:
        old.state = ChildState.REKEYED
        old.rekey_at = None
    ctx.emit(ChildSaRekeyed(
        conn=sa.conn.name, ike_spi=sa.spi_str, child=old.name, old_unique_id=old.unique_id,
        new_unique_id=new.unique_id, old_spi_in=old.spi_in_int, new_spi_in=new.spi_in_int,
    ))
    return reply


def _respond_new_child(ctx: Context, sa: IkeSa, sa_p: SA, nonce: bytes, ke: KE | None,
                       tsi: TSi, tsr: TSr, now: float) -> list[Payload]:
    """An additional CHILD_SA: the first child config whose selectors fit is used."""
    if child_cap_reached(ctx, sa):
        return [Notify(NotifyType.NO_ADDITIONAL_SAS)]
    failure: list[Payload] = [Notify(NotifyType.TS_UNACCEPTABLE)]
    for config in sa.conn.children:
        ours_local = resolve(config.local_ts, sa.path.local.addr)
        ours_remote = resolve(config.remote_ts, sa.path.remote.addr, sa.virtual_ips)
        if not narrow(tsi.selectors, ours_remote) or not narrow(tsr.selectors, ours_local):
            continue
        reply, new = _negotiate(ctx, sa, config, sa_p.proposals, ke, nonce, tsi, tsr,
                                ours_local, ours_remote, now)
        if new is not None:
            install(ctx, sa, new)
            return reply
        failure = reply
    return failure


def _negotiate(
    ctx: Context, sa: IkeSa, config: ChildConfig, proposals: Sequence[Proposal],
    ke: KE | None, nonce_i: bytes, tsi: TSi, tsr: TSr,
    ours_local: Sequence[TrafficSelector], ours_remote: Sequence[TrafficSelector], now: float,
) -> tuple[list[Payload], ChildSa | None]:
    """The responder's half of a CHILD_SA in CREATE_CHILD_SA: proposal, PFS, selectors."""
    specs = child_proposals(config, pfs=True)
    if ke is not None:
        specs = tuple(_promote(specs, ke.group))
    chosen = select(specs, proposals, ProtocolId.ESP)
    if chosen is None or len(chosen.spi) != 4:
        return [Notify(NotifyType.NO_PROPOSAL_CHOSEN)], None
    group = next((t.id for t in chosen.transforms if t.type == 4 and t.id != 0), None)
    shared: bytes | None = None
    reply_ke: list[Payload] = []
    if group is not None:
        if ke is None or ke.group != group:
            return [Notify(NotifyType.INVALID_KE_PAYLOAD, int(group).to_bytes(2, "big"))], None
        dh = dh_generate(DhId(group), ctx.random_bytes)
        try:
            shared = dh.shared_secret(ke.data)
        except ValueError:
            return [Notify(NotifyType.INVALID_SYNTAX)], None
        reply_ke = [KE(dh.group, dh.public)]
    remote_ts = narrow(tsi.selectors, ours_remote)
    local_ts = narrow(tsr.selectors, ours_local)
    if not local_ts or not remote_ts:
        return [Notify(NotifyType.TS_UNACCEPTABLE)], None
    nonce_r = ctx.random_bytes(ctx.settings.nonce_size)
    spi_in = ctx.new_child_spi()
    new = make_child(ctx, sa, config, chosen, spi_in, chosen.spi, local_ts, remote_ts,
                     nonce_i, nonce_r, now, shared, initiator=False)
    ours = Proposal(chosen.num, chosen.protocol, spi_in, chosen.transforms)
    return [SA((ours,)), Nonce(nonce_r), *reply_ke, TSi(tuple(remote_ts)),
            TSr(tuple(local_ts))], new


def _respond_ike_rekey(ctx: Context, sa: IkeSa, sa_p: SA, nonce_i: bytes, ke: KE | None,
                       now: float) -> list[Payload]:
    if sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYING) or sa.ike_collision:
        return [Notify(NotifyType.TEMPORARY_FAILURE)]
    pending = sa.pending
    if (pending is not None and pending.exchange == ExchangeType.CREATE_CHILD_SA
            and sa.state != IkeState.REKEYING):
        # Our CHILD_SA rekey is outstanding: the peer retries after it (§2.25).
        return [Notify(NotifyType.TEMPORARY_FAILURE)]
    if ke is None:
        return [Notify(NotifyType.INVALID_SYNTAX)]
    specs = _promote(ike_proposals(sa.conn), ke.group)
    chosen = select(specs, sa_p.proposals, ProtocolId.IKE)
    if chosen is None or len(chosen.spi) != 8 or chosen.spi == bytes(8):
        return [Notify(NotifyType.NO_PROPOSAL_CHOSEN)]
    suite = ike_suite(chosen)
    if ke.group != suite.dh:
        return [Notify(NotifyType.INVALID_KE_PAYLOAD, int(suite.dh).to_bytes(2, "big"))]
    dh = dh_generate(suite.dh, ctx.random_bytes)
    try:
        shared = dh.shared_secret(ke.data)
    except ValueError:
        return [Notify(NotifyType.INVALID_SYNTAX)]
    nonce_r = ctx.random_bytes(ctx.settings.nonce_size)
    spi_r = ctx.new_ike_spi()
    new = _successor(ctx, sa, False, chosen.spi, spi_r, chosen, nonce_i, nonce_r, shared, now)
    if sa.state == IkeState.REKEYING:
        # Both rekey at once (§2.8.2): answer as usual, decide when ours is answered.
        sa.ike_collision = IkeRekeyCollision((nonce_i, nonce_r), new)
    else:
        hand_over(ctx, sa, new, now)
    ours = Proposal(chosen.num, chosen.protocol, spi_r, chosen.transforms)
    return [SA((ours,)), Nonce(nonce_r), KE(suite.dh, dh.public)]
