"""AUTH signatures: RFC 7427 AlgorithmIdentifiers as the RFC writes them, scheme choice as
charon makes it, and hostile AUTH data refused with SignatureError only."""

from __future__ import annotations

import pytest

from mobike_vici.ikev2.constants import AuthMethod
from mobike_vici.ikev2.signature import (
    OUR_HASHES,
    HashAlg,
    Kind,
    Scheme,
    SignatureError,
    algorithm_identifier,
    build_auth,
    decode_hash_notify,
    encode_hash_notify,
    parse_algorithm_identifier,
    verify_auth,
)
from tests.pki import key

OCTETS = b"signed octets " * 20

# RFC 7427 Appendix A, byte for byte.
APPENDIX_A = {
    Scheme(Kind.RSA_PKCS1, HashAlg.SHA2_256):
        "300d06092a864886f70d01010b0500",
    Scheme(Kind.RSA_PKCS1, HashAlg.SHA1): "300d06092a864886f70d0101050500",
    Scheme(Kind.ECDSA, HashAlg.SHA2_256): "300a06082a8648ce3d040302",
    Scheme(Kind.ECDSA, HashAlg.SHA2_384): "300a06082a8648ce3d040303",
    Scheme(Kind.ECDSA, HashAlg.SHA2_512): "300a06082a8648ce3d040304",
    Scheme(Kind.ED25519, HashAlg.IDENTITY): "300506032b6570",
}


@pytest.mark.parametrize("scheme", list(APPENDIX_A), ids=lambda s: s.name)
def test_algorithm_identifiers_are_rfc7427s(scheme: Scheme) -> None:
    der = algorithm_identifier(scheme)
    assert der.hex() == APPENDIX_A[scheme]
    assert parse_algorithm_identifier(der) == (scheme, 0)


def test_pss_parameters_round_trip() -> None:
    der = algorithm_identifier(Scheme(Kind.RSA_PSS, HashAlg.SHA2_384))
    assert parse_algorithm_identifier(der) == (Scheme(Kind.RSA_PSS, HashAlg.SHA2_384), 48)


@pytest.mark.parametrize(("kind", "pss", "method", "scheme"), [
    ("rsa2048", False, AuthMethod.GENERIC_SIG, "rsa-sha256"),
    ("rsa2048", True, AuthMethod.GENERIC_SIG, "rsa/pss-sha256"),
    ("p256", False, AuthMethod.GENERIC_SIG, "ecdsa-sha256"),
    ("p384", False, AuthMethod.GENERIC_SIG, "ecdsa-sha384"),
    ("p521", False, AuthMethod.GENERIC_SIG, "ecdsa-sha512"),
    ("ed25519", False, AuthMethod.GENERIC_SIG, "ed25519"),
])
def test_rfc7427_sign_and_verify(kind: str, pss: bool, method: AuthMethod, scheme: str) -> None:
    k = key(kind)
    got_method, data = build_auth(k, OCTETS, OUR_HASHES, pss=pss)
    assert got_method == method
    assert verify_auth(k.public_key(), got_method, data, OCTETS).name == scheme


@pytest.mark.parametrize(("kind", "method"), [
    ("rsa2048", AuthMethod.RSA_SIG), ("p256", AuthMethod.ECDSA_256),
    ("p384", AuthMethod.ECDSA_384), ("p521", AuthMethod.ECDSA_521),
])
def test_classic_methods_without_the_notify(kind: str, method: AuthMethod) -> None:
    k = key(kind)
    got_method, data = build_auth(k, OCTETS, None)
    assert got_method == method
    verify_auth(k.public_key(), got_method, data, OCTETS, allowed=set(HashAlg))


def test_ed25519_has_no_classic_method() -> None:
    with pytest.raises(SignatureError):
        build_auth(key("ed25519"), OCTETS, None)


def test_hash_follows_the_peers_list() -> None:
    _, data = build_auth(key("p256"), OCTETS, (int(HashAlg.SHA2_512),))
    assert parse_algorithm_identifier(data[1:1 + data[0]])[0].hash == HashAlg.SHA2_512
    with pytest.raises(SignatureError):
        build_auth(key("p256"), OCTETS, (int(HashAlg.SHA1),))


def test_bad_signatures_are_refused() -> None:
    k = key("p256")
    method, data = build_auth(k, OCTETS, OUR_HASHES)
    with pytest.raises(SignatureError):
        verify_auth(k.public_key(), method, data, OCTETS + b"x")  # other octets
    with pytest.raises(SignatureError):
        verify_auth(key("p256", 1).public_key(), method, data, OCTETS)  # other key
    with pytest.raises(SignatureError):
        verify_auth(key("rsa2048").public_key(), method, data, OCTETS)  # other key type
    flipped = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(SignatureError):
        verify_auth(k.public_key(), method, flipped, OCTETS)


def test_wrong_hash_is_refused() -> None:
    k = key("rsa2048")
    method, data = build_auth(k, OCTETS, OUR_HASHES)  # sha256
    with pytest.raises(SignatureError):
        verify_auth(k.public_key(), method, data, OCTETS, allowed={HashAlg.SHA2_384})
    # The AlgorithmIdentifier says SHA-384 but the signature is over SHA-256.
    ai = algorithm_identifier(Scheme(Kind.RSA_PKCS1, HashAlg.SHA2_384))
    swapped = bytes([len(ai)]) + ai + data[1 + data[0]:]
    with pytest.raises(SignatureError):
        verify_auth(k.public_key(), method, swapped, OCTETS)
    # SHA-1 RFC 7427 signatures are not accepted unless asked for.
    ai1 = algorithm_identifier(Scheme(Kind.RSA_PKCS1, HashAlg.SHA1))
    with pytest.raises(SignatureError):
        verify_auth(k.public_key(), method, bytes([len(ai1)]) + ai1 + b"\0" * 256, OCTETS)


def test_classic_method_must_fit_the_key() -> None:
    method, data = build_auth(key("p384"), OCTETS, None)
    with pytest.raises(SignatureError):
        verify_auth(key("p256").public_key(), method, data, OCTETS)
    with pytest.raises(SignatureError):
        verify_auth(key("p384").public_key(), method, data[:-1], OCTETS)


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\xff", b"\x0d\x30\x0b", b"\x05\x30\x03\x06\x01\x2a", b"\x02\x30\x80",
    b"\x07\x30\x85\xff\xff\xff\xff\xff", bytes(300), b"\x0f" + bytes(15),
])
def test_truncated_and_garbage_auth_data(data: bytes) -> None:
    with pytest.raises(SignatureError):
        verify_auth(key("p256").public_key(), AuthMethod.GENERIC_SIG, data, OCTETS)


@pytest.mark.parametrize("method", [0, 2, 3, 12, 13, 15, 255])
def test_unknown_methods(method: int) -> None:
    with pytest.raises(SignatureError):
        verify_auth(key("p256").public_key(), method, b"x" * 64, OCTETS)


def test_hash_notify_round_trip_and_bounds() -> None:
    assert decode_hash_notify(encode_hash_notify()) == tuple(int(h) for h in OUR_HASHES)
    assert decode_hash_notify(b"\x00\x02\x00") == (2,)
    assert len(decode_hash_notify(bytes(10_000))) == 32
