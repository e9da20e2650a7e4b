"""Throwaway ECDSA P-256 credentials for the benchmarks, made at run time (no key material in
the tree): one root CA, end-entity certificates with an email subjectAltName, written in
swanctl's directory layout (``x509/``, ``x509ca/``, ``private/``)."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_NOW = datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mobike-vici bench"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          signer: ec.EllipticCurvePrivateKey, *, ca: bool, email: str | None,
          serial: int) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(serial)
               .not_valid_before(_NOW - datetime.timedelta(days=1))
               .not_valid_after(_NOW + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if email is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    return builder.sign(signer, hashes.SHA256())


class BenchPki:
    """A root CA; ``write(dir, email)`` drops a fresh leaf for ``email`` and the CA there."""

    def __init__(self) -> None:
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _cert(_name("Bench Root CA"), self.ca_key, _name("Bench Root CA"),
                        self.ca_key, ca=True, email=None, serial=1)
        self._serial = 2

    def write(self, base: Path, email: str) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = _cert(_name(email), key, self.ca.subject, self.ca_key, ca=False, email=email,
                     serial=self._serial)
        self._serial += 1
        for sub in ("x509", "x509ca", "private"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        (base / "x509ca" / "ca.pem").write_bytes(self.ca.public_bytes(pem))
        (base / "x509" / "me.pem").write_bytes(leaf.public_bytes(pem))
        private = base / "private" / "me.pem"
        private.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        private.chmod(0o600)
