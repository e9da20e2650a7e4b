"""SA construction: which keys go where, validation, and what the SA object does not hold."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mobike_vici.core.events import ChildSaInstalled
from mobike_vici.esp import EspSa, EspSaPair, decapsulate, encapsulate
from mobike_vici.ikev2.constants import EncrId, IntegId
from mobike_vici.ikev2.crypto import EspSuite, UnsupportedAlgorithm
from mobike_vici.types import Endpoint, Path

from .support import SPI_I, SPI_R, ipv4_packet, make_keys, make_pairs

GCM = EspSuite(EncrId.AES_GCM_16, 256, None)


def open_with(key_and_salt: bytes, packet: bytes) -> bytes:
    """Decrypt a non-ESN GCM packet with a given key, outside the code under test."""
    key, salt = key_and_salt[:-4], key_and_salt[-4:]
    return AESGCM(key).decrypt(salt + packet[8:16], packet[16:], packet[:8])


@pytest.mark.parametrize("initiator", [True, False])
def test_initiator_sends_with_the_i_keys(initiator: bool) -> None:
    keys = make_keys(GCM)
    pair = EspSaPair.create(spi_in=SPI_I, spi_out=SPI_R, suite=GCM, keys=keys,
                            initiator=initiator)
    packet = encapsulate(pair.outbound, ipv4_packet(b"dir"))
    ours, theirs = (keys.encr_i, keys.encr_r) if initiator else (keys.encr_r, keys.encr_i)
    assert open_with(ours, packet).startswith(ipv4_packet(b"dir"))
    with pytest.raises(InvalidTag):
        open_with(theirs, packet)
    assert pair.outbound.spi == SPI_R and pair.inbound.spi == SPI_I
    assert pair.inbound.inbound and not pair.outbound.inbound


def test_from_child_event() -> None:
    keys = make_keys(GCM)
    path = Path(Endpoint(ipaddress.ip_address("10.1.0.2"), 4500),
                Endpoint(ipaddress.ip_address("192.0.2.2"), 4500))
    ours = ChildSaInstalled(conn="c", ike_spi="01_02", child="net", unique_id=1, path=path,
                            encap=True, local_ts=("10.0.0.0/24",), remote_ts=("10.9.0.0/24",),
                            suite=GCM, proposal="aes256gcm16", keys=keys, spi_in=SPI_I,
                            spi_out=SPI_R, initiator=True)
    peers = dataclasses.replace(ours, spi_in=SPI_R, spi_out=SPI_I, initiator=False)
    a = EspSaPair.from_child(ours, replay_window=64)
    b = EspSaPair.from_child(peers)
    assert a.inbound.replay is not None and a.inbound.replay.size == 64
    assert b.inbound.replay is not None and b.inbound.replay.size == 32
    packet = encapsulate(b.outbound, ipv4_packet(b"back"))
    assert decapsulate(a.inbound, packet) == (4, ipv4_packet(b"back"))


def test_repr_holds_no_key_material() -> None:
    keys = make_keys(EspSuite(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_512_256))
    pair = EspSaPair.create(spi_in=SPI_I, spi_out=SPI_R,
                            suite=EspSuite(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_512_256),
                            keys=keys, initiator=True)
    text = repr(pair).lower()
    for secret in (keys.encr_i, keys.encr_r, keys.integ_i, keys.integ_r):
        assert secret.hex() not in text
        assert repr(secret)[2:-1].lower() not in text
    assert f"{SPI_R:08x}" in text


def test_counters_start_at_zero_and_are_per_sa() -> None:
    ini, res = make_pairs(GCM)
    encapsulate(ini.outbound, ipv4_packet(b"12345"))
    assert ini.outbound.counters.packets == 1
    assert ini.outbound.counters.bytes == len(ipv4_packet(b"12345"))
    assert ini.inbound.counters.packets == 0 and res.outbound.counters.packets == 0


@pytest.mark.parametrize(
    ("suite", "encr_len", "integ_len", "error"),
    [
        (EspSuite(EncrId.AES_GCM_16, 128, None), 16, 0, ValueError),  # salt missing
        (EspSuite(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128), 16, 31, ValueError),
        (EspSuite(EncrId.AES_CBC, 128, None), 16, 0, UnsupportedAlgorithm),
        (EspSuite(EncrId.AES_CBC, 128, IntegId.HMAC_MD5_96), 16, 16, UnsupportedAlgorithm),
        (EspSuite(EncrId.AES_CTR, 128, IntegId.HMAC_SHA1_96), 20, 20, UnsupportedAlgorithm),
        (EspSuite(EncrId.CHACHA20_POLY1305, 256, None), 36, 0, UnsupportedAlgorithm),
    ],
)
def test_bad_suites_and_keys_are_refused(
    suite: EspSuite, encr_len: int, integ_len: int, error: type[Exception]
) -> None:
    with pytest.raises(error):
        EspSa(spi=1, suite=suite, encr_key=bytes(encr_len), integ_key=bytes(integ_len),
              inbound=True)


@pytest.mark.parametrize("spi", [0, 2**32])
def test_spi_range(spi: int) -> None:
    with pytest.raises(ValueError):
        EspSa(spi=spi, suite=GCM, encr_key=bytes(36), integ_key=b"", inbound=False)


def test_replay_window_only_on_inbound() -> None:
    ini, _ = make_pairs(GCM, replay_window=0)
    assert ini.outbound.replay is None
    assert ini.inbound.replay is not None and ini.inbound.replay.size == 0
