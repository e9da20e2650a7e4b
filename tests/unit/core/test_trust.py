"""The chain check alone (core/trust.py), with ``now`` passed in: every refusal has its reason."""

from __future__ import annotations

import pytest

from mobike_vici.core.trust import TrustError, TrustStore, local_chain, verify_chain
from tests.pki import DAY, NOW, Pki, crl, dn, issue, key, make_pki


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki("p256", "Trust", slot=90)


def _store(pki: Pki, **kw: object) -> TrustStore:
    return TrustStore((pki.root.cert,), (pki.intermediate.cert,), **kw)  # type: ignore[arg-type]


def _reason(*args: object, **kw: object) -> str:
    with pytest.raises(TrustError) as err:
        verify_chain(*args, **kw)  # type: ignore[arg-type]
    return err.value.reason


def test_chain_from_the_store_or_from_the_peer(pki: Pki) -> None:
    leaf = pki.leaf("a", slot=91)
    chain = verify_chain(leaf.cert, [], _store(pki), NOW)
    assert chain == [leaf.cert, pki.intermediate.cert, pki.root.cert]
    # The intermediate sent by the peer instead of being in our store.
    alone = TrustStore((pki.root.cert,))
    assert verify_chain(leaf.cert, [pki.intermediate.cert], alone, NOW)[1] == \
        pki.intermediate.cert
    assert _reason(leaf.cert, [], alone, NOW) == "unknown_ca"


def test_a_sent_root_is_not_trusted(pki: Pki) -> None:
    leaf = pki.leaf("a", slot=91)
    assert _reason(leaf.cert, [pki.intermediate.cert, pki.root.cert], TrustStore(), NOW) == \
        "unknown_ca"
    # Nor is a self-signed certificate the peer shows as its own.
    self_made = issue(dn("me"), key("p256", 92), None)
    assert _reason(self_made.cert, [], _store(pki), NOW) == "unknown_ca"


def test_validity_of_every_certificate(pki: Pki) -> None:
    leaf = pki.leaf("a", slot=91)
    assert _reason(leaf.cert, [], _store(pki), NOW + 2 * 365 * DAY) == "expired"
    assert _reason(leaf.cert, [], _store(pki), NOW - 2 * DAY) == "not_yet_valid"
    old_inter = issue(dn("Old Intermediate"), key("p256", 93), pki.root, ca=True,
                      not_before=NOW - 10 * DAY, not_after=NOW - DAY)
    below = issue(dn("b"), key("p256", 94), old_inter)
    assert _reason(below.cert, [old_inter.cert], _store(pki), NOW) == "expired"


def test_issuer_must_be_a_ca_with_keycertsign(pki: Pki) -> None:
    not_ca = issue(dn("Not a CA"), key("p256", 95), pki.root, ca=False, key_usage=False)
    below = issue(dn("b"), key("p256", 94), not_ca)
    assert _reason(below.cert, [not_ca.cert], _store(pki), NOW) == "not_a_ca"
    # A CA whose keyUsage lacks keyCertSign.
    from cryptography import x509

    k = key("p256", 96)
    no_sign = issue(dn("No Sign CA"), k, pki.root, ca=True, key_usage=False)
    builder = (x509.CertificateBuilder().subject_name(no_sign.cert.subject)
               .issuer_name(pki.root.cert.subject).public_key(k.public_key())
               .serial_number(77).not_valid_before(NOW - DAY).not_valid_after(NOW + DAY * 9)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                            False, False), critical=True))
    from cryptography.hazmat.primitives import hashes

    cert = builder.sign(pki.root.key, hashes.SHA256())  # type: ignore[arg-type]
    below = issue(dn("c"), key("p256", 94), type(no_sign)(cert, k))
    assert _reason(below.cert, [cert], _store(pki), NOW) == "key_usage"


def test_path_length(pki: Pki) -> None:
    # The intermediate allows no CA below it (pathLen 0).
    sub = issue(dn("Sub CA"), key("p256", 97), pki.intermediate, ca=True)
    below = issue(dn("d"), key("p256", 98), sub)
    assert _reason(below.cert, [sub.cert], _store(pki), NOW) == "path_length"


def test_revocation(pki: Pki) -> None:
    leaf, other = pki.leaf("a", slot=91), pki.leaf("b", slot=99)
    listing = crl(pki.intermediate, (leaf,))
    assert _reason(leaf.cert, [], _store(pki, crls=(listing,)), NOW) == "revoked"
    assert verify_chain(other.cert, [], _store(pki, crls=(listing,)), NOW)
    # A CRL signed by someone else counts for nothing.
    forged = crl(make_pki("p256", "Forger", slot=88).intermediate, (other,))
    assert verify_chain(other.cert, [], _store(pki, crls=(forged,)), NOW)
    # strict: the intermediate has no CRL from the root.
    assert _reason(other.cert, [], _store(pki, crls=(listing,)), NOW, strict=True) == \
        "revocation_unknown"
    both = (listing, crl(pki.root))
    assert verify_chain(other.cert, [], _store(pki, crls=both), NOW, strict=True)


def test_ca_constraint(pki: Pki) -> None:
    leaf = pki.leaf("a", slot=91)
    other = make_pki("p256", "Elsewhere", slot=87)
    assert verify_chain(leaf.cert, [], _store(pki), NOW, [pki.intermediate.cert])
    assert _reason(leaf.cert, [], _store(pki), NOW, [other.root.cert]) == "ca_constraint"


def test_local_chain_stops_below_the_root(pki: Pki) -> None:
    leaf = pki.leaf("a", slot=91)
    assert local_chain(leaf.cert, [pki.root.cert, pki.intermediate.cert]) == [
        pki.intermediate.cert]
    assert local_chain(leaf.cert, []) == []
