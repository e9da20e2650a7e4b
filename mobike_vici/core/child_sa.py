"""One CHILD_SA pair as the core keeps it: SPIs, selectors, keys and its deadlines."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..config.model import ChildConfig
from ..ikev2.crypto import ChildKeys, EspSuite
from ..ikev2.payloads import TrafficSelector


@dataclass(frozen=True, slots=True)
class RekeyCollision:
    """The peer rekeyed this CHILD_SA while our rekey of it was outstanding."""

    nonces: tuple[bytes, bytes]
    """Ni and Nr of the peer's exchange (§2.8.1 compares nonces)."""
    new_unique_id: int


class ChildState(Enum):
    INSTALLED = "INSTALLED"
    REKEYING = "REKEYING"
    REKEYED = "REKEYED"
    DELETING = "DELETING"


@dataclass(slots=True)
class ChildSa:
    config: ChildConfig
    unique_id: int
    spi_in: bytes
    """Our inbound SPI (4 bytes), chosen by us."""
    spi_out: bytes
    """The peer's inbound SPI, our outbound one."""
    suite: EspSuite
    proposal: str
    keys: ChildKeys = field(repr=False)
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    state: ChildState = ChildState.INSTALLED
    initiator: bool = True
    """True when we initiated the exchange that created this SA (decides key direction)."""
    rekey_at: float | None = None
    expire_at: float | None = None
    collision: RekeyCollision | None = None
    answers_rekey_of: int | None = None
    """Made by our answer to the peer's rekey of this unique_id: until the peer deletes
    that one, our answer may not have reached it (then it knows only that one)."""

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def spi_in_int(self) -> int:
        return int.from_bytes(self.spi_in, "big")

    @property
    def spi_out_int(self) -> int:
        return int.from_bytes(self.spi_out, "big")
