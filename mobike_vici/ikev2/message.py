"""IKEv2 messages (RFC 7296 §3.1, §3.14): header, payload chain, SK sealing.

STUB: the API below is the contract; the bodies are being written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .constants import IKE_VERSION, ExchangeType, HeaderFlag
from .crypto import SkCipher
from .payloads import DecodeError, Payload

__all__ = ["DecodeError", "Header", "Message", "decode_header", "decode_message",
           "decrypt_message", "encode_encrypted", "encode_message"]


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


def decode_header(data: bytes) -> Header:
    """Parse the 28-byte header only (cheap demultiplexing by SPI)."""
    raise NotImplementedError


def decode_message(data: bytes) -> Message:
    """Parse a whole message; an SK payload stays sealed as :class:`Encrypted` (last)."""
    raise NotImplementedError


def encode_message(header: Header, payloads: Sequence[Payload]) -> bytes:
    """Encode an unencrypted message; next_payload and length are computed here."""
    raise NotImplementedError


def encode_encrypted(
    header: Header, payloads: Sequence[Payload], cipher: SkCipher, iv: bytes
) -> bytes:
    """Encode a message whose payloads all go inside one SK payload."""
    raise NotImplementedError


def decrypt_message(data: bytes, message: Message, cipher: SkCipher) -> Message:
    """Open the SK payload of ``message`` (decoded from ``data``).

    Raises :class:`~mobike_vici.ikev2.crypto.IntegrityError` when the ICV or tag
    does not verify and :class:`DecodeError` when the plaintext is malformed.
    """
    raise NotImplementedError
