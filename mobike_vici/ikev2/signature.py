"""Public-key AUTH payloads: RFC 7427 Digital Signatures and the classic methods of RFC 7296 / 4754.

An RFC 7427 AUTH (method 14) carries ``len | AlgorithmIdentifier | signature``;
the AlgorithmIdentifier names the scheme, so the verifier needs no guessing.
The classic methods fix the hash: RSA (1) is PKCS#1 v1.5 with SHA-1, ECDSA
(9, 10, 11) is P-256/SHA-256, P-384/SHA-384, P-521/SHA-512 with ``r | s``.
Choosing follows charon: RFC 7427 when the peer sent SIGNATURE_HASH_ALGORITHMS,
with the first scheme of our key whose hash the peer listed; the classic method
of the key otherwise (Ed25519 has none).

Signing and verifying go through ``cryptography``. Only :class:`SignatureError`
escapes the verifier, whatever the bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from .constants import AuthMethod
from .der import OID_TAG, DerError, encode_oid, encode_tlv, read_tlv

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class SignatureError(ValueError):
    """An AUTH payload that does not verify, or a scheme we do not accept."""


class HashAlg(IntEnum):
    """RFC 7427 §7 hash algorithm identifiers (SIGNATURE_HASH_ALGORITHMS)."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5


OUR_HASHES: tuple[HashAlg, ...] = (HashAlg.SHA2_256, HashAlg.SHA2_384, HashAlg.SHA2_512,
                                   HashAlg.IDENTITY)
"""What we announce; SHA-1 is accepted from a peer's classic RSA AUTH only."""

_HASH_OBJ: dict[HashAlg, type[hashes.HashAlgorithm]] = {
    HashAlg.SHA1: hashes.SHA1, HashAlg.SHA2_256: hashes.SHA256,
    HashAlg.SHA2_384: hashes.SHA384, HashAlg.SHA2_512: hashes.SHA512,
}


class Kind(IntEnum):
    RSA_PKCS1 = 1
    RSA_PSS = 2
    ECDSA = 3
    ED25519 = 4


@dataclass(frozen=True, slots=True)
class Scheme:
    """One signature scheme: a key kind and a hash."""

    kind: Kind
    hash: HashAlg

    @property
    def name(self) -> str:
        if self.kind == Kind.ED25519:
            return "ed25519"
        prefix = {Kind.RSA_PKCS1: "rsa", Kind.RSA_PSS: "rsa/pss", Kind.ECDSA: "ecdsa"}[self.kind]
        return f"{prefix}-{_HASH_NAME[self.hash]}"


_HASH_NAME = {HashAlg.SHA1: "sha1", HashAlg.SHA2_256: "sha256", HashAlg.SHA2_384: "sha384",
              HashAlg.SHA2_512: "sha512", HashAlg.IDENTITY: "identity"}
HASH_BY_NAME = {v: k for k, v in _HASH_NAME.items()}

# --- a little DER, enough for AlgorithmIdentifier ------------------------------------

_SEQ, _OID, _NULL, _INT = 0x30, OID_TAG, 0x05, 0x02


_tlv, _oid = encode_tlv, encode_oid


