"""IKE_AUTH with public keys: our CERT/CERTREQ/AUTH payloads, and the peer's checked.

Our identity defaults to the certificate's subject DN (charon's default). The
peer's AUTH is verified with the key of its end-entity certificate (the first
CERT payload), after the identity it claims is found in that certificate and
the certificate chains up to a trusted CA (``core/trust.py``). Every way this
fails raises :class:`PeerAuthFailed` with a stable reason for the ``auth_failed``
event; the wire only ever says AUTHENTICATION_FAILED.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from ...config.model import AuthClass, ConnectionConfig
from ...ikev2.constants import IdType, NotifyType
from ...ikev2.payloads import Auth, Cert, CertReq, Notify, Payload, find_notify, find_payload
from ...ikev2.signature import (
    OUR_HASHES,
    HashAlg,
    SignatureError,
    build_auth,
    decode_hash_notify,
    encode_hash_notify,
    key_kind,
    verify_auth,
)
from ..context import Context
from ..credentials import LocalCred, RemoteCred, credentials_of
from ..identity import cert_has_identity, identity_to_str, key_id
from ..trust import MAX_PEER_CERTS, TrustError, verify_chain

X509_SIGNATURE = 4
"""CERT/CERTREQ encoding: X.509 Certificate - Signature (RFC 7296 §3.6)."""
MAX_CERTREQ_CAS = 32
"""Bound on CA hashes we look at in the peer's CERTREQs."""


