"""IKEv2 messages (RFC 7296 §3.1, §3.14): header, payload chain, SK sealing.

Decoding never lets anything but :class:`DecodeError` escape (and, from
:func:`decrypt_message`, :class:`~mobike_vici.ikev2.crypto.IntegrityError`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from .constants import HEADER_LENGTH, IKE_VERSION, ExchangeType, HeaderFlag, NotifyType
from .crypto import SkCipher
from .payloads import (
    GENERIC_HEADER_LENGTH,
    DecodeError,
    Encrypted,
    Notify,
    Payload,
    Reader,
    decode_payloads,
    encode_payloads,
    first_payload_type,
    to_enum,
)

__all__ = ["MAX_MESSAGE_LENGTH", "DecodeError", "Header", "Message", "UnsupportedVersionError",
           "decode_header", "decode_message", "decrypt_message", "encode_encrypted",
           "encode_message"]

P = TypeVar("P", bound=Payload)
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

    def find(self, cls: type[P]) -> P | None:
        """The first payload of class ``cls``, if any."""
        for p in self.payloads:
            if isinstance(p, cls):
                return p
        return None

    def find_all(self, cls: type[P]) -> tuple[P, ...]:
        return tuple(p for p in self.payloads if isinstance(p, cls))

    def notify(self, ntype: NotifyType | int) -> Notify | None:
        """The first Notify of type ``ntype``, if any."""
        for p in self.payloads:
            if isinstance(p, Notify) and p.type == ntype:
                return p
        return None


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
    if len(iv) != cipher.iv_length:
        raise ValueError(f"IV must be {cipher.iv_length} bytes, got {len(iv)}")
    inner = encode_payloads(payloads)
    # Zero padding, then the pad length byte, to a multiple of the block size (§3.14).
    pad_length = -(len(inner) + 1) % max(cipher.block_size, 1)
    plaintext = inner + bytes(pad_length) + bytes((pad_length,))
    body_length = len(iv) + len(plaintext) + cipher.icv_length
    sk_length = GENERIC_HEADER_LENGTH + body_length
    if sk_length > 0xFFFF:
        raise ValueError(f"SK payload of {sk_length} bytes does not fit the length field")
    # Both length fields are covered by the ICV/tag, so they are final before sealing.
    aad = (_encode_header(header, Encrypted.payload_type, HEADER_LENGTH + sk_length)
           + bytes((first_payload_type(payloads), 0)) + sk_length.to_bytes(2, "big"))
    sealed = cipher.seal(aad, iv, plaintext)
    if len(sealed) != len(plaintext) + cipher.icv_length:
        raise ValueError("cipher returned a sealed body of unexpected length")
    return aad + iv + sealed


def decrypt_message(data: bytes, message: Message, cipher: SkCipher) -> Message:
    """Open the SK payload of ``message`` (decoded from ``data``).

    Raises :class:`~mobike_vici.ikev2.crypto.IntegrityError` when the ICV or tag
    does not verify and :class:`DecodeError` when the plaintext is malformed.
    """
    if not message.payloads or not isinstance(message.payloads[-1], Encrypted):
        raise DecodeError("message has no SK payload")
    sk = message.payloads[-1]
    if not data.endswith(sk.body):
        raise DecodeError("message was not decoded from these bytes")
    # SK is last, so the authenticated prefix is everything before its body.
    aad = data[:len(data) - len(sk.body)]
    ct_length = len(sk.body) - cipher.iv_length - cipher.icv_length
    block = max(cipher.block_size, 1)
    if ct_length < 1 or ct_length % block:
        raise DecodeError(f"SK ciphertext of {ct_length} bytes for block size {block}")
    iv = sk.body[:cipher.iv_length]
    plaintext = cipher.open(aad, iv, sk.body[cipher.iv_length:])
    pad_length = plaintext[-1]
    if pad_length + 1 > len(plaintext):
        raise DecodeError(f"pad length {pad_length} exceeds the plaintext")
    inner = decode_payloads(sk.first_payload, plaintext[:len(plaintext) - pad_length - 1],
                            allow_encrypted=False)
    return Message(message.header, message.payloads[:-1] + inner)
