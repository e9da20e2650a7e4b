"""INFORMATIONAL (RFC 7296 §1.4): liveness checks, deleting CHILD_SAs and the IKE_SA."""

from __future__ import annotations

from collections.abc import Sequence

from ...ikev2.constants import ExchangeType, NotifyType, ProtocolId
from ...ikev2.message import Message
from ...ikev2.payloads import Delete, Payload, find_notify
from ..child_sa import ChildSa, ChildState
from ..context import Context
from ..events import ChildSaDeleted
from ..ike_sa import IkeSa, IkeState
from .base import Outcome, Task
from .handover import hand_over
from .mobike import natd_payloads


def child_deleted(ctx: Context, sa: IkeSa, child: ChildSa, reason: str) -> None:
    sa.children.pop(child.unique_id, None)
    ctx.touch(sa)
    ctx.release_child_spi(child.spi_in)
    ctx.emit(ChildSaDeleted(
        conn=sa.conn.name, ike_spi=sa.spi_str, child=child.name, unique_id=child.unique_id,
        spi_in=child.spi_in_int, spi_out=child.spi_out_int, reason=reason,
    ))


class LivenessTask(Task):
    """An empty INFORMATIONAL request: DPD, or a check the caller asked for."""

    exchange = ExchangeType.INFORMATIONAL
    liveness = True

    def build(self, ctx: Context, sa: IkeSa, now: float) -> list[Payload]:
        if sa.mobike and sa.mobike_initiator and sa.natt_supported and sa.nat_local:
            # RFC 4555 §3.8: behind a NAT the answer tells whether it rebound (as
            # charon does: only then its DPD carries NAT detection).
            return natd_payloads(sa, sa.path)
        return []

    def process(self, ctx: Context, sa: IkeSa, msg: Message, now: float) -> Outcome:
        return Outcome.DONE


class DeleteIkeTask(Task):
    """Delete(IKE); the engine removes the SA when answered (or when retransmits give up)."""

    exchange = ExchangeType.INFORMATIONAL
    liveness = False

    def __init__(self, reason: str = "deleted_locally") -> None:
        self.reason = reason

    def exhausted(self) -> str:
        return self.reason  # it was going away anyway

    def build(self, ctx: Context, sa: IkeSa, now: float) -> list[Payload]:
        sa.set_state(IkeState.DELETING)
        return [Delete(ProtocolId.IKE)]

    def process(self, ctx: Context, sa: IkeSa, msg: Message, now: float) -> Outcome:
        sa.set_state(IkeState.DELETED)
        return Outcome.DONE


class DeleteChildTask(Task):
    """Delete(ESP) with our inbound SPIs; the peer answers with its inbound SPIs."""

    exchange = ExchangeType.INFORMATIONAL
    liveness = False

    def __init__(self, unique_ids: Sequence[int], reason: str = "deleted_locally") -> None:
        self.unique_ids = tuple(unique_ids)
        self.reason = reason

    def build(self, ctx: Context, sa: IkeSa, now: float) -> list[Payload]:
        children = [h.children[u] for u in self.unique_ids if (h := sa.holder_of(u))]
        spis = tuple(child.spi_in for child in children)
        for child in children:
            child.state = ChildState.DELETING
        if not spis:
            return []
        return [Delete(ProtocolId.ESP, spis)]

    def process(self, ctx: Context, sa: IkeSa, msg: Message, now: float) -> Outcome:
        # Whatever the peer answers, our side of these SAs is gone (RFC 7296 §1.4.1).
        for uid in self.unique_ids:
            # An IKE_SA rekey may have moved the CHILD_SA on meanwhile.
            owner = sa.holder_of(uid)
            if owner is not None:
                child_deleted(ctx, owner, owner.children[uid], self.reason)
        return Outcome.DONE


def respond_informational(ctx: Context, sa: IkeSa, msg: Message, now: float) -> list[Payload]:
    """Answer deletes and liveness checks. A Delete(IKE) marks the SA DELETED; the
    engine sends the answer and then removes it."""
    if find_notify(msg.payloads, NotifyType.AUTHENTICATION_FAILED) is not None:
        # The initiator rejected our AUTH after we established (RFC 7296 §2.21.2).
        sa.set_state(IkeState.DELETED)
        sa.delete_reason = "authentication_failed"
        return []
    reply: list[Payload] = []
    for p in msg.payloads:
        if not isinstance(p, Delete):
            continue
        if p.protocol == ProtocolId.IKE:
            if sa.ike_collision is not None:
                # §2.25.2: the peer closes the SA we are rekeying; forget our rekey, and
                # the SA its own rekey created takes the CHILD_SAs.
                hand_over(ctx, sa, sa.ike_collision.new_sa, now)
                sa.ike_collision = None
            sa.rekeyed = sa.rekeyed or sa.state == IkeState.REKEYED
            sa.set_state(IkeState.DELETED)
            return []
        if p.protocol != ProtocolId.ESP:
            continue
        ours: list[bytes] = []
        lineage = sa.lineage()
        for spi in p.spis:
            # The SPIs are the peer's: they may sit on another IKE_SA with this peer too,
            # e.g. one whose rekey collided and has not handed its CHILD_SAs over yet.
            # The index names the SAs that hold a CHILD_SA with this SPI.
            holders = lineage + [
                o for o in ctx.index.holders_of_peer_spi(spi)
                if o.conn.name == sa.conn.name and o.remote_id == sa.remote_id
                and not any(o is mine for mine in lineage)
            ]
            if not any(c.spi_out == spi for o in holders for c in o.children.values()):
                ctx.orphan_spis.append(spi)
            for owner in holders:
                for child in list(owner.children.values()):
                    if child.spi_out == spi:
                        ours.append(child.spi_in)
                        reason = ("rekeyed" if child.state == ChildState.REKEYED
                                  else "deleted_by_peer")
                        child_deleted(ctx, owner, child, reason)
        if ours:
            reply.append(Delete(ProtocolId.ESP, tuple(ours)))
    return reply
