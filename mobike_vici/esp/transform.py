"""Per-SA ESP cryptography with its expensive objects built once: AES-GCM-16 and AES-CBC + HMAC.

A transform protects one direction of one SA. It knows where the IV, the
ciphertext and the ICV sit in an ESP packet (RFC 4303 §2) and what the ICV or
the AEAD tag covers, including the implicit ESN high half (RFC 4303 §2.2.1,
RFC 4106 §5). It knows nothing about sequence numbers or padding; that is
:mod:`mobike_vici.esp.packet`.

Receiving is split in two (:meth:`verify`, then :meth:`decrypt`) so that the
replay window is updated between integrity and decryption (RFC 4303 §3.4).
"""

from __future__ import annotations

import hmac as _hmac
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _chmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..ikev2.constants import EncrId, IntegId
from ..ikev2.crypto import UnsupportedAlgorithm
from .errors import EspIntegrityError

HEADER_LENGTH = 8
"""SPI and sequence number."""

_GCM_SALT = 4
_GCM_IV = 8
_GCM_ICV = 16
_AES_BLOCK = 16
_AES_KEY_BYTES = frozenset({16, 24, 32})

# integrity algorithm -> (hash, key length, ICV length) as in RFC 2404 / RFC 4868
_INTEG: dict[IntegId, tuple[type[hashes.HashAlgorithm], int, int]] = {
    IntegId.HMAC_SHA1_96: (hashes.SHA1, 20, 12),
    IntegId.HMAC_SHA2_256_128: (hashes.SHA256, 32, 16),
    IntegId.HMAC_SHA2_384_192: (hashes.SHA384, 48, 24),
    IntegId.HMAC_SHA2_512_256: (hashes.SHA512, 64, 32),
}


class EspTransform(Protocol):
    """One direction of ESP protection; the packet layout constants callers need."""

    iv_length: int
    icv_length: int
    align: int
    """Senders pad payload + trailer to a multiple of this (>= 4, RFC 4303 §2.4)."""
    block_size: int
    """Receivers reject ciphertext that is not a multiple of this."""
    min_ciphertext: int
    """Shortest ciphertext (without IV and ICV) that can hold the 2-byte trailer."""
    sequence_iv: bool
    """True when the IV need only be unique, so the sequence number may serve."""

    def seal(self, header: bytes, seq_hi: bytes, iv: bytes, plaintext: bytes) -> bytes:
        """Return the whole ESP packet: header || IV || ciphertext || ICV."""
        ...

    def verify(self, packet: bytes, seq_hi: bytes) -> bytes:
        """Check the ICV of a length-checked packet; raise EspIntegrityError.

        Returns what :meth:`decrypt` needs: for an AEAD the plaintext (it
        comes out of the same call), otherwise the ciphertext.
        """
        ...

    def decrypt(self, packet: bytes, verified: bytes) -> bytes:
        """Plaintext (payload || padding || pad length || next header)."""
        ...


class AesGcmTransform:
    """AES-GCM with a 16-byte ICV (RFC 4106): nonce = salt || IV, AAD = SPI [|| seq_hi] || seq."""

    iv_length = _GCM_IV
    icv_length = _GCM_ICV
    align = 4
    block_size = 1
    min_ciphertext = 2
    sequence_iv = True

    __slots__ = ("_aead", "_salt")

    def __init__(self, key_and_salt: bytes) -> None:
        if len(key_and_salt) - _GCM_SALT not in _AES_KEY_BYTES:
            raise ValueError("AES-GCM key must be 16, 24 or 32 bytes plus a 4-byte salt")
        self._aead = AESGCM(key_and_salt[:-_GCM_SALT])
        self._salt = key_and_salt[-_GCM_SALT:]

    def seal(self, header: bytes, seq_hi: bytes, iv: bytes, plaintext: bytes) -> bytes:
        aad = header[:4] + seq_hi + header[4:] if seq_hi else header
        return header + iv + self._aead.encrypt(self._salt + iv, plaintext, aad)

    def verify(self, packet: bytes, seq_hi: bytes) -> bytes:
        aad = packet[:4] + seq_hi + packet[4:8] if seq_hi else packet[:8]
        try:
            return self._aead.decrypt(self._salt + packet[8:16], packet[16:], aad)
        except InvalidTag:
            raise EspIntegrityError("AES-GCM tag mismatch") from None

    def decrypt(self, packet: bytes, verified: bytes) -> bytes:
        return verified


