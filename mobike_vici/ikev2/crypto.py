"""IKEv2 cryptography on ``cryptography``: DH, PRF, prf+, key derivation, SK ciphers, PSK AUTH.

Randomness always comes in as ``random_bytes(n)``; nothing here reads the OS RNG.
Unsupported algorithm identifiers raise :class:`UnsupportedAlgorithm` (a
``ValueError``); a malformed peer DH value raises ``ValueError``; a bad ICV or
AEAD tag raises :class:`IntegrityError`. Nothing else escapes on bad input.
"""

from __future__ import annotations

import hashlib
import hmac
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import dh, ec, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .constants import DhId, EncrId, IntegId, PrfId

RandomBytes = Callable[[int], bytes]


class IntegrityError(Exception):
    """An ICV or AEAD tag did not verify."""


class UnsupportedAlgorithm(ValueError):
    """A transform identifier this implementation does not provide."""


@dataclass(frozen=True, slots=True)
class IkeSuite:
    """One negotiated IKE transform set. ``integ`` is None for AEAD ciphers."""

    encr: EncrId
    encr_key_bits: int
    integ: IntegId | None
    prf: PrfId
    dh: DhId


@dataclass(frozen=True, slots=True)
class EspSuite:
    """One negotiated ESP transform set. ``dh`` is set only for PFS."""

    encr: EncrId
    encr_key_bits: int
    integ: IntegId | None
    dh: DhId | None = None
    esn: bool = False


@dataclass(frozen=True, slots=True)
class IkeKeys:
    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ChildKeys:
    """ESP keys per direction; for AEAD the encryption key ends with the 4-byte salt."""

    encr_i: bytes = field(repr=False)
    integ_i: bytes = field(repr=False)
    encr_r: bytes = field(repr=False)
    integ_r: bytes = field(repr=False)


class SkCipher(Protocol):
    """One direction of SK protection (RFC 7296 §3.14, RFC 5282 for AEAD)."""

    iv_length: int
    block_size: int
    icv_length: int

    def seal(self, aad: bytes, iv: bytes, plaintext: bytes) -> bytes:
        """Return ciphertext || ICV. ``plaintext`` is already padded.

        ``aad`` is the message from the IKE header to the end of the SK payload
        header; for non-AEAD ciphers the ICV covers aad || iv || ciphertext.
        """
        ...

    def open(self, aad: bytes, iv: bytes, sealed: bytes) -> bytes:
        """Verify and decrypt ciphertext || ICV; raise IntegrityError on mismatch."""
        ...


class DhExchange(Protocol):
    group: DhId
    public: bytes

    def shared_secret(self, peer_public: bytes) -> bytes:
        """Raise ValueError for a malformed or invalid peer public value."""
        ...


# --------------------------------------------------------------------------- DH

# RFC 3526 groups (generator 2). The test suite re-derives them from pi.
_MODP_PRIMES_HEX: dict[DhId, str] = {
    DhId.MODP_2048: (
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
        "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
        "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
        "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
        "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
        "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
        "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF"
    ),
    DhId.MODP_3072: (
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
        "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
        "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
        "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
        "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
        "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
        "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
        "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
        "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
        "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
        "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF"
    ),
    DhId.MODP_4096: (
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
        "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
        "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
        "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
        "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
        "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
        "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
        "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
        "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
        "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
        "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
        "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
        "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
        "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
        "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF"
    ),
}
MODP_PRIMES: dict[DhId, int] = {g: int(h, 16) for g, h in _MODP_PRIMES_HEX.items()}
MODP_GENERATOR = 2
# Private exponent sizes in bytes: twice the group's symmetric strength, the
# same sizes charon uses (a full-length exponent buys nothing and costs 4-10x).
_MODP_EXPONENT_BYTES: dict[DhId, int] = {
    DhId.MODP_2048: 48,
    DhId.MODP_3072: 48,
    DhId.MODP_4096: 64,
}
# The exponentiations run in OpenSSL through ``cryptography``: a responder's
# MODP-4096 costs about 4 ms there instead of 37 ms in Python integers, which an
# initiator who picks the group could otherwise spend for us. ``cryptography``
# marks finite-field DH deprecated; IKEv2 still negotiates it, so its warning is
# silenced around these calls only.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _MODP_PARAMS: dict[DhId, dh.DHParameterNumbers] = {
        g: dh.DHParameterNumbers(p, MODP_GENERATOR) for g, p in MODP_PRIMES.items()
    }