class PeerAuthFailed(Exception):
    """The peer's public-key authentication failed; ``reason`` names why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def uses_pubkey(ctx: Context, conn: ConnectionConfig) -> bool:
    return local_pubkey(ctx, conn) is not None or remote_pubkey(ctx, conn) is not None


def local_pubkey(ctx: Context, conn: ConnectionConfig) -> LocalCred | None:
    if not conn.local or conn.local[0].auth != AuthClass.PUBKEY:
        return None
    return credentials_of(ctx.config).local.get(conn.name)


def remote_pubkey(ctx: Context, conn: ConnectionConfig) -> RemoteCred | None:
    if not conn.remote or conn.remote[0].auth != AuthClass.PUBKEY:
        return None
    return credentials_of(ctx.config).remote.get(conn.name)


def hash_notify(ctx: Context, conn: ConnectionConfig) -> list[Payload]:
    """SIGNATURE_HASH_ALGORITHMS for IKE_SA_INIT (RFC 7427 §4) when signatures may be used."""
    if not uses_pubkey(ctx, conn):
        return []
    return [Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, encode_hash_notify(OUR_HASHES))]


def certreq(ctx: Context, conn: ConnectionConfig) -> list[Payload]:
    """A CERTREQ naming our trust anchors, when we authenticate the peer by certificate."""
    creds = credentials_of(ctx.config)
    if remote_pubkey(ctx, conn) is None or not creds.send_certreq.get(conn.name, True):
        return []
    cas = creds.anchors + creds.intermediates
    if not cas:
        return []
    return [CertReq(X509_SIGNATURE, b"".join(key_id(c) for c in cas))]


def our_id(cred: LocalCred, configured: tuple[int, bytes] | None) -> tuple[int, bytes]:
    """The identity we send: the configured one, the certificate's exact subject when the
    configured DN names it, or the subject when nothing is configured."""
    if cred.cert is None:
        if configured is None:
            raise PeerAuthFailed("no_identity", "pubkeys without a certificate need local.id")
        return configured
    subject = (int(IdType.ID_DER_ASN1_DN), cred.cert.subject.public_bytes())
    if configured is None:
        return subject
    if configured[0] == IdType.ID_DER_ASN1_DN and cert_has_identity(cred.cert, *configured):
        return subject
    return configured


def cert_payloads(ctx: Context, sa_peer_certreq: bool, conn: ConnectionConfig,
                  cred: LocalCred) -> list[Payload]:
    """Our certificate and intermediates, as ``send_cert`` says (default: ifasked)."""
    if cred.cert is None:
        return []
    mode = credentials_of(ctx.config).send_cert.get(conn.name, "ifasked")
    if mode == "never" or (mode == "ifasked" and not sa_peer_certreq):
        return []
    return [Cert(X509_SIGNATURE, c.public_bytes(Encoding.DER))
            for c in (cred.cert, *cred.chain)]


def sign(cred: LocalCred, octets: bytes, peer_hashes: Sequence[int] | None) -> Auth:
    try:
        method, data = build_auth(cred.key, octets, peer_hashes, pss=cred.policy.pss,
                                  allowed=cred.policy.hashes)
    except SignatureError as exc:
        raise PeerAuthFailed("no_signature_scheme", str(exc)) from None
    return Auth(method, data)


def _wall(ctx: Context, now: float) -> datetime.datetime:
    if ctx.wall_offset is None:
        raise PeerAuthFailed("no_clock", "certificate validity needs the wall clock")
    return datetime.datetime.fromtimestamp(now + ctx.wall_offset, datetime.UTC)


def _peer_certs(payloads: Sequence[Payload]) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    for p in payloads:
        if not isinstance(p, Cert):
            continue
        if len(out) >= MAX_PEER_CERTS:
            break
        if p.encoding != X509_SIGNATURE:
            continue  # hash-and-URL and the like: we fetch nothing
        try:
            cert = x509.load_der_x509_certificate(p.data)
            # cryptography parses these lazily: a part that does not parse fails here,
            # not as a ValueError in the middle of the chain check.
            cert.public_key()
            _ = (cert.subject, cert.issuer, cert.extensions, cert.not_valid_before_utc,
                 cert.not_valid_after_utc)
        except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion,
                x509.DuplicateExtension) as exc:
            raise PeerAuthFailed("malformed_certificate", str(exc)[:200]) from None
        out.append(cert)
    return out


def verify_peer(ctx: Context, conn: ConnectionConfig, id_type: int, id_data: bytes,
                auth: Auth, payloads: Sequence[Payload], octets: bytes, now: float) -> str:
    """Check the peer's identity, certificate chain and AUTH; returns how it was proven
    (the end-entity subject). Raises PeerAuthFailed, nothing else."""
    cred = remote_pubkey(ctx, conn)
    if cred is None:
        raise PeerAuthFailed("no_credentials", "no public-key credentials for the peer")
    certs = _peer_certs(payloads)
    allowed: set[HashAlg] | None = set(cred.policy.hashes) if cred.policy.hashes else None
    if not certs and cred.pubkeys:
        for raw in cred.pubkeys:
            try:
                verify_auth(raw, auth.method, auth.data, octets, allowed)
            except SignatureError:
                continue
            return f"public key of {identity_to_str(id_type, id_data)}"
        raise PeerAuthFailed("bad_signature", "AUTH does not verify with any of remote.pubkeys")
    if not certs:
        # A pinned certificate may stand in for one the peer did not send.
        certs = [c for c in cred.certs if cert_has_identity(c, id_type, id_data)][:1]
        if not certs:
            raise PeerAuthFailed("no_certificate", "the peer sent no certificate")
    leaf, rest = certs[0], certs[1:]
    if cred.certs and leaf not in cred.certs:
        raise PeerAuthFailed("certificate_mismatch", "not the certificate of remote.certs")
    if not cert_has_identity(leaf, id_type, id_data):
        raise PeerAuthFailed("id_mismatch", f"identity '{identity_to_str(id_type, id_data)}'"
                             f" is not in certificate '{leaf.subject.rfc4514_string()}'")
    pinned_root = leaf in cred.certs and leaf.issuer == leaf.subject
    if not pinned_root:
        creds = credentials_of(ctx.config)
        try:
            verify_chain(leaf, rest, creds.store(), _wall(ctx, now), cred.cacerts,
                         strict=cred.strict)
        except TrustError as exc:
            raise PeerAuthFailed(exc.reason, exc.detail) from None
    key = leaf.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey
                      | ed25519.Ed25519PublicKey):
        raise PeerAuthFailed("constraint", f"unsupported key type {type(key).__name__}")
    if cred.policy.kinds and key_kind(key) not in cred.policy.kinds:
        raise PeerAuthFailed("constraint", f"the peer's key is {key_kind(key)}, the config"
                             f" wants {', '.join(sorted(cred.policy.kinds))}")
    try:
        verify_auth(key, auth.method, auth.data, octets, allowed)
    except SignatureError as exc:
        raise PeerAuthFailed("bad_signature", str(exc)) from None
    return leaf.subject.rfc4514_string()


def peer_hashes(payloads: Sequence[Payload]) -> tuple[int, ...] | None:
    found = find_notify(payloads, NotifyType.SIGNATURE_HASH_ALGORITHMS)
    return decode_hash_notify(found.data) if found is not None else None


def peer_sent_certreq(payloads: Sequence[Payload]) -> bool:
    return find_payload(payloads, CertReq) is not None
