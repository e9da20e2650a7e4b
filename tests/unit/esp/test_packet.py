"""ESP encapsulation and decapsulation: round trips for every suite, the drop paths, counters."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobike_vici.esp import (
    NEXT_HEADER_NONE,
    EspDecodeError,
    EspEncodeError,
    EspError,
    EspIntegrityError,
    ReplayError,
    SequenceExhausted,
    decapsulate,
    encapsulate,
    read_spi,
)
from mobike_vici.ikev2.constants import EncrId, IntegId
from mobike_vici.ikev2.crypto import EspSuite

from .support import (
    SPI_I,
    SPI_R,
    SUITES,
    ipv4_packet,
    ipv6_packet,
    iv_source,
    make_keys,
    make_pairs,
    suite_id,
)

GCM = EspSuite(EncrId.AES_GCM_16, 128, None)
CBC = EspSuite(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128)


@pytest.mark.parametrize("suite", SUITES, ids=suite_id)
def test_round_trip_both_directions(suite: EspSuite) -> None:
    ini, res = make_pairs(suite)
    ivs = iv_source()
    for length in (0, 1, 2, 3, 15, 16, 17, 64, 1400):
        for make, next_header in ((ipv4_packet, 4), (ipv6_packet, 41)):
            inner = make(bytes(i % 251 for i in range(length)))
            to_res = encapsulate(ini.outbound, inner, ivs)
            assert read_spi(to_res) == SPI_R
            assert decapsulate(res.inbound, to_res) == (next_header, inner)
            to_ini = encapsulate(res.outbound, inner, ivs)
            assert read_spi(to_ini) == SPI_I
            assert decapsulate(ini.inbound, to_ini) == (next_header, inner)
    assert ini.outbound.counters.packets == res.inbound.counters.packets == 18
    assert res.inbound.counters.bytes == ini.outbound.counters.bytes > 0


@pytest.mark.parametrize("suite", SUITES, ids=suite_id)
def test_layout_padding_and_alignment(suite: EspSuite) -> None:
    ini, _ = make_pairs(suite)
    transform = ini.outbound.transform
    for length in range(40):
        inner = ipv4_packet(bytes(length))
        packet = encapsulate(ini.outbound, inner, iv_source())
        body = len(packet) - 8 - transform.iv_length - transform.icv_length
        block = 16 if suite.encr == EncrId.AES_CBC else 4
        assert body % block == 0
        assert len(inner) + 2 <= body < len(inner) + 2 + block
        assert int.from_bytes(packet[4:8], "big") == length + 1


def test_sequence_numbers_and_gcm_default_iv() -> None:
    ini, _ = make_pairs(GCM)
    first = encapsulate(ini.outbound, ipv4_packet(b"a"))
    second = encapsulate(ini.outbound, ipv4_packet(b"a"))
    assert first[4:8] == (1).to_bytes(4, "big") and second[4:8] == (2).to_bytes(4, "big")
    assert first[8:16] == (1).to_bytes(8, "big") and second[8:16] == (2).to_bytes(8, "big")
    assert ini.outbound.seq == 2


def test_cbc_needs_an_iv_source() -> None:
    ini, _ = make_pairs(CBC)
    with pytest.raises(ValueError):
        encapsulate(ini.outbound, ipv4_packet(b""))
    with pytest.raises(ValueError):
        encapsulate(ini.outbound, ipv4_packet(b""), lambda n: bytes(n - 1))
    assert ini.outbound.seq == 0


@pytest.mark.parametrize("inner", [b"", b"\x10abc", b"\x70" + bytes(40)])
def test_unknown_inner_version(inner: bytes) -> None:
    ini, _ = make_pairs(GCM)
    with pytest.raises(EspEncodeError):
        encapsulate(ini.outbound, inner)
    assert ini.outbound.seq == 0


def test_dummy_packet_with_explicit_next_header() -> None:
    ini, res = make_pairs(GCM)
    packet = encapsulate(ini.outbound, b"", next_header=NEXT_HEADER_NONE)
    assert decapsulate(res.inbound, packet) == (NEXT_HEADER_NONE, b"")


@pytest.mark.parametrize("esn", [False, True])
def test_sequence_exhaustion(esn: bool) -> None:
    suite = EspSuite(EncrId.AES_GCM_16, 128, None, esn=esn)
    ini, res = make_pairs(suite)
    last = 2**64 - 1 if esn else 2**32 - 1
    ini.outbound.seq = last - 1
    packet = encapsulate(ini.outbound, ipv4_packet(b"last"))
    assert ini.outbound.seq == last
    with pytest.raises(SequenceExhausted):
        encapsulate(ini.outbound, ipv4_packet(b"one too many"))
    assert ini.outbound.seq == last
    if not esn:
        assert decapsulate(res.inbound, packet)[1] == ipv4_packet(b"last")


@pytest.mark.parametrize("suite", [GCM, CBC], ids=suite_id)
def test_esn_suite_crosses_the_32_bit_boundary(suite: EspSuite) -> None:
    suite = EspSuite(suite.encr, suite.encr_key_bits, suite.integ, esn=True)
    ini, res = make_pairs(suite)
    ini.outbound.seq = 2**32 - 3
    packets = [encapsulate(ini.outbound, ipv4_packet(bytes([i])), iv_source(i))
               for i in range(5)]
    assert [p[4:8].hex() for p in packets] == [
        "fffffffe", "ffffffff", "00000000", "00000001", "00000002"]
    # Delivered out of order across the wrap: each lands in the right subspace.
    for i in (0, 3, 1, 2, 4):
        assert decapsulate(res.inbound, packets[i])[1] == ipv4_packet(bytes([i]))
    assert res.inbound.replay is not None and res.inbound.replay.top == 2**32 + 2
    with pytest.raises(ReplayError):
        decapsulate(res.inbound, packets[1])


# ----------------------------------------------------------------- drop paths


def test_replayed_packet_is_refused_and_counted() -> None:
    ini, res = make_pairs(GCM)
    packet = encapsulate(ini.outbound, ipv4_packet(b"once"))
    decapsulate(res.inbound, packet)
    with pytest.raises(ReplayError):
        decapsulate(res.inbound, packet)
    counters = res.inbound.counters
    assert (counters.packets, counters.replay_failures, counters.integrity_failures) == (1, 1, 0)


@pytest.mark.parametrize("suite", [GCM, CBC], ids=suite_id)
def test_window_edges_and_reordering(suite: EspSuite) -> None:
    ini, res = make_pairs(suite, replay_window=32)
    packets = [encapsulate(ini.outbound, ipv4_packet(bytes([i])), iv_source(i))
               for i in range(1, 41)]
    decapsulate(res.inbound, packets[39])  # seq 40
    with pytest.raises(ReplayError):
        decapsulate(res.inbound, packets[7])  # seq 8: left of the window
    for index in (8, 20, 10, 38):  # seq 9 (oldest slot), 21, 11, 39
        assert decapsulate(res.inbound, packets[index])[1] == ipv4_packet(bytes([index + 1]))
    assert res.inbound.counters.packets == 5
    assert res.inbound.counters.replay_failures == 1


def test_replay_is_checked_before_integrity() -> None:
    ini, res = make_pairs(GCM)
    packet = encapsulate(ini.outbound, ipv4_packet(b"x"))
    decapsulate(res.inbound, packet)
    with pytest.raises(ReplayError):
        decapsulate(res.inbound, packet[:-1] + bytes([packet[-1] ^ 1]))
    assert res.inbound.counters.integrity_failures == 0


@pytest.mark.parametrize("suite", [GCM, CBC], ids=suite_id)
def test_forged_packet_does_not_move_the_window(suite: EspSuite) -> None:
    ini, res = make_pairs(suite)
    genuine = encapsulate(ini.outbound, ipv4_packet(b"genuine"), iv_source())
    forged = bytearray(genuine)
    forged[30] ^= 0x80
    with pytest.raises(EspIntegrityError):
        decapsulate(res.inbound, bytes(forged))
    assert res.inbound.counters.integrity_failures == 1
    assert res.inbound.replay is not None and res.inbound.replay.top == 0
    assert decapsulate(res.inbound, genuine)[1] == ipv4_packet(b"genuine")


@pytest.mark.parametrize("suite", [GCM, CBC], ids=suite_id)
@pytest.mark.parametrize("where", ["header", "iv", "ciphertext", "icv"])
def test_any_flipped_bit_fails_integrity(suite: EspSuite, where: str) -> None:
    ini, res = make_pairs(suite)
    packet = bytearray(encapsulate(ini.outbound, ipv4_packet(b"payload"), iv_source()))
    iv_len = ini.outbound.transform.iv_length
    offset = {"header": 7, "iv": 8 + iv_len - 1, "ciphertext": 8 + iv_len,
              "icv": len(packet) - 1}[where]
    packet[offset] ^= 0x02  # sequence number 1 becomes 3, still new to the window
    with pytest.raises(EspIntegrityError):
        decapsulate(res.inbound, bytes(packet))


def test_truncated_packets() -> None:
    ini, res = make_pairs(CBC)
    packet = encapsulate(ini.outbound, ipv4_packet(b"t"), iv_source())
    with pytest.raises(EspDecodeError):  # CBC ciphertext no longer block-aligned
        decapsulate(res.inbound, packet[:-1])
    for length in (0, 3, 7, 8, 8 + 16 + 16):
        with pytest.raises(EspDecodeError):
            decapsulate(res.inbound, packet[:length])
    assert res.inbound.counters.decode_failures == 6

    ini, res = make_pairs(GCM)
    packet = encapsulate(ini.outbound, ipv4_packet(b"t"))
    with pytest.raises(EspIntegrityError):  # still long enough: the tag catches it
        decapsulate(res.inbound, packet[:-1])
    with pytest.raises(EspDecodeError):
        decapsulate(res.inbound, packet[: 8 + 8 + 16 + 1])
    assert res.inbound.counters.packets == 0


def test_wrong_spi() -> None:
    ini, _ = make_pairs(GCM)
    packet = encapsulate(ini.outbound, ipv4_packet(b"x"))
    with pytest.raises(EspDecodeError):
        decapsulate(ini.inbound, packet)  # our own outbound packet, SPI of the peer
    assert ini.inbound.counters.decode_failures == 1


def test_read_spi() -> None:
    assert read_spi(bytes.fromhex("c0ffee01 00000001")) == 0xC0FFEE01
    assert read_spi(bytes(8)) == 0  # the non-ESP marker in front of IKE on port 4500
    with pytest.raises(EspDecodeError):
        read_spi(b"\xff")  # a NAT-keepalive


def sealed_gcm(res_key: bytes, seq: int, plaintext: bytes) -> bytes:
    """A GCM packet to the responder built outside the code under test."""
    header = SPI_R.to_bytes(4, "big") + seq.to_bytes(4, "big")
    iv = bytes(7) + bytes([seq])
    return header + iv + AESGCM(res_key[:16]).encrypt(res_key[16:] + iv, plaintext, header)


@pytest.mark.parametrize(
    "trailer",
    [
        bytes([0, 0, 2, 4]),  # padding must be 1, 2
        bytes([1, 3, 2, 4]),
        bytes([2, 1, 2, 4]),
        bytes([0xFF, 4]),  # pad length beyond the plaintext
    ],
)
def test_bad_padding_is_refused_after_authentication(trailer: bytes) -> None:
    _, res = make_pairs(GCM)
    packet = sealed_gcm(make_keys(GCM).encr_i, 1, ipv4_packet(b"pp") + trailer)
    with pytest.raises(EspDecodeError):
        decapsulate(res.inbound, packet)
    assert res.inbound.counters.decode_failures == 1
    assert res.inbound.counters.packets == 0
    # The packet was authentic, so the window moved (RFC 4303 §3.4.3).
    with pytest.raises(ReplayError):
        decapsulate(res.inbound, packet)


def test_good_padding_from_an_independent_sender() -> None:
    _, res = make_pairs(GCM)
    inner = ipv4_packet(b"pp")  # 22 bytes: 22 + 2 is aligned, add 4 more to test the check
    packet = sealed_gcm(make_keys(GCM).encr_i, 1, inner + bytes([1, 2, 3, 4, 4, 41]))
    assert decapsulate(res.inbound, packet) == (41, inner)


def test_direction_misuse_is_a_programming_error() -> None:
    ini, _ = make_pairs(GCM)
    with pytest.raises(ValueError):
        encapsulate(ini.inbound, ipv4_packet(b""))
    with pytest.raises(ValueError):
        decapsulate(ini.outbound, bytes(64))


# ----------------------------------------------------------------- properties


@pytest.mark.slow
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([GCM, CBC]), st.booleans(), st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_esp_errors(suite: EspSuite, with_spi: bool,
                                               data: bytes) -> None:
    _, res = make_pairs(suite)
    if with_spi:
        data = SPI_R.to_bytes(4, "big") + data
    with pytest.raises(EspError):
        decapsulate(res.inbound, data)


@pytest.mark.slow
@settings(max_examples=200)
@given(st.sampled_from([GCM, CBC]), st.data())
def test_mutated_packets_never_decapsulate(suite: EspSuite, data: st.DataObject) -> None:
    ini, res = make_pairs(suite)
    packet = encapsulate(ini.outbound, ipv4_packet(b"hello"), iv_source())
    index = data.draw(st.integers(min_value=0, max_value=len(packet) - 1))
    flip = data.draw(st.integers(min_value=1, max_value=255))
    mutated = bytearray(packet)
    mutated[index] ^= flip
    with pytest.raises(EspError):
        decapsulate(res.inbound, bytes(mutated))
    assert res.inbound.counters.packets == 0
