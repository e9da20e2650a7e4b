"""The typed, validated configuration: swanctl's connections, secrets and pools, plus ``mobike``.

Key names and defaults are swanctl's (swanctl.conf(5)); times are seconds.
``parser.py`` reads the syntax, ``loader.py`` fills these. Keys that swanctl
knows but this project does not model are kept verbatim in ``extra`` so the
VICI backend can hand them to charon unchanged.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum

from ..ikev2.proposals import ProposalSpec
from .errors import ConfigError as ConfigError  # re-exported: part of this module's API
from .mobike import MobikePolicy


class StartAction(Enum):
    NONE = "none"
    TRAP = "trap"
    START = "start"
    TRAP_START = "trap|start"  # trap policies installed and initiated at once

    @property
    def starts(self) -> bool:
        """Whether the child is initiated when the config is loaded."""
        return self in (StartAction.START, StartAction.TRAP_START)


class DpdAction(Enum):
    CLEAR = "clear"
    TRAP = "trap"
    RESTART = "restart"


class CloseAction(Enum):
    NONE = "none"
    TRAP = "trap"
    START = "start"


class Unique(Enum):
    NO = "no"
    NEVER = "never"
    KEEP = "keep"
    REPLACE = "replace"


class Fragmentation(Enum):
    """swanctl's ``fragmentation`` (RFC 7383 for IKEv2). Fragments a peer sends are
    taken whatever the value, as charon takes them."""

    YES = "yes"
    ACCEPT = "accept"
    """Announced, and the peer's fragments taken; our own messages are never cut."""
    FORCE = "force"
    """IKEv1 only in charon; for IKEv2 it means what yes means."""
    NO = "no"
    """Not announced: the peer will not cut its messages for us."""

    @property
    def announces(self) -> bool:
        return self != Fragmentation.NO

    @property
    def sends(self) -> bool:
        return self in (Fragmentation.YES, Fragmentation.FORCE)


class AuthClass(Enum):
    PSK = "psk"
    PUBKEY = "pubkey"
    EAP = "eap"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class TrafficSelectorSpec:
    """One swanctl traffic selector: ``net[proto/port]`` or ``dynamic``."""

    network: Network | None  # None for "dynamic" (our own / the peer's address)
    protocol: int = 0
    port_start: int = 0
    port_end: int = 65535


Extra = tuple[tuple[str, str], ...]  # (key, value) pairs in definition order


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """One authentication round: a ``local*`` or ``remote*`` section."""

    auth: AuthClass = AuthClass.PUBKEY
    # None: locally the IP address in use; for the remote side any identity (%any)
    id: str | None = None
    name: str = ""  # section name, e.g. "local" or "remote-eap"
    method: str = "pubkey"  # swanctl's auth value as written, e.g. "eap-mschapv2"
    round: int = 0
    extra: Extra = ()  # e.g. certs, eap_id, revocation; nested sections as "cert1.file"
    file: str = ""
    line: int = 0
    lines: tuple[tuple[str, str, int], ...] = ()
    """(key, file, line) of each key as written (a subsection as ``name.``), for
    ``FILE:LINE`` refusals."""

    def where(self, key: str) -> tuple[str, int]:
        """``(file, line)`` of ``key``, else of the section."""
        for name, file, line in self.lines:
            if name == key:
                return file, line
        return self.file, self.line

    def get(self, key: str) -> str | None:
        """An unmodelled key's value as written (``extra``), None when absent."""
        return dict(self.extra).get(key)


@dataclass(frozen=True, slots=True)
class ChildConfig:
    name: str
    local_ts: tuple[TrafficSelectorSpec, ...] = (TrafficSelectorSpec(None),)
    remote_ts: tuple[TrafficSelectorSpec, ...] = (TrafficSelectorSpec(None),)
    esp_proposals: tuple[ProposalSpec, ...] = ()  # default set when the key is absent
    mode: str = "tunnel"
    start_action: StartAction = StartAction.NONE
    dpd_action: DpdAction = DpdAction.CLEAR
    close_action: CloseAction = CloseAction.NONE
    rekey_time: float = 3600.0
    life_time: float = 3960.0  # default: rekey_time * 1.1
    rand_time: float = 360.0  # default: life_time - rekey_time
    rekey_bytes: int = 0
    life_bytes: int = 0
    rekey_packets: int = 0
    life_packets: int = 0
    replay_window: int = 32
    file: str = ""
    line: int = 0
    extra: Extra = ()  # e.g. updown, mark_in, if_id_out


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    name: str
    version: int = 0  # 0: any, 1, 2
    local_addrs: tuple[str, ...] = ("%any",)
    remote_addrs: tuple[str, ...] = ("%any",)
    local_port: int = 500
    remote_port: int = 500
    proposals: tuple[ProposalSpec, ...] = ()  # default set when the key is absent
    vips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    pools: tuple[str, ...] = ()
    dpd_delay: float = 0.0
    dpd_timeout: float = 0.0
    rekey_time: float = 14400.0
    reauth_time: float = 0.0
    over_time: float = 1440.0  # default: 10% of the larger of rekey/reauth time
    rand_time: float = 1440.0  # default: over_time
    keyingtries: int = 1
    unique: Unique = Unique.NO
    mobike: bool = True
    encap: bool = False
    local: tuple[AuthConfig, ...] = (AuthConfig(),)
    remote: tuple[AuthConfig, ...] = (AuthConfig(),)
    children: tuple[ChildConfig, ...] = ()
    file: str = ""
    line: int = 0
    extra: Extra = ()  # e.g. aggressive, fragmentation, send_cert, if_id_in

    @property
    def fragmentation(self) -> Fragmentation:
        """``fragmentation`` (kept in ``extra`` so charon gets it as written; the loader
        has checked the value). Default yes, as swanctl's."""
        for key, value in self.extra:
            if key == "fragmentation" and value.strip():
                return Fragmentation(value.strip().lower())
        return Fragmentation.YES


@dataclass(frozen=True, slots=True)
class SharedSecret:
    """A ``secrets { ike-* { id-* = ..., secret = ... } }`` entry."""

    name: str
    ids: tuple[str, ...]
    secret: bytes = field(repr=False)
    file: str = ""
    line: int = 0


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    first: ipaddress.IPv4Address | ipaddress.IPv6Address  # inclusive range of leases
    last: ipaddress.IPv4Address | ipaddress.IPv6Address
    file: str = ""
    line: int = 0
    attributes: Extra = ()  # e.g. ("dns", "10.0.0.53"), handed out with the lease


@dataclass(frozen=True, slots=True)
class MobikeConfig:
    """The ``mobike { }`` section: the controller's path policy."""

    policy: MobikePolicy = field(default_factory=MobikePolicy)


@dataclass(frozen=True, slots=True)
class Config:
    connections: tuple[ConnectionConfig, ...] = ()
    secrets: tuple[SharedSecret, ...] = ()
    pools: tuple[PoolConfig, ...] = ()
    mobike: MobikeConfig = field(default_factory=MobikeConfig)
    credentials: object | None = None
    """The native core's certificates and keys (``config.credentials.Credentials``),
    read from the swanctl directory by ``load_native``; None for the VICI backend."""

    def connection(self, name: str) -> ConnectionConfig:
        for conn in self.connections:
            if conn.name == name:
                return conn
        raise KeyError(name)

