"""What every CHILD_SA negotiation shares (IKE_AUTH and CREATE_CHILD_SA): proposals,
selectors, key derivation, installation and its event."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ...config.model import ChildConfig
from ...ikev2.constants import ProtocolId
from ...ikev2.crypto import derive_child_keys
from ...ikev2.payloads import Proposal, TrafficSelector
from ...ikev2.proposals import ProposalSpec, esp_suite
from ..child_sa import ChildSa
from ..context import Context, esp_proposals
from ..events import ChildSaInstalled
from ..ike_sa import IkeSa
from ..naming import esp_suite_name
from ..ts import no_service_names, ts_to_str
from .informational import DeleteChildTask


def child_proposals(config: ChildConfig, pfs: bool) -> tuple[ProposalSpec, ...]:
    """Our ESP proposals; without PFS (IKE_AUTH) DH is stripped, as charon does."""
    specs = esp_proposals(config.esp_proposals)
    if pfs:
        return specs
    return tuple(dataclasses.replace(spec, dh=()) for spec in specs)


def proposal_payloads(specs: Sequence[ProposalSpec], spi: bytes) -> tuple[Proposal, ...]:
    from ...ikev2.proposals import to_payload

    return tuple(to_payload(spec, i + 1, spi) for i, spec in enumerate(specs))


def schedule(ctx: Context, rekey_time: float, rand_time: float, now: float) -> float | None:
    """rekey_time minus a random part of rand_time, as charon jitters its rekeying."""
    if rekey_time <= 0:
        return None
    jitter = min(rand_time, rekey_time) * ctx.random_fraction() if rand_time > 0 else 0.0
    return now + rekey_time - jitter


def make_child(
    ctx: Context,
    sa: IkeSa,
    config: ChildConfig,
    chosen: Proposal,
    spi_in: bytes,
    spi_out: bytes,
    local_ts: Sequence[TrafficSelector],
    remote_ts: Sequence[TrafficSelector],
    nonce_i: bytes,
    nonce_r: bytes,
    now: float,
    shared_secret: bytes | None = None,
    initiator: bool = True,
) -> ChildSa:
    assert sa.suite is not None and sa.sk_d
    suite = esp_suite(chosen)
    keys = derive_child_keys(sa.suite.prf, sa.sk_d, suite, nonce_i, nonce_r, shared_secret)
    child = ChildSa(
        config=config, unique_id=ctx.new_unique_id(), spi_in=spi_in, spi_out=spi_out,
        suite=suite, proposal=esp_suite_name(suite), keys=keys,
        local_ts=tuple(local_ts), remote_ts=tuple(remote_ts), initiator=initiator,
    )
    child.rekey_at = schedule(ctx, config.rekey_time, config.rand_time, now)
    child.expire_at = now + config.life_time if config.life_time > 0 else None
    return child


def install(ctx: Context, sa: IkeSa, child: ChildSa, rekey_of: int | None = None) -> None:
    sa.children[child.unique_id] = child
    ctx.touch(sa)
    if child.spi_out in ctx.orphan_spis:
        # The peer already deleted this SA before we learned it exists.
        ctx.orphan_spis.remove(child.spi_out)
        sa.tasks.appendleft(DeleteChildTask([child.unique_id], "deleted_by_peer"))
    ctx.emit(ChildSaInstalled(
        conn=sa.conn.name, ike_spi=sa.spi_str, child=child.name, unique_id=child.unique_id,
        spi_in=child.spi_in_int, spi_out=child.spi_out_int,
        path=sa.esp_path or sa.path,
        encap=sa.nat_any or sa.conn.encap,
        local_ts=tuple(ts_to_str(ts, no_service_names) for ts in child.local_ts),
        remote_ts=tuple(ts_to_str(ts, no_service_names) for ts in child.remote_ts),
        suite=child.suite, proposal=child.proposal, keys=child.keys, initiator=child.initiator,
        rekey_of=rekey_of,
    ))


def protocol_esp(proposal: Proposal) -> bool:
    return proposal.protocol == ProtocolId.ESP and len(proposal.spi) == 4
