"""The native core's credentials for IKE_AUTH with public keys: keys, certificates, trust.

Pure data, filled at start-up from swanctl's directory layout by
``daemon/credentials.py`` and hung on ``Config.credentials``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509

from ..config.model import Config
from ..ikev2.signature import HashAlg, PrivateKey, PublicKey
from .trust import TrustStore


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """What ``auth = ...`` allows: key kinds (empty: any) and hashes (None: any)."""

    kinds: frozenset[str] = frozenset()
    hashes: frozenset[HashAlg] | None = None
    pss: bool = False


@dataclass(frozen=True, slots=True)
class LocalCred:
    """How we prove who we are on one connection."""

    key: PrivateKey = field(repr=False)
    cert: x509.Certificate | None
    """None with ``local.pubkeys`` (a raw key, no certificate)."""
    chain: tuple[x509.Certificate, ...] = ()
    """Intermediates sent after ``cert`` (up to, not including, the root)."""
    policy: AuthPolicy = AuthPolicy()


@dataclass(frozen=True, slots=True)
class RemoteCred:
    """What a peer must show on one connection."""

    cacerts: tuple[x509.Certificate, ...] = ()
    """``remote.cacerts``: one of these must be in the peer's chain."""
    certs: tuple[x509.Certificate, ...] = ()
    """``remote.certs``: the peer's certificate must be one of these."""
    pubkeys: tuple[PublicKey, ...] = ()
    """``remote.pubkeys``: raw keys trusted as they are."""
    policy: AuthPolicy = AuthPolicy()
    strict: bool = False
    """``revocation = strict``: every certificate needs a CRL from its issuer."""


@dataclass(frozen=True, slots=True)
class Credentials:
    anchors: tuple[x509.Certificate, ...] = ()
    intermediates: tuple[x509.Certificate, ...] = ()
    end_entity: tuple[x509.Certificate, ...] = ()
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    local: dict[str, LocalCred] = field(default_factory=dict)
    """By connection name, for connections with ``local.auth = pubkey``."""
    remote: dict[str, RemoteCred] = field(default_factory=dict)
    send_cert: dict[str, str] = field(default_factory=dict)
    """``send_cert`` by connection: always, ifasked (default) or never."""
    send_certreq: dict[str, bool] = field(default_factory=dict)

    def store(self) -> TrustStore:
        return TrustStore(self.anchors, self.intermediates + self.end_entity, self.crls)


EMPTY = Credentials()


def credentials_of(config: Config) -> Credentials:
    creds = config.credentials
    return creds if isinstance(creds, Credentials) else EMPTY
