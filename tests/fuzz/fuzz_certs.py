"""Fuzz target: the peer's CERT and AUTH payloads in certificate authentication.

A responder's config (``auth = pubkey`` both ways, a P-256 root -> intermediate ->
leaf PKI made at start-up, a CRL of the intermediate) and its engine's context;
each input is one IKE_AUTH request's worth of payloads handed to ``verify_peer``,
which parses the CERT payloads, builds and checks the chain (``verify_chain``:
validity, issuers, CA flags, key usage, path length, CRLs), matches the identity
and verifies AUTH over fixed signed octets. The first byte picks the layout:

- bit 0 set: byte 1 names the first payload, the rest is a payload chain as it
  comes out of an SK payload (``decode_payloads``: the CERT, CERTREQ, IDi and
  AUTH decoders); a missing IDi or AUTH is taken from the valid seed.
- bit 0 clear: records ``kind, length (2 bytes), body[length]``, ``kind % 5``:
  0 a CERT (X.509) with ``body`` as DER, 1 a CERT whose encoding is ``body[0]``,
  2 AUTH (method ``body[0]``), 3 IDi (type ``body[0]``), 4 CERTREQ.

The seeds are the valid request (leaf, intermediate, AUTH that verifies) and
variants (no intermediate, root sent too, the RFC 7427 and the classic method),
so mutations start from a chain that passes. Only DecodeError (the payload
decoder) and PeerAuthFailed (the contract of ``verify_peer``) may escape.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import atheris

from .harness import main

with atheris.instrument_imports(include=["mobike_vici"]):
    from mobike_vici.config import Config
    from mobike_vici.core.engine import Engine
    from mobike_vici.core.exchanges.pubkey import PeerAuthFailed, verify_peer
    from mobike_vici.daemon.credentials import load_native
    from mobike_vici.ikev2.buffer import DecodeError
    from mobike_vici.ikev2.constants import IdType
    from mobike_vici.ikev2.payloads import (
        Auth,
        Cert,
        CertReq,
        IDi,
        Payload,
        decode_payloads,
        encode_payloads,
        first_payload_type,
    )
    from mobike_vici.ikev2.signature import OUR_HASHES, build_auth
    from tests.pki import NOW, Issued, Pki, crl, key, make_pki, write_layout

    from ..unit.core.harness import BOB, seeded

X509 = 4
"""CERT encoding: X.509 Certificate - Signature (RFC 7296 §3.6)."""
OCTETS = bytes(range(64))
"""What the initiator's AUTH signs (a real exchange's octets are no harder to fuzz)."""
MAX_RECORDS = 10


class World:
    """The responder's config and context, the PKI, and the valid request's payloads."""

    def __init__(self) -> None:
        self.pki: Pki = make_pki("p256", "Fuzz", slot=60)
        self.alice: Issued = self.pki.leaf("alice", slot=61)
        bob = self.pki.leaf("bob", slot=62)
        base = Path(tempfile.mkdtemp(prefix="fuzz-certs-"))
        write_layout(base, own=bob, cas=(self.pki.root, self.pki.intermediate),
                     crls=(crl(self.pki.intermediate),))
        (base / "swanctl.conf").write_text(_CONF)
        self.config: Config = load_native(str(base / "swanctl.conf"))
        self.engine = Engine(self.config, seeded(2), lambda r: BOB)
        self.engine.set_wall_clock(NOW.timestamp())
        self.ctx = self.engine._ctx
        self.conn = self.config.connection("gw")
        self.idi = IDi(IdType.ID_DER_ASN1_DN, self.alice.cert.subject.public_bytes())
        method, data = build_auth(key("p256", 61), OCTETS, OUR_HASHES)
        self.auth = Auth(method, data)
        method, data = build_auth(key("p256", 61), OCTETS, None)
        self.classic = Auth(method, data)


_CONF = """
connections {
  gw {
    local_addrs = 192.0.2.2
    proposals = aes128-sha256-x25519
    local { auth = pubkey
            certs = me.pem }
    remote { auth = pubkey }
    children { net { local_ts = 10.2.0.0/24
                     remote_ts = 10.1.0.0/24
                     esp_proposals = aes128-sha256 } }
  }
}
"""

_world: list[World] = []


def world() -> World:
    if not _world:
        _world.append(World())
    return _world[0]


def _records(data: bytes) -> list[Payload]:
    out: list[Payload] = []
    pos = 0
    for _ in range(MAX_RECORDS):
        if pos + 3 > len(data):
            break
        kind, length = data[pos] % 5, int.from_bytes(data[pos + 1:pos + 3], "big")
        body = data[pos + 3:pos + 3 + length]
        pos += 3 + length
        head, tail = (body[0], body[1:]) if body else (0, b"")
        if kind == 0:
            out.append(Cert(X509, body))
        elif kind == 1:
            out.append(Cert(head, tail))
        elif kind == 2:
            out.append(Auth(head, tail))
        elif kind == 3:
            out.append(IDi(head, tail))
        else:
            out.append(CertReq(head, tail))
    return out


def target(data: bytes) -> None:
    if len(data) < 2:
        return
    w = world()
    if data[0] & 1:
        payloads = list(decode_payloads(data[1], data[2:], allow_encrypted=False))
    else:
        payloads = _records(data[1:])
    idi = next((p for p in payloads if isinstance(p, IDi)), w.idi)
    auth = next((p for p in payloads if isinstance(p, Auth)), w.auth)
    proven = verify_peer(w.ctx, w.conn, idi.id_type, idi.data, auth, payloads, OCTETS, 0.0)
    assert isinstance(proven, str)


ALLOWED: tuple[type[BaseException], ...] = (DecodeError, PeerAuthFailed)


def _record(kind: int, body: bytes) -> bytes:
    return bytes((kind,)) + len(body).to_bytes(2, "big") + body


def seeds() -> list[bytes]:
    w = world()
    leaf, inter, root = w.alice.der, w.pki.intermediate.der, w.pki.root.der
    idi = bytes((w.idi.id_type,)) + w.idi.data
    out: list[bytes] = []
    for auth in (w.auth, w.classic):
        body = bytes((auth.method,)) + auth.data
        out.append(b"\x00" + _record(3, idi) + _record(0, leaf) + _record(0, inter)
                   + _record(2, body))
        out.append(b"\x00" + _record(0, leaf) + _record(2, body))
    out.append(b"\x00" + _record(0, leaf) + _record(0, inter) + _record(0, root))
    out.append(b"\x00" + _record(0, inter) + _record(0, leaf))
    chain: list[Payload] = [w.idi, Cert(X509, leaf), Cert(X509, inter),
                            CertReq(X509, bytes(20)), w.auth]
    out.append(b"\x01" + bytes((first_payload_type(chain),)) + encode_payloads(chain))
    return out


if __name__ == "__main__":
    main("certs", target, ALLOWED, seeds)
