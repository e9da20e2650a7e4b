"""Identity parsing, printing, matching and PSK selection (charon 5.9.8 semantics)."""

from __future__ import annotations

import ipaddress

import pytest

from mobike_vici.config.model import SharedSecret
from mobike_vici.core.identity import (
    Match,
    default_identity,
    find_psk,
    identity_matches,
    identity_to_str,
    is_any_identity,
    match_identity,
    parse_identity,
)
from mobike_vici.ikev2.constants import IdType

FQDN, EMAIL, V4, V6, KEYID = (
    IdType.ID_FQDN,
    IdType.ID_RFC822_ADDR,
    IdType.ID_IPV4_ADDR,
    IdType.ID_IPV6_ADDR,
    IdType.ID_KEY_ID,
)


@pytest.mark.parametrize(
    ("text", "kind", "data", "printed"),
    [
        ("10.0.0.1", V4, bytes([10, 0, 0, 1]), "10.0.0.1"),
        ("2001:db8::1", V6, ipaddress.IPv6Address("2001:db8::1").packed, "2001:db8::1"),
        ("carol@strongswan.org", EMAIL, b"carol@strongswan.org", "carol@strongswan.org"),
        ("@moon.strongswan.org", FQDN, b"moon.strongswan.org", "moon.strongswan.org"),
        ("moon.strongswan.org", FQDN, b"moon.strongswan.org", "moon.strongswan.org"),
        ("@10.0.0.1", FQDN, b"10.0.0.1", "10.0.0.1"),
        ("@@carol", EMAIL, b"carol", "carol"),
        ("@#0a0b0c", KEYID, b"\x0a\x0b\x0c", "0a:0b:0c"),
        ("fqdn:moon", FQDN, b"moon", "moon"),
        ("FQDN:moon", FQDN, b"moon", "moon"),
        ("dns:moon", FQDN, b"moon", "moon"),
        ("email:carol@x", EMAIL, b"carol@x", "carol@x"),
        ("rfc822:carol", EMAIL, b"carol", "carol"),
        ("keyid:abc", KEYID, b"abc", "abc"),
        ("keyid:#616263", KEYID, b"abc", "abc"),
        ("ipv4:192.0.2.1", V4, bytes([192, 0, 2, 1]), "192.0.2.1"),
        ("ipv4:#c0000201", V4, bytes([192, 0, 2, 1]), "192.0.2.1"),
        ("ipv6:::1", V6, ipaddress.IPv6Address("::1").packed, "::1"),
        ("{11}:xyz", KEYID, b"xyz", "xyz"),
        ("foo:bar", KEYID, b"foo:bar", "foo:bar"),
        ("10.0.0.1-x", FQDN, b"10.0.0.1-x", "10.0.0.1-x"),
    ],
)
def test_parse_and_print(text: str, kind: IdType, data: bytes, printed: str) -> None:
    assert parse_identity(text) == (kind, data)
    assert identity_to_str(kind, data) == printed


