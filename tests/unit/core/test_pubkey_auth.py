"""IKE_AUTH with certificates between two native engines: RFC 7427 and classic methods,
ids from the DN and subjectAltNames, and every trust failure refused and named."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from mobike_vici.config import Config
from mobike_vici.core.engine import Engine
from mobike_vici.core.events import AuthenticationFailed, IkeSaEstablished
from mobike_vici.core.exchanges.pubkey import PeerAuthFailed, _peer_certs
from mobike_vici.core.identity import cert_has_identity
from mobike_vici.daemon.credentials import load_native
from mobike_vici.ikev2.payloads import Cert
from tests.pki import DAY, NOW, Issued, Pki, crl, dn, dn_str, key, make_pki, write_layout

from .harness import ALICE, BOB, Net, of_type, seeded

WALL = NOW.timestamp()


def _conf(local_addr: str, remote_addr: str | None, local: str, remote: str,
          name: str) -> str:
    peer = f"remote_addrs = {remote_addr}" if remote_addr else ""
    start = "start_action = start" if remote_addr else ""
    return f"""
connections {{
  {name} {{
    local_addrs = {local_addr}
    {peer}
    proposals = aes128-sha256-x25519
    local {{ {local} }}
    remote {{ {remote} }}
    children {{ net {{ local_ts = 10.{1 if remote_addr else 2}.0.0/24
                     remote_ts = 10.{2 if remote_addr else 1}.0.0/24
                     esp_proposals = aes128-sha256
                     {start} }} }}
  }}
}}
"""


def _load(base: Path, text: str) -> Config:
    base.mkdir(parents=True, exist_ok=True)
    (base / "swanctl.conf").write_text(text)
    return load_native(str(base / "swanctl.conf"))


def pair(tmp: Path, *, alice: Issued, bob: Issued, alice_cas: tuple[Issued, ...],
         bob_cas: tuple[Issued, ...], alice_local: str = "auth = pubkey",
         alice_remote: str = "auth = pubkey", bob_local: str = "auth = pubkey",
         bob_remote: str = "auth = pubkey", bob_crls: tuple[object, ...] = (),
         alice_extra: str = "", bob_extra: str = "", wall: float = WALL) -> Net:
    write_layout(tmp / "a", own=alice, cas=alice_cas)
    write_layout(tmp / "b", own=bob, cas=bob_cas, crls=bob_crls)  # type: ignore[arg-type]
    ca = _load(tmp / "a", _conf(str(ALICE), str(BOB), alice_local + "\n" + alice_extra,
                                alice_remote, "home"))
    cb = _load(tmp / "b", _conf(str(BOB), None, bob_local + "\n" + bob_extra, bob_remote, "gw"))
    a = Engine(ca, seeded(1), lambda r: ALICE)
    b = Engine(cb, seeded(2), lambda r: BOB)
    a.set_wall_clock(wall)
    b.set_wall_clock(wall)
    net = Net(a, b)
    a.initiate("home", "net", 0.0)
    net.pump()
    return net


@pytest.fixture(scope="module")
def ec() -> Pki:
    return make_pki("p256")


def _ok(net: Net) -> tuple[IkeSaEstablished, IkeSaEstablished]:
    (ea,) = of_type(net.events_a, IkeSaEstablished)
    (eb,) = of_type(net.events_b, IkeSaEstablished)
    return ea, eb


def test_chain_with_dn_ids_both_ways(tmp_path: Path, ec: Pki) -> None:
    alice = ec.leaf("alice", slot=1)
    bob = ec.leaf("bob", slot=2)
    net = pair(tmp_path, alice=alice, bob=bob, alice_cas=(ec.root, ec.intermediate),
               bob_cas=(ec.root, ec.intermediate))
    ea, eb = _ok(net)
    assert ea.local_id == dn_str("alice") and ea.remote_id == dn_str("bob")
    assert eb.remote_id == dn_str("alice")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rsa2048", "p384", "p521", "ed25519"])
def test_key_kinds(tmp_path: Path, kind: str) -> None:
    pki = make_pki(kind, slot=7)
    alice, bob = pki.leaf("alice", slot=1), pki.leaf("bob", slot=2)
    cas = (pki.root, pki.intermediate)
    net = pair(tmp_path, alice=alice, bob=bob, alice_cas=cas, bob_cas=cas)
    ea, eb = _ok(net)
    assert ea.remote_id == dn_str("bob") and eb.remote_id == dn_str("alice")


def test_fqdn_and_email_ids_from_subject_alt_names(tmp_path: Path, ec: Pki) -> None:
    alice = ec.leaf("alice", emails=("alice@example.org",), slot=1)
    bob = ec.leaf("bob", dns=("gw.example.org",), slot=2)
    cas = (ec.root, ec.intermediate)
    net = pair(tmp_path, alice=alice, bob=bob, alice_cas=cas, bob_cas=cas,
               alice_local="auth = pubkey\n id = alice@example.org",
               alice_remote="auth = pubkey\n id = gw.example.org",
               bob_local="auth = pubkey\n id = gw.example.org",
               bob_remote="auth = pubkey\n id = *@example.org")
    ea, eb = _ok(net)
    assert (ea.local_id, ea.remote_id) == ("alice@example.org", "gw.example.org")
    assert eb.remote_id == "alice@example.org"


def _failed(net: Net, side: str) -> AuthenticationFailed:
    assert not of_type(net.events_a, IkeSaEstablished)
    events = net.events_b if side == "b" else net.events_a
    fails = of_type(events, AuthenticationFailed)
    assert fails, events
    return fails[0]


def test_unknown_ca_is_refused(tmp_path: Path, ec: Pki) -> None:
    other = make_pki("p256", "Other", slot=3)
    alice = other.leaf("alice", slot=1)
    bob = ec.leaf("bob", slot=2)
    net = pair(tmp_path, alice=alice, bob=bob, alice_cas=(ec.root, ec.intermediate,
                                                          other.intermediate),
               bob_cas=(ec.root, ec.intermediate))
    assert _failed(net, "b").reason == "unknown_ca"
    # The initiator hears a plain AUTHENTICATION_FAILED.
    assert _failed(net, "a").reason == "rejected_by_peer"


def test_revoked_leaf_is_refused(tmp_path: Path, ec: Pki) -> None:
    alice = ec.leaf("alice", slot=1)
    bob = ec.leaf("bob", slot=2)
    cas = (ec.root, ec.intermediate)
    net = pair(tmp_path, alice=alice, bob=bob, alice_cas=cas, bob_cas=cas,
               bob_crls=(crl(ec.intermediate, (alice,)),))
    assert _failed(net, "b").reason == "revoked"


def test_expired_leaf_is_refused(tmp_path: Path, ec: Pki) -> None:
    alice = ec.leaf("alice", slot=1, not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    bob = ec.leaf("bob", slot=2)
    cas = (ec.root, ec.intermediate)
    net = pair(tmp_path, alice=alice, bob=bob, alice_cas=cas, bob_cas=cas)
    assert _failed(net, "b").reason == "expired"


def test_id_not_in_certificate_is_refused(tmp_path: Path, ec: Pki) -> None:
    alice = ec.leaf("alice", slot=1)
    bob = ec.leaf("bob", dns=("gw.example.org",), slot=2)
    cas = (ec.root, ec.intermediate)
    # Bob's id is not pinned, so he answers with his subject DN, which Alice refuses.
    net = pair(tmp_path, alice=alice, bob=bob, alice_cas=cas, bob_cas=cas,
               alice_remote="auth = pubkey\n id = other.example.org")
    failed = _failed(net, "a")
    assert failed.reason == "id_mismatch" and failed.remote_id == dn_str("bob")


def test_ca_constraint(tmp_path: Path, ec: Pki) -> None:
    other = make_pki("p256", "Other", slot=3)
    alice = ec.leaf("alice", slot=1)
    bob = ec.leaf("bob", slot=2)
    write = tmp_path / "b" / "x509ca"
    write.mkdir(parents=True)
    (write / "other.pem").write_bytes(other.root.pem)
    net = pair(tmp_path, alice=alice, bob=bob, alice_cas=(ec.root, ec.intermediate),
               bob_cas=(ec.root, ec.intermediate),
               bob_remote="auth = pubkey\n cacerts = other.pem")
    assert _failed(net, "b").reason == "ca_constraint"


def test_clock_before_validity(tmp_path: Path, ec: Pki) -> None:
    alice = ec.leaf("alice", slot=1)
    bob = ec.leaf("bob", slot=2)
    cas = (ec.root, ec.intermediate)
    past = (NOW - 400 * DAY).timestamp()
    net = pair(tmp_path, alice=alice, bob=bob, alice_cas=cas, bob_cas=cas, wall=past)
    assert _failed(net, "b").reason == "not_yet_valid"


def test_now_is_passed_in() -> None:
    # The trust check itself takes `now`: a certificate valid today is refused tomorrow+1y.
    from mobike_vici.core.trust import TrustError, TrustStore, verify_chain

    pki = make_pki("p256", slot=5)
    leaf = pki.leaf("x", slot=5)
    store = TrustStore((pki.root.cert,), (pki.intermediate.cert,))
    assert len(verify_chain(leaf.cert, [], store, NOW)) == 3
    with pytest.raises(TrustError) as err:
        verify_chain(leaf.cert, [], store, NOW + 400 * DAY)
    assert err.value.reason == "expired"


@pytest.mark.parametrize("certs", [
    [b""], [b"\x30"], [b"\x30\x82\xff\xff" + bytes(10)], [bytes(64)],
    ["truncated"], [b"junk"] * 40,
], ids=["empty", "one-byte", "overlong", "zeros", "truncated", "many"])
def test_hostile_cert_payloads_are_refused_not_crashed(
        tmp_path: Path, ec: Pki, monkeypatch: pytest.MonkeyPatch, certs: list[object]) -> None:
    """A CERT payload that is no certificate fails authentication; the engine goes on."""
    from mobike_vici.core.exchanges import ike_auth
    from mobike_vici.ikev2.payloads import Cert

    alice = ec.leaf("alice", slot=1)
    bob = ec.leaf("bob", slot=2)
    bodies = [alice.der[: len(alice.der) // 2] if c == "truncated" else c for c in certs]

    def hostile(*_args: object) -> list[Cert]:
        return [Cert(4, bytes(b)) for b in bodies]  # type: ignore[arg-type]

    monkeypatch.setattr(ike_auth, "cert_payloads", hostile)
    cas = (ec.root, ec.intermediate)
    net = pair(tmp_path, alice=alice, bob=bob, alice_cas=cas, bob_cas=cas)
    failed = _failed(net, "b")
    assert failed.reason in ("malformed_certificate", "no_certificate"), failed
    assert _failed(net, "a").reason == "rejected_by_peer"


def test_auth_method_the_key_cannot_make_is_refused(
        tmp_path: Path, ec: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ECDSA-256 classic AUTH over a P-256 key, but the data cut short: bad_signature."""
    from mobike_vici.core.exchanges import ike_auth
    from mobike_vici.ikev2.payloads import Auth

    real = ike_auth.sign

    def truncated(*args: object) -> Auth:
        auth = real(*args)  # type: ignore[arg-type]
        return Auth(auth.method, auth.data[:-7])

    monkeypatch.setattr(ike_auth, "sign", truncated)
    alice, bob = ec.leaf("alice", slot=1), ec.leaf("bob", slot=2)
    cas = (ec.root, ec.intermediate)
    net = pair(tmp_path, alice=alice, bob=bob, alice_cas=cas, bob_cas=cas)
    assert _failed(net, "b").reason == "bad_signature"


