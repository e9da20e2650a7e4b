"""What a datagram on the NAT-T port is (RFC 3948): IKE behind the non-ESP marker,
a keepalive, or ESP; and the framing of outgoing IKE on that port.
"""

from __future__ import annotations

from enum import IntEnum

NON_ESP_MARKER = b"\x00\x00\x00\x00"
"""Four zero bytes where ESP would carry its SPI (SPI 0 is reserved, so never ESP)."""

KEEPALIVE = b"\xff"
"""A NAT-T keepalive: one 0xff byte (RFC 3948 section 2.3)."""


class NattKind(IntEnum):
    IKE = 1
    KEEPALIVE = 2
    ESP = 3


def classify_natt(data: bytes) -> tuple[NattKind, bytes]:
    """Sort a datagram received on the NAT-T port; IKE comes back without the marker."""
    if data == KEEPALIVE:
        return NattKind.KEEPALIVE, data
    if data.startswith(NON_ESP_MARKER):
        return NattKind.IKE, data[len(NON_ESP_MARKER):]
    return NattKind.ESP, data


def frame_natt(data: bytes, keepalive: bool) -> bytes:
    """What goes on the wire on the NAT-T port for one outgoing datagram."""
    return data if keepalive else NON_ESP_MARKER + data
