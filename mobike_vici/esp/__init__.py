"""Userspace ESP (RFC 4303): SAs, packet processing and anti-replay, with no I/O.

The daemon's data plane feeds datagrams and TUN packets through
:func:`encapsulate` / :func:`decapsulate`; outer addresses live with it.
"""

from __future__ import annotations

from .errors import (
    EspDecodeError,
    EspEncodeError,
    EspError,
    EspIntegrityError,
    ReplayError,
    SequenceExhausted,
)
from .packet import (
    NEXT_HEADER_IPV4,
    NEXT_HEADER_IPV6,
    NEXT_HEADER_NONE,
    IvSource,
    decapsulate,
    encapsulate,
    read_spi,
)
from .replay import DEFAULT_WINDOW, ReplayWindow
from .sa import ChildSaLike, EspCounters, EspSa, EspSaPair

__all__ = [
    "DEFAULT_WINDOW",
    "NEXT_HEADER_IPV4",
    "NEXT_HEADER_IPV6",
    "NEXT_HEADER_NONE",
    "ChildSaLike",
    "EspCounters",
    "EspDecodeError",
    "EspEncodeError",
    "EspError",
    "EspIntegrityError",
    "EspSa",
    "EspSaPair",
    "IvSource",
    "ReplayError",
    "ReplayWindow",
    "SequenceExhausted",
    "decapsulate",
    "encapsulate",
    "read_spi",
]
