"""What `run` reads from swanctl.conf: names and the mobike policy; charon's options untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from mobike_vici.config.attach import load_attach
from mobike_vici.config.errors import ConfigError

# Everything here is swanctl's business: algorithms our native core does not implement,
# a PSK whose secret lives in another file, certificates, EAP, several children.
CHARON_ONLY = """
connections {
    cert {
        remote_addrs = 192.0.2.2
        proposals = chacha20poly1305-prfsha256-curve448, aes256ctr-aesxcbc-ecp256bp
        local { auth = pubkey
            certs = client.pem }
        remote { auth = pubkey
            id = "C=CH, O=Lab, CN=gw" }
        children {
            a { esp_proposals = chacha20poly1305, camellia256-sha256
                start_action = start }
            b { remote_ts = 10.9.0.0/16
                some_future_key = whatever }
        }
    }
    psk {
        remote_addrs = 192.0.2.3
        local { auth = psk }
        remote { auth = eap-mschapv2
            eap_id = %any }
    }
}
include conf.d/*.conf
mobike {
    hold_down = 3s
}
"""


def test_options_charon_judges_pass_and_names_are_read(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "more.conf").write_text(
        "connections { extra { children { only { } } } }\n")
    conf = tmp_path / "swanctl.conf"
    conf.write_text(CHARON_ONLY)
    attach = load_attach(str(conf))
    assert attach.connections == {"cert": ("a", "b"), "psk": (), "extra": ("only",)}
    assert attach.policy.hold_down == 3.0
    assert attach.swanctl_dir == str(tmp_path)


def test_a_bad_mobike_key_names_file_and_line(tmp_path: Path) -> None:
    conf = tmp_path / "swanctl.conf"
    conf.write_text("connections { }\nmobike {\n    hold_down = soon\n}\n")
    with pytest.raises(ConfigError) as exc:
        load_attach(str(conf))
    assert str(exc.value).startswith(f"{conf}:3: ")


def test_a_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    conf = tmp_path / "swanctl.conf"
    conf.write_text("connections {\n  a {\n")
    with pytest.raises(ConfigError):
        load_attach(str(conf))
