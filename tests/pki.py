"""Throwaway X.509 PKIs for tests, made at run time with ``cryptography`` (no key material in
the tree): CAs, end-entity certificates with subjectAltNames, CRLs, and swanctl's directory
layout (``x509/``, ``x509ca/``, ``private/``, ``x509crl/``) to drop them into."""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from mobike_vici.ikev2.signature import PrivateKey
from mobike_vici.lab.netns import Lab
from mobike_vici.lab.tunnel import INITIATOR_ID, RESPONDER_ID

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
DAY = datetime.timedelta(days=1)


@functools.cache
def _cached_key(kind: str, slot: int) -> PrivateKey:
    return new_key(kind)


def new_key(kind: str) -> PrivateKey:
    """rsa2048, rsa3072, p256, p384, p521 or ed25519."""
    if kind.startswith("rsa"):
        return rsa.generate_private_key(65537, int(kind[3:]))
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    curve = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}[kind]
    return ec.generate_private_key(curve)


def key(kind: str, slot: int = 0) -> PrivateKey:
    """A key of ``kind``, the same for the same slot within one test session (RSA is slow)."""
    return _cached_key(kind, slot)


def _hash_for(signer: PrivateKey) -> hashes.HashAlgorithm | None:
    return None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def dn(cn: str, o: str = "mobike-vici test") -> x509.Name:
    """C=CH, O=..., CN=... in charon's order (the DER order)."""
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, o),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def dn_str(cn: str, o: str = "mobike-vici test") -> str:
    return f"C=CH, O={o}, CN={cn}"


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


_SERIAL = iter(range(1000, 1 << 30))


def issue(subject: x509.Name, subject_key: PrivateKey, issuer: Issued | None, *,
          ca: bool = False, path_len: int | None = None, dns: tuple[str, ...] = (),
          emails: tuple[str, ...] = (), not_before: datetime.datetime | None = None,
          not_after: datetime.datetime | None = None, key_usage: bool = True,
          ) -> Issued:
    """A certificate for ``subject_key``; self-signed when ``issuer`` is None."""
    signer = issuer.key if issuer is not None else subject_key
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer.cert.subject if issuer is not None else subject)
               .public_key(subject_key.public_key())
               .serial_number(next(_SERIAL))
               .not_valid_before(not_before or NOW - DAY)
               .not_valid_after(not_after or NOW + 365 * DAY)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len if ca else None),
                              critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                   subject_key.public_key()), critical=False))
    if key_usage:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=not ca, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False), critical=True)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.RFC822Name(e) for e in emails]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(signer, _hash_for(signer))  # type: ignore[arg-type]
    return Issued(cert, subject_key)


def crl(issuer: Issued, revoked: tuple[Issued, ...] = ()) -> x509.CertificateRevocationList:
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(issuer.cert.subject)
               .last_update(NOW - DAY)
               .next_update(NOW + 30 * DAY)
               .add_extension(x509.CRLNumber(1), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   issuer.key.public_key()), critical=False))  # type: ignore[arg-type]
    for item in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(item.cert.serial_number)
            .revocation_date(NOW - DAY).build())
    return builder.sign(issuer.key, _hash_for(issuer.key))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Pki:
    """A root, an intermediate below it, and a key kind for end entities."""

    root: Issued
    intermediate: Issued
    kind: str

    def leaf(self, cn: str, *, dns: tuple[str, ...] = (), emails: tuple[str, ...] = (),
             slot: int = 0, **kw: object) -> Issued:
        return issue(dn(cn), key(self.kind, slot), self.intermediate, dns=dns, emails=emails,
                     **kw)  # type: ignore[arg-type]


def make_pki(kind: str, name: str = "Test", slot: int = 0) -> Pki:
    root = issue(dn(f"{name} Root CA"), key(kind, 100 + slot), None, ca=True)
    inter = issue(dn(f"{name} Intermediate CA"), key(kind, 200 + slot), root, ca=True,
                  path_len=0)
    return Pki(root, inter, kind)


def write_layout(base: Path, *, own: Issued | None = None, cas: tuple[Issued, ...] = (),
                 crls: tuple[x509.CertificateRevocationList, ...] = (),
                 own_name: str = "me") -> None:
    """swanctl's directories under ``base``: our cert and key, CA certs, CRLs."""
    for sub in ("x509", "x509ca", "private", "x509crl"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    if own is not None:
        (base / "x509" / f"{own_name}.pem").write_bytes(own.pem)
        path = base / "private" / f"{own_name}.pem"
        path.write_bytes(own.key_pem)
        path.chmod(0o600)
    for i, ca in enumerate(cas):
        (base / "x509ca" / f"ca{i}.pem").write_bytes(ca.pem)
    for i, item in enumerate(crls):
        (base / "x509crl" / f"crl{i}.pem").write_bytes(
            item.public_bytes(serialization.Encoding.PEM))


def with_certificates(lab: Lab, conf_gw: str, conf_mob: str) -> tuple[Path, Path]:
    """Both configs with ``auth = pubkey`` and a P-256 chain each (made now):
    the ids stay, as subjectAltNames of the certificates. Returns the config paths, each
    in its own swanctl directory."""
    pki = make_pki("p256", "Mobility", slot=70)
    out = []
    for name, text, ident in (("gw", conf_gw, RESPONDER_ID), ("mob", conf_mob, INITIATOR_ID)):
        san = {"emails": (ident,)} if "@" in ident else {"dns": (ident,)}
        leaf = pki.leaf(name, slot=71 if name == "gw" else 72, **san)  # type: ignore[arg-type]
        base = lab.workdir / name
        write_layout(base, own=leaf, cas=(pki.root, pki.intermediate))
        path = base / "swanctl.conf"
        path.write_text(text.replace("auth = psk", "auth = pubkey"))
        out.append(path)
    return out[0], out[1]
