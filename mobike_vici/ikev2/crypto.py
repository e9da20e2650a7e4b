"""IKEv2 cryptography on ``cryptography``: DH, PRF, prf+, key derivation, SK ciphers, PSK AUTH.

STUB: the API below is the contract; the bodies are being written.
Randomness always comes in as ``random_bytes(n)``; nothing here reads the OS RNG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .constants import DhId, EncrId, IntegId, PrfId

RandomBytes = Callable[[int], bytes]


class IntegrityError(Exception):
    """An ICV or AEAD tag did not verify."""


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


def dh_generate(group: DhId, random_bytes: RandomBytes) -> DhExchange:
    raise NotImplementedError


def supported_dh_groups() -> frozenset[DhId]:
    raise NotImplementedError


def prf(alg: PrfId, key: bytes, data: bytes) -> bytes:
    raise NotImplementedError


def prf_plus(alg: PrfId, key: bytes, seed: bytes, length: int) -> bytes:
    raise NotImplementedError


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
    """RFC 7296 §2.14; with ``old_sk_d`` the rekey form of §2.18."""
    raise NotImplementedError


def sk_ciphers(suite: IkeSuite, keys: IkeKeys, initiator: bool) -> tuple[SkCipher, SkCipher]:
    """Return (outbound, inbound) SK ciphers for the original initiator or responder."""
    raise NotImplementedError


def derive_child_keys(
    prf_alg: PrfId,
    sk_d: bytes,
    suite: EspSuite,
    nonce_i: bytes,
    nonce_r: bytes,
    shared_secret: bytes | None = None,
) -> ChildKeys:
    """RFC 7296 §2.17: KEYMAT = prf+(SK_d, [g^ir new] | Ni | Nr)."""
    raise NotImplementedError


def signed_octets(
    prf_alg: PrfId, message: bytes, peer_nonce: bytes, sk_p: bytes, id_body: bytes
) -> bytes:
    """RFC 7296 §2.15: message | peer nonce | prf(SK_p, RestOfIDPayload)."""
    raise NotImplementedError


def psk_auth(prf_alg: PrfId, psk: bytes, octets: bytes) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), signed octets)."""
    raise NotImplementedError
