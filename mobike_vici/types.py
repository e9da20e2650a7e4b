"""Typed endpoints shared by every layer: an address and a port, a path between two."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

IKE_PORT = 500
NATT_PORT = 4500


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One side of a UDP path."""

    addr: IPAddress
    port: int

    @classmethod
    def parse(cls, addr: str, port: int) -> Endpoint:
        return cls(ipaddress.ip_address(addr), port)

    def __str__(self) -> str:
        # The event stream's "addr[port]" form, as charon prints endpoints.
        return f"{self.addr}[{self.port}]"


@dataclass(frozen=True, slots=True)
class Path:
    """A local and a remote endpoint: every exchange happens on one."""

    local: Endpoint
    remote: Endpoint

    def __str__(self) -> str:
        return f"{self.local} - {self.remote}"

    @property
    def natt(self) -> bool:
        """True when IKE on this path needs the non-ESP marker (RFC 3948)."""
        return self.local.port != IKE_PORT
