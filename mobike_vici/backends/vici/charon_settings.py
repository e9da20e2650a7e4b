"""The strongswan.conf settings the controller relies on, read as charon reads them:
includes followed, a front end's own section first (``charon-systemd``), then
``charon``, the fallback every charon front end registers.

Without them charon still runs, but parts of what the controller does have no
effect; each setting says which, so the operator's warning can say it too.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...config.errors import ConfigError
from ...config.parser import Section, parse_file

DEFAULT_STRONGSWAN_CONF = "/etc/strongswan.conf"
_YES = frozenset({"yes", "true", "1", "enabled"})


@dataclass(frozen=True, slots=True)
class Setting:
    key: str
    """Below the daemon's section, dotted (``plugins.socket-default.fwmark``)."""
    want: str
    effect: str
    """What goes wrong without it."""
    default: str = ""
    """charon's value when the key is not set."""

    def holds(self, value: str | None) -> bool:
        have = (self.default if value is None else value).strip().lower()
        if self.want == "yes":
            return have in _YES
        return _mark(have) == _mark(self.want)


FULL_TUNNEL = ("with a full tunnel, charon's checks towards the gateway's other addresses "
               "ride the tunnel over the dead path")

NEEDED: tuple[Setting, ...] = (
    Setting("prefer_best_path", "yes",
            "charon will not follow the controller's routes while its path still answers"),
    Setting("process_route", "yes", "charon ignores route changes, the controller's signal",
            default="yes"),
    Setting("check_current_path", "yes",
            "a NAT's new public port is noticed only at charon's DPD, not at once"),
    Setting("plugins.socket-default.fwmark", "0x4d43", FULL_TUNNEL),
    Setting("plugins.kernel-netlink.fwmark", "!0x4d43", FULL_TUNNEL),
)


def _mark(text: str) -> tuple[bool, int | None]:
    """``[!]mark[/mask]`` as (inverted, mark); the mask is charon's business."""
    inverted = text.startswith("!")
    value = text[1:] if inverted else text
    try:
        return inverted, int(value.split("/", 1)[0], 0)
    except ValueError:
        return inverted, None


def _lookup(section: Section | None, dotted: str) -> str | None:
    *path, key = dotted.split(".")
    for name in path:
        if section is None:
            return None
        section = section.sections.get(name)
    value = section.keys.get(key) if section is not None else None
    return value.value if value is not None else None


def read_settings(strongswan_conf: str, daemon: str = "charon") -> dict[str, str | None] | None:
    """Each needed key's value as ``daemon`` reads it (None: not set); None when the
    file cannot be read or parsed."""
    try:
        root = parse_file(strongswan_conf)
    except (OSError, ConfigError):
        return None
    values: dict[str, str | None] = {}
    for setting in NEEDED:
        values[setting.key] = None
        for name in dict.fromkeys((daemon, "charon")):
            value = _lookup(root.sections.get(name), setting.key)
            if value is not None:
                values[setting.key] = value
                break
    return values


def unmet(values: dict[str, str | None]) -> list[Setting]:
    """The needed settings ``values`` (from ``read_settings``) does not give."""
    return [s for s in NEEDED if not s.holds(values.get(s.key))]