class AesCbcHmacTransform:
    """AES-CBC, encrypt-then-MAC with a truncated HMAC over header || IV || ciphertext [|| seq_hi].

    CBC runs as one long-lived stream per direction instead of a new
    ``Cipher`` per packet, which costs more than the encryption itself. A CBC
    stream's state is the last ciphertext block it handled, ``prev``. To
    start a packet with its own IV, the first block is corrected by
    ``prev XOR iv``: on the way out, into the first plaintext block; on the
    way in, onto the first decrypted block. Everything after that chains as
    plain CBC does, so the output equals a fresh ``CBC(iv)`` exactly.
    """

    iv_length = _AES_BLOCK
    align = _AES_BLOCK
    block_size = _AES_BLOCK
    min_ciphertext = _AES_BLOCK
    sequence_iv = False  # CBC IVs must be unpredictable (RFC 3602 §3)

    __slots__ = ("_dec", "_dec_prev", "_enc", "_enc_prev", "_mac", "icv_length")

    def __init__(self, encr_key: bytes, integ: IntegId, integ_key: bytes) -> None:
        if len(encr_key) not in _AES_KEY_BYTES:
            raise ValueError("AES-CBC key must be 16, 24 or 32 bytes")
        try:
            hash_cls, key_len, icv_len = _INTEG[integ]
        except KeyError:
            raise UnsupportedAlgorithm(f"ESP integrity {integ!r} not supported") from None
        if len(integ_key) != key_len:
            raise ValueError(f"{integ.name} key must be {key_len} bytes")
        self.icv_length = icv_len
        aes = algorithms.AES(encr_key)
        zero = bytes(_AES_BLOCK)
        self._enc = Cipher(aes, modes.CBC(zero)).encryptor()
        self._dec = Cipher(aes, modes.CBC(zero)).decryptor()
        self._enc_prev = zero
        self._dec_prev = zero
        # The keyed HMAC state is copied per packet: the key schedule runs once.
        self._mac = _chmac.HMAC(integ_key, hash_cls())

    def _icv(self, data: bytes, seq_hi: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(data)
        if seq_hi:
            mac.update(seq_hi)
        return mac.finalize()[: self.icv_length]

    def seal(self, header: bytes, seq_hi: bytes, iv: bytes, plaintext: bytes) -> bytes:
        first = _xor3(plaintext[:_AES_BLOCK], iv, self._enc_prev)
        ciphertext = self._enc.update(first + plaintext[_AES_BLOCK:])
        self._enc_prev = ciphertext[-_AES_BLOCK:]
        body = header + iv + ciphertext
        return body + self._icv(body, seq_hi)

    def verify(self, packet: bytes, seq_hi: bytes) -> bytes:
        end = len(packet) - self.icv_length
        if not _hmac.compare_digest(packet[end:], self._icv(packet[:end], seq_hi)):
            raise EspIntegrityError("ICV mismatch")
        return packet[HEADER_LENGTH + _AES_BLOCK : end]

    def decrypt(self, packet: bytes, verified: bytes) -> bytes:
        iv = packet[HEADER_LENGTH : HEADER_LENGTH + _AES_BLOCK]
        out = self._dec.update(verified)
        first = _xor3(out[:_AES_BLOCK], iv, self._dec_prev)
        self._dec_prev = verified[-_AES_BLOCK:]
        return first + out[_AES_BLOCK:]


def _xor3(a: bytes, b: bytes, c: bytes) -> bytes:
    return (
        int.from_bytes(a, "big") ^ int.from_bytes(b, "big") ^ int.from_bytes(c, "big")
    ).to_bytes(_AES_BLOCK, "big")


def make_transform(
    encr: EncrId, key_bits: int, integ: IntegId | None, encr_key: bytes, integ_key: bytes
) -> EspTransform:
    """Build one direction's transform; raise UnsupportedAlgorithm or ValueError on bad input."""
    if encr == EncrId.AES_GCM_16:
        if integ not in (None, IntegId.NONE):
            raise ValueError("AES-GCM takes no integrity algorithm")
        if len(encr_key) != key_bits // 8 + _GCM_SALT:
            raise ValueError(f"AES-GCM-{key_bits} needs {key_bits // 8} key + 4 salt bytes")
        return AesGcmTransform(encr_key)
    if encr == EncrId.AES_CBC:
        if integ is None or integ == IntegId.NONE:
            raise UnsupportedAlgorithm("AES-CBC without integrity is not supported")
        if len(encr_key) != key_bits // 8:
            raise ValueError(f"AES-CBC-{key_bits} needs a {key_bits // 8}-byte key")
        return AesCbcHmacTransform(encr_key, integ, integ_key)
    raise UnsupportedAlgorithm(f"ESP encryption {encr!r} not supported")
