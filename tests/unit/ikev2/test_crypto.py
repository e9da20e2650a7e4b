"""IKEv2 crypto: known-answer vectors, charon interop keys, DH validation, SK seal/open."""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from mobike_vici.ikev2.constants import DhId, EncrId, IntegId, PrfId
from mobike_vici.ikev2.crypto import (
    MODP_PRIMES,
    EspSuite,
    IkeSuite,
    IntegrityError,
    UnsupportedAlgorithm,
    derive_child_keys,
    derive_ike_keys,
    dh_generate,
    dh_public_length,
    encr_key_length,
    integ_key_length,
    make_cipher,
    prf,
    prf_length,
    prf_plus,
    psk_auth,
    signed_octets,
    sk_ciphers,
    supported_dh_groups,
)

FIXTURES = Path(__file__).parent / "fixtures"


def fixed(*chunks: bytes) -> Callable[[int], bytes]:
    """A random source replaying ``chunks`` in order; each call must ask for one chunk."""
    queue = list(chunks)

    def random_bytes(n: int) -> bytes:
        chunk = queue.pop(0)
        assert len(chunk) == n, f"asked for {n} bytes, vector has {len(chunk)}"
        return chunk

    return random_bytes


def counter_random(seed: int) -> Callable[[int], bytes]:
    """Deterministic, non-repeating bytes for round trips."""
    state = [seed]

    def random_bytes(n: int) -> bytes:
        out = b""
        while len(out) < n:
            state[0] += 1
            out += hashlib.sha256(state[0].to_bytes(8, "big")).digest()
        return out[:n]

    return random_bytes


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# ------------------------------------------------------------------ PRF, prf+

