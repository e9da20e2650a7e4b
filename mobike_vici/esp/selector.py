"""Traffic selectors as the userspace data plane matches them, and the packet fields
they are matched against.

The core hands selectors over as text (``ts_to_str``); :func:`parse_selector` turns
that into integers once, at install, and :func:`flow_of` reads an IP packet's
addresses, protocol and ports once per packet.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from ..core.ts import PROTOCOL_NAMES

__all__ = ["Flow", "FlowKey", "Selector", "address_key", "flow_of", "parse_selector"]

_PROTO_BY_NAME = {name: number for number, name in PROTOCOL_NAMES.items()}
_PORT_PROTOCOLS = frozenset({6, 17, 132, 136})  # TCP, UDP, SCTP, UDP-Lite
_ICMP = frozenset({1, 58})
_PORT_VALUE = re.compile(r"(\d+)(?:\((\d+)\))?")


@dataclass(frozen=True, slots=True)
class Selector:
    """One traffic selector as integers: an address range, a protocol (0: any), a port range."""

    version: int
    lo: int
    hi: int
    proto: int = 0
    port_lo: int = 0
    port_hi: int = 65535

    @property
    def any_port(self) -> bool:
        return self.port_lo == 0 and self.port_hi == 65535

    @property
    def addr_only(self) -> bool:
        return self.proto == 0 and self.any_port

    @property
    def opaque(self) -> bool:
        """RFC 4301 4.4.1 OPAQUE: selects packets whose port is not available."""
        return self.port_lo == 65535 and self.port_hi == 0

    def matches(self, version: int, addr: int, proto: int, port: int | None) -> bool:
        """``port`` is None when the packet shows none (another protocol, a later fragment)."""
        if version != self.version or not self.lo <= addr <= self.hi:
            return False
        if self.proto and self.proto != proto:
            return False
        if self.any_port:
            return True
        if port is None:
            return self.opaque
        return self.port_lo <= port <= self.port_hi


SELECTOR_CACHE = 4096
"""Selector texts remembered: a gateway's CHILD_SAs repeat a few (one per virtual IP at
most), and parsing them again took a few per cent of its CPU per setup and rekey."""


@functools.lru_cache(maxsize=SELECTOR_CACHE)
def parse_selector(text: str) -> Selector:
    """A selector as the core prints it (``10.1.0.0/24``, ``a..b[tcp/80-90]``, ``[icmp/8(0)]``).

    Raises ValueError for anything else (never cached). The result is immutable and
    may be shared.
    """
    addr_part, bracket, rest = text.partition("[")
    if ".." in addr_part:
        first, last = (ipaddress.ip_address(a) for a in addr_part.split("..", 1))
        if first.version != last.version:
            raise ValueError(f"mixed address families in {text!r}")
        version, lo, hi = first.version, int(first), int(last)
    else:
        net = ipaddress.ip_network(addr_part, strict=False)
        version, lo, hi = net.version, int(net.network_address), int(net.broadcast_address)
    if not bracket:
        return Selector(version, lo, hi)
    if not rest.endswith("]"):
        raise ValueError(f"unterminated selector {text!r}")
    proto_text, _, ports = rest[:-1].partition("/")
    proto = int(proto_text) if proto_text.isdigit() else _PROTO_BY_NAME.get(proto_text, -1)
    if not 0 <= proto <= 255:
        raise ValueError(f"unknown protocol in selector {text!r}")
    if not ports:
        return Selector(version, lo, hi, proto)
    if ports == "OPAQUE":
        return Selector(version, lo, hi, proto, 65535, 0)
    bounds = ports.split("-", 1)
    values = [_port_value(b, proto in _ICMP, text) for b in bounds]
    return Selector(version, lo, hi, proto, values[0], values[-1])


def _port_value(value: str, icmp: bool, text: str) -> int:
    match = _PORT_VALUE.fullmatch(value)
    if match is None:
        raise ValueError(f"bad port in selector {text!r}")
    number = int(match.group(1))
    if icmp:
        return (number << 8) | int(match.group(2) or 0)
    return number


FlowKey = bytes


def address_key(packet: bytes) -> FlowKey:
    """Source and destination address bytes: the cache key when selectors have no ports.

    Garbage gives some key that :func:`flow_of` never produces, so it is never a hit.
    """
    version = packet[0] >> 4 if packet else 0
    if version == 4:
        return packet[12:20]
    if version == 6:
        return packet[8:40]
    return b""


Flow = tuple[int, int, int, int, int | None, int | None, FlowKey]


def flow_of(packet: bytes) -> Flow | None:
    """(version, src, dst, proto, sport, dport, address key) of an IP packet, None if not IP.

    Ports are None where the packet has none we can see (other protocols, a
    non-first fragment); for ICMP both are type << 8 | code as in selectors.
    """
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        proto = packet[9]
        key = packet[12:20]
        src = int.from_bytes(key[:4], "big")
        dst = int.from_bytes(key[4:], "big")
        first_fragment = not (int.from_bytes(packet[6:8], "big") & 0x1FFF)
        offset = ihl
    elif version == 6:
        if len(packet) < 40:
            return None
        # Extension headers are not walked: selectors with ports then see proto as is.
        proto = packet[6]
        key = packet[8:40]
        src = int.from_bytes(key[:16], "big")
        dst = int.from_bytes(key[16:], "big")
        first_fragment = True
        offset = 40
    else:
        return None
    sport = dport = None
    if first_fragment and len(packet) >= offset + 4:
        if proto in _PORT_PROTOCOLS:
            sport = int.from_bytes(packet[offset:offset + 2], "big")
            dport = int.from_bytes(packet[offset + 2:offset + 4], "big")
        elif proto in _ICMP:
            sport = dport = (packet[offset] << 8) | packet[offset + 1]
    return version, src, dst, proto, sport, dport, key
