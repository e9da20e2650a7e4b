"""NAT detection (RFC 7296 §2.23, RFC 4555 §3.5/§3.8): the NAT_DETECTION_*_IP hashes, the
pair of notifies that carries them, and what the peer's pair says about a path.

The one place these are made and read: IKE_SA_INIT, the MOBIKE update and the liveness
check all go through here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..ikev2.constants import NotifyType
from ..ikev2.payloads import Notify, Payload, notify_data
from ..types import Endpoint, Path

NAT_HASH_LENGTH = 20  # SHA-1

WireView = Callable[[bytes, Path, bool], Path]
"""(SPIi, path, we are the original initiator) -> the ends the path has on the wire.
IKE over TCP (RFC 9329) hashes the stream's addresses and ports, not the engine's
UDP-shaped ones; the transport knows them."""


def nat_hash(spi_i: bytes, spi_r: bytes, endpoint: Endpoint) -> bytes:
    """SHA-1(SPIi | SPIr | IP | port); SPIr is zero in an IKE_SA_INIT request."""
    data = spi_i + spi_r + endpoint.addr.packed + endpoint.port.to_bytes(2, "big")
    return hashlib.sha1(data).digest()


def natd_notifies(spi_i: bytes, spi_r: bytes, path: Path,
                  source: bytes | None = None) -> list[Payload]:
    """NAT_DETECTION_SOURCE_IP / _DESTINATION_IP for ``path`` as seen from our side.

    ``source`` replaces our source hash (charon's ``encap = yes`` sends one that cannot
    match, so the peer believes we are behind a NAT)."""
    return [Notify(NotifyType.NAT_DETECTION_SOURCE_IP,
                   nat_hash(spi_i, spi_r, path.local) if source is None else source),
            Notify(NotifyType.NAT_DETECTION_DESTINATION_IP, nat_hash(spi_i, spi_r, path.remote))]


@dataclass(frozen=True, slots=True)
class NatVerdict:
    """What the peer's NAT detection says about one path (our view of it)."""

    local: bool
    """We are behind a NAT: no destination hash of the peer's matches our address."""
    remote: bool
    """The peer is behind a NAT: no source hash of its matches its address."""
    peer_saw_us: bytes
    """The peer's (first) destination hash: how it saw us, to notice a NAT rebinding."""


def nat_verdict(payloads: Sequence[Payload], spi_i: bytes, spi_r: bytes,
                path: Path) -> NatVerdict | None:
    """The verdict from the peer's hashes; None when it sent no pair (no NAT detection)."""
    src = notify_data(payloads, NotifyType.NAT_DETECTION_SOURCE_IP)
    dst = notify_data(payloads, NotifyType.NAT_DETECTION_DESTINATION_IP)
    if not src or not dst:
        return None
    return NatVerdict(local=nat_hash(spi_i, spi_r, path.local) not in dst,
                      remote=nat_hash(spi_i, spi_r, path.remote) not in src,
                      peer_saw_us=dst[0])


def peer_saw_us(payloads: Sequence[Payload]) -> bytes | None:
    """The peer's first NAT_DETECTION_DESTINATION_IP hash, if it sent one."""
    dst = notify_data(payloads, NotifyType.NAT_DETECTION_DESTINATION_IP)
    return dst[0] if dst else None