_ECP_CURVES: dict[DhId, tuple[Callable[[], ec.EllipticCurve], int]] = {
    DhId.ECP_256: (ec.SECP256R1, 32),
    DhId.ECP_384: (ec.SECP384R1, 48),
    DhId.ECP_521: (ec.SECP521R1, 66),
}
# A private scalar out of [1, n) is redrawn; with these field sizes that
# happens with probability below 2**-32 per draw, so the bound is never hit
# by a working random source.
_ECP_MAX_DRAWS = 64


class _ModpExchange:
    """Finite-field DH over an RFC 3526 group; values are big-endian, prime-length."""

    def __init__(self, group: DhId, random_bytes: RandomBytes) -> None:
        self.group = group
        self._params = _MODP_PARAMS[group]
        self._p = MODP_PRIMES[group]
        self._length = (self._p.bit_length() + 7) // 8
        secret = int.from_bytes(random_bytes(_MODP_EXPONENT_BYTES[group]), "big")
        # Exponents 0 and 1 would publish the secret itself.
        x = max(secret, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Our public value g^x is the secret shared with a "peer" whose value is g:
            # OpenSSL computes it, with the injected exponent (no OS randomness).
            generator = dh.DHPublicNumbers(MODP_GENERATOR, self._params)
            seed = dh.DHPrivateNumbers(x, generator).private_key()
            public = seed.exchange(generator.public_key())
            y = int.from_bytes(public, "big")
            self._key = dh.DHPrivateNumbers(x, dh.DHPublicNumbers(y, self._params)).private_key()
        self.public = public.rjust(self._length, b"\x00")

    def shared_secret(self, peer_public: bytes) -> bytes:
        if len(peer_public) != self._length:
            raise ValueError(f"{self.group.name} public value must be {self._length} bytes")
        y = int.from_bytes(peer_public, "big")
        # 0, 1 and p-1 (and anything >= p) force the secret into a tiny subgroup.
        if not 1 < y < self._p - 1:
            raise ValueError(f"{self.group.name} public value out of range")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peer = dh.DHPublicNumbers(y, self._params).public_key()
        return self._key.exchange(peer).rjust(self._length, b"\x00")


class _EcpExchange:
    """ECDH over a NIST prime curve in RFC 5903 format: x || y, secret = x."""

    def __init__(self, group: DhId, random_bytes: RandomBytes) -> None:
        self.group = group
        make_curve, self._size = _ECP_CURVES[group]
        self._curve = make_curve()
        bits = self._curve.key_size
        key: ec.EllipticCurvePrivateKey | None = None
        for _ in range(_ECP_MAX_DRAWS):
            scalar = int.from_bytes(random_bytes(self._size), "big") & ((1 << bits) - 1)
            try:
                key = ec.derive_private_key(scalar, self._curve)
            except ValueError:
                continue  # 0 or >= group order: draw again
            break
        if key is None:
            raise ValueError("random source produced no valid EC private key")
        self._key = key
        numbers = key.public_key().public_numbers()
        self.public = numbers.x.to_bytes(self._size, "big") + numbers.y.to_bytes(
            self._size, "big"
        )

    def shared_secret(self, peer_public: bytes) -> bytes:
        if len(peer_public) != 2 * self._size:
            raise ValueError(f"{self.group.name} public value must be {2 * self._size} bytes")
        # from_encoded_point rejects coordinates >= p and points off the curve.
        peer = ec.EllipticCurvePublicKey.from_encoded_point(
            self._curve, b"\x04" + peer_public
        )
        return self._key.exchange(ec.ECDH(), peer).rjust(self._size, b"\x00")


class _X25519Exchange:
    """X25519 as in RFC 8031: 32-byte u-coordinates both ways."""

    def __init__(self, random_bytes: RandomBytes) -> None:
        self.group = DhId.CURVE_25519
        self._key = x25519.X25519PrivateKey.from_private_bytes(random_bytes(32))
        self.public = self._key.public_key().public_bytes_raw()

    def shared_secret(self, peer_public: bytes) -> bytes:
        if len(peer_public) != 32:
            raise ValueError("CURVE_25519 public value must be 32 bytes")
        peer = x25519.X25519PublicKey.from_public_bytes(peer_public)
        secret = self._key.exchange(peer)  # raises ValueError on low-order points
        if not any(secret):
            raise ValueError("CURVE_25519 shared secret is all zero")
        return secret


def dh_generate(group: DhId, random_bytes: RandomBytes) -> DhExchange:
    """Start a key exchange in ``group``; ``public`` is the KE payload data."""
    if group in MODP_PRIMES:
        return _ModpExchange(group, random_bytes)
    if group in _ECP_CURVES:
        return _EcpExchange(group, random_bytes)
    if group == DhId.CURVE_25519:
        return _X25519Exchange(random_bytes)
    raise UnsupportedAlgorithm(f"DH group {group!r} not supported")


def supported_dh_groups() -> frozenset[DhId]:
    return frozenset({*MODP_PRIMES, *_ECP_CURVES, DhId.CURVE_25519})


DH_COST_MS: dict[DhId, float] = {
    DhId.CURVE_25519: 0.2,
    DhId.ECP_256: 0.2,
    DhId.ECP_384: 1.2,
    DhId.ECP_521: 1.5,
    DhId.MODP_2048: 1.7,
    DhId.MODP_3072: 2.3,
    DhId.MODP_4096: 5.5,
}
"""CPU milliseconds of one responder's DH (key generation and shared secret) per group,
measured on the project's 2-core lab machines: what an IKE_SA_INIT costs us, for the
responder's DH budget. Groups not listed cost 1 ms."""


def dh_public_length(group: DhId) -> int:
    """Length of the KE payload data for ``group`` (for INVALID_SYNTAX checks)."""
    if group in MODP_PRIMES:
        return (MODP_PRIMES[group].bit_length() + 7) // 8
    if group in _ECP_CURVES:
        return 2 * _ECP_CURVES[group][1]
    if group == DhId.CURVE_25519:
        return 32
    raise UnsupportedAlgorithm(f"DH group {group!r} not supported")


# -------------------------------------------------------------------- PRF, prf+

_PRF_HASHES: dict[PrfId, str] = {
    PrfId.HMAC_SHA1: "sha1",
    PrfId.HMAC_SHA2_256: "sha256",
    PrfId.HMAC_SHA2_384: "sha384",
    PrfId.HMAC_SHA2_512: "sha512",
}


def supported_prfs() -> frozenset[PrfId]:
    return frozenset(_PRF_HASHES)


def _prf_hash(alg: PrfId) -> str:
    try:
        return _PRF_HASHES[alg]
    except KeyError:
        raise UnsupportedAlgorithm(f"PRF {alg!r} not supported") from None


def prf_length(alg: PrfId) -> int:
    """Output length of ``alg``, which is also the length of SK_d, SK_pi and SK_pr."""
    return hashlib.new(_prf_hash(alg)).digest_size


def prf(alg: PrfId, key: bytes, data: bytes) -> bytes:
    """HMAC-based PRF; HMAC hashes keys longer than a block, so any key length works."""
    return hmac.new(key, data, _prf_hash(alg)).digest()


def prf_plus(alg: PrfId, key: bytes, seed: bytes, length: int) -> bytes:
    """RFC 7296 §2.13: T1 | T2 | ..., Tn = prf(K, Tn-1 | S | n), n at most 255."""
    name = _prf_hash(alg)
    size = hashlib.new(name).digest_size
    if length < 0 or length > 255 * size:
        raise ValueError(f"prf+ cannot produce {length} bytes with {alg.name}")
    out = bytearray()
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.new(key, block + seed + bytes([counter]), name).digest()
        out += block
        counter += 1
    return bytes(out[:length])


# ---------------------------------------------------------- transform key sizes

# integrity algorithm -> (hash, key length, ICV length)
_INTEG: dict[IntegId, tuple[str, int, int]] = {
    IntegId.HMAC_SHA1_96: ("sha1", 20, 12),
    IntegId.HMAC_SHA2_256_128: ("sha256", 32, 16),
    IntegId.HMAC_SHA2_384_192: ("sha384", 48, 24),
    IntegId.HMAC_SHA2_512_256: ("sha512", 64, 32),
}
_AES_KEY_BITS = frozenset({128, 192, 256})
_GCM_SALT = 4  # RFC 4106 / RFC 5282: the salt is the last 4 bytes of the key
_GCM_IV = 8
_GCM_TAG = 16


def supported_integ() -> frozenset[IntegId]:
    return frozenset(_INTEG)


def supported_encr() -> frozenset[EncrId]:
    return frozenset({EncrId.AES_CBC, EncrId.AES_GCM_16})


# IANA combined-mode ciphers, known or not: AES-CCM 14-16, AES-GCM 18-20,
# NULL_AUTH_AES_GMAC 21, Camellia-CCM 25-27, ChaCha20-Poly1305 28.
_AEAD_IDS = frozenset({14, 15, 16, 18, 19, 20, 21, 25, 26, 27, 28})


def is_aead(encr: EncrId | int) -> bool:
    """True for combined-mode ciphers, which never come with an integrity transform."""
    return int(encr) in _AEAD_IDS


def integ_key_length(integ: IntegId | None) -> int:
    """SK_a / ESP integrity key length in bytes; 0 when there is no integrity transform."""
    if integ is None or integ == IntegId.NONE:
        return 0
    try:
        return _INTEG[integ][1]
    except KeyError:
        raise UnsupportedAlgorithm(f"integrity algorithm {integ!r} not supported") from None


def encr_key_length(encr: EncrId, key_bits: int) -> int:
    """SK_e / ESP encryption key length in bytes, including the AEAD salt."""
    if encr not in supported_encr():
        raise UnsupportedAlgorithm(f"encryption algorithm {encr!r} not supported")
    if key_bits not in _AES_KEY_BITS:
        raise UnsupportedAlgorithm(f"AES key length {key_bits} not supported")
    return key_bits // 8 + (_GCM_SALT if encr == EncrId.AES_GCM_16 else 0)


# ------------------------------------------------------------- key derivation


def derive_ike_keys(
    suite: IkeSuite,
    nonce_i: bytes,
    nonce_r: bytes,
    shared_secret: bytes,
    spi_i: bytes,
    spi_r: bytes,
    old_sk_d: bytes | None = None,
    old_prf: PrfId | None = None,
) -> IkeKeys:
    """RFC 7296 §2.14; with ``old_sk_d`` the rekey form of §2.18.

    For a rekey, ``spi_i``/``spi_r`` and the nonces are those of the new SA,
    and SKEYSEED uses the OLD SA's PRF (``old_prf``, default ``suite.prf``).
    """
    if old_sk_d is None:
        skeyseed = prf(suite.prf, nonce_i + nonce_r, shared_secret)
    else:
        skeyseed = prf(old_prf or suite.prf, old_sk_d, shared_secret + nonce_i + nonce_r)
    p_len = prf_length(suite.prf)
    a_len = 0 if is_aead(suite.encr) else integ_key_length(suite.integ)
    e_len = encr_key_length(suite.encr, suite.encr_key_bits)
    sizes = (p_len, a_len, a_len, e_len, e_len, p_len, p_len)
    keymat = prf_plus(suite.prf, skeyseed, nonce_i + nonce_r + spi_i + spi_r, sum(sizes))
    parts = _split(keymat, sizes)
    return IkeKeys(
        sk_d=parts[0], sk_ai=parts[1], sk_ar=parts[2], sk_ei=parts[3],
        sk_er=parts[4], sk_pi=parts[5], sk_pr=parts[6],
    )


def derive_child_keys(
    prf_alg: PrfId,
    sk_d: bytes,
    suite: EspSuite,
    nonce_i: bytes,
    nonce_r: bytes,
    shared_secret: bytes | None = None,
) -> ChildKeys:
    """RFC 7296 §2.17: KEYMAT = prf+(SK_d, [g^ir new] | Ni | Nr).

    Taken in the order encr_i, integ_i, encr_r, integ_r; "i" is the direction
    from the CHILD_SA exchange's initiator to its responder.
    """
    e_len = encr_key_length(suite.encr, suite.encr_key_bits)
    a_len = 0 if is_aead(suite.encr) else integ_key_length(suite.integ)
    seed = (shared_secret or b"") + nonce_i + nonce_r
    sizes = (e_len, a_len, e_len, a_len)
    parts = _split(prf_plus(prf_alg, sk_d, seed, sum(sizes)), sizes)
    return ChildKeys(encr_i=parts[0], integ_i=parts[1], encr_r=parts[2], integ_r=parts[3])


def _split(data: bytes, sizes: tuple[int, ...]) -> list[bytes]:
    out = []
    pos = 0
    for size in sizes:
        out.append(data[pos:pos + size])
        pos += size
    return out


# ------------------------------------------------------------------- ciphers


class _AesCbcHmac:
    """AES-CBC with a truncated HMAC over aad || iv || ciphertext (encrypt-then-MAC)."""

    iv_length = 16
    block_size = 16

    def __init__(self, encr_key: bytes, integ: IntegId, integ_key: bytes) -> None:
        if len(encr_key) * 8 not in _AES_KEY_BITS:
            raise ValueError("AES-CBC key must be 16, 24 or 32 bytes")
        hash_name, key_len, icv_len = _INTEG[integ]
        if len(integ_key) != key_len:
            raise ValueError(f"{integ.name} key must be {key_len} bytes")
        self._algorithm = algorithms.AES(encr_key)
        self._hash = hash_name
        self._integ_key = integ_key
        self.icv_length = icv_len

    def _icv(self, aad: bytes, iv: bytes, ciphertext: bytes) -> bytes:
        return hmac.new(self._integ_key, aad + iv + ciphertext, self._hash).digest()[
            : self.icv_length
        ]

    def seal(self, aad: bytes, iv: bytes, plaintext: bytes) -> bytes:
        if len(iv) != self.iv_length or len(plaintext) % self.block_size:
            raise ValueError("AES-CBC needs a 16-byte IV and block-aligned plaintext")
        encryptor = Cipher(self._algorithm, modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(plaintext) + encryptor.finalize()
        return ciphertext + self._icv(aad, iv, ciphertext)

    def open(self, aad: bytes, iv: bytes, sealed: bytes) -> bytes:
        body_len = len(sealed) - self.icv_length
        # A wrong length is as untrustworthy as a wrong ICV: one error for callers.
        if len(iv) != self.iv_length or body_len < 0 or body_len % self.block_size:
            raise IntegrityError("malformed AES-CBC ciphertext length")
        ciphertext, icv = sealed[:body_len], sealed[body_len:]
        if not hmac.compare_digest(icv, self._icv(aad, iv, ciphertext)):
            raise IntegrityError("ICV mismatch")
        decryptor = Cipher(self._algorithm, modes.CBC(iv)).decryptor()
        return decryptor.update(ciphertext) + decryptor.finalize()


class _AesGcm:
    """AES-GCM with a 16-byte tag, nonce = salt(4) || explicit IV(8) (RFC 4106/5282)."""

    iv_length = _GCM_IV
    block_size = 1
    icv_length = _GCM_TAG

    def __init__(self, key_and_salt: bytes) -> None:
        key = key_and_salt[:-_GCM_SALT]
        if len(key) * 8 not in _AES_KEY_BITS:
            raise ValueError("AES-GCM key must be 16, 24 or 32 bytes plus a 4-byte salt")
        self._aead = AESGCM(key)
        self._salt = key_and_salt[-_GCM_SALT:]

    def seal(self, aad: bytes, iv: bytes, plaintext: bytes) -> bytes:
        if len(iv) != self.iv_length:
            raise ValueError("AES-GCM needs an 8-byte IV")
        return self._aead.encrypt(self._salt + iv, plaintext, aad)

    def open(self, aad: bytes, iv: bytes, sealed: bytes) -> bytes:
        if len(iv) != self.iv_length or len(sealed) < self.icv_length:
            raise IntegrityError("malformed AES-GCM ciphertext length")
        try:
            return self._aead.decrypt(self._salt + iv, sealed, aad)
        except InvalidTag:
            raise IntegrityError("AEAD tag mismatch") from None


def make_cipher(
    encr: EncrId, key_bits: int, integ: IntegId | None, encr_key: bytes, integ_key: bytes
) -> SkCipher:
    """One direction of protection; also fits ESP, where ``aad`` is SPI || sequence number.

    For AES-GCM ``encr_key`` ends with the 4-byte salt and ``integ`` is ignored.
    """
    if len(encr_key) != encr_key_length(encr, key_bits):
        raise ValueError(f"{encr.name}-{key_bits} key has the wrong length")
    if encr == EncrId.AES_GCM_16:
        return _AesGcm(encr_key)
    if integ is None or integ not in _INTEG:
        raise UnsupportedAlgorithm(f"AES-CBC needs a supported integrity algorithm, got {integ!r}")
    return _AesCbcHmac(encr_key, integ, integ_key)


def sk_ciphers(suite: IkeSuite, keys: IkeKeys, initiator: bool) -> tuple[SkCipher, SkCipher]:
    """Return (outbound, inbound) SK ciphers for the original initiator or responder."""
    to_responder = make_cipher(suite.encr, suite.encr_key_bits, suite.integ, keys.sk_ei,
                               keys.sk_ai)
    to_initiator = make_cipher(suite.encr, suite.encr_key_bits, suite.integ, keys.sk_er,
                               keys.sk_ar)
    if initiator:
        return to_responder, to_initiator
    return to_initiator, to_responder


# ---------------------------------------------------------------------- AUTH

_KEY_PAD = b"Key Pad for IKEv2"


def signed_octets(
    prf_alg: PrfId, message: bytes, peer_nonce: bytes, sk_p: bytes, id_body: bytes
) -> bytes:
    """RFC 7296 §2.15: message | peer nonce | prf(SK_p, RestOfIDPayload).

    ``message`` is our own first message (IKE_SA_INIT request or response) and
    ``id_body`` is the ID payload body after the generic header (type, 3
    reserved bytes, data).
    """
    return message + peer_nonce + prf(prf_alg, sk_p, id_body)


def psk_auth(prf_alg: PrfId, psk: bytes, octets: bytes) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), signed octets)."""
    return prf(prf_alg, prf(prf_alg, psk, _KEY_PAD), octets)
