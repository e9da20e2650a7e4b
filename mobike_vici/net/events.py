"""The net layer's own records and events: links, addresses and routes as the kernel reports them.

These frozen dataclasses are the only thing the layers above `net/` ever see of netlink;
pyroute2 messages are converted into them at the edge (`net/rtnl.py`). The numeric
values of the enums are the kernel's, so conversion is a plain cast.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from ..types import IPAddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAIN_TABLE = 254


class OperState(enum.IntEnum):
    """RFC 2863 operational state (IF_OPER_*), as in IFLA_OPERSTATE."""

    UNKNOWN = 0
    NOTPRESENT = 1
    DOWN = 2
    LOWERLAYERDOWN = 3
    TESTING = 4
    DORMANT = 5
    UP = 6


class AddrFlag(enum.IntFlag):
    """IFA_F_* address flags (the 32-bit IFA_FLAGS attribute)."""

    NONE = 0
    SECONDARY = 0x01
    NODAD = 0x02
    OPTIMISTIC = 0x04
    DADFAILED = 0x08
    HOMEADDRESS = 0x10
    DEPRECATED = 0x20
    TENTATIVE = 0x40
    PERMANENT = 0x80
    MANAGETEMPADDR = 0x100
    NOPREFIXROUTE = 0x200
    MCAUTOJOIN = 0x400
    STABLE_PRIVACY = 0x800


class Scope(enum.IntEnum):
    """RT_SCOPE_* of an address; unknown kernel values are kept as plain ints."""

    UNIVERSE = 0
    SITE = 200
    LINK = 253
    HOST = 254
    NOWHERE = 255


class ResyncReason(enum.Enum):
    """Why the monitor rebuilt its state from a fresh dump."""

    INITIAL = "initial"
    OVERRUN = "overrun"
    REFRESH = "refresh"
    REQUESTED = "requested"


# --- records: what a NetState holds -------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Link:
    """One network interface."""

    ifindex: int
    """Kernel interface index, the identity of the link."""
    ifname: str
    """Interface name at the time of the message."""
    admin_up: bool
    """IFF_UP: the administrator set the link up."""
    oper: OperState
    """Operational state (RFC 2863)."""
    carrier: bool
    """IFF_LOWER_UP: the lower layer reports carrier."""

    @property
    def up(self) -> bool:
        """Usable for traffic. Devices without operstate support (lo, dummy, some
        tunnels) report UNKNOWN, so UNKNOWN with carrier counts as up."""
        return (self.admin_up and self.carrier
                and self.oper in (OperState.UP, OperState.UNKNOWN))


@dataclass(frozen=True, kw_only=True)
class Address:
    """One address on one interface."""

    ifindex: int
    """Interface index the address sits on."""
    ifname: str
    """Interface name (from the message label or the link table; may be empty)."""
    address: IPAddress
    """The local address."""
    prefixlen: int
    """Prefix length of the address's subnet."""
    flags: AddrFlag
    """IFA_F_* flags: tentative, deprecated, dadfailed matter for IPv6."""
    scope: int
    """RT_SCOPE_* (see `Scope`): 0 global, 253 link, 254 host."""

    @property
    def key(self) -> AddrKey:
        return (self.ifindex, self.address, self.prefixlen)


@dataclass(frozen=True, kw_only=True)
class Route:
    """One unicast route (one next hop of a multipath route)."""

    family: int
    """IP version, 4 or 6."""
    table: int
    """Routing table id (254 is main)."""
    dst: IPNetwork
    """Destination prefix; 0.0.0.0/0 or ::/0 for a default route."""
    gateway: IPAddress | None
    """Next hop, None for a directly connected route."""
    oif: int | None
    """Output interface index, if the route has one."""
    ifname: str
    """Name of `oif` when known, else empty."""
    metric: int
    """RTA_PRIORITY; lower wins."""
    prefsrc: IPAddress | None = None
    """Preferred source address (RTA_PREFSRC), if set."""

    @property
    def key(self) -> RouteKey:
        # ifname and prefsrc are attributes of the route, not part of its identity.
        return (self.family, self.table, self.dst, self.metric, self.gateway, self.oif)


AddrKey = tuple[int, IPAddress, int]
RouteKey = tuple[int, int, IPNetwork, int, IPAddress | None, int | None]


# --- events -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NetEvent:
    """Base class of every event the net layer emits."""


@dataclass(frozen=True, kw_only=True)
class LinkUp(Link, NetEvent):
    """A link is (now, or still) usable; carries the link's full new state."""


@dataclass(frozen=True, kw_only=True)
class LinkDown(Link, NetEvent):
    """A link exists but is not usable (admin down, no carrier, or oper down)."""


@dataclass(frozen=True, kw_only=True)
class LinkRemoved(NetEvent):
    """A link vanished; its addresses and routes went with it."""

    ifindex: int
    """Index of the removed link."""
    ifname: str
    """Its last known name."""


@dataclass(frozen=True, kw_only=True)
class AddressAdded(Address, NetEvent):
    """An address appeared or changed (flags, scope): carries the full new state."""


@dataclass(frozen=True, kw_only=True)
class AddressRemoved(Address, NetEvent):
    """An address went away."""


@dataclass(frozen=True, kw_only=True)
class RouteChanged(Route, NetEvent):
    """A route appeared, changed, or (with added=False) went away."""

    added: bool = True
    """True for a new or replaced route, False for a removed one."""


@dataclass(frozen=True, kw_only=True)
class Resynced(NetEvent):
    """The state was rebuilt from a fresh dump; the events just before brought any
    consumer's view from what it had to the kernel's current state."""

    reason: ResyncReason
    """Why: initial sync, socket overrun, post-change refresh, or asked for."""


R = TypeVar("R", Link, Address, Route)


def record(cls: type[R], event: Any) -> R:
    """The plain record (`Link`, `Address`, `Route`) of an event carrying its fields."""
    return cls(**{f.name: getattr(event, f.name) for f in fields(cls)})


def link_event(link: Link) -> LinkUp | LinkDown:
    """The event announcing `link`'s current state."""
    cls = LinkUp if link.up else LinkDown
    return cls(**{f.name: getattr(link, f.name) for f in fields(Link)})
