"""Throwaway X.509 chains for lab tests, in swanctl's directory layout.

One root CA signs one intermediate CA, which signs an end-entity certificate per
identity. With RSA-4096 keys an IKE_AUTH that carries the end entity and the
intermediate (plus a 512-byte signature) is well over 1500 bytes: the message
that IP-fragments on a plain Ethernet path, which is what RFC 7383 is for.
Generated at test time with ``cryptography``; nothing here is ever committed or
reused, and the keys live only in the lab's working directory.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RSA_BITS = 4096


@dataclass(frozen=True)
class Credentials:
    """One identity's swanctl directory: ``x509ca/`` (root and intermediate),
    ``x509/<name>.pem`` (its certificate), ``private/<name>.pem`` (its key)."""

    identity: str
    directory: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mobike-vici lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _cert(subject: str, key: rsa.RSAPrivateKey, issuer: str, issuer_key: rsa.RSAPrivateKey,
          *, ca: bool, san: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False), critical=True)
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]),
                                        critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                   ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_chain(base: Path, identities: list[str], bits: int = RSA_BITS) -> dict[str, Credentials]:
    """Root -> intermediate -> one end entity per identity (a DNS name, also its SAN), each
    identity's credentials in its own swanctl directory under ``base``. Both CAs go to every
    ``x509ca/``, so each side trusts the root and can build its own chain to send."""
    root_key, inter_key = _key(bits), _key(bits)
    root = _cert("lab root CA", root_key, "lab root CA", root_key, ca=True)
    inter = _cert("lab intermediate CA", inter_key, "lab root CA", root_key, ca=True)
    out: dict[str, Credentials] = {}
    for identity in identities:
        directory = base / identity
        for sub in ("x509ca", "x509", "private"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        (directory / "x509ca" / "root.pem").write_bytes(_pem(root))
        (directory / "x509ca" / "intermediate.pem").write_bytes(_pem(inter))
        key = _key(bits)
        cert = _cert(identity, key, "lab intermediate CA", inter_key, ca=False, san=identity)
        cert_path = directory / "x509" / f"{identity}.pem"
        key_path = directory / "private" / f"{identity}.pem"
        cert_path.write_bytes(_pem(cert))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        out[identity] = Credentials(identity, directory, cert_path, key_path)
    return out
