"""One TCP stream of RFC 9329 (``tcp_transport``'s unit): its socket, framing state and
the IKE_SAs it carries, and what the transport reads from an IKE header to route it."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from ..core.tcp_framing import StreamDecoder
from ..types import Endpoint, IPAddress, Path

Pair = tuple[IPAddress, IPAddress]
"""(local address, peer address): what a fallback decision is made for."""
SaKey = str
"""An IKE_SA as the transport knows it: its initiator's SPI in hex (the responder's is
zero in the first message). RFC 9329 section 6: IKE_SAs never share a stream, but an
IKE_SA's rekey successor rides its predecessor's."""
MAX_SAS_PER_STREAM = 8
"""IKE_SAs remembered on one stream (the SA, its rekey successors; bounds garbage)."""


def is_request(data: bytes) -> bool:
    return len(data) >= 28 and not data[19] & 0x20


def from_original_initiator(data: bytes) -> bool:
    return len(data) >= 28 and bool(data[19] & 0x08)


def sa_key(data: bytes) -> SaKey | None:
    """The IKE_SA an IKE message belongs to, from its header."""
    return data[:8].hex() if len(data) >= 28 else None


def sa_key_of(ike_spi: str) -> SaKey:
    """The key of an IKE_SA named as the engine does ("spii_spir" in hex)."""
    return ike_spi[:16]


@dataclass(eq=False)
class Stream:
    """One TCP connection and its framing state."""

    sock: socket.socket
    initiator: bool
    local: Endpoint
    remote: Endpoint
    opened_at: float
    decoder: StreamDecoder
    connected: bool = False
    out: bytearray = field(default_factory=bytearray)
    last_frame_at: float = 0.0
    ike_frames: int = 0
    ike_sent: int = 0
    """IKE messages we sent on it: a responder's stream counts as in use only once
    the engine answered something on it (garbage that looks like IKE gets nothing)."""
    engine_path: Path | None = None
    """Initiator side: the engine's path for this pair, given to what arrives."""
    sa: SaKey | None = None
    """Initiator side: the IKE_SA the stream was opened for."""
    route: Pair | None = None
    """Initiator side: the engine's pair it carries (MOBIKE gives an IKE_SA several)."""
    sas: set[SaKey] = field(default_factory=set)
    """The IKE_SAs whose messages went or came on it (the SA and its rekey successors)."""
    inflight: bytes | None = None
    """Initiator side: the last IKE request sent, resent on a reopened stream."""
    closed: bool = False
    writing: bool = False

    @property
    def path(self) -> Path:
        return Path(self.local, self.remote)

    @property
    def pair(self) -> Pair:
        """The engine's pair it carries: an initiator's ``route``, else its own ends."""
        return self.route if self.route is not None else (self.local.addr, self.remote.addr)