@pytest.mark.parametrize(
    "text",
    ["%any", "%any6", "*", "", "0.0.0.0", "::", "C=CH, XX=strongSwan, CN=moon", "10.0.0.0/8",
     "10.0.0.1-10.0.0.9", "ipv4:nonsense", "@#zz", "asn1dn:CN=x", "{999}:x"],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_identity(text)


def test_print_round_trip_of_printable_strings() -> None:
    for text in ["carol@strongswan.org", "@sun.example", "192.0.2.7", "fd00::7"]:
        kind, data = parse_identity(text)
        assert parse_identity(identity_to_str(kind, data)) == (kind, data)


def test_print_edge_cases() -> None:
    assert identity_to_str(FQDN, b"a\x00b\xffc") == "a?b?c"
    assert identity_to_str(KEYID, b"a" * 20) == ":".join(["61"] * 20)  # SHA-1 sized: hex
    assert identity_to_str(V4, b"\x01") == "(invalid ID_IPV4_ADDR)"
    assert identity_to_str(V6, ipaddress.IPv6Address("::ffff:10.0.0.1").packed) == "::ffff:10.0.0.1"
    assert identity_to_str(0, b"") == "%any"
    assert identity_to_str(99, b"") == "(unknown ID type: 99)"


def test_default_identity_is_the_address() -> None:
    assert default_identity(ipaddress.ip_address("192.0.2.1")) == (V4, bytes([192, 0, 2, 1]))
    assert default_identity(ipaddress.ip_address("fd00::1"))[0] == V6


def test_is_any_identity() -> None:
    assert is_any_identity(None) and is_any_identity("%any") and is_any_identity("*")
    assert not is_any_identity("@moon")


# --- matching ------------------------------------------------------------------------


def test_matches_any_and_none() -> None:
    assert identity_matches(None, FQDN, b"x")
    assert identity_matches("%any", EMAIL, b"a@b")
    assert match_identity("%any", FQDN, b"x") == Match.ANY


def test_matches_exact_case_insensitive_for_names() -> None:
    assert match_identity("@Moon.StrongSwan.org", FQDN, b"moon.strongswan.org") == Match.PERFECT
    assert not identity_matches("@moon.strongswan.org", FQDN, b"sun.strongswan.org")
    assert not identity_matches("moon@strongswan.org", FQDN, b"moon@strongswan.org")  # type differs


def test_wildcards() -> None:
    assert match_identity("*@example.com", EMAIL, b"carol@EXAMPLE.com") == Match.ONE_WILDCARD
    assert not identity_matches("*@example.com", EMAIL, b"@example.com")  # needs a char before
    assert not identity_matches("*@example.com", EMAIL, b"carol@example.org")
    assert identity_matches("@*.example.com", FQDN, b"vpn.example.com")
    assert not identity_matches("@*.example.com", FQDN, b"example.com")


def test_address_patterns() -> None:
    addr = bytes([10, 1, 2, 3])
    assert match_identity("10.1.2.3", V4, addr) == Match.PERFECT
    assert match_identity("10.0.0.0/8", V4, addr) == Match.ONE_WILDCARD
    assert not identity_matches("10.0.0.0/16", V4, addr)
    assert match_identity("0.0.0.0/0", V4, addr) == Match.MAX_WILDCARDS
    assert match_identity("10.1.2.0-10.1.2.9", V4, addr) == Match.ONE_WILDCARD
    assert not identity_matches("10.1.2.4-10.1.2.9", V4, addr)
    assert not identity_matches("10.1.2.3", FQDN, b"10.1.2.3")


def test_binary_types_match_exactly() -> None:
    assert identity_matches("@#0102", KEYID, b"\x01\x02")
    assert not identity_matches("@#0102", KEYID, b"\x01\x03")


# --- PSK selection -------------------------------------------------------------------


def secret(name: str, key: bytes, *ids: str) -> SharedSecret:
    return SharedSecret(name, tuple(ids), key)


def test_psk_both_ids_beat_one_beat_none() -> None:
    secrets = [
        secret("both", b"both", "moon", "sun"),
        secret("one", b"one", "sun"),
        secret("none", b"none"),
    ]
    assert find_psk(secrets, "moon", "sun") == b"both"
    assert find_psk(secrets[1:], "moon", "sun") == b"one"
    assert find_psk(secrets[2:], "moon", "sun") == b"none"


def test_psk_order_does_not_matter_for_quality() -> None:
    secrets = [
        secret("none", b"none"),
        secret("one", b"one", "sun"),
        secret("both", b"both", "sun", "moon"),
    ]
    assert find_psk(secrets, "moon", "sun") == b"both"
    assert find_psk(list(reversed(secrets)), "moon", "sun") == b"both"


def test_psk_ids_match_either_side() -> None:
    secrets = [secret("x", b"x", "moon")]
    assert find_psk(secrets, "moon", "sun") == b"x"
    assert find_psk(secrets, "sun", "moon") == b"x"
    assert find_psk(secrets, "sun", "venus") is None


def test_psk_remote_match_outranks_local_match() -> None:
    secrets = [secret("mine", b"mine", "moon"), secret("theirs", b"theirs", "sun")]
    assert find_psk(secrets, "moon", "sun") == b"theirs"
    assert find_psk(secrets, "sun", "moon") == b"mine"


def test_psk_wildcard_beats_any() -> None:
    secrets = [secret("wild", b"wild", "*@example.com"), secret("any", b"any", "%any")]
    assert find_psk(secrets, "gw@example.com", "carol@example.com") == b"wild"


def test_psk_tie_goes_to_the_last_defined() -> None:
    secrets = [secret("a", b"a", "sun"), secret("b", b"b", "sun")]
    assert find_psk(secrets, "moon", "sun") == b"b"


def test_psk_with_received_identity_and_addresses() -> None:
    secrets = [secret("ip", b"ip", "192.0.2.1", "192.0.2.2"), secret("fqdn", b"fqdn", "@sun")]
    assert find_psk(secrets, "192.0.2.1", (V4, bytes([192, 0, 2, 2]))) == b"ip"
    assert find_psk(secrets, "192.0.2.1", (FQDN, b"sun")) == b"fqdn"
    assert find_psk(secrets, "192.0.2.1", None) == b"ip"  # %any remote: local match decides


def test_psk_skips_owners_it_cannot_parse() -> None:
    secrets = [secret("dn", b"dn", "C=CH, CN=moon"), secret("ok", b"ok", "moon")]
    assert find_psk(secrets, "moon", "sun") == b"ok"
    assert find_psk(secrets[:1], "moon", "sun") is None


def test_distinguished_names_as_charon_writes_them() -> None:
    from cryptography import x509

    kind, data = parse_identity("C=CH, O=strongSwan Project, CN=moon.strongswan.org")
    assert kind == IdType.ID_DER_ASN1_DN
    # DER order is the written order (not RFC 4514's reversed one).
    name = x509.Name.from_rfc4514_string("CN=moon.strongswan.org,O=strongSwan Project,C=CH")
    assert data == name.public_bytes()
    assert identity_to_str(kind, data) == "C=CH, O=strongSwan Project, CN=moon.strongswan.org"
    assert identity_matches("c=ch, o=strongswan project, cn=MOON.strongswan.org", kind, data)
    assert identity_matches("C=CH, O=strongSwan Project, CN=*", kind, data)
    assert not identity_matches("C=CH, O=strongSwan Project, CN=sun", kind, data)
    assert not identity_matches("C=CH, CN=moon.strongswan.org", kind, data)
    assert not identity_matches("moon.strongswan.org", kind, data)
    assert identity_to_str(kind, b"\x30\x05garbage").startswith("(invalid ASN.1 DN")
