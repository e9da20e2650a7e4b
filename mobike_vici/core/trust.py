"""X.509 trust: a peer's certificate chain up to a configured root CA, checked at ``now``.

As charon's credential manager: only a locally loaded, self-signed CA is a trust
anchor; intermediates may come from the peer's CERT payloads or from our own
store. Every certificate of the chain must be valid at ``now``, each issuer a CA
(basicConstraints, keyCertSign when keyUsage is present, pathLenConstraint kept)
whose key verifies the signature, and no certificate may be listed as revoked by
a CRL its issuer signed. A ``remote.cacerts`` constraint wants one of its CAs in
the chain. Pure: no clock, no files.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature

MAX_CHAIN = 7
"""Bound on the path length we build (charon's MAX_TRUST_PATH_LEN)."""
MAX_PEER_CERTS = 8
"""Bound on CERT payloads we parse from one message."""


class TrustError(Exception):
    """The chain is not acceptable; ``reason`` is a stable snake_case word."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class TrustStore:
    """What we trust and know: anchors (self-signed CAs), other CA certs, CRLs."""

    anchors: tuple[x509.Certificate, ...] = ()
    intermediates: tuple[x509.Certificate, ...] = ()
    crls: tuple[x509.CertificateRevocationList, ...] = ()


def self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _is_ca(cert: x509.Certificate) -> tuple[bool, int | None]:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False, None
    return bc.ca, bc.path_length


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _check_validity(cert: x509.Certificate, now: datetime.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise TrustError("not_yet_valid", f"certificate '{_subject(cert)}' is not valid yet")
    if now > cert.not_valid_after_utc:
        raise TrustError("expired", f"certificate '{_subject(cert)}' expired "
                         f"{cert.not_valid_after_utc.isoformat()}")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _revoked(cert: x509.Certificate, issuer: x509.Certificate,
             crls: Sequence[x509.CertificateRevocationList],
             now: datetime.datetime) -> bool | None:
    """True: listed by a CRL the issuer signed; False: such a CRL is current and does
    not list it; None: no current CRL of the issuer."""
    answer: bool | None = None
    for crl in crls:
        if crl.issuer != issuer.subject:
            continue
        try:
            if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                continue
        except (ValueError, TypeError):
            continue
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return True  # a revocation stands even in a stale CRL
        update = crl.next_update_utc
        if update is None or update >= now:
            answer = False
    return answer


def _find_issuer(cert: x509.Certificate, pool: Sequence[x509.Certificate]
                 ) -> x509.Certificate | None:
    for candidate in pool:
        if candidate is not cert and _issued_by(cert, candidate):
            return candidate
    return None


def verify_chain(leaf: x509.Certificate, received: Sequence[x509.Certificate],
                 store: TrustStore, now: datetime.datetime,
                 required_cas: Sequence[x509.Certificate] = (), *, strict: bool = False,
                 ) -> list[x509.Certificate]:
    """The chain from ``leaf`` to a trust anchor (leaf first, anchor last).

    ``received``: the peer's other CERT payloads (untrusted intermediates).
    ``required_cas``: a ``remote.cacerts`` constraint (one of them must be in the chain).
    ``strict``: every certificate below the anchor needs a current CRL of its issuer.
    Raises TrustError with reason expired, not_yet_valid, unknown_ca, not_a_ca,
    key_usage, path_length, revoked, revocation_unknown or ca_constraint.
    """
    leaf_usage = _key_usage(leaf)
    if leaf_usage is not None and not (leaf_usage.digital_signature
                                       or leaf_usage.content_commitment):
        raise TrustError("key_usage", f"'{_subject(leaf)}' may not sign (keyUsage)")
    chain = [leaf]
    current = leaf
    anchors = list(store.anchors)
    others = list(store.intermediates) + list(received[:MAX_PEER_CERTS])
    while True:
        _check_validity(current, now)
        if any(current == a for a in anchors) and self_signed(current):
            break
        if len(chain) > MAX_CHAIN:
            raise TrustError("unknown_ca", "certificate path too long")
        issuer = _find_issuer(current, anchors) or _find_issuer(current, others)
        if issuer is None:
            why = ("self-signed certificate not trusted" if self_signed(current)
                   else f"no trusted issuer for '{_subject(current)}'")
            raise TrustError("unknown_ca", why)
        ca, path_len = _is_ca(issuer)
        if not ca:
            raise TrustError("not_a_ca", f"issuer '{_subject(issuer)}' is not a CA")
        usage = _key_usage(issuer)
        if usage is not None and not usage.key_cert_sign:
            raise TrustError("key_usage", f"issuer '{_subject(issuer)}' may not sign "
                             "certificates (keyUsage)")
        # Intermediates between this issuer and the leaf (the leaf does not count).
        if path_len is not None and len(chain) - 1 > path_len:
            raise TrustError("path_length", f"'{_subject(issuer)}' allows {path_len} "
                             "intermediate(s) below it")
        revoked = _revoked(current, issuer, store.crls, now)
        if revoked:
            raise TrustError("revoked", f"certificate '{_subject(current)}' is revoked")
        if revoked is None and strict:
            raise TrustError("revocation_unknown", f"no current CRL for '{_subject(current)}'"
                             " (revocation = strict)")
        chain.append(issuer)
        current = issuer
    if required_cas and not any(c == r for c in chain for r in required_cas):
        raise TrustError("ca_constraint", "the chain does not pass a CA of remote.cacerts")
    return chain


def local_chain(leaf: x509.Certificate, pool: Sequence[x509.Certificate]
                ) -> list[x509.Certificate]:
    """Our intermediates to send after our certificate: issuers found in ``pool``,
    up to (not including) a self-signed root."""
    out: list[x509.Certificate] = []
    current = leaf
    while len(out) < MAX_CHAIN:
        issuer = _find_issuer(current, pool)
        if issuer is None or self_signed(issuer) or issuer in out:
            break
        out.append(issuer)
        current = issuer
    return out
