"""Fuzz target: the ESP decoder (``esp.packet.decapsulate``) for GCM and CBC+HMAC, with ESN.

Input layout, by the first byte ``mode``: bits 0-1 pick the suite; with bit 2
clear the rest is a packet, decapsulated as it is (mostly integrity failures,
plus the length, SPI and replay checks before them); with bit 2 set, bytes 1-4
are the sequence number and the rest is the plaintext (payload, padding, pad
length, next header), sealed here with the peer's keys so that it reaches the
replay window update and the padding check. Each input gets fresh SAs.

Only EspError subclasses may escape.
"""

from __future__ import annotations

import atheris

from .harness import main

with atheris.instrument_imports(include=["mobike_vici"]):
    from mobike_vici.esp import EspSaPair, decapsulate, encapsulate
    from mobike_vici.esp.errors import EspError
    from mobike_vici.esp.packet import read_spi
    from mobike_vici.ikev2.constants import EncrId, IntegId
    from mobike_vici.ikev2.crypto import EspSuite

    from ..unit.esp.support import SPI_I, SPI_R, ipv4_packet, iv_source, make_keys

SUITES = (
    EspSuite(EncrId.AES_GCM_16, 128, None),
    EspSuite(EncrId.AES_GCM_16, 256, None, esn=True),
    EspSuite(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128),
    EspSuite(EncrId.AES_CBC, 256, IntegId.HMAC_SHA1_96, esn=True),
)
KEYS = [make_keys(suite) for suite in SUITES]


def pairs(index: int) -> tuple[EspSaPair, EspSaPair]:
    """(sender, receiver) of one CHILD_SA."""
    suite, keys = SUITES[index], KEYS[index]
    sender = EspSaPair.create(spi_in=SPI_I, spi_out=SPI_R, suite=suite, keys=keys,
                              initiator=True)
    receiver = EspSaPair.create(spi_in=SPI_R, spi_out=SPI_I, suite=suite, keys=keys,
                                initiator=False)
    return sender, receiver


ALLOWED: tuple[type[BaseException], ...] = (EspError,)
"""What may escape the target for bad input; anything else is a crash."""


def target(data: bytes) -> None:
    if not data:
        return
    mode = data[0]
    sender, receiver = pairs(mode & 3)
    if not mode & 4:
        packet = data[1:]
        read_spi(packet)
    else:
        if len(data) < 5:
            return
        seq = int.from_bytes(data[1:5], "big")
        plaintext = data[5:]
        transform = sender.outbound.transform
        plaintext += bytes(-len(plaintext) % transform.block_size)
        header = SPI_R.to_bytes(4, "big") + data[1:5]
        seq_hi = bytes(4) if sender.outbound.esn else b""
        iv = seq.to_bytes(transform.iv_length, "big")
        packet = transform.seal(header, seq_hi, iv, plaintext)
    decapsulate(receiver.inbound, packet)


def seeds() -> list[bytes]:
    out = []
    for index in range(len(SUITES)):
        sender, _ = pairs(index)
        for size in (0, 1, 40, 1300):
            inner = ipv4_packet(bytes(range(256)) * (size // 256) + bytes(size % 256))
            packet = encapsulate(sender.outbound, inner, iv_source())
            out.append(bytes((index,)) + packet)
        align = sender.outbound.transform.align
        pad_length = -(20 + 2) % align
        plain = ipv4_packet(b"") + bytes(range(1, pad_length + 1)) + bytes((pad_length, 4))
        out.append(bytes((index | 4,)) + (1).to_bytes(4, "big") + plain)
    return out


if __name__ == "__main__":
    main("esp", target, ALLOWED, seeds)
