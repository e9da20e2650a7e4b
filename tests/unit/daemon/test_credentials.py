"""The native daemon's config: credentials from the swanctl directory, and every
authentication key the native core cannot honour refused at start with FILE:LINE."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from mobike_vici.config.model import ConfigError
from mobike_vici.core.credentials import credentials_of
from mobike_vici.daemon.credentials import load_native
from tests.pki import crl, make_pki, write_layout

BASE = """connections {{
  c {{
    remote_addrs = 192.0.2.2
    local {{
      {local}
    }}
    remote {{
      {remote}
    }}
  }}
}}
{tail}
"""


PSK = 'secrets {\n ike { secret = "not-a-secret-0123456789" }\n}'


def _write(tmp: Path, local: str = "auth = pubkey", remote: str = "auth = pubkey",
           tail: str = PSK) -> Path:
    conf = tmp / "swanctl.conf"
    conf.write_text(BASE.format(local=local, remote=remote, tail=tail))
    return conf


def _refused(conf: Path, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_native(str(conf))
    text = str(err.value)
    assert text.startswith(f"{conf}:{line}:"), text
    assert words in text, text


@pytest.mark.parametrize(("local", "remote", "line", "words"), [
    ("auth = eap-mschapv2", "auth = psk", 5, "EAP is not supported"),
    ("auth = psk", "auth = eap-tls", 8, "EAP is not supported"),
    ("auth = psk\n eap_id = x", "auth = psk", 6, "eap_id: not supported"),
    ("auth = psk", "auth = pubkey\n groups = admins", 9, "groups: not supported"),
    ("auth = psk", "auth = pubkey\n ca_id = x", 9, "ca_id: not supported"),
    ("auth = psk", "auth = pubkey\n cert_policy = 1.2.3", 9, "cert_policy: not supported"),
    ("auth = psk", "auth = pubkey\n revocation = sometimes", 9, "revocation"),
    ("auth = pubkey\n cert1 { handle = 0a }", "auth = psk", 6, "smartcard"),
    ("auth = bliss", "auth = psk", 5, "not supported by the native core"),
    ("auth = pubkey", "auth = psk", 5, "needs a certificate in x509/"),
])
def test_refusals(tmp_path: Path, local: str, remote: str, line: int, words: str) -> None:
    _refused(_write(tmp_path, local, remote), line, words)


def test_xauth_is_refused_by_the_loader(tmp_path: Path) -> None:
    _refused(_write(tmp_path, "auth = xauth", "auth = psk"), 5, "IKEv1")


def test_second_round_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "swanctl.conf"
    conf.write_text("connections {\n c {\n  local-1 {\n   auth = psk\n  }\n"
                    "  local-2 {\n   auth = psk\n   round = 1\n  }\n }\n}\n" + PSK)
    _refused(conf, 6, "more than one authentication round")


def test_smartcard_secrets_are_refused(tmp_path: Path) -> None:
    conf = _write(tmp_path, "auth = psk", "auth = psk",
                  'secrets {\n token-1 {\n  handle = 0a\n }\n ike { secret = "x" }\n}')
    _refused(conf, 13, "smartcards")


def test_missing_certs_file(tmp_path: Path) -> None:
    _refused(_write(tmp_path, "auth = pubkey\n certs = nope.pem"), 6, "no file 'nope.pem'")


def test_id_not_in_the_named_certificate(tmp_path: Path) -> None:
    pki = make_pki("p256", slot=30)
    write_layout(tmp_path, own=pki.leaf("me", dns=("me.example",), slot=31),
                 cas=(pki.root, pki.intermediate))
    conf = _write(tmp_path, "auth = pubkey\n certs = me.pem\n id = other.example")
    _refused(conf, 7, "neither the subject nor a subjectAltName")


def test_credentials_are_read_from_the_layout(tmp_path: Path) -> None:
    pki = make_pki("p256", slot=30)
    me = pki.leaf("me", dns=("me.example",), slot=31)
    write_layout(tmp_path, own=me, cas=(pki.root, pki.intermediate),
                 crls=(crl(pki.intermediate),))
    config = load_native(str(_write(tmp_path, "auth = pubkey\n id = me.example",
                                    "auth = ecdsa-sha384")))
    creds = credentials_of(config)
    assert creds.anchors == (pki.root.cert,)
    assert creds.intermediates == (pki.intermediate.cert,)
    assert len(creds.crls) == 1
    local = creds.local["c"]
    assert local.cert == me.cert and local.chain == (pki.intermediate.cert,)
    remote = creds.remote["c"]
    assert remote.policy.kinds == {"ecdsa"} and remote.policy.hashes is not None


def test_encrypted_key_with_and_without_its_secret(tmp_path: Path) -> None:
    pki = make_pki("p256", slot=30)
    me = pki.leaf("me", slot=31)
    write_layout(tmp_path, cas=(pki.root,))
    (tmp_path / "x509" / "me.pem").write_bytes(me.pem)
    (tmp_path / "private" / "me.pem").write_bytes(me.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"open sesame")))
    with pytest.raises(ConfigError) as err:
        load_native(str(_write(tmp_path)))
    assert "encrypted private key" in str(err.value)
    secret = 'secrets {\n private-me {\n  file = me.pem\n  secret = "open sesame"\n }\n}'
    config = load_native(str(_write(tmp_path, tail=secret)))
    assert credentials_of(config).local["c"].cert == me.cert


def test_unwritten_sections_keep_working_with_psk(tmp_path: Path) -> None:
    # charon's default is pubkey; without certificates the PSK code runs as before.
    conf = tmp_path / "swanctl.conf"
    conf.write_text("connections {\n c {\n  remote_addrs = 192.0.2.2\n }\n}\n")
    assert credentials_of(load_native(str(conf))).local == {}


def test_remote_pubkey_with_nothing_to_trust(tmp_path: Path) -> None:
    pki = make_pki("p256", slot=30)
    write_layout(tmp_path, own=pki.leaf("me", slot=31))  # no CA certificates at all
    _refused(_write(tmp_path, "auth = pubkey"), 8, "nothing to trust")
