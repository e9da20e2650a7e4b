"""ESP security associations as the data plane holds them: keys, sequence numbers, replay state.

One :class:`EspSa` per direction, paired in :class:`EspSaPair`. The outer
endpoints (addresses, ports, UDP encapsulation) are deliberately absent: a
MOBIKE move changes them and must not touch sequence numbers, the replay
window or the counters, so they live with whoever sends the datagrams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..ikev2.crypto import ChildKeys, EspSuite
from .replay import DEFAULT_WINDOW, ReplayWindow
from .transform import EspTransform, make_transform

_SEQ32_MAX = (1 << 32) - 1
_SEQ64_MAX = (1 << 64) - 1


@dataclass(slots=True)
class EspCounters:
    """Per-SA statistics; mutable because they change with every packet."""

    packets: int = 0
    """Packets protected (outbound) or accepted (inbound)."""
    bytes: int = 0
    """Inner (cleartext) packet bytes, as charon reports bytes_in / bytes_out."""
    replay_failures: int = 0
    integrity_failures: int = 0
    decode_failures: int = 0
    """Inbound packets dropped for their length, SPI or padding."""


class EspSa:
    """One direction of an ESP SA.

    Outbound SAs use ``seq`` (the last sequence number sent); inbound SAs use
    ``replay`` (which also tracks the highest sequence number received). One
    owner at a time: the CBC stream state and the counters are not locked.
    """

    __slots__ = ("counters", "esn", "inbound", "replay", "seq", "seq_max", "spi", "suite",
                 "transform")

    def __init__(
        self,
        *,
        spi: int,
        suite: EspSuite,
        encr_key: bytes,
        integ_key: bytes,
        inbound: bool,
        replay_window: int = DEFAULT_WINDOW,
    ) -> None:
        if not 0 < spi <= _SEQ32_MAX:
            raise ValueError(f"ESP SPI must be 1..2**32-1, got {spi}")
        self.spi = spi
        self.suite = suite
        self.inbound = inbound
        self.esn = suite.esn
        self.transform: EspTransform = make_transform(
            suite.encr, suite.encr_key_bits, suite.integ, encr_key, integ_key
        )
        self.seq = 0
        self.seq_max = _SEQ64_MAX if suite.esn else _SEQ32_MAX
        self.replay: ReplayWindow | None = (
            ReplayWindow(replay_window, esn=suite.esn) if inbound else None
        )
        self.counters = EspCounters()

    def __repr__(self) -> str:
        # Keys stay out: only the identifying fields.
        direction = "in" if self.inbound else "out"
        return f"EspSa(spi={self.spi:08x}, {direction}, {self.suite.encr.name})"


class ChildSaLike(Protocol):
    """The fields of a ``ChildSaInstalled`` event this layer needs (no import of core)."""

    @property
    def spi_in(self) -> int: ...
    @property
    def spi_out(self) -> int: ...
    @property
    def suite(self) -> EspSuite: ...
    @property
    def keys(self) -> ChildKeys: ...
    @property
    def initiator(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class EspSaPair:
    """Both directions of one CHILD_SA."""

    inbound: EspSa
    outbound: EspSa

    @classmethod
    def create(
        cls,
        *,
        spi_in: int,
        spi_out: int,
        suite: EspSuite,
        keys: ChildKeys,
        initiator: bool,
        replay_window: int = DEFAULT_WINDOW,
    ) -> EspSaPair:
        """Pick key halves: the exchange initiator sends with encr_i/integ_i (RFC 7296 §2.17)."""
        if initiator:
            out_keys = (keys.encr_i, keys.integ_i)
            in_keys = (keys.encr_r, keys.integ_r)
        else:
            out_keys = (keys.encr_r, keys.integ_r)
            in_keys = (keys.encr_i, keys.integ_i)
        return cls(
            inbound=EspSa(spi=spi_in, suite=suite, encr_key=in_keys[0], integ_key=in_keys[1],
                          inbound=True, replay_window=replay_window),
            outbound=EspSa(spi=spi_out, suite=suite, encr_key=out_keys[0],
                           integ_key=out_keys[1], inbound=False),
        )

    @classmethod
    def from_child(cls, child: ChildSaLike, replay_window: int = DEFAULT_WINDOW) -> EspSaPair:
        """From a ``ChildSaInstalled`` event; ``replay_window`` from the child's config."""
        return cls.create(spi_in=child.spi_in, spi_out=child.spi_out, suite=child.suite,
                          keys=child.keys, initiator=child.initiator,
                          replay_window=replay_window)
