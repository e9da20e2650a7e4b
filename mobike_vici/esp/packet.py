"""ESP packet processing (RFC 4303): protect an inner IP packet, or check and unwrap one.

Bytes in, bytes out; the SA object carries all state. :func:`decapsulate`
follows RFC 4303 §3.4: length and SPI, replay check, integrity, window update,
decryption, padding check. Only :class:`~mobike_vici.esp.errors.EspError`
subclasses escape it, each after bumping the matching counter; a packet that
fails before integrity leaves the replay window untouched.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from .errors import (
    EspDecodeError,
    EspEncodeError,
    EspError,
    EspIntegrityError,
    ReplayError,
    SequenceExhausted,
)
from .sa import EspSa
from .transform import HEADER_LENGTH

__all__ = [
    "NEXT_HEADER_IPV4",
    "NEXT_HEADER_IPV6",
    "NEXT_HEADER_NONE",
    "EspDecodeError",
    "EspEncodeError",
    "EspError",
    "EspIntegrityError",
    "IvSource",
    "ReplayError",
    "SequenceExhausted",
    "decapsulate",
    "encapsulate",
    "read_spi",
]

IvSource = Callable[[int], bytes]
"""``iv_source(n)`` returns ``n`` bytes: unpredictable for CBC, unique for GCM."""

NEXT_HEADER_IPV4 = 4
NEXT_HEADER_IPV6 = 41
NEXT_HEADER_NONE = 59
"""A dummy packet (RFC 4303 §2.6): the receiver drops it."""

_HEADER = struct.Struct("!II")
_SEQ32 = 0xFFFFFFFF
# RFC 4303 §2.4: padding bytes are 1, 2, 3, ...; never more than 255 of them.
_PADDING = bytes(range(1, 256))
_NEXT_HEADER_BY_VERSION = {4: NEXT_HEADER_IPV4, 6: NEXT_HEADER_IPV6}


def read_spi(packet: bytes) -> int:
    """The SPI of an ESP packet, for finding its SA.

    On the NAT-T port, 0 here is the non-ESP marker of an IKE message
    (RFC 3948 §2.2). Raise EspDecodeError if there is no full ESP header.
    """
    if len(packet) < HEADER_LENGTH:
        raise EspDecodeError("shorter than an ESP header")
    return int.from_bytes(packet[:4], "big")


def encapsulate(
    sa: EspSa,
    inner: bytes,
    iv_source: IvSource | None = None,
    next_header: int | None = None,
) -> bytes:
    """Protect ``inner`` with the outbound ``sa`` and return the ESP packet.

    ``next_header`` defaults to 4 or 41 from the IP version nibble. Without
    ``iv_source``, AES-GCM uses the 64-bit sequence number as its IV: unique
    per key because the sequence number never repeats (as Linux's seqiv does);
    AES-CBC needs an unpredictable IV and so requires ``iv_source``.

    Raises EspEncodeError for an inner packet of unknown IP version and
    SequenceExhausted once the sequence number space is used up (rekey).
    """
    if sa.inbound:
        raise ValueError("encapsulate needs an outbound SA")
    if next_header is None:
        next_header = _NEXT_HEADER_BY_VERSION.get(inner[0] >> 4 if inner else 0, -1)
        if next_header < 0:
            raise EspEncodeError("inner packet is neither IPv4 nor IPv6")
    seq = sa.seq + 1
    if seq > sa.seq_max:
        raise SequenceExhausted(f"SPI {sa.spi:08x}: sequence numbers exhausted")
    transform = sa.transform
    iv_length = transform.iv_length
    if iv_source is not None:
        iv = iv_source(iv_length)
        if len(iv) != iv_length:
            raise ValueError(f"iv_source returned {len(iv)} bytes, need {iv_length}")
    elif transform.sequence_iv:
        iv = seq.to_bytes(iv_length, "big")
    else:
        raise ValueError("this cipher needs an iv_source")
    pad_length = -(len(inner) + 2) % transform.align
    plaintext = inner + _PADDING[:pad_length] + bytes((pad_length, next_header))
    header = _HEADER.pack(sa.spi, seq & _SEQ32)
    seq_hi = (seq >> 32).to_bytes(4, "big") if sa.esn else b""
    packet = transform.seal(header, seq_hi, iv, plaintext)
    # Only a packet that was built uses up its sequence number.
    sa.seq = seq
    counters = sa.counters
    counters.packets += 1
    counters.bytes += len(inner)
    return packet


def decapsulate(sa: EspSa, packet: bytes) -> tuple[int, bytes]:
    """Check and unwrap ``packet`` with the inbound ``sa``: ``(next_header, inner)``.

    ``next_header`` 59 marks a dummy packet with nothing inside. Raises only
    ReplayError, EspIntegrityError or EspDecodeError.
    """
    replay = sa.replay
    if replay is None:
        raise ValueError("decapsulate needs an inbound SA")
    transform = sa.transform
    counters = sa.counters
    body = len(packet) - HEADER_LENGTH - transform.iv_length - transform.icv_length
    if body < transform.min_ciphertext or body % transform.block_size:
        counters.decode_failures += 1
        raise EspDecodeError(f"ESP packet of {len(packet)} bytes has no valid ciphertext")
    spi, seq_lo = _HEADER.unpack_from(packet)
    if spi != sa.spi:
        counters.decode_failures += 1
        raise EspDecodeError(f"SPI {spi:08x} does not belong to SA {sa.spi:08x}")

    seq = replay.infer(seq_lo)
    if not replay.check(seq):
        counters.replay_failures += 1
        raise ReplayError(f"SPI {spi:08x}: sequence number {seq} replayed or too old")
    seq_hi = (seq >> 32).to_bytes(4, "big") if sa.esn else b""
    try:
        verified = transform.verify(packet, seq_hi)
    except EspIntegrityError:
        counters.integrity_failures += 1
        raise
    replay.update(seq)
    plaintext = transform.decrypt(packet, verified)

    pad_length = plaintext[-2]
    end = len(plaintext) - 2 - pad_length
    if end < 0 or plaintext[end:-2] != _PADDING[:pad_length]:
        counters.decode_failures += 1
        raise EspDecodeError(f"SPI {spi:08x}: bad ESP padding")
    counters.packets += 1
    counters.bytes += end
    return plaintext[-1], plaintext[:end]