def test_raw_public_keys(tmp_path: Path) -> None:
    """local.pubkeys / remote.pubkeys: no certificates, keys trusted as configured."""
    from cryptography.hazmat.primitives import serialization

    ka, kb = key("ed25519", 81), key("ed25519", 82)
    for side, mine, theirs in (("a", ka, kb), ("b", kb, ka)):
        base = tmp_path / side
        for sub in ("pubkey", "private"):
            (base / sub).mkdir(parents=True)
        pem = serialization.Encoding.PEM
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        (base / "pubkey" / "me.pub").write_bytes(mine.public_key().public_bytes(pem, spki))
        (base / "pubkey" / "peer.pub").write_bytes(theirs.public_key().public_bytes(pem, spki))
        (base / "private" / "me.pem").write_bytes(mine.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ca = _load(tmp_path / "a", _conf(str(ALICE), str(BOB),
                                     "auth = pubkey\n pubkeys = me.pub\n id = alice.example",
                                     "auth = pubkey\n pubkeys = peer.pub\n id = bob.example",
                                     "home"))
    cb = _load(tmp_path / "b", _conf(str(BOB), None,
                                     "auth = pubkey\n pubkeys = me.pub\n id = bob.example",
                                     "auth = pubkey\n pubkeys = peer.pub\n id = alice.example",
                                     "gw"))
    a = Engine(ca, seeded(1), lambda r: ALICE)
    b = Engine(cb, seeded(2), lambda r: BOB)
    a.set_wall_clock(WALL)
    b.set_wall_clock(WALL)
    net = Net(a, b)
    a.initiate("home", "net", 0.0)
    net.pump()
    ea, eb = _ok(net)
    assert (ea.local_id, ea.remote_id) == ("alice.example", "bob.example")
    assert eb.remote_id == "alice.example"


@pytest.mark.parametrize("oid", ["2.5.29.15", "2.5.29.19", "2.5.29.17"])
def test_certificate_with_an_unparseable_extension_is_malformed(oid: str) -> None:
    """cryptography parses extensions lazily: a CERT payload whose keyUsage (or
    basicConstraints, subjectAltName) does not parse once reached the chain check and
    raised ValueError out of verify_peer (found by tests/fuzz/fuzz_certs.py)."""
    subject_key = key("p256", 3)
    bad = (x509.CertificateBuilder()
           .subject_name(dn("broken")).issuer_name(dn("broken"))
           .public_key(subject_key.public_key()).serial_number(7)
           .not_valid_before(NOW - DAY).not_valid_after(NOW + DAY)
           .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), b"\x35\x00"),
                          critical=False)
           .sign(subject_key, hashes.SHA256()))  # type: ignore[arg-type]
    der = bad.public_bytes(serialization.Encoding.DER)
    with pytest.raises(PeerAuthFailed) as caught:
        _peer_certs([Cert(4, der)])
    assert caught.value.reason == "malformed_certificate"


