"""Traffic selectors (RFC 7296 §2.9): resolving config specs, narrowing, printing, matching.

Behaves like strongSwan 5.9.8 (``child_cfg_t.get_traffic_selectors`` and
``traffic_selector_t.get_subset``) so both ends agree on the narrowed result:

* ``dynamic`` is replaced by the host address, or by the virtual IPs when there
  are any; a virtual IP of ``0.0.0.0``/``::`` (an initiator asking for one)
  becomes the whole address family, which the responder then narrows to the
  address it assigned.
* Narrowing intersects every configured selector with every proposed one, in
  configured order, and finally drops selectors contained in another one.
* ICMP type/code live in the port fields as RFC 4301 §4.4.1.3 says (type in the
  high byte, code in the low byte); a configured ICMP "port" below 256 is a
  type and is shifted into the high byte, as charon does.

Pure functions; the only system lookup is the optional service-name lookup of
:func:`ts_to_str`, which is injectable.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence

from ..config.model import TrafficSelectorSpec
from ..ikev2.constants import TsType
from ..ikev2.payloads import TrafficSelector
from ..types import IPAddress

IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
PORT_ANY = (0, 0xFFFF)
# RFC 7296 §3.13.1: start 65535 and end 0 mean OPAQUE (ports not available).
PORT_OPAQUE = (0xFFFF, 0)

# Names as /etc/protocols spells them (what charon prints through getprotobynumber);
# a fixed table keeps printing pure and identical on every host.
PROTOCOL_NAMES: dict[int, str] = {
    1: "icmp",
    2: "igmp",
    4: "ipencap",
    6: "tcp",
    17: "udp",
    41: "ipv6",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "ipv6-icmp",
    89: "ospf",
    103: "pim",
    112: "vrrp",
    132: "sctp",
    136: "udplite",
}

ServiceLookup = Callable[[int, str | None], str | None]
"""(port, protocol name or None) -> service name or None."""


def system_service_name(port: int, protocol: str | None) -> str | None:
    """The /etc/services name of ``port`` (what charon prints), or None."""
    try:
        if protocol is None:
            return socket.getservbyport(port)
        return socket.getservbyport(port, protocol)
    except (OSError, OverflowError):
        return None


def no_service_names(port: int, protocol: str | None) -> str | None:
    """A :data:`ServiceLookup` that always prints numbers."""
    return None


def icmp_port(icmp_type: int, code: int = 0) -> int:
    """The 16-bit "port" that carries an ICMP type and code (RFC 4301 §4.4.1.3)."""
    return (icmp_type & 0xFF) << 8 | (code & 0xFF)


def _ts_type(addr: IPAddress) -> TsType:
    return TsType.TS_IPV4_ADDR_RANGE if addr.version == 4 else TsType.TS_IPV6_ADDR_RANGE


def _family_range(version: int) -> tuple[IPAddress, IPAddress]:
    if version == 4:
        return ipaddress.IPv4Address(0), ipaddress.IPv4Address(2**32 - 1)
    return ipaddress.IPv6Address(0), ipaddress.IPv6Address(2**128 - 1)


def _config_ports(protocol: int, start: int, end: int) -> tuple[int, int]:
    # charon treats an ICMP "port" below 256 as a bare type (traffic_selector_create).
    if protocol in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        start = start << 8 if start < 256 else start
        end = end << 8 if end < 256 else end
    return start, end


def _make(
    protocol: int, ports: tuple[int, int], first: IPAddress, last: IPAddress
) -> TrafficSelector:
    return TrafficSelector(
        ts_type=_ts_type(first),
        ip_protocol=protocol,
        start_port=ports[0],
        end_port=ports[1],
        start_addr=first,
        end_addr=last,
    )


def ts_from_cidr(
    text: str, protocol: int = 0, start_port: int = 0, end_port: int = 0xFFFF
) -> TrafficSelector:
    """A selector for ``"10.1.0.0/24"`` or a bare address (``/32``/``/128``).

    Host bits are cleared as charon does (``10.1.0.7/24`` is ``10.1.0.0/24``).
    Raises ValueError for anything that is not an address or CIDR network.
    """
    net = ipaddress.ip_network(text.strip(), strict=False)
    ports = _config_ports(protocol, start_port, end_port)
    return _make(protocol, ports, net.network_address, net.broadcast_address)


def resolve(
    specs: Sequence[TrafficSelectorSpec],
    own: IPAddress | None,
    vips: Sequence[IPAddress] = (),
) -> list[TrafficSelector]:
    """Turn config specs into payload selectors, substituting ``dynamic``.

    ``own`` is this side's address for local specs, the peer's for remote ones;
    ``vips`` the virtual IPs of that side: the requested ``0.0.0.0``/``::`` on an
    initiator before the CP reply (proposes the whole family), the assigned
    address afterwards, or what a responder handed out to the peer. With
    neither ``own`` nor ``vips``, ``dynamic`` is what charon puts on the wire for
    an unresolved dynamic selector: all of IPv4.

    Redundant selectors (contained in another one) are dropped, like charon.
    """
    hosts: list[IPAddress] = list(vips) if vips else ([own] if own is not None else [])
    out: list[TrafficSelector] = []
    for spec in specs:
        ports = _config_ports(spec.protocol, spec.port_start, spec.port_end)
        if spec.network is not None:
            net = spec.network
            out.append(_make(spec.protocol, ports, net.network_address, net.broadcast_address))
        elif not hosts:
            out.append(_make(spec.protocol, ports, *_family_range(4)))
        else:
            for host in hosts:
                if host.is_unspecified:
                    out.append(_make(spec.protocol, ports, *_family_range(host.version)))
                else:
                    out.append(_make(spec.protocol, ports, host, host))
    return remove_redundant(out)


def _is_opaque(ts: TrafficSelector) -> bool:
    return (ts.start_port, ts.end_port) == PORT_OPAQUE


def _is_any_port(ts: TrafficSelector) -> bool:
    return (ts.start_port, ts.end_port) == PORT_ANY


def subset(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """The intersection of two selectors, or None when they do not overlap.

    Protocol 0 is a wildcard; OPAQUE ports survive only against OPAQUE or any.
    """
    if a.ts_type != b.ts_type or a.start_addr.version != b.start_addr.version:
        return None
    if a.ip_protocol != b.ip_protocol and a.ip_protocol != 0 and b.ip_protocol != 0:
        return None
    protocol = max(a.ip_protocol, b.ip_protocol)
    if (_is_opaque(a) and (_is_opaque(b) or _is_any_port(b))) or (
        _is_opaque(b) and _is_any_port(a)
    ):
        ports = PORT_OPAQUE
    else:
        ports = (max(a.start_port, b.start_port), min(a.end_port, b.end_port))
        if ports[0] > ports[1]:
            return None
    first = max(int(a.start_addr), int(b.start_addr))
    last = min(int(a.end_addr), int(b.end_addr))
    if first > last:
        return None
    make = type(a.start_addr)
    return TrafficSelector(
        ts_type=a.ts_type,
        ip_protocol=protocol,
        start_port=ports[0],
        end_port=ports[1],
        start_addr=make(first),
        end_addr=make(last),
    )


def is_contained_in(inner: TrafficSelector, outer: TrafficSelector) -> bool:
    """True if every packet ``inner`` selects is also selected by ``outer``."""
    return subset(inner, outer) == inner


def remove_redundant(selectors: Iterable[TrafficSelector]) -> list[TrafficSelector]:
    """Drop selectors contained in another (the first of equal ones stays), keeping order."""
    kept: list[TrafficSelector] = []
    for ts in selectors:
        if any(is_contained_in(ts, k) for k in kept):
            continue
        kept = [k for k in kept if not is_contained_in(k, ts)]
        kept.append(ts)
    return kept


def narrow(
    proposed: Sequence[TrafficSelector], configured: Sequence[TrafficSelector]
) -> list[TrafficSelector]:
    """Intersect the peer's selectors with ours (``configured`` from :func:`resolve`).

    The result follows configured order, then proposed order, like charon; an
    empty list means TS_UNACCEPTABLE. Used by the responder on TSi/TSr and by
    the initiator on the responder's answer.
    """
    result: list[TrafficSelector] = []
    for mine in configured:
        for theirs in proposed:
            common = subset(mine, theirs)
            if common is not None:
                result.append(common)
    return remove_redundant(result)


def addr_to_str(addr: IPAddress) -> str:
    """An address as glibc's inet_ntop prints it (IPv4-mapped/compatible in dotted form)."""
    if addr.version == 4:
        return str(addr)
    packed = int(addr)
    high = packed >> 32
    low = packed & 0xFFFFFFFF
    # glibc prints the last 32 bits dotted after exactly six zero words, or after
    # five zero words and ffff; "::" and "::1"-like short forms stay hex.
    if (high == 0 and (low >> 16) != 0) or high == 0xFFFF:
        prefix = "::ffff:" if high == 0xFFFF else "::"
        return prefix + str(ipaddress.IPv4Address(low))
    return addr.compressed


