"""What the lab needs from the host, and which Debian 12 package brings each piece.

The lab fails before it builds anything when a tool or a charon plugin is
missing, and names every missing piece at once with the package to install,
instead of failing deep inside a test with charon's own words.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Executables the lab shells out to -> the Debian package that ships them.
TOOL_PACKAGES: Mapping[str, str] = {
    "ip": "iproute2",
    "nft": "nftables",
    "ping": "iputils-ping",
    "unshare": "util-linux",
    "tcpdump": "tcpdump",
    "swanctl": "strongswan-swanctl",
}

# What the namespace lab itself runs (topologies, blackholes, pings, charon's /run).
LAB_TOOLS = ("ip", "nft", "ping", "unshare")

PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")

# charon plugins -> the Debian 12 package that ships libstrongswan-<name>.so
# (read off `dpkg -S` on strongSwan 5.9.8). Plugins not listed here are named
# without a package.
PLUGIN_PACKAGES: Mapping[str, str] = {
    "aes": "libstrongswan",
    "attr": "libstrongswan",
    "hmac": "libstrongswan",
    "kdf": "libstrongswan",
    "kernel-netlink": "libstrongswan",
    "nonce": "libstrongswan",
    "pem": "libstrongswan",
    "pubkey": "libstrongswan",
    "random": "libstrongswan",
    "sha1": "libstrongswan",
    "sha2": "libstrongswan",
    "x509": "libstrongswan",
    "aesni": "libstrongswan-standard-plugins",
    "gcm": "libstrongswan-standard-plugins",
    "openssl": "libstrongswan-standard-plugins",
    "curve25519": "libstrongswan-extra-plugins",
    "kernel-libipsec": "libcharon-extra-plugins",
    "socket-default": "strongswan-libcharon",
    "updown": "strongswan-libcharon",
    "vici": "strongswan-swanctl",
}


@dataclass(frozen=True, slots=True)
class Missing:
    """One missing piece and the package that provides it (None when unknown)."""

    name: str
    package: str | None

    def __str__(self) -> str:
        return self.name if self.package is None else f"{self.name} ({self.package})"


def missing_tools(tools: Iterable[str] = LAB_TOOLS) -> list[Missing]:
    """Every executable of `tools` that is not on PATH."""
    return [Missing(t, TOOL_PACKAGES.get(t)) for t in tools if shutil.which(t) is None]


def missing_plugins(plugins: Iterable[str], plugin_dir: Path = PLUGIN_DIR) -> list[Missing]:
    """Every charon plugin of `plugins` whose shared object is not in `plugin_dir`."""
    return [
        Missing(p, PLUGIN_PACKAGES.get(p)) for p in plugins
        if not (plugin_dir / f"libstrongswan-{p}.so").exists()
    ]


def describe(missing: Iterable[Missing], bootstrap: str = "scripts/bootstrap.sh") -> str:
    """'a (pkg), b (pkg); install them with: apt-get install pkg ...' for an error message."""
    items = list(missing)
    packages = sorted({m.package for m in items if m.package is not None})
    text = ", ".join(str(m) for m in items)
    if packages:
        text += f"; install them with `apt-get install {' '.join(packages)}` or `{bootstrap}`"
    return text
