"""Engines for the engine fuzz targets: the unit tests' in-memory pair, and raw SK sealing.

Imported by the targets under ``atheris.instrument_imports``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mobike_vici.core.engine import Engine
from mobike_vici.core.ike_sa import IkeSa, IkeState
from mobike_vici.ikev2.constants import ExchangeType, HeaderFlag, PayloadType
from mobike_vici.ikev2.crypto import SkCipher
from mobike_vici.ikev2.message import decode_message, decrypt_message
from mobike_vici.ikev2.payloads import encode_payloads, first_payload_type
from mobike_vici.types import Path

from ..unit.core.harness import Net
from ..unit.core.test_mobike import setup

NOW = 10.0


def drain(engine: Engine) -> None:
    """Throw away what the engine wants to send and report (no peer is listening)."""
    engine.datagrams_to_send(NOW)
    while engine.next_event() is not None:
        pass


def seal_raw(sa: IkeSa, exchange: int, message_id: int, response: bool, first_payload: int,
             plaintext: bytes, cipher: SkCipher) -> bytes:
    """An SK-protected message around ``plaintext`` (already padded) as ``sa``'s peer sends it.

    Unlike message.encode_encrypted this takes the inner bytes as they are, so the
    fuzzer controls the inner payload chain and the padding byte for byte.
    """
    flags = HeaderFlag.NONE if sa.initiator else HeaderFlag.INITIATOR
    if response:
        flags |= HeaderFlag.RESPONSE
    iv = bytes(cipher.iv_length)
    sk_length = 4 + len(iv) + len(plaintext) + cipher.icv_length
    aad = (sa.spi_i + sa.spi_r + bytes((PayloadType.SK, 0x20, exchange & 0xFF, flags))
           + message_id.to_bytes(4, "big") + (28 + sk_length).to_bytes(4, "big")
           + bytes((first_payload & 0xFF, 0)) + sk_length.to_bytes(2, "big"))
    return aad + iv + cipher.seal(aad, iv, plaintext)


def pad(inner: bytes, cipher: SkCipher) -> bytes:
    pad_length = -(len(inner) + 1) % max(cipher.block_size, 1)
    return inner + bytes(pad_length) + bytes((pad_length,))


def align(plaintext: bytes, cipher: SkCipher) -> bytes:
    return plaintext + bytes(-len(plaintext) % max(cipher.block_size, 1))


@dataclass
class LivePair:
    """Two engines with one established MOBIKE IKE_SA and a CHILD_SA between them."""

    net: Net
    sa_a: IkeSa
    """The initiator's IKE_SA (engine ``a``)."""
    sa_b: IkeSa
    """The responder's IKE_SA (engine ``b``)."""

    @classmethod
    def establish(cls) -> LivePair:
        net = setup()
        net.collect()
        (sa_a,) = net.a._sas.values()
        (sa_b,) = net.b._sas.values()
        return cls(net, sa_a, sa_b)

    def intact(self) -> bool:
        """Both SAs still established as set up (an input may delete, rekey or move them)."""
        a, b = self.net.a, self.net.b
        return (list(a._sas.values()) == [self.sa_a] and list(b._sas.values()) == [self.sa_b]
                and self.sa_a.state == IkeState.ESTABLISHED
                and self.sa_b.state == IkeState.ESTABLISHED
                and len(self.sa_a.children) == 1 and len(self.sa_b.children) == 1)

    def path_to_b(self) -> Path:
        """The path of a datagram from ``a`` as ``b`` sees it."""
        return self.sa_b.path

    def path_to_a(self) -> Path:
        return self.sa_a.path


def inner_of(data: bytes, cipher: SkCipher) -> tuple[int, int, bytes]:
    """(exchange, first inner payload type, inner chain) of a protected message."""
    msg = decrypt_message(data, decode_message(data), cipher)
    return (int(msg.header.exchange), first_payload_type(msg.payloads),
            encode_payloads(msg.payloads))


EXCHANGES = (ExchangeType.INFORMATIONAL, ExchangeType.CREATE_CHILD_SA, ExchangeType.IKE_AUTH)
