"""Known answers: published ESP packets, and packets rebuilt independently with ``cryptography``.

AES-GCM: draft-mcgrew-gcm-test-01 §4 (the packet-level companion to RFC 4106),
one 128-bit and one 256-bit case; both use next header 1 in the trailer.
AES-CBC: RFC 3602 §4 case 7 (tunnel mode); RFC 3602 has no integrity, so the
ICV is computed here with :mod:`hmac` over RFC 4303 §2.8's coverage.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mobike_vici.esp import EspSa, decapsulate, encapsulate
from mobike_vici.ikev2.constants import EncrId, IntegId
from mobike_vici.ikev2.crypto import EspSuite

from .support import ipv4_packet, iv_source


def hx(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


GCM128_KEY = hx("feffe992 8665731c 6d6a8f94 67308308 cafebabe")
GCM128_PACKET = hx("""
    0000a5f8 0000000a facedbad decaf888
    deb22cd9 b07c72c1 6e3a65be eb8df304 a5a5897d 33ae530f 1ba76d5d 114d2a5c
    3de81827 c10e9a4f 51330d0e ec416642 cfbb85a5 b47e48a4 ec3b9ba9 5d918bd1
    83b70d3a a8bc6ee4 c309e9d8 5a41ad4a""")
GCM128_PLAINTEXT = hx("""
    4500003e 698f0000 80114dcc c0a80102 c0a80101 0a980035 002a2343 b2d00100
    00010000 00000000 03736970 09637962 65726369 74790264 6b000001 00010001""")

GCM256_KEY = hx("""
    abbccdde f0011223 34455667 78899aab abbccdde f0011223 34455667 78899aab
    11223344""")
GCM256_PACKET = hx("""
    4a2cbfe3 00000002 01020304 05060708
    ff425c9b 724599df 7a3bcd51 0194e00d 6a78107f 1b0b1cbf 06efae9d 65a5d763
    748a6379 85771d34 7f054565 9f14e99d ef842d8e b335f4ee cfdbf831 824b4c49
    15956c96""")
GCM256_PLAINTEXT = hx("""
    45000030 69a64000 80062690 c0a80102 9389155e 0a9e008b 2dc57ee0 00000000
    70024000 20bf0000 020405b4 01010402 01020201""")

CBC_KEY = hx("01234567 89abcdef 01234567 89abcdef")
CBC_ESP = hx("""
    00008765 00000002
    f4e76524 4f6407ad f13dc138 0f673f37
    773b5241 a4c44922 5e4f3ce5 ed611b0c 237ca96c f74a9301 3c1b0ea1 a0cf70f8
    e4ecaec7 8ac53aad 7a0f022b 859243c6 47752e94 a859352b 8a4d4d2d ecd136e5
    c177f132 ad3fbfb2 201ac990 4c74ee0a 109e0ca1 e4dfe9d5 a100b842 f1c22f0d""")
CBC_INNER = hx("""
    45000054 09040000 4001f988 c0a87b03 c0a87bc8 08009f76 a90a0100 b49c083d
    02a20400 08090a0b 0c0d0e0f 10111213 14151617 18191a1b 1c1d1e1f 20212223
    24252627 28292a2b 2c2d2e2f 30313233 34353637""")
CBC_INTEG_KEY = bytes(range(32))


def gcm_sa(key: bytes, spi: int, inbound: bool, esn: bool = False) -> EspSa:
    suite = EspSuite(EncrId.AES_GCM_16, (len(key) - 4) * 8, None, esn=esn)
    return EspSa(spi=spi, suite=suite, encr_key=key, integ_key=b"", inbound=inbound)


def test_gcm128_draft_vector_decapsulates() -> None:
    sa = gcm_sa(GCM128_KEY, 0xA5F8, inbound=True)
    assert decapsulate(sa, GCM128_PACKET) == (1, GCM128_PLAINTEXT[:0x3E])
    assert sa.replay is not None and sa.replay.top == 10


def test_gcm128_draft_vector_encapsulates() -> None:
    sa = gcm_sa(GCM128_KEY, 0xA5F8, inbound=False)
    sa.seq = 9
    iv = hx("facedbad decaf888")
    packet = encapsulate(sa, GCM128_PLAINTEXT[:0x3E], lambda n: iv, next_header=1)
    assert packet == GCM128_PACKET


def test_gcm256_draft_vector_both_ways() -> None:
    inner = GCM256_PLAINTEXT[:0x30]
    receiver = gcm_sa(GCM256_KEY, 0x4A2CBFE3, inbound=True)
    assert decapsulate(receiver, GCM256_PACKET) == (1, inner)
    sender = gcm_sa(GCM256_KEY, 0x4A2CBFE3, inbound=False)
    sender.seq = 1
    # Without an iv_source GCM uses the sequence number, here 2: not this vector's IV.
    assert encapsulate(sender, inner, lambda n: hx("01020304 05060708"), 1) == GCM256_PACKET


def cbc_sa(inbound: bool, esn: bool = False) -> EspSa:
    suite = EspSuite(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, esn=esn)
    return EspSa(spi=0x8765, suite=suite, encr_key=CBC_KEY, integ_key=CBC_INTEG_KEY,
                 inbound=inbound)


def test_cbc_rfc3602_case7_with_hmac_sha256() -> None:
    sender = cbc_sa(inbound=False)
    sender.seq = 1
    packet = encapsulate(sender, CBC_INNER, lambda n: CBC_ESP[8:24])
    icv = hmac.new(CBC_INTEG_KEY, CBC_ESP, hashlib.sha256).digest()[:16]
    assert packet == CBC_ESP + icv
    assert decapsulate(cbc_sa(inbound=True), packet) == (4, CBC_INNER)


def test_cbc_stream_equals_fresh_cbc_per_packet() -> None:
    """The chained CBC stream must give what a new CBC(iv) gives, packet after packet."""
    sender, receiver = cbc_sa(False, esn=True), cbc_sa(True, esn=True)
    sender.seq = 2**32 - 3  # cross into ESN high half 1 on the way
    draw = iv_source(3)
    used: list[bytes] = []

    def recording_ivs(n: int) -> bytes:
        used.append(draw(n))
        return used[-1]

    for length in (0, 1, 13, 14, 15, 16, 100, 1400, 3):
        inner = ipv4_packet(bytes(i % 256 for i in range(length)))
        packet = encapsulate(sender, inner, recording_ivs)
        iv, seq = used[-1], sender.seq
        pad = -(len(inner) + 2) % 16
        plaintext = inner + bytes(range(1, pad + 1)) + bytes((pad, 4))
        enc = Cipher(algorithms.AES(CBC_KEY), modes.CBC(iv)).encryptor()
        body = struct.pack("!II", 0x8765, seq & 0xFFFFFFFF) + iv + enc.update(plaintext)
        seq_hi = (seq >> 32).to_bytes(4, "big")
        icv = hmac.new(CBC_INTEG_KEY, body + seq_hi, hashlib.sha256).digest()[:16]
        assert packet == body + icv
        assert decapsulate(receiver, packet) == (4, inner)


def test_gcm_esn_aad_is_spi_seq_hi_seq_lo() -> None:
    key = bytes(range(20))
    sender = gcm_sa(key, 0x01020304, inbound=False, esn=True)
    sender.seq = 0x5_FFFF_FFFF
    inner = ipv4_packet(b"esn")
    packet = encapsulate(sender, inner)
    seq = 0x6_0000_0000
    iv = seq.to_bytes(8, "big")
    aad = bytes.fromhex("01020304") + (6).to_bytes(4, "big") + (0).to_bytes(4, "big")
    pad = -(len(inner) + 2) % 4
    plaintext = inner + bytes(range(1, pad + 1)) + bytes((pad, 4))
    sealed = AESGCM(key[:16]).encrypt(key[16:] + iv, plaintext, aad)
    assert packet == bytes.fromhex("01020304 00000000") + iv + sealed
