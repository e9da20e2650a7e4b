"""What ``mobike-vici run`` needs from the swanctl.conf that ``swanctl`` loads.

The controller reads the same file as ``swanctl --load-all`` (includes followed) but
judges none of charon's options: proposals, authentication, certificates and every
other key are charon's business, and a file swanctl accepts must not stop the
controller. It takes from the file only the connection and child names (to
re-initiate a connection when escalating) and the ``mobike { }`` policy, which it
validates with ``FILE:LINE`` errors. With ``--load`` the parsed tree itself is sent
to charon verbatim (``backends.vici.tree``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .mobike import MobikePolicy
from .mobike import from_section as mobike_policy
from .parser import Section, parse_file

DEFAULT_SWANCTL_CONF = "/etc/swanctl/swanctl.conf"


@dataclass(frozen=True, slots=True)
class AttachConfig:
    """Connection names (with their children, in file order), the policy, the parsed tree."""

    file: str
    connections: dict[str, tuple[str, ...]] = field(default_factory=dict)
    policy: MobikePolicy = field(default_factory=MobikePolicy)
    tree: Section | None = None

    @property
    def swanctl_dir(self) -> str:
        """Where ``x509/``, ``private/`` ... live: next to the file, as ``swanctl --file``."""
        return os.path.dirname(os.path.abspath(self.file))


def load_attach(path: str) -> AttachConfig:
    """Read ``path`` with its includes; raises ``ConfigError`` (``FILE:LINE``) or ``OSError``."""
    root = parse_file(path)
    return attach_from_tree(root, path)


def attach_from_tree(root: Section, file: str) -> AttachConfig:
    conns: dict[str, tuple[str, ...]] = {}
    section = root.sections.get("connections")
    if section is not None:
        for name, conn in section.sections.items():
            children = conn.sections.get("children")
            conns[name] = tuple(children.sections) if children is not None else ()
    return AttachConfig(file, conns, mobike_policy(root.sections.get("mobike")), root)
