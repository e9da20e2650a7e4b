"""IKEv2 messages (RFC 7296 §3.1, §3.14): header, payload chain, SK sealing, and
IKE fragmentation (RFC 7383): splitting an SK payload into SKF payloads sealed one
by one, opening each on its own, joining the pieces.

Decoding never lets anything but :class:`DecodeError` escape (and, from
:func:`decrypt_message` and :func:`decrypt_fragment`,
:class:`~mobike_vici.ikev2.crypto.IntegrityError`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .buffer import DecodeError, Reader, to_enum
from .constants import HEADER_LENGTH, IKE_VERSION, ExchangeType, HeaderFlag
from .crypto import SkCipher
from .payloads import (
    GENERIC_HEADER_LENGTH,
    Encrypted,
    EncryptedFragment,
    Payload,
    decode_payloads,
    encode_payloads,
    first_payload_type,
)

__all__ = ["FRAGMENT_HEADER_LENGTH", "MAX_MESSAGE_LENGTH", "DecodeError", "Fragment", "Header",
           "Message", "UnsupportedVersionError", "decode_header", "decode_message",
           "decrypt_fragment", "decrypt_message", "encode_encrypted", "encode_fragments",
           "encode_message", "fragment_capacity", "join_fragments", "transport_overhead"]

MAX_MESSAGE_LENGTH = 10000
"""The largest IKE message we accept, charon's default (charon.max_packet). Decoding
costs time per byte; a bound on the bytes bounds what one datagram can cost."""
_KNOWN_FLAGS = HeaderFlag.INITIATOR | HeaderFlag.VERSION | HeaderFlag.RESPONSE


@dataclass(frozen=True, slots=True)
class Header:
    spi_i: bytes
    spi_r: bytes
    next_payload: int
    exchange: ExchangeType | int
    flags: HeaderFlag
    message_id: int
    length: int = 0
    version: int = IKE_VERSION

    @property
    def is_response(self) -> bool:
        return bool(self.flags & HeaderFlag.RESPONSE)

    @property
    def from_initiator(self) -> bool:
        """Set by the original initiator of the IKE_SA (not of this exchange)."""
        return bool(self.flags & HeaderFlag.INITIATOR)


@dataclass(frozen=True, slots=True)
class Message:
    header: Header
    payloads: tuple[Payload, ...]


class UnsupportedVersionError(DecodeError):
    """The major version is not 2; ``header`` lets a caller answer INVALID_MAJOR_VERSION."""

    def __init__(self, header: Header) -> None:
        super().__init__(f"IKE major version {header.version >> 4} is not supported")
        self.header = header


def _encode_header(header: Header, next_payload: int, length: int) -> bytes:
    if len(header.spi_i) != 8 or len(header.spi_r) != 8:
        raise ValueError("IKE SPIs are 8 bytes")
    return (header.spi_i + header.spi_r + bytes((next_payload, header.version,
            header.exchange, header.flags & _KNOWN_FLAGS))
            + header.message_id.to_bytes(4, "big") + length.to_bytes(4, "big"))


def decode_header(data: bytes) -> Header:
    """Parse the 28-byte header only (cheap demultiplexing by SPI).

    ``data`` may be just the header or the whole datagram: the length field is only
    checked against the header size and MAX_MESSAGE_LENGTH here, against ``len(data)``
    in decode_message.
    A major version other than 2 raises :class:`UnsupportedVersionError`; minor
    versions are ignored as §2.5 asks. Reserved flag bits are dropped.
    """
    r = Reader(data)
    spi_i = r.take(8)
    spi_r = r.take(8)
    next_payload = r.u8()
    version = r.u8()
    exchange = r.u8()
    flags = HeaderFlag(r.u8() & _KNOWN_FLAGS)
    message_id = r.u32()
    length = r.u32()
    header = Header(spi_i, spi_r, next_payload, to_enum(ExchangeType, exchange), flags,
                    message_id, length, version)
    if version >> 4 != IKE_VERSION >> 4:
        raise UnsupportedVersionError(header)
    if length < HEADER_LENGTH:
        raise DecodeError(f"header length field {length} < {HEADER_LENGTH}")
    if length > MAX_MESSAGE_LENGTH or len(data) > MAX_MESSAGE_LENGTH:
        raise DecodeError(f"message longer than {MAX_MESSAGE_LENGTH} bytes")
    return header


def decode_message(data: bytes) -> Message:
    """Parse a whole message; an SK payload stays sealed as :class:`Encrypted` (last)."""
    header = decode_header(data)
    if header.length != len(data):
        raise DecodeError(f"header says {header.length} bytes, datagram has {len(data)}")
    payloads = decode_payloads(header.next_payload, data[HEADER_LENGTH:])
    return Message(header, payloads)


def encode_message(header: Header, payloads: Sequence[Payload]) -> bytes:
    """Encode an unencrypted message; next_payload and length are computed here."""
    chain = encode_payloads(payloads)
    return _encode_header(header, first_payload_type(payloads),
                          HEADER_LENGTH + len(chain)) + chain


def encode_encrypted(
    header: Header, payloads: Sequence[Payload], cipher: SkCipher, iv: bytes
) -> bytes:
    """Encode a message whose payloads all go inside one SK payload."""
    return _seal(header, Encrypted.payload_type, first_payload_type(payloads), b"",
                 encode_payloads(payloads), cipher, iv)


def _seal(header: Header, sk_type: int, first: int, fields: bytes, inner: bytes,
          cipher: SkCipher, iv: bytes) -> bytes:
    """One message of one SK or SKF payload (``fields``: SKF's number and total)."""
    if len(iv) != cipher.iv_length:
        raise ValueError(f"IV must be {cipher.iv_length} bytes, got {len(iv)}")
    # Zero padding, then the pad length byte, to a multiple of the block size (§3.14).
    pad_length = -(len(inner) + 1) % max(cipher.block_size, 1)
    plaintext = inner + bytes(pad_length) + bytes((pad_length,))
    body_length = len(fields) + len(iv) + len(plaintext) + cipher.icv_length
    sk_length = GENERIC_HEADER_LENGTH + body_length
    if sk_length > 0xFFFF:
        raise ValueError(f"SK payload of {sk_length} bytes does not fit the length field")
    # Both length fields (and SKF's number and total, RFC 7383 §2.5) are covered by
    # the ICV/tag, so they are final before sealing.
    aad = (_encode_header(header, sk_type, HEADER_LENGTH + sk_length)
           + bytes((first, 0)) + sk_length.to_bytes(2, "big") + fields)
    sealed = cipher.seal(aad, iv, plaintext)
    if len(sealed) != len(plaintext) + cipher.icv_length:
        raise ValueError("cipher returned a sealed body of unexpected length")
    return aad + iv + sealed


FRAGMENT_HEADER_LENGTH = GENERIC_HEADER_LENGTH + 4
"""The SKF payload's header: the generic one, Fragment Number, Total Fragments."""
MAX_FRAGMENTS = 0xFFFF
_UDP_HEADER = 8
_IP_HEADER = {4: 20, 6: 40}


def transport_overhead(ip_version: int, natt: bool) -> int:
    """Bytes an IKE message carries on the wire beyond itself: the IP header (no
    options), UDP and, on port 4500, the non-ESP marker. A fragment size is the
    size of the whole IP datagram, as charon's fragment_size is."""
    return _IP_HEADER.get(ip_version, 40) + _UDP_HEADER + (4 if natt else 0)


def fragment_capacity(datagram_size: int, ip_version: int, natt: bool,
                      cipher: SkCipher) -> int:
    """Inner payload bytes one fragment carries when its IP datagram must fit
    ``datagram_size`` (at least 1, so a tiny size still makes progress)."""
    room = (datagram_size - transport_overhead(ip_version, natt) - HEADER_LENGTH
            - FRAGMENT_HEADER_LENGTH - cipher.iv_length - cipher.icv_length)
    block = max(cipher.block_size, 1)
    # Padding fills to the block size and the pad length byte is part of it.
    return max(room // block * block - 1, 1)


def encode_fragments(
    header: Header, payloads: Sequence[Payload], cipher: SkCipher,
    random_bytes: Callable[[int], bytes], capacity: int,
) -> list[bytes]:
    """The message as SKF fragments of at most ``capacity`` inner bytes each (RFC 7383
    §2.5): numbered from 1, each sealed on its own with a fresh IV, the first naming
    the first inner payload. Raises ValueError when more than 65535 would be needed."""
    if capacity < 1:
        raise ValueError("fragment capacity must be positive")
    inner = encode_payloads(payloads)
    chunks = [inner[i:i + capacity] for i in range(0, len(inner), capacity)] or [b""]
    total = len(chunks)
    if total > MAX_FRAGMENTS:
        raise ValueError(f"{total} fragments do not fit the Total Fragments field")
    first = first_payload_type(payloads)
    return [
        _seal(header, EncryptedFragment.payload_type, first if number == 1 else 0,
              number.to_bytes(2, "big") + total.to_bytes(2, "big"), chunk, cipher,
              random_bytes(cipher.iv_length))
        for number, chunk in enumerate(chunks, 1)
    ]


def _open_sk(data: bytes, body: bytes, cipher: SkCipher) -> bytes:
    """Verify and decrypt the SK/SKF ``body`` that ends ``data``; the inner bytes,
    padding removed."""
    if not data.endswith(body):
        raise DecodeError("message was not decoded from these bytes")
    # SK is last, so the authenticated prefix is everything before its body.
    aad = data[:len(data) - len(body)]
    ct_length = len(body) - cipher.iv_length - cipher.icv_length
    block = max(cipher.block_size, 1)
    if ct_length < 1 or ct_length % block:
        raise DecodeError(f"SK ciphertext of {ct_length} bytes for block size {block}")
    iv = body[:cipher.iv_length]
    plaintext = cipher.open(aad, iv, body[cipher.iv_length:])
    pad_length = plaintext[-1]
    if pad_length + 1 > len(plaintext):
        raise DecodeError(f"pad length {pad_length} exceeds the plaintext")
    return plaintext[:len(plaintext) - pad_length - 1]


def decrypt_message(data: bytes, message: Message, cipher: SkCipher) -> Message:
    """Open the SK payload of ``message`` (decoded from ``data``).

    Raises :class:`~mobike_vici.ikev2.crypto.IntegrityError` when the ICV or tag
    does not verify and :class:`DecodeError` when the plaintext is malformed.
    """
    if not message.payloads or not isinstance(message.payloads[-1], Encrypted):
        raise DecodeError("message has no SK payload")
    sk = message.payloads[-1]
    inner = decode_payloads(sk.first_payload, _open_sk(data, sk.body, cipher),
                            allow_encrypted=False)
    return Message(message.header, message.payloads[:-1] + inner)


@dataclass(frozen=True, slots=True)
class Fragment:
    """One opened SKF payload: authentic, still a piece of a payload chain."""

    number: int
    total: int
    first_payload: int
    """The first inner payload's type (meaningful in fragment 1 only)."""
    data: bytes


def decrypt_fragment(data: bytes, message: Message, cipher: SkCipher) -> Fragment:
    """Open the SKF payload of ``message`` (decoded from ``data``), the only payload
    we accept in a fragment (we never send others; RFC 7383 §2.5 puts any in the first).

    Raises IntegrityError or DecodeError as :func:`decrypt_message`; DecodeError also
    for numbers outside 1 .. total (checked before any cryptography).
    """
    if len(message.payloads) != 1 or not isinstance(message.payloads[0], EncryptedFragment):
        raise DecodeError("fragment message must hold exactly one SKF payload")
    skf = message.payloads[0]
    if not 1 <= skf.number <= skf.total:
        raise DecodeError(f"fragment {skf.number} of {skf.total}")
    return Fragment(skf.number, skf.total, skf.first_payload,
                    _open_sk(data, skf.body, cipher))


def join_fragments(header: Header, first_payload: int, pieces: Sequence[bytes]) -> Message:
    """The message the fragments carried: their pieces in order, decoded as one chain."""
    inner = decode_payloads(first_payload, b"".join(pieces), allow_encrypted=False)
    return Message(header, inner)