def _read(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, content, next position); malformed DER is a SignatureError."""
    try:
        return read_tlv(data, pos)
    except DerError as exc:
        raise SignatureError(str(exc)) from None


_RSA_PKCS1_OID = {HashAlg.SHA1: "1.2.840.113549.1.1.5", HashAlg.SHA2_256: "1.2.840.113549.1.1.11",
                  HashAlg.SHA2_384: "1.2.840.113549.1.1.12",
                  HashAlg.SHA2_512: "1.2.840.113549.1.1.13"}
_ECDSA_OID = {HashAlg.SHA1: "1.2.840.10045.4.1", HashAlg.SHA2_256: "1.2.840.10045.4.3.2",
              HashAlg.SHA2_384: "1.2.840.10045.4.3.3", HashAlg.SHA2_512: "1.2.840.10045.4.3.4"}
_DIGEST_OID = {HashAlg.SHA1: "1.3.14.3.2.26", HashAlg.SHA2_256: "2.16.840.1.101.3.4.2.1",
               HashAlg.SHA2_384: "2.16.840.1.101.3.4.2.2",
               HashAlg.SHA2_512: "2.16.840.1.101.3.4.2.3"}
_PSS_OID = "1.2.840.113549.1.1.10"
_MGF1_OID = "1.2.840.113549.1.1.8"
_ED25519_OID = "1.3.101.112"
_HASH_LEN = {HashAlg.SHA1: 20, HashAlg.SHA2_256: 32, HashAlg.SHA2_384: 48, HashAlg.SHA2_512: 64}

_BY_OID: dict[bytes, Scheme] = {}
for _h, _o in _RSA_PKCS1_OID.items():
    _BY_OID[_oid(_o)] = Scheme(Kind.RSA_PKCS1, _h)
for _h, _o in _ECDSA_OID.items():
    _BY_OID[_oid(_o)] = Scheme(Kind.ECDSA, _h)
_BY_OID[_oid(_ED25519_OID)] = Scheme(Kind.ED25519, HashAlg.IDENTITY)
_DIGEST_BY_OID = {_oid(o): h for h, o in _DIGEST_OID.items()}


def _hash_ai(h: HashAlg) -> bytes:
    return _tlv(_SEQ, _oid(_DIGEST_OID[h]) + _tlv(_NULL, b""))


def algorithm_identifier(scheme: Scheme) -> bytes:
    """The DER AlgorithmIdentifier of RFC 7427 §3 (PKCS#1 with NULL parameters)."""
    if scheme.kind == Kind.RSA_PKCS1:
        return _tlv(_SEQ, _oid(_RSA_PKCS1_OID[scheme.hash]) + _tlv(_NULL, b""))
    if scheme.kind == Kind.ECDSA:
        return _tlv(_SEQ, _oid(_ECDSA_OID[scheme.hash]))
    if scheme.kind == Kind.ED25519:
        return _tlv(_SEQ, _oid(_ED25519_OID))
    params = (_tlv(0xA0, _hash_ai(scheme.hash))
              + _tlv(0xA1, _tlv(_SEQ, _oid(_MGF1_OID) + _hash_ai(scheme.hash)))
              + _tlv(0xA2, _tlv(_INT, bytes([_HASH_LEN[scheme.hash]]))))
    return _tlv(_SEQ, _oid(_PSS_OID) + _tlv(_SEQ, params))


def _digest_of(ai: bytes) -> HashAlg:
    tag, body, _ = _read(ai, 0)
    if tag != _SEQ:
        raise SignatureError("bad hash AlgorithmIdentifier")
    tag, oid, _end = _read(body, 0)
    h = _DIGEST_BY_OID.get(_tlv(tag, oid))
    if tag != _OID or h is None:
        raise SignatureError("unknown hash in RSASSA-PSS parameters")
    return h


def _pss(params: bytes) -> tuple[HashAlg, int]:
    """(hash, salt length) of RSASSA-PSS-params; MGF1 must use the same hash."""
    tag, body, end = _read(params, 0)
    if tag != _SEQ or end != len(params):
        raise SignatureError("bad RSASSA-PSS parameters")
    digest, mgf, salt = HashAlg.SHA1, HashAlg.SHA1, 20
    pos = 0
    while pos < len(body):
        tag, value, pos = _read(body, pos)
        if tag == 0xA0:
            digest = _digest_of(value)
        elif tag == 0xA1:
            t, seq, _ = _read(value, 0)
            if t != _SEQ:
                raise SignatureError("bad MGF parameters")
            t, oid, rest = _read(seq, 0)
            if _tlv(t, oid) != _oid(_MGF1_OID):
                raise SignatureError("unknown mask generation function")
            mgf = _digest_of(seq[rest:])
        elif tag == 0xA2:
            t, number, _ = _read(value, 0)
            if t != _INT or not 1 <= len(number) <= 2:
                raise SignatureError("bad PSS salt length")
            salt = int.from_bytes(number, "big")
        elif tag == 0xA3:
            continue  # trailerField: only 1 (the default) exists
        else:
            raise SignatureError("unknown RSASSA-PSS parameter")
    if mgf != digest:
        raise SignatureError("MGF1 hash differs from the PSS hash")
    return digest, salt


def parse_algorithm_identifier(ai: bytes) -> tuple[Scheme, int]:
    """The scheme (and PSS salt length, else 0) of a DER AlgorithmIdentifier."""
    tag, body, end = _read(ai, 0)
    if tag != _SEQ or end != len(ai):
        raise SignatureError("bad AlgorithmIdentifier")
    tag, oid, pos = _read(body, 0)
    if tag != _OID:
        raise SignatureError("bad AlgorithmIdentifier")
    full = _tlv(tag, oid)
    rest = body[pos:]
    if full == _oid(_PSS_OID):
        digest, salt = _pss(rest)
        return Scheme(Kind.RSA_PSS, digest), salt
    scheme = _BY_OID.get(full)
    if scheme is None:
        raise SignatureError("unsupported signature algorithm")
    if rest not in (b"", b"\x05\x00"):
        raise SignatureError("unexpected AlgorithmIdentifier parameters")
    return scheme, 0


# --- keys and schemes -----------------------------------------------------------------


_CLASSIC_EC = {"secp256r1": (AuthMethod.ECDSA_256, HashAlg.SHA2_256, 32),
               "secp384r1": (AuthMethod.ECDSA_384, HashAlg.SHA2_384, 48),
               "secp521r1": (AuthMethod.ECDSA_521, HashAlg.SHA2_512, 66)}
_EC_HASHES = {"secp256r1": (HashAlg.SHA2_256, HashAlg.SHA2_384, HashAlg.SHA2_512),
              "secp384r1": (HashAlg.SHA2_384, HashAlg.SHA2_512),
              "secp521r1": (HashAlg.SHA2_512,)}


def key_kind(key: PrivateKey | PublicKey) -> str:
    """rsa, ecdsa or ed25519 (the words of swanctl's ``auth = ...``)."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ecdsa"
    return "ed25519"


def key_schemes(key: PrivateKey | PublicKey, pss: bool = False) -> list[Scheme]:
    """The RFC 7427 schemes of a key, best first (charon's order)."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        kind = Kind.RSA_PSS if pss else Kind.RSA_PKCS1
        return [Scheme(kind, h) for h in (HashAlg.SHA2_256, HashAlg.SHA2_384, HashAlg.SHA2_512)]
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return [Scheme(Kind.ECDSA, h) for h in _EC_HASHES.get(key.curve.name, ())]
    return [Scheme(Kind.ED25519, HashAlg.IDENTITY)]


def _pss_padding(h: HashAlg, salt: int) -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(_HASH_OBJ[h]()), salt_length=salt)


def _sign(key: PrivateKey, scheme: Scheme, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(_HASH_OBJ[scheme.hash]()))
    if scheme.kind == Kind.RSA_PSS:
        return key.sign(data, _pss_padding(scheme.hash, _HASH_LEN[scheme.hash]),
                        _HASH_OBJ[scheme.hash]())
    return key.sign(data, padding.PKCS1v15(), _HASH_OBJ[scheme.hash]())


def build_auth(key: PrivateKey, octets: bytes, peer_hashes: Sequence[int] | None,
               *, pss: bool = False, allowed: Iterable[HashAlg] | None = None,
               ) -> tuple[AuthMethod, bytes]:
    """Our AUTH method and data over ``octets``.

    ``peer_hashes``: the peer's SIGNATURE_HASH_ALGORITHMS, None when it sent none
    (then the classic method). ``allowed``: hashes our config restricts us to.
    Raises SignatureError when no scheme fits (Ed25519 without RFC 7427).
    """
    ok = set(allowed) if allowed is not None else None
    if peer_hashes is not None:
        for scheme in key_schemes(key, pss):
            if scheme.hash in peer_hashes and (ok is None or scheme.hash in ok
                                               or scheme.hash == HashAlg.IDENTITY):
                ai = algorithm_identifier(scheme)
                return AuthMethod.GENERIC_SIG, bytes([len(ai)]) + ai + _sign(key, scheme, octets)
        raise SignatureError("no signature scheme of our key uses a hash the peer supports")
    if isinstance(key, rsa.RSAPrivateKey):
        return AuthMethod.RSA_SIG, _sign(key, Scheme(Kind.RSA_PKCS1, HashAlg.SHA1), octets)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        classic = _CLASSIC_EC.get(key.curve.name)
        if classic is None:
            raise SignatureError(f"no classic AUTH method for curve {key.curve.name}")
        method, h, size = classic
        r, s = decode_dss_signature(_sign(key, Scheme(Kind.ECDSA, h), octets))
        return method, r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise SignatureError("Ed25519 needs RFC 7427 signature authentication, the peer lacks it")


def _verify(key: PublicKey, scheme: Scheme, salt: int, signature: bytes, data: bytes) -> None:
    try:
        if scheme.kind == Kind.ED25519:
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise SignatureError("Ed25519 signature, but not an Ed25519 key")
            key.verify(signature, data)
        elif scheme.kind == Kind.ECDSA:
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise SignatureError("ECDSA signature, but not an ECDSA key")
            key.verify(signature, data, ec.ECDSA(_HASH_OBJ[scheme.hash]()))
        else:
            if not isinstance(key, rsa.RSAPublicKey):
                raise SignatureError("RSA signature, but not an RSA key")
            pad: padding.AsymmetricPadding = (
                _pss_padding(scheme.hash, salt) if scheme.kind == Kind.RSA_PSS
                else padding.PKCS1v15())
            key.verify(signature, data, pad, _HASH_OBJ[scheme.hash]())
    except InvalidSignature:
        raise SignatureError("signature does not verify") from None
    except (ValueError, TypeError) as exc:  # e.g. a DER signature cryptography rejects
        raise SignatureError(f"malformed signature: {exc}") from None


def verify_auth(key: PublicKey, method: int, data: bytes, octets: bytes,
                allowed: Iterable[HashAlg] | None = None) -> Scheme:
    """Check a peer's AUTH payload; returns the scheme it used.

    ``allowed``: hashes the config accepts (RFC 7427 schemes only), None for all
    but SHA-1. Raises SignatureError, nothing else.
    """
    ok = set(allowed) if allowed is not None else {h for h in HashAlg if h != HashAlg.SHA1}
    if method == AuthMethod.GENERIC_SIG:
        if not data or len(data) < 1 + data[0]:
            raise SignatureError("truncated signature AUTH")
        scheme, salt = parse_algorithm_identifier(data[1:1 + data[0]])
        if scheme.hash not in ok and scheme.hash != HashAlg.IDENTITY:
            raise SignatureError(f"hash {_HASH_NAME[scheme.hash]} not accepted")
        if scheme.kind == Kind.RSA_PSS and salt > 1024:
            raise SignatureError("bad PSS salt length")
        _verify(key, scheme, salt, data[1 + data[0]:], octets)
        return scheme
    if method == AuthMethod.RSA_SIG:
        scheme = Scheme(Kind.RSA_PKCS1, HashAlg.SHA1)
        _verify(key, scheme, 0, data, octets)
        return scheme
    for name, (classic, h, size) in _CLASSIC_EC.items():
        if method != classic:
            continue
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != name:
            raise SignatureError(f"AUTH method {int(method)} does not fit the peer's key")
        if len(data) != 2 * size:
            raise SignatureError("ECDSA signature of the wrong size")
        der = encode_dss_signature(int.from_bytes(data[:size], "big"),
                                   int.from_bytes(data[size:], "big"))
        scheme = Scheme(Kind.ECDSA, h)
        _verify(key, scheme, 0, der, octets)
        return scheme
    raise SignatureError(f"AUTH method {int(method)} is not a signature method we accept")


def encode_hash_notify(algs: Sequence[int] = OUR_HASHES) -> bytes:
    return b"".join(int(a).to_bytes(2, "big") for a in algs)


def decode_hash_notify(data: bytes) -> tuple[int, ...]:
    """The peer's hash algorithms; an odd trailing byte is ignored, the count bounded."""
    return tuple(int.from_bytes(data[i:i + 2], "big") for i in range(0, min(len(data), 64) - 1, 2))
