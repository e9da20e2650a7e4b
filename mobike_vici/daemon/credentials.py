"""The native daemon's credentials: certificates, keys and CRLs from swanctl's directory layout,
and the refusal, with ``FILE:LINE``, of authentication keys the native core cannot honour.

Beside the config file, as ``swanctl --load-all --file`` reads them: ``x509/``
(our and peers' end-entity certificates), ``x509ca/`` (CA certificates; the
self-signed ones are trust anchors), ``x509crl/``, ``private/``, ``rsa/``,
``ecdsa/``, ``pkcs8/`` (private keys, PEM or DER, unencrypted or with a
``secrets { private-* { file = ..., secret = ... } }`` entry) and ``pubkey/``.
``certs``, ``cacerts`` and ``pubkeys`` name files relative to ``x509/``,
``x509ca/`` and ``pubkey/``. Only ``ConfigError`` escapes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ..config.model import AuthClass, AuthConfig, Config, ConfigError, ConnectionConfig
from ..config.parser import Section, parse_file
from ..core.credentials import AuthPolicy, Credentials, LocalCred, RemoteCred
from ..core.identity import cert_has_identity, is_any_identity, parse_identity
from ..core.trust import local_chain, self_signed
from ..ikev2.signature import HASH_BY_NAME, HashAlg, PrivateKey, PublicKey, key_kind

KEY_DIRS = ("private", "rsa", "ecdsa", "pkcs8")
MAX_FILE = 1 << 20
"""Bound on one credential file (a certificate is a few KiB)."""

# Auth-section keys the native core honours; the rest of swanctl's are refused.
_HONOURED = frozenset({"certs", "cacerts", "pubkeys", "revocation"})
_SEND_CERT = frozenset({"always", "ifasked", "never"})
_REVOCATION = frozenset({"relaxed", "ifuri", "strict"})
_KINDS = frozenset({"pubkey", "rsa", "ecdsa", "ed25519"})


# --- reading files ------------------------------------------------------------------------


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise ConfigError(path, 0, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE:
        raise ConfigError(path, 0, "file too large for a credential")
    return data


def _files(directory: str) -> Iterator[str]:
    if not os.path.isdir(directory):
        return
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            yield path


def load_certs(path: str) -> list[x509.Certificate]:
    data = _read(path)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise ConfigError(path, 0, f"not an X.509 certificate: {exc}") from None


def _load_crl(path: str) -> x509.CertificateRevocationList:
    data = _read(path)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise ConfigError(path, 0, f"not an X.509 CRL: {exc}") from None


def _supported(key: object, path: str) -> PrivateKey:
    if isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in (
            "secp256r1", "secp384r1", "secp521r1"):
        return key
    raise ConfigError(path, 0, f"unsupported key type {type(key).__name__}"
                      " (RSA, ECDSA P-256/384/521 or Ed25519)")


def load_private_key(path: str, password: bytes | None) -> PrivateKey:
    data = _read(path)
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password)
        else:
            key = serialization.load_der_private_key(data, password)
    except TypeError:
        raise ConfigError(path, 0, "encrypted private key and no secrets { private-... }"
                          " entry with its file and secret") from None
    except ValueError as exc:
        raise ConfigError(path, 0, f"cannot load private key: {exc}") from None
    return _supported(key, path)


def load_public_key(path: str) -> PublicKey:
    data = _read(path)
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except ValueError as exc:
        raise ConfigError(path, 0, f"cannot load public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey
                      | ed25519.Ed25519PublicKey):
        raise ConfigError(path, 0, f"unsupported key type {type(key).__name__}")
    return key


def _key_secrets(root: Section, base: str) -> dict[str, bytes]:
    """Absolute key file path -> passphrase, from ``private-*``/``rsa-*``/... secrets."""
    out: dict[str, bytes] = {}
    secrets = root.sections.get("secrets")
    if secrets is None:
        return out
    for sub in secrets.sections.values():
        kind = next((k for k in KEY_DIRS if sub.name.startswith(k)), None)
        if kind is None:
            continue
        if "pkcs12" in sub.name or "token" in sub.name:
            continue
        fv, sv = sub.keys.get("file"), sub.keys.get("secret")
        if fv is None:
            raise ConfigError(sub.file, sub.line, f"secret '{sub.name}' has no 'file'")
        name = fv.value.strip()
        path = name if os.path.isabs(name) else os.path.join(base, kind, name)
        out[os.path.abspath(path)] = (sv.value if sv is not None else "").encode()
    return out


def _public_bytes(key: PrivateKey | PublicKey) -> bytes:
    pub = key.public_key() if isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _refuse_unsupported_secrets(root: Section) -> None:
    secrets = root.sections.get("secrets")
    if secrets is None:
        return
    for sub in secrets.sections.values():
        if sub.name.startswith(("token", "pkcs12")):
            raise ConfigError(sub.file, sub.line, f"secret '{sub.name}': smartcards and PKCS#12"
                              " containers are not supported by the native core")


# --- checks and assembly --------------------------------------------------------------------


def _policy(auth: AuthConfig) -> AuthPolicy:
    """``pubkey``, ``rsa``, ``ecdsa``, ``ed25519``, ``rsa/pss``, each with ``-sha256``..."""
    file, line = auth.where("auth")
    kinds: set[str] = set()
    hashes: set[HashAlg] = set()
    pss = False
    for word in auth.method.lower().split("-"):
        if word in HASH_BY_NAME:
            hashes.add(HASH_BY_NAME[word])
        elif word in ("rsa/pss", "pss"):
            kinds.add("rsa")
            pss = True
        elif word in _KINDS:
            if word != "pubkey":
                kinds.add(word)
        elif word in ("ecp256", "ecp384", "ecp521", "ed25519"):
            kinds.add("ecdsa" if word.startswith("ecp") else word)
        else:
            raise ConfigError(file, line, f"auth: '{auth.method}' is not supported by the"
                              " native core (pubkey, rsa, rsa/pss, ecdsa, ed25519 with an"
                              " optional -sha256/-sha384/-sha512)")
    return AuthPolicy(frozenset(kinds), frozenset(hashes) or None, pss)


def _check_auth(conn: ConnectionConfig, auth: AuthConfig, side: str) -> None:
    file, line = auth.where("auth")
    if auth.auth == AuthClass.EAP:
        raise ConfigError(file, line, f"auth: '{auth.method}': EAP is not supported by the"
                          " native core (psk or pubkey)")
    for key, _ in auth.extra:
        base = key.split(".", 1)[0]
        kf, kl = auth.where(key if "." not in key else base + ".")
        if "." in key:
            leaf = key.split(".", 1)[1]
            if leaf != "file":
                raise ConfigError(kf, kl, f"{base}: smartcard keys ({leaf}) are not supported"
                                  " by the native core")
            continue
        if key not in _HONOURED:
            raise ConfigError(kf, kl, f"{key}: not supported by the native core"
                              f" ({side} authentication)")
        if key == "revocation" and (auth.get(key) or "").strip().lower() not in _REVOCATION:
            raise ConfigError(kf, kl, "revocation: expected strict, ifuri or relaxed")


def check_native(config: Config) -> None:
    """Refuse what the native core cannot honour, with the line that asks for it."""
    for conn in config.connections:
        if len(conn.local) > 1 or len(conn.remote) > 1:
            extra = (conn.local[1:] or conn.remote[1:])[0]
            raise ConfigError(extra.file or conn.file, extra.line or conn.line,
                              f"connection '{conn.name}': more than one authentication round"
                              " is not supported by the native core")
        for auth in conn.local:
            _check_auth(conn, auth, "local")
        for auth in conn.remote:
            _check_auth(conn, auth, "remote")
        for key, value in conn.extra:
            if key == "send_cert" and value.strip().lower() not in _SEND_CERT:
                raise ConfigError(conn.file, conn.line,
                                  f"connection '{conn.name}': send_cert: expected always,"
                                  " ifasked or never")


def _resolve(base: str, sub: str, name: str) -> str:
    return name if os.path.isabs(name) else os.path.join(base, sub, name)


def _named_certs(auth: AuthConfig, key: str, base: str, sub: str) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    names = [n.strip() for n in (auth.get(key) or "").split(",") if n.strip()]
    for k, v in auth.extra:  # cert sections: certN { file = ... }
        if k.endswith(".file") and k.startswith("cacert" if key == "cacerts" else "cert") and (
                key == "cacerts" or not k.startswith("cacert")):
            names.append(v.strip())
    for name in names:
        path = _resolve(base, sub, name)
        if not os.path.isfile(path):
            file, line = auth.where(key)
            raise ConfigError(file, line, f"{key}: no file '{name}' in {sub}/")
        out.extend(load_certs(path))
    return out


def _local_cred(conn: ConnectionConfig, base: str, end_entity: list[x509.Certificate],
                cas: list[x509.Certificate], by_public: dict[bytes, PrivateKey],
                ) -> LocalCred | None:
    """Our key (and certificate and intermediates) for ``conn``; None without pubkey auth."""
    implicit = bool(conn.local) and not conn.local[0].file
    if not conn.local or conn.local[0].auth != AuthClass.PUBKEY:
        return None
    auth = conn.local[0]
    policy = _policy(auth)
    named = _named_certs(auth, "certs", base, "x509")
    file, line = auth.where("auth")
    raw = [n.strip() for n in (auth.get("pubkeys") or "").split(",") if n.strip()]
    if raw and not named:
        pub = load_public_key(_resolve(base, "pubkey", raw[0]))
        key = by_public.get(_public_bytes(pub))
        if key is None:
            raise ConfigError(*auth.where("pubkeys"), "pubkeys: no private key for"
                              " this public key in private/, rsa/, ecdsa/ or pkcs8/")
        if is_any_identity(auth.id):
            raise ConfigError(*auth.where("pubkeys"), "pubkeys: a raw public key needs"
                              " local.id (there is no certificate to take it from)")
        return LocalCred(key, None, (), policy)
    candidates = named or end_entity
    if not is_any_identity(auth.id) and not named:
        assert auth.id is not None
        try:
            wanted = parse_identity(auth.id)
        except ValueError as exc:
            raise ConfigError(*auth.where("id"), f"id: {exc}") from None
        candidates = [c for c in candidates if cert_has_identity(c, *wanted)]
    usable = [(c, by_public.get(_public_bytes(c.public_key())))  # type: ignore[arg-type]
              for c in candidates]
    found = [(c, k) for c, k in usable if k is not None]
    if not found and implicit:
        return None
    if not found:
        what = "the certificate of 'certs'" if named else "a certificate in x509/"
        raise ConfigError(file, line, f"auth: pubkey needs {what} with its private"
                          " key in private/, rsa/, ecdsa/ or pkcs8/"
                          + ("" if named or is_any_identity(auth.id)
                             else f" whose subject or subjectAltName is '{auth.id}'"))
    cert, key = found[0]
    assert key is not None
    if named and not is_any_identity(auth.id):
        try:
            wanted = parse_identity(auth.id or "")
        except ValueError as exc:
            raise ConfigError(*auth.where("id"), f"id: {exc}") from None
        if not cert_has_identity(cert, *wanted):
            raise ConfigError(*auth.where("id"), f"id: '{auth.id}' is neither the"
                              " subject nor a subjectAltName of certificate"
                              f" '{cert.subject.rfc4514_string()}'")
    if policy.kinds and key_kind(key) not in policy.kinds:
        raise ConfigError(file, line, f"auth: '{auth.method}' but the key of"
                          f" certificate '{cert.subject.rfc4514_string()}'"
                          f" is {key_kind(key)}")
    chain = local_chain(cert, cas + end_entity)
    return LocalCred(key, cert, tuple(chain), policy)


def load_credentials(config: Config, root: Section, base: str) -> Credentials:
    """Read the swanctl directory ``base`` for the connections of ``config``."""
    _refuse_unsupported_secrets(root)
    passwords = _key_secrets(root, base)
    end_entity = [c for p in _files(os.path.join(base, "x509")) for c in load_certs(p)]
    cas = [c for p in _files(os.path.join(base, "x509ca")) for c in load_certs(p)]
    crls = [_load_crl(p) for p in _files(os.path.join(base, "x509crl"))]
    keys: list[PrivateKey] = []
    for sub in KEY_DIRS:
        for path in _files(os.path.join(base, sub)):
            keys.append(load_private_key(path, passwords.get(os.path.abspath(path))))
    by_public = {_public_bytes(k): k for k in keys}

    local: dict[str, LocalCred] = {}
    remote: dict[str, RemoteCred] = {}
    send_cert: dict[str, str] = {}
    send_certreq: dict[str, bool] = {}
    extra_cas: list[x509.Certificate] = []
    for conn in config.connections:
        for name, value in conn.extra:
            if name == "send_cert":
                send_cert[conn.name] = value.strip().lower()
            elif name == "send_certreq":
                send_certreq[conn.name] = value.strip().lower() not in ("no", "false", "0")
        # An unwritten local/remote section means pubkey to charon; here it gets
        # credentials only when a usable certificate is there (else the PSK code runs,
        # as before certificates were supported).
        cred = _local_cred(conn, base, end_entity, cas, by_public)
        if cred is not None:
            local[conn.name] = cred
        if (conn.remote and conn.remote[0].auth == AuthClass.PUBKEY
                and (conn.remote[0].file or conn.name in local)):
            auth = conn.remote[0]
            cacerts = _named_certs(auth, "cacerts", base, "x509ca")
            extra_cas.extend(cacerts)
            pinned = _named_certs(auth, "certs", base, "x509")
            pubkeys = tuple(load_public_key(_resolve(base, "pubkey", n.strip()))
                            for n in (auth.get("pubkeys") or "").split(",") if n.strip())
            strict = (auth.get("revocation") or "").strip().lower() == "strict"
            remote[conn.name] = RemoteCred(tuple(cacerts), tuple(pinned), pubkeys,
                                           _policy(auth), strict)
    all_cas = cas + [c for c in extra_cas if c not in cas]
    anchors = tuple(c for c in all_cas if self_signed(c))
    for conn in config.connections:
        peer = remote.get(conn.name)
        if peer is not None and not (anchors or peer.certs or peer.pubkeys):
            raise ConfigError(*conn.remote[0].where("auth"), "auth: pubkey but nothing to"
                              " trust: no self-signed CA certificate in x509ca/, no"
                              " remote.certs, no remote.pubkeys")
    intermediates = tuple(c for c in all_cas if c not in anchors)
    return Credentials(anchors, intermediates, tuple(end_entity), tuple(crls), local, remote,
                       send_cert, send_certreq)


def swanctl_dir(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def with_credentials(config: Config, root: Section, file: str) -> Config:
    """``config`` checked for the native core, with its credentials read beside ``file``."""
    check_native(config)
    creds = load_credentials(config, root, swanctl_dir(file))
    return dataclasses.replace(config, credentials=creds)


def load_native(path: str) -> Config:
    """``load_config`` for the native daemon: what it cannot honour is refused
    (``FILE:LINE``), credentials are read from the swanctl directory beside ``path``."""
    from ..config.loader import build_config

    root = parse_file(path)
    return with_credentials(build_config(root), root, path)
