"""What ``Engine.status`` reports of each IKE_SA and CHILD_SA: plain values for the
daemon's status output and list-sas, no references into the engine's state."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..types import Path
from .ike_sa import IkeSa
from .ts import no_service_names, ts_to_str


@dataclass(frozen=True, slots=True)
class ChildStatus:
    name: str
    unique_id: int
    state: str
    spi_in: int
    spi_out: int
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    proposal: str


@dataclass(frozen=True, slots=True)
class IkeStatus:
    conn: str
    ike_spi: str
    state: str
    initiator: bool
    """RFC 4555's initiator (``IkeSa.mobike_initiator``), as charon's list-sas says."""
    path: Path
    local_id: str
    remote_id: str
    proposal: str
    virtual_ips: tuple[str, ...]
    children: tuple[ChildStatus, ...]


def status_of(sas: Iterable[IkeSa]) -> list[IkeStatus]:
    out: list[IkeStatus] = []
    for sa in sas:
        children = tuple(
            ChildStatus(
                name=c.name, unique_id=c.unique_id, state=c.state.value,
                spi_in=c.spi_in_int, spi_out=c.spi_out_int,
                local_ts=tuple(ts_to_str(t, no_service_names) for t in c.local_ts),
                remote_ts=tuple(ts_to_str(t, no_service_names) for t in c.remote_ts),
                proposal=c.proposal,
            )
            for c in sa.children.values()
        )
        out.append(IkeStatus(
            conn=sa.conn.name, ike_spi=sa.spi_str, state=sa.state.value,
            initiator=sa.mobike_initiator, path=sa.path, local_id=sa.local_id,
            remote_id=sa.remote_id, proposal=sa.proposal,
            virtual_ips=tuple(str(v) for v in sa.virtual_ips), children=children,
        ))
    return out
