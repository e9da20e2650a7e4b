"""Shared fixtures for the ESP tests: every supported suite, matching SA pairs, inner packets."""

from __future__ import annotations

import random
from collections.abc import Callable

from mobike_vici.esp import EspSaPair
from mobike_vici.ikev2.constants import EncrId, IntegId
from mobike_vici.ikev2.crypto import ChildKeys, EspSuite, encr_key_length, integ_key_length

SPI_I = 0xC1000001
"""Inbound SPI of the initiator (the responder's outbound)."""
SPI_R = 0xC2000002

INTEGS = (IntegId.HMAC_SHA1_96, IntegId.HMAC_SHA2_256_128, IntegId.HMAC_SHA2_384_192,
          IntegId.HMAC_SHA2_512_256)

SUITES: list[EspSuite] = [
    *(EspSuite(EncrId.AES_GCM_16, bits, None, esn=esn) for bits in (128, 256)
      for esn in (False, True)),
    *(EspSuite(EncrId.AES_CBC, bits, integ, esn=esn) for bits in (128, 256)
      for integ in INTEGS for esn in (False, True)),
]


def suite_id(suite: EspSuite) -> str:
    integ = f"-{suite.integ.name}" if suite.integ else ""
    return f"{suite.encr.name}{suite.encr_key_bits}{integ}{'-esn' if suite.esn else ''}"


def make_keys(suite: EspSuite, seed: int = 1) -> ChildKeys:
    rng = random.Random(seed)
    e_len = encr_key_length(suite.encr, suite.encr_key_bits)
    a_len = 0 if suite.integ is None else integ_key_length(suite.integ)
    return ChildKeys(encr_i=rng.randbytes(e_len), integ_i=rng.randbytes(a_len),
                     encr_r=rng.randbytes(e_len), integ_r=rng.randbytes(a_len))


def make_pairs(
    suite: EspSuite, replay_window: int = 32, seed: int = 1
) -> tuple[EspSaPair, EspSaPair]:
    """(initiator, responder) built from the same keys, as both ends of one CHILD_SA."""
    keys = make_keys(suite, seed)
    initiator = EspSaPair.create(spi_in=SPI_I, spi_out=SPI_R, suite=suite, keys=keys,
                                 initiator=True, replay_window=replay_window)
    responder = EspSaPair.create(spi_in=SPI_R, spi_out=SPI_I, suite=suite, keys=keys,
                                 initiator=False, replay_window=replay_window)
    return initiator, responder


def iv_source(seed: int = 7) -> Callable[[int], bytes]:
    """A deterministic stand-in for os.urandom."""
    return random.Random(seed).randbytes


def ipv4_packet(payload: bytes) -> bytes:
    """An IPv4-looking packet; only the version nibble matters to ESP."""
    total = 20 + len(payload)
    return bytes([0x45, 0, total >> 8, total & 0xFF]) + bytes(16) + payload


def ipv6_packet(payload: bytes) -> bytes:
    return bytes([0x60]) + bytes(39) + payload
