"""Fuzz target: the swanctl.conf parser and loader (text to typed ``Config``).

The input is the file's bytes; ``include`` sees the real file system for its
globs, but every file it would read reads as empty, so no input can make the
target read /dev/zero or wait on a pipe. Seeds: the shipped example configs.

Only ConfigError may escape.
"""

from __future__ import annotations

import atheris

from .harness import main
from .seeds import example_configs

with atheris.instrument_imports(include=["mobike_vici"]):
    from mobike_vici.config.errors import ConfigError
    from mobike_vici.config.loader import build_config
    from mobike_vici.config.parser import Section, _Parser, resolve_references

NAME = "/nonexistent/fuzz.conf"


ALLOWED: tuple[type[BaseException], ...] = (ConfigError,)
"""What may escape the target for bad input; anything else is a crash."""


def target(data: bytes) -> None:
    def read(path: str) -> bytes:
        return data if path == NAME else b""

    root = Section("", NAME, 0)
    _Parser(read).parse_path(NAME, root, include_line=None, stack=())
    build_config(resolve_references(root))


SEED_CONFIG = """
connections {
  home {
    local_addrs = 192.0.2.1
    remote_addrs = 192.0.2.2, 2001:db8::2
    proposals = aes128-sha256-x25519, aes256gcm16-prfsha384-ecp384
    vips = 0.0.0.0, ::
    dpd_delay = 30s
    rekey_time = 4h
    mobike = yes
    local { auth = psk
            id = alice@example.com }
    remote { auth = psk
             id = "bob.example.com" }
    children {
      net : tpl {
        local_ts = 10.1.0.0/24, 10.9.0.0/16[tcp/443]
        remote_ts = 10.2.0.0/24
        esp_proposals = aes128gcm16-esn, aes256-sha512-modp2048
        start_action = start
      }
    }
  }
}
tpl { rekey_time = 1h
      life_time = 66m }
pools { pool4 { addrs = 10.3.0.0/28 } }
secrets { ike-a { id-a = alice@example.com
                  id-b = bob.example.com
                  secret = "topsecret-psk" } }
mobike { }
"""


def seeds() -> list[bytes]:
    from ..unit.mobike.test_config import FULL as MOBIKE_SECTION  # every mobike { } key

    return [*example_configs(), SEED_CONFIG.encode(),
            SEED_CONFIG.replace("mobike { }\n", MOBIKE_SECTION).encode()]


if __name__ == "__main__":
    main("config", target, ALLOWED, seeds)