def test_certificate_with_an_unknown_curve_is_malformed(ec: Pki) -> None:
    """A P-256 leaf whose curve OID is bent to one nobody knows: public_key() raised
    cryptography's UnsupportedAlgorithm, not a ValueError (found by fuzz_certs.py)."""
    der = ec.leaf("curve", slot=1).der
    p256 = bytes.fromhex("06082a8648ce3d030107")
    assert der.count(p256) == 1
    with pytest.raises(PeerAuthFailed) as caught:
        _peer_certs([Cert(4, der.replace(p256, bytes.fromhex("06082a8648ce3d000107")))])
    assert caught.value.reason == "malformed_certificate"


def test_certificate_with_an_unknown_version_is_malformed(ec: Pki) -> None:
    """X.509 version 7: cryptography raises InvalidVersion, which is no ValueError
    (found by fuzz_certs.py)."""
    der = ec.leaf("version", slot=1).der
    v3 = bytes.fromhex("a003020102")
    assert der.count(v3) == 1
    with pytest.raises(PeerAuthFailed) as caught:
        _peer_certs([Cert(4, der.replace(v3, bytes.fromhex("a003020106")))])
    assert caught.value.reason == "malformed_certificate"


@pytest.mark.parametrize("id_type, data", [(2, b"gw.example.org"), (3, b"a@example.org"),
                                           (1, bytes((192, 0, 2, 1)))])
def test_leaf_without_subject_alt_names_does_not_hold_a_name(ec: Pki, id_type: int,
                                                             data: bytes) -> None:
    """An FQDN, email or IP id against a certificate without subjectAltName: building an
    empty SubjectAlternativeName raised ValueError (found by fuzz_certs.py)."""
    assert not cert_has_identity(ec.leaf("plain", slot=1).cert, id_type, data)


def test_certificate_with_a_duplicate_extension_is_malformed(ec: Pki) -> None:
    """keyUsage's OID bent into a second subjectKeyIdentifier: cryptography raises
    DuplicateExtension, which is no ValueError (found by fuzz_certs.py)."""
    der = ec.leaf("twice", slot=1).der
    key_usage = bytes.fromhex("0603551d0f")
    assert der.count(key_usage) == 1
    with pytest.raises(PeerAuthFailed) as caught:
        _peer_certs([Cert(4, der.replace(key_usage, bytes.fromhex("0603551d0e")))])
    assert caught.value.reason == "malformed_certificate"
