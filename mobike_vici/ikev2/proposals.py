"""Proposal strings in strongSwan's syntax, default sets, and proposal selection.

STUB: the API below is the contract; the bodies are being written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .constants import DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId
from .crypto import EspSuite, IkeSuite
from .payloads import Proposal


class ProposalError(ValueError):
    """A proposal string that strongSwan would not accept either."""


@dataclass(frozen=True, slots=True)
class ProposalSpec:
    """One configured proposal: acceptable algorithms per transform type, in order."""

    protocol: ProtocolId
    encr: tuple[tuple[EncrId, int], ...]  # (algorithm, key bits)
    integ: tuple[IntegId, ...] = ()
    prf: tuple[PrfId, ...] = ()
    dh: tuple[DhId, ...] = ()
    esn: tuple[EsnId, ...] = ()


def parse_proposals(text: str, protocol: ProtocolId) -> tuple[ProposalSpec, ...]:
    """Parse e.g. ``"aes128-sha256-x25519, default"`` for IKE or ESP."""
    raise NotImplementedError


def to_payload(spec: ProposalSpec, num: int, spi: bytes) -> Proposal:
    raise NotImplementedError


def select(
    ours: Sequence[ProposalSpec], theirs: Sequence[Proposal], protocol: ProtocolId
) -> Proposal | None:
    """Choose as charon does (our order first); the result has one transform per type."""
    raise NotImplementedError


def ike_suite(chosen: Proposal) -> IkeSuite:
    raise NotImplementedError


def esp_suite(chosen: Proposal) -> EspSuite:
    raise NotImplementedError