# RFC 4231 test cases 1 and 2; RFC 2202 for HMAC-SHA1.
HMAC_VECTORS = [
    (PrfId.HMAC_SHA1, b"\x0b" * 20, b"Hi There", "b617318655057264e28bc0b6fb378c8ef146be00"),
    (PrfId.HMAC_SHA1, b"Jefe", b"what do ya want for nothing?",
     "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
    (PrfId.HMAC_SHA2_256, b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (PrfId.HMAC_SHA2_256, b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (PrfId.HMAC_SHA2_384, b"\x0b" * 20, b"Hi There",
     "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c"
     "faea9ea9076ede7f4af152e8b2fa9cb6"),
    (PrfId.HMAC_SHA2_384, b"Jefe", b"what do ya want for nothing?",
     "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
     "8e2240ca5e69e2c78b3239ecfab21649"),
    (PrfId.HMAC_SHA2_512, b"\x0b" * 20, b"Hi There",
     "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
     "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"),
    (PrfId.HMAC_SHA2_512, b"Jefe", b"what do ya want for nothing?",
     "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
     "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"),
]


@pytest.mark.parametrize(("alg", "key", "data", "expected"), HMAC_VECTORS)
def test_prf_matches_hmac_vectors(alg: PrfId, key: bytes, data: bytes, expected: str) -> None:
    assert prf(alg, key, data) == h(expected)
    assert prf_length(alg) == len(h(expected))


@pytest.mark.parametrize("alg", [PrfId.HMAC_SHA1, PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA2_512])
def test_prf_plus_chains_blocks_as_rfc7296_2_13(alg: PrfId) -> None:
    key, seed = b"K" * 7, b"seed bytes"
    name = {PrfId.HMAC_SHA1: "sha1", PrfId.HMAC_SHA2_256: "sha256",
            PrfId.HMAC_SHA2_512: "sha512"}[alg]
    t1 = hmac.new(key, seed + b"\x01", name).digest()
    t2 = hmac.new(key, t1 + seed + b"\x02", name).digest()
    t3 = hmac.new(key, t2 + seed + b"\x03", name).digest()
    size = len(t1)
    assert prf_plus(alg, key, seed, size) == t1
    assert prf_plus(alg, key, seed, 2 * size + 5) == t1 + t2 + t3[:5]
    assert prf_plus(alg, key, seed, 0) == b""


def test_prf_plus_stops_at_255_blocks() -> None:
    assert len(prf_plus(PrfId.HMAC_SHA1, b"k", b"s", 255 * 20)) == 255 * 20
    with pytest.raises(ValueError):
        prf_plus(PrfId.HMAC_SHA1, b"k", b"s", 255 * 20 + 1)


def test_unsupported_prf_is_a_value_error() -> None:
    with pytest.raises(UnsupportedAlgorithm):
        prf(PrfId.AES128_XCBC, b"k", b"d")


# ---------------------------------------------------------- key derivation


SUITE_CBC = IkeSuite(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, PrfId.HMAC_SHA2_256,
                     DhId.CURVE_25519)


def test_ike_keys_follow_rfc7296_2_14() -> None:
    ni, nr, gir = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    spi_i, spi_r = b"\x11" * 8, b"\x22" * 8
    keys = derive_ike_keys(SUITE_CBC, ni, nr, gir, spi_i, spi_r)
    skeyseed = hmac.new(ni + nr, gir, "sha256").digest()
    stream = prf_plus(PrfId.HMAC_SHA2_256, skeyseed, ni + nr + spi_i + spi_r, 32 * 5 + 16 * 2)
    assert keys.sk_d == stream[0:32]
    assert keys.sk_ai == stream[32:64]
    assert keys.sk_ar == stream[64:96]
    assert keys.sk_ei == stream[96:112]
    assert keys.sk_er == stream[112:128]
    assert keys.sk_pi == stream[128:160]
    assert keys.sk_pr == stream[160:192]


def test_rekeyed_ike_keys_use_old_prf_and_old_sk_d() -> None:
    ni, nr, gir = b"\x05" * 16, b"\x06" * 16, b"\x07" * 32
    old_sk_d = b"\x08" * 20
    new = derive_ike_keys(SUITE_CBC, ni, nr, gir, b"a" * 8, b"b" * 8,
                          old_sk_d=old_sk_d, old_prf=PrfId.HMAC_SHA1)
    skeyseed = hmac.new(old_sk_d, gir + ni + nr, "sha1").digest()
    stream = prf_plus(PrfId.HMAC_SHA2_256, skeyseed, ni + nr + b"a" * 8 + b"b" * 8, 32)
    assert new.sk_d == stream
    same_prf = derive_ike_keys(SUITE_CBC, ni, nr, gir, b"a" * 8, b"b" * 8, old_sk_d=old_sk_d)
    assert same_prf.sk_d != new.sk_d


@pytest.mark.parametrize(
    ("suite", "sk_a", "sk_e", "sk_p"),
    [
        (IkeSuite(EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96, PrfId.HMAC_SHA1, DhId.MODP_2048),
         20, 16, 20),
        (IkeSuite(EncrId.AES_CBC, 192, IntegId.HMAC_SHA2_384_192, PrfId.HMAC_SHA2_384,
                  DhId.ECP_384), 48, 24, 48),
        (IkeSuite(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_512_256, PrfId.HMAC_SHA2_512,
                  DhId.ECP_521), 64, 32, 64),
        (IkeSuite(EncrId.AES_GCM_16, 128, None, PrfId.HMAC_SHA2_256, DhId.CURVE_25519),
         0, 20, 32),
        (IkeSuite(EncrId.AES_GCM_16, 256, None, PrfId.HMAC_SHA2_384, DhId.ECP_384), 0, 36, 48),
    ],
)
def test_ike_key_lengths(suite: IkeSuite, sk_a: int, sk_e: int, sk_p: int) -> None:
    keys = derive_ike_keys(suite, b"n" * 32, b"m" * 32, b"g" * 32, b"i" * 8, b"r" * 8)
    assert (len(keys.sk_ai), len(keys.sk_ar)) == (sk_a, sk_a)
    assert (len(keys.sk_ei), len(keys.sk_er)) == (sk_e, sk_e)
    assert (len(keys.sk_d), len(keys.sk_pi), len(keys.sk_pr)) == (sk_p, sk_p, sk_p)
    assert keys.sk_ei != keys.sk_er


def test_child_keys_order_and_pfs_seed() -> None:
    suite = EspSuite(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128)
    sk_d, ni, nr = b"d" * 32, b"i" * 32, b"r" * 32
    keys = derive_child_keys(PrfId.HMAC_SHA2_256, sk_d, suite, ni, nr)
    stream = prf_plus(PrfId.HMAC_SHA2_256, sk_d, ni + nr, 2 * (32 + 32))
    assert (keys.encr_i, keys.integ_i, keys.encr_r, keys.integ_r) == (
        stream[0:32], stream[32:64], stream[64:96], stream[96:128])
    pfs = derive_child_keys(PrfId.HMAC_SHA2_256, sk_d, suite, ni, nr, shared_secret=b"g" * 32)
    assert pfs.encr_i == prf_plus(PrfId.HMAC_SHA2_256, sk_d, b"g" * 32 + ni + nr, 32)


def test_child_keys_for_gcm_carry_salt_and_no_integrity() -> None:
    suite = EspSuite(EncrId.AES_GCM_16, 128, None)
    keys = derive_child_keys(PrfId.HMAC_SHA2_256, b"d" * 32, suite, b"i" * 16, b"r" * 16)
    stream = prf_plus(PrfId.HMAC_SHA2_256, b"d" * 32, b"i" * 16 + b"r" * 16, 40)
    assert keys.encr_i == stream[:20]
    assert keys.encr_r == stream[20:40]
    assert keys.integ_i == keys.integ_r == b""


def test_key_length_tables() -> None:
    assert [integ_key_length(i) for i in (IntegId.HMAC_SHA1_96, IntegId.HMAC_SHA2_256_128,
            IntegId.HMAC_SHA2_384_192, IntegId.HMAC_SHA2_512_256)] == [20, 32, 48, 64]
    assert encr_key_length(EncrId.AES_GCM_16, 192) == 28
    with pytest.raises(UnsupportedAlgorithm):
        encr_key_length(EncrId.AES_CTR, 128)
    with pytest.raises(UnsupportedAlgorithm):
        encr_key_length(EncrId.AES_CBC, 64)


# ------------------------------------------------------- charon interop vectors


def _payloads(message: bytes) -> dict[int, list[bytes]]:
    """Walk the unencrypted payload chain of a captured message (independent of payloads.py)."""
    out: dict[int, list[bytes]] = {}
    kind, off = message[16], 28
    while kind:
        nxt, length = message[off], struct.unpack(">H", message[off + 2:off + 4])[0]
        out.setdefault(kind, []).append(message[off + 4:off + length])
        kind, off = nxt, off + length
    return out


# Known-answer test vector, not a secret: charon's log of the throwaway lab run that produced
# the fixtures (capture_charon.sh,
# PSK "fixture-psk-not-secret"): the X25519 shared secret and the keys it derived.
CHARON_KEYS = {
    "dh_shared": "d8f92a3bb4992e5125322aa5619b0c9eb87ea8dda9ff254fd44b2bc0b7602e09",
    "sk_d": "90df81f59f8855dd0ba8b62d90e78059eda101402de5b317a265a8a684051e66",
    "sk_ai": "f9937609e0b4a5a486849c82af7b98da497babf37fd69fab06c5e84a04d7f9e5",
    "sk_ar": "6a20a896eaf04add77deff099d709301d9f1c62a55d0a4347c301d49e2fe1369",
    "sk_ei": "df12d18dc815248a9c8c9c3b934fe2fa",
    "sk_er": "72ba61cdddec297d5caadf806b15e217",
    "sk_pi": "e7c1df61efaab3585671f1cf5e674ff9bff3e5b24f2d8acb8f8df58e6288e31d",
    "sk_pr": "3898f23476319115365ec657b2071890849969d1e8ecd8de1d96cd8ccee19743",
}


def _fixture(name: str) -> bytes:
    # In the tree (tests/unit/ikev2/fixtures): a missing one is a failure, not a skip.
    return h((FIXTURES / name).read_text())


def test_ike_keys_match_charon_capture() -> None:
    """charon 5.9.8 negotiated AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/CURVE_25519."""
    init_req = _fixture("charon-ike-sa-init-request.hex")
    init_resp = _fixture("charon-ike-sa-init-response.hex")
    expected = CHARON_KEYS
    ni = _payloads(init_req)[40][0]
    nr = _payloads(init_resp)[40][0]
    keys = derive_ike_keys(SUITE_CBC, ni, nr, h(expected["dh_shared"]),
                           init_resp[0:8], init_resp[8:16])
    for name in ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr"):
        assert getattr(keys, name) == h(expected[name]), name


def test_charon_ike_auth_opens_and_psk_auth_matches() -> None:
    init_req = _fixture("charon-ike-sa-init-request.hex")
    init_resp = _fixture("charon-ike-sa-init-response.hex")
    auth_req = _fixture("charon-ike-auth-request.hex")
    auth_resp = _fixture("charon-ike-auth-response.hex")
    expected = CHARON_KEYS
    ni = _payloads(init_req)[40][0]
    nr = _payloads(init_resp)[40][0]
    keys = derive_ike_keys(SUITE_CBC, ni, nr, h(expected["dh_shared"]),
                           init_resp[0:8], init_resp[8:16])
    out_i, in_i = sk_ciphers(SUITE_CBC, keys, initiator=True)
    out_r, in_r = sk_ciphers(SUITE_CBC, keys, initiator=False)

    def inner(message: bytes, cipher_open: Callable[[bytes, bytes, bytes], bytes]) -> bytes:
        assert message[16] == 46  # SK first
        sk_len = struct.unpack(">H", message[30:32])[0]
        body = message[32:28 + sk_len]
        plain = cipher_open(message[:32], body[:16], body[16:])
        return plain[: len(plain) - plain[-1] - 1]  # strip padding and pad length

    req_plain = inner(auth_req, in_r.open)
    resp_plain = inner(auth_resp, in_i.open)
    with pytest.raises(IntegrityError):
        inner(auth_req, in_i.open)  # wrong direction's keys

    # First inner payload of the request is IDi (35); AUTH follows a few payloads later.
    inner_payloads: dict[int, bytes] = {}
    kind, off = auth_req[28], 0
    while kind:
        nxt, length = req_plain[off], struct.unpack(">H", req_plain[off + 2:off + 4])[0]
        inner_payloads.setdefault(kind, req_plain[off + 4:off + length])
        kind, off = nxt, off + length
    idi, auth = inner_payloads[35], inner_payloads[39]
    assert idi[4:] == b"moon.example"
    octets = signed_octets(PrfId.HMAC_SHA2_256, init_req, nr, keys.sk_pi, idi)
    assert auth[0] == 2  # shared key MIC
    assert psk_auth(PrfId.HMAC_SHA2_256, b"fixture-psk-not-secret", octets) == auth[4:]
    assert psk_auth(PrfId.HMAC_SHA2_256, b"wrong", octets) != auth[4:]
    assert resp_plain  # the response decrypted with the initiator's inbound keys

    # Sealing again with our own cipher reproduces charon's bytes exactly.
    sk_len = struct.unpack(">H", auth_req[30:32])[0]
    body = auth_req[32:28 + sk_len]
    reseal = out_i.seal(auth_req[:32], body[:16], in_r.open(auth_req[:32], body[:16], body[16:]))
    assert reseal == body[16:]
    resp_len = struct.unpack(">H", auth_resp[30:32])[0]
    resp_body = auth_resp[32:28 + resp_len]
    assert out_r.seal(auth_resp[:32], resp_body[:16], in_i.open(
        auth_resp[:32], resp_body[:16], resp_body[16:])) == resp_body[16:]


# -------------------------------------------------------------- AUTH helpers


def test_psk_auth_and_signed_octets_structure() -> None:
    octets = signed_octets(PrfId.HMAC_SHA1, b"MSG", b"NONCE", b"skp", b"\x02\x00\x00\x00id")
    assert octets == b"MSG" + b"NONCE" + hmac.new(b"skp", b"\x02\x00\x00\x00id", "sha1").digest()
    pad_key = hmac.new(b"psk", b"Key Pad for IKEv2", "sha1").digest()
    assert psk_auth(PrfId.HMAC_SHA1, b"psk", octets) == hmac.new(pad_key, octets, "sha1").digest()


# ---------------------------------------------------------------------- DH


def test_ecp256_rfc5903_8_1() -> None:
    i = h("C88F01F5 10D9AC3F 70A292DA A2316DE5 44E9AAB8 AFE84049 C62A9C57 862D1433")
    gi = h("DAD0B653 94221CF9 B051E1FE CA5787D0 98DFE637 FC90B9EF 945D0C37 72581180"
           "5271A046 1CDB8252 D61F1C45 6FA3E59A B1F45B33 ACCF5F58 389E0577 B8990BB3")
    r = h("C6EF9C5D 78AE012A 011164AC B397CE20 88685D8F 06BF9BE0 B283AB46 476BEE53")
    gr = h("D12DFB52 89C8D4F8 1208B702 70398C34 2296970A 0BCCB74C 736FC755 4494BF63"
           "56FBF3CA 366CC23E 8157854C 13C58D6A AC23F046 ADA30F83 53E74F33 039872AB")
    gir = h("D6840F6B 42F6EDAF D13116E0 E1256520 2FEF8E9E CE7DCE03 812464D0 4B9442DE")
    alice = dh_generate(DhId.ECP_256, fixed(i))
    bob = dh_generate(DhId.ECP_256, fixed(r))
    assert alice.public == gi
    assert bob.public == gr
    assert alice.shared_secret(gr) == gir
    assert bob.shared_secret(gi) == gir


def test_x25519_rfc7748_6_1() -> None:
    a = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    b = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    pub_a = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    pub_b = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    alice = dh_generate(DhId.CURVE_25519, fixed(a))
    bob = dh_generate(DhId.CURVE_25519, fixed(b))
    assert (alice.public, bob.public) == (pub_a, pub_b)
    assert alice.shared_secret(pub_b) == shared == bob.shared_secret(pub_a)


def _pi_times_2_to(bits: int) -> int:
    """floor(pi * 2**bits) by Machin's formula in integer arithmetic."""
    guard = 64
    one = 1 << (bits + guard)

    def arctan_inv(x: int) -> int:
        total, term, n, sign = 0, one // x, 1, 1
        while term:
            total += sign * (term // n)
            term //= x * x
            n += 2
            sign = -sign
        return total

    return (16 * arctan_inv(5) - 4 * arctan_inv(239)) >> guard


@pytest.mark.parametrize(("group", "bits", "k"), [
    (DhId.MODP_2048, 2048, 124476),
    (DhId.MODP_3072, 3072, 1690314),
    (DhId.MODP_4096, 4096, 240904),
])
def test_modp_primes_are_rfc3526(group: DhId, bits: int, k: int) -> None:
    # RFC 3526: p = 2^N - 2^(N-64) - 1 + 2^64 * ( [2^(N-130) pi] + k )
    expected = (1 << bits) - (1 << (bits - 64)) - 1 + (1 << 64) * (_pi_times_2_to(bits - 130) + k)
    assert MODP_PRIMES[group] == expected


@pytest.mark.parametrize("group", sorted(supported_dh_groups()))
def test_dh_round_trip(group: DhId) -> None:
    alice = dh_generate(group, counter_random(1))
    bob = dh_generate(group, counter_random(1000))
    assert len(alice.public) == len(bob.public) == dh_public_length(group)
    assert alice.public != bob.public
    secret = alice.shared_secret(bob.public)
    assert secret == bob.shared_secret(alice.public)
    assert any(secret)
    # Randomness is injected: the same source gives the same key.
    assert dh_generate(group, counter_random(1)).public == alice.public


def test_modp_public_is_prime_length_and_g_to_x() -> None:
    exponent = b"\x00" * 47 + b"\x05"
    ex = dh_generate(DhId.MODP_2048, fixed(exponent))
    p = MODP_PRIMES[DhId.MODP_2048]
    assert ex.public == pow(2, 5, p).to_bytes(256, "big")  # leading zeros kept


@pytest.mark.parametrize("group", [DhId.MODP_2048, DhId.MODP_3072])
def test_modp_rejects_degenerate_peer_values(group: DhId) -> None:
    ex = dh_generate(group, counter_random(3))
    p = MODP_PRIMES[group]
    size = len(ex.public)
    for bad in (0, 1, p - 1, p, p + 1):
        with pytest.raises(ValueError):
            ex.shared_secret(bad.to_bytes(size, "big"))
    with pytest.raises(ValueError):
        ex.shared_secret(b"\x02" * (size - 1))


@pytest.mark.parametrize("group", [DhId.ECP_256, DhId.ECP_384, DhId.ECP_521])
def test_ecp_rejects_invalid_points(group: DhId) -> None:
    ex = dh_generate(group, counter_random(4))
    peer = dh_generate(group, counter_random(5)).public
    half = len(peer) // 2
    y = int.from_bytes(peer[half:], "big")
    off_curve = peer[:half] + (y ^ 1).to_bytes(half, "big")
    for bad in (off_curve, b"\x00" * len(peer), b"\xff" * len(peer), peer[:-1], peer + b"\x00"):
        with pytest.raises(ValueError):
            ex.shared_secret(bad)


def test_x25519_rejects_low_order_and_bad_length() -> None:
    ex = dh_generate(DhId.CURVE_25519, counter_random(6))
    for bad in (b"\x00" * 32, b"\x01" + b"\x00" * 31, b"\x00" * 31):
        with pytest.raises(ValueError):
            ex.shared_secret(bad)


def test_unsupported_dh_group() -> None:
    with pytest.raises(UnsupportedAlgorithm):
        dh_generate(DhId.MODP_1024, counter_random(0))
    assert DhId.CURVE_448 not in supported_dh_groups()


# ---------------------------------------------------------------- SK ciphers


def test_aes_gcm_mcgrew_viega_test_case_4() -> None:
    """GCM spec test case 4 (60-byte plaintext, 20-byte AAD), salt || IV as RFC 4106 splits it."""
    key = h("feffe9928665731c6d6a8f9467308308")
    salt, iv = h("cafebabe"), h("facedbaddecaf888")
    plain = h("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
              "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39")
    aad = h("feedfacedeadbeeffeedfacedeadbeefabaddad2")
    cipher_text = h("42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
                    "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091")
    tag = h("5bc94fbc3221a5db94fae95ae7121a47")
    gcm = make_cipher(EncrId.AES_GCM_16, 128, None, key + salt, b"")
    assert (gcm.iv_length, gcm.block_size, gcm.icv_length) == (8, 1, 16)
    assert gcm.seal(aad, iv, plain) == cipher_text + tag
    assert gcm.open(aad, iv, cipher_text + tag) == plain


def test_aes_cbc_sp800_38a_block_and_truncated_hmac() -> None:
    key = h("2b7e151628aed2a6abf7158809cf4f3c")
    iv = h("000102030405060708090a0b0c0d0e0f")
    plain = h("6bc1bee22e409f96e93d7e117393172a")
    integ_key = b"\x42" * 32
    cbc = make_cipher(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, key, integ_key)
    sealed = cbc.seal(b"header", iv, plain)
    assert sealed[:16] == h("7649abac8119b246cee98e9b12e9197d")
    icv = hmac.new(integ_key, b"header" + iv + sealed[:16], "sha256").digest()[:16]
    assert sealed[16:] == icv
    assert (cbc.iv_length, cbc.block_size, cbc.icv_length) == (16, 16, 16)


IKE_SUITES = [
    IkeSuite(EncrId.AES_CBC, bits, integ, PrfId.HMAC_SHA2_256, DhId.CURVE_25519)
    for bits in (128, 192, 256)
    for integ in (IntegId.HMAC_SHA1_96, IntegId.HMAC_SHA2_256_128,
                  IntegId.HMAC_SHA2_384_192, IntegId.HMAC_SHA2_512_256)
] + [
    IkeSuite(EncrId.AES_GCM_16, bits, None, PrfId.HMAC_SHA2_384, DhId.ECP_384)
    for bits in (128, 192, 256)
]


@pytest.mark.parametrize("suite", IKE_SUITES, ids=lambda s: f"{s.encr.name}-{s.encr_key_bits}-"
                         f"{s.integ.name if s.integ else 'aead'}")
def test_sk_round_trip_and_any_tampering_fails(suite: IkeSuite) -> None:
    keys = derive_ike_keys(suite, b"i" * 32, b"r" * 32, b"s" * 32, b"a" * 8, b"b" * 8)
    out_i, in_i = sk_ciphers(suite, keys, initiator=True)
    out_r, in_r = sk_ciphers(suite, keys, initiator=False)
    aad = bytes(range(32))
    iv = bytes(range(100, 100 + out_i.iv_length))
    plain = bytes(range(48)) if out_i.block_size == 16 else bytes(range(45))
    sealed = out_i.seal(aad, iv, plain)
    assert len(sealed) == len(plain) + out_i.icv_length
    assert in_r.open(aad, iv, sealed) == plain
    back = out_r.seal(aad, iv, plain)
    assert back != sealed  # each direction has its own keys
    assert in_i.open(aad, iv, back) == plain
    with pytest.raises(IntegrityError):
        in_i.open(aad, iv, sealed)
    blob = aad + iv + sealed
    for pos in range(len(blob)):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        t_aad, t_iv = bytes(bad[:len(aad)]), bytes(bad[len(aad):len(aad) + len(iv)])
        with pytest.raises(IntegrityError):
            in_r.open(t_aad, t_iv, bytes(bad[len(aad) + len(iv):]))
    for cut in (sealed[:-1], sealed[:3], b""):
        with pytest.raises(IntegrityError):
            in_r.open(aad, iv, cut)


def test_sealing_needs_block_aligned_plaintext_and_right_iv() -> None:
    keys = derive_ike_keys(SUITE_CBC, b"i" * 32, b"r" * 32, b"s" * 32, b"a" * 8, b"b" * 8)
    out, _ = sk_ciphers(SUITE_CBC, keys, initiator=True)
    with pytest.raises(ValueError):
        out.seal(b"", b"\x00" * 16, b"x" * 15)
    with pytest.raises(ValueError):
        out.seal(b"", b"\x00" * 8, b"x" * 16)


def test_make_cipher_rejects_wrong_key_length() -> None:
    with pytest.raises(ValueError):
        make_cipher(EncrId.AES_GCM_16, 128, None, b"k" * 16, b"")
    with pytest.raises(ValueError):
        make_cipher(EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96, b"k" * 16, b"a" * 19)


@pytest.mark.parametrize("group", [DhId.MODP_2048, DhId.MODP_3072, DhId.MODP_4096])
def test_modp_runs_in_openssl_not_python_integers(
    group: DhId, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A responder's MODP-4096 in Python integers cost 37 ms of the event loop per
    # IKE_SA_INIT, in a group the initiator picks: the modular exponentiations
    # must go to OpenSSL. Python's pow is made to fail inside the module.
    import mobike_vici.ikev2.crypto as crypto

    def no_pow(*args: object) -> object:
        raise AssertionError("MODP exponentiation in Python integers")

    monkeypatch.setattr(crypto, "pow", no_pow, raising=False)
    alice = dh_generate(group, counter_random(7))
    bob = dh_generate(group, counter_random(8))
    secret = alice.shared_secret(bob.public)
    assert secret == bob.shared_secret(alice.public)
    monkeypatch.undo()
    # The values are still the textbook ones: g^x mod p, and (g^y)^x mod p.
    p = MODP_PRIMES[group]
    size = (p.bit_length() + 7) // 8
    x = int.from_bytes(counter_random(7)({DhId.MODP_4096: 64}.get(group, 48)), "big")
    assert alice.public == pow(2, x, p).to_bytes(size, "big")
    assert secret == pow(int.from_bytes(bob.public, "big"), x, p).to_bytes(size, "big")
