"""The exceptions the ESP layer raises: one base class, one subclass per reason to drop.

Callers catch :class:`EspError` around :func:`~mobike_vici.esp.packet.decapsulate`
and turn the subclass into a ``packet_dropped`` reason; nothing else escapes
on hostile input.
"""

from __future__ import annotations


class EspError(Exception):
    """Base class: the packet was not processed and the SA state is unchanged,
    except for the counters (and, for an authenticated packet with bad padding,
    the replay window)."""

    reason = "esp_error"
    """Stable snake_case name for a ``packet_dropped`` event."""


class ReplayError(EspError):
    """Sequence number already seen, too old for the window, or zero."""

    reason = "replayed"


class EspIntegrityError(EspError):
    """ICV or AEAD tag did not verify."""

    reason = "integrity_check_failed"


class EspDecodeError(EspError):
    """Malformed packet: too short, wrong SPI, misaligned, or bad padding."""

    reason = "malformed"


class EspEncodeError(EspError):
    """The inner packet cannot be protected (not IPv4/IPv6 and no next header given)."""

    reason = "unencodable"


class SequenceExhausted(EspError):
    """The outbound sequence number would cycle (RFC 4303 §3.3.3): rekey the CHILD_SA."""

    reason = "sequence_exhausted"
