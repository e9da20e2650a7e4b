"""Single swanctl.conf values into typed ones: times, sizes, booleans, addresses, selectors.

Every function takes the located ``Value`` and raises ``ConfigError`` at its
file and line; nothing else escapes.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from enum import Enum
from typing import TypeVar

from .model import ConfigError, Network, TrafficSelectorSpec
from .parser import Value

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
E = TypeVar("E", bound=Enum)

_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_BYTE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_TRUE = frozenset({"yes", "true", "1", "enabled"})
_FALSE = frozenset({"no", "false", "0", "disabled"})
_HOSTNAME = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
# getprotobyname(3) names in common use; numbers work for the rest.
_PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51,
              "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132}
# getservbyname(3) names in common use; numbers work for the rest.
_SERVICES = {"ssh": 22, "smtp": 25, "domain": 53, "bootps": 67, "bootpc": 68, "http": 80,
             "ntp": 123, "snmp": 161, "https": 443, "isakmp": 500, "ipsec-nat-t": 4500}
ANY_ADDRS = frozenset({"%any", "%any4", "%any6"})


def error(v: Value, message: str) -> ConfigError:
    return ConfigError(v.file, v.line, message)


def split_list(v: Value) -> list[str]:
    """A comma list; empty items (``a,,b``, trailing comma) are dropped as swanctl does."""
    return [item.strip() for item in v.value.split(",") if item.strip()]


def parse_time(v: Value, key: str) -> float:
    m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", v.value)
    if not m:
        raise error(v, f"{key}: '{v.value}' is not a time (a number with s, m, h or d)")
    return float(int(m.group(1)) * _TIME_UNITS[m.group(2)])


def parse_bytes(v: Value, key: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", v.value)
    if not m:
        raise error(v, f"{key}: '{v.value}' is not a size (a number with k, m or g)")
    return int(m.group(1)) * _BYTE_UNITS[m.group(2).lower()]


def parse_uint(v: Value, key: str, maximum: int = 2**64 - 1, minimum: int = 0) -> int:
    text = v.value.strip()
    if not text.isdigit() or not text.isascii():
        raise error(v, f"{key}: '{v.value}' is not a number")
    number = int(text)
    if not minimum <= number <= maximum:
        raise error(v, f"{key}: {number} is out of range ({minimum}..{maximum})")
    return number


def parse_bool(v: Value, key: str) -> bool:
    text = v.value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise error(v, f"{key}: '{v.value}' is not yes or no")


def parse_enum(v: Value, key: str, choices: dict[str, E]) -> E:
    """``choices`` maps every accepted spelling (aliases included) to a member."""
    text = v.value.strip().lower()
    if text in choices:
        return choices[text]
    allowed = ", ".join(sorted({m.value for m in choices.values()}))
    raise error(v, f"{key}: unknown value '{v.value}' (expected one of {allowed})")


def parse_address(v: Value, key: str, text: str) -> Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise error(v, f"{key}: '{text}' is not an IP address") from None


def check_peer_address(v: Value, key: str, text: str) -> None:
    """``local_addrs``/``remote_addrs`` items: %any, an IP, a subnet, a range or a host name."""
    if text.lower() in ANY_ADDRS:
        return
    if "-" in text and _is_range(text):
        return
    try:
        ipaddress.ip_network(text, strict=False)
        return
    except ValueError:
        pass
    if "/" not in text and _HOSTNAME.match(text) and not text.replace(".", "").isdigit():
        return
    raise error(v, f"{key}: '{text}' is not an address, subnet, range or host name")


def _is_range(text: str) -> bool:
    first, _, last = text.partition("-")
    try:
        a = ipaddress.ip_address(first.strip())
        b = ipaddress.ip_address(last.strip())
    except ValueError:
        return False
    return a.version == b.version and int(a) <= int(b)


def is_single_peer(text: str) -> bool:
    """Whether an address item names one peer we could send an IKE_SA_INIT to."""
    if text.lower() in ANY_ADDRS:
        return False
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    return "/" not in text and not _is_range(text)  # a host name


def parse_ts(v: Value, key: str, text: str) -> TrafficSelectorSpec:
    """``10.0.0.0/24``, ``10.0.0.1``, ``dynamic``, each with an optional ``[proto/port]``."""
    net_text, bracket, rest = text.partition("[")
    net_text = net_text.strip()
    protocol, port_start, port_end = 0, 0, 65535
    if bracket:
        if not rest.endswith("]"):
            raise error(v, f"{key}: '{text}': '[' without a closing ']'")
        protocol, port_start, port_end = _parse_proto_port(v, key, rest[:-1])
    network: Network | None
    if net_text.lower() in ("dynamic", "%dynamic"):
        network = None
    elif "-" in net_text and _is_range(net_text):
        raise error(v, f"{key}: '{net_text}': address ranges in selectors are not supported")
    else:
        try:
            network = ipaddress.ip_network(net_text, strict=False)
        except ValueError:
            raise error(v, f"{key}: '{net_text}' is not a subnet, an address or dynamic") from None
    return TrafficSelectorSpec(network, protocol, port_start, port_end)


def _parse_proto_port(v: Value, key: str, inner: str) -> tuple[int, int, int]:
    proto_text, _, port_text = inner.partition("/")
    proto_text, port_text = proto_text.strip().lower(), port_text.strip().lower()
    if proto_text in ("", "%any"):
        protocol = 0
    elif proto_text.isdigit():
        protocol = int(proto_text)
        if protocol > 255:
            raise error(v, f"{key}: protocol {protocol} is out of range (0..255)")
    elif proto_text in _PROTOCOLS:
        protocol = _PROTOCOLS[proto_text]
    else:
        raise error(v, f"{key}: unknown protocol '{proto_text}'")
    if port_text in ("", "%any"):
        return protocol, 0, 65535
    if port_text == "opaque":
        return protocol, 65535, 0  # RFC 4301 OPAQUE: start above end
    first, dash, last = port_text.partition("-")
    start = _port(v, key, first)
    end = _port(v, key, last) if dash else start
    if start > end:
        raise error(v, f"{key}: port range '{port_text}' is reversed")
    return protocol, start, end


def _port(v: Value, key: str, text: str) -> int:
    text = text.strip()
    if text in _SERVICES:
        return _SERVICES[text]
    if not text.isdigit() or not text.isascii() or int(text) > 65535:
        raise error(v, f"{key}: '{text}' is not a port (0..65535 or a service name)")
    return int(text)


def parse_secret(v: Value) -> bytes:
    """swanctl's forms: ``0x`` hex, ``0s`` base64, anything else the string itself."""
    text = v.value
    if text[:2].lower() == "0x":
        digits = re.sub(r"[\s:]", "", text[2:])
        try:
            data = bytes.fromhex(digits)
        except ValueError:
            raise error(v, "secret: invalid hex after 0x") from None
    elif text[:2].lower() == "0s":
        try:
            data = base64.b64decode(text[2:].strip(), validate=True)
        except (binascii.Error, ValueError):
            raise error(v, "secret: invalid base64 after 0s") from None
    else:
        data = text.encode("utf-8")
    if not data:
        raise error(v, "secret is empty")
    return data