def _prefix_len(ts: TrafficSelector) -> int | None:
    first, last = int(ts.start_addr), int(ts.end_addr)
    size = last - first + 1
    if size <= 0 or size & (size - 1) or first % size:
        return None
    bits = 32 if ts.start_addr.version == 4 else 128
    return bits - (size.bit_length() - 1)


def _icmp_str(port: int) -> str:
    icmp_type, code = port >> 8, port & 0xFF
    return f"{icmp_type}({code})" if code else f"{icmp_type}"


def ts_to_str(ts: TrafficSelector, services: ServiceLookup = system_service_name) -> str:
    """strongSwan's ``%R`` format: ``10.1.0.0/24``, ``10.1.0.5/32[tcp/http]``, ``a..b[udp]``.

    A single port is printed by service name when ``services`` knows one (charon
    uses getservbyport); pass :func:`no_service_names` for numbers only.
    """
    bits = _prefix_len(ts)
    if bits is None:
        text = f"{addr_to_str(ts.start_addr)}..{addr_to_str(ts.end_addr)}"
    else:
        text = f"{addr_to_str(ts.start_addr)}/{bits}"
    has_proto = ts.ip_protocol != 0
    has_ports = not _is_any_port(ts)
    if not has_proto and not has_ports:
        return text
    proto_name = PROTOCOL_NAMES.get(ts.ip_protocol) if has_proto else None
    text += "[" + (proto_name or str(ts.ip_protocol))
    if has_ports:
        icmp = ts.ip_protocol in (IPPROTO_ICMP, IPPROTO_ICMPV6)
        if ts.start_port == ts.end_port:
            if icmp:
                port_text = _icmp_str(ts.start_port)
            else:
                port_text = services(ts.start_port, proto_name) or str(ts.start_port)
        elif _is_opaque(ts):
            port_text = "OPAQUE"
        elif icmp:
            port_text = f"{_icmp_str(ts.start_port)}-{_icmp_str(ts.end_port)}"
        else:
            port_text = f"{ts.start_port}-{ts.end_port}"
        text += "/" + port_text
    return text + "]"


