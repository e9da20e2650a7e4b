"""A lean decoder for the rtnetlink messages the monitor reads: links, addresses, routes.

pyroute2 decodes every attribute of a message (a link's statistics, its per-family
settings, dozens of nested tables), which costs a few tenths of a millisecond per
link message; a link going down or coming back brings ten and more messages, and the
event loop, with the userspace tunnel's packets, waited for all of them before the
handover's first packet left. Here only the header fields and the few attributes
``rtnl.to_events`` reads are decoded, into plain dicts that answer the same
``msg[field]``, ``msg.get(attribute)`` and ``msg["header"][...]`` as pyroute2's
messages. Anything else (done, error, other types) goes to pyroute2 as before.

Values: addresses as text, names as text, numbers as ints; the operational state as
its number (pyroute2 gives its name; ``rtnl`` takes either).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from typing import Any

RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence number, port id
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope,
#                                       type, flags
_RTATTR = struct.Struct("=HH")  # length, type
_RTNEXTHOP = struct.Struct("=HBBi")  # length, flags, hops, ifindex
_U32 = struct.Struct("=I")
_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

Decoded = dict[str, Any]


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _u32(raw: bytes) -> int:
    return int(_U32.unpack_from(raw)[0]) if len(raw) >= 4 else 0


def _u8(raw: bytes) -> int:
    return raw[0] if raw else 0


def _address(raw: bytes) -> str | None:
    return str(ipaddress.ip_address(raw)) if len(raw) in (4, 16) else None


_LINK_ATTRS: dict[int, tuple[str, Callable[[bytes], Any]]] = {
    3: ("IFLA_IFNAME", _text), 16: ("IFLA_OPERSTATE", _u8)}
_ADDR_ATTRS: dict[int, tuple[str, Callable[[bytes], Any]]] = {
    1: ("IFA_ADDRESS", _address), 2: ("IFA_LOCAL", _address), 3: ("IFA_LABEL", _text),
    8: ("IFA_FLAGS", _u32)}
_ROUTE_ATTRS: dict[int, tuple[str, Callable[[bytes], Any]]] = {
    1: ("RTA_DST", _address), 4: ("RTA_OIF", _u32), 5: ("RTA_GATEWAY", _address),
    6: ("RTA_PRIORITY", _u32), 7: ("RTA_PREFSRC", _address), 15: ("RTA_TABLE", _u32)}
RTA_MULTIPATH = 9


def _attrs(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """Attribute type -> payload, for the attributes between ``start`` and ``end``."""
    out: dict[int, bytes] = {}
    while start + _RTATTR.size <= end:
        length, atype = _RTATTR.unpack_from(data, start)
        if length < _RTATTR.size or start + length > end:
            break
        out.setdefault(atype & _TYPE_MASK, data[start + _RTATTR.size:start + length])
        start += (length + 3) & ~3
    return out


def _named(raw: dict[int, bytes], table: dict[int, tuple[str, Callable[[bytes], Any]]],
           into: Decoded) -> None:
    for atype, (name, convert) in table.items():
        if atype in raw:
            into[name] = convert(raw[atype])


def _nexthops(raw: bytes) -> list[Decoded]:
    out: list[Decoded] = []
    pos = 0
    while pos + _RTNEXTHOP.size <= len(raw):
        length, _flags, _hops, ifindex = _RTNEXTHOP.unpack_from(raw, pos)
        if length < _RTNEXTHOP.size or pos + length > len(raw):
            break
        hop: Decoded = {"oif": ifindex}
        _named(_attrs(raw, pos + _RTNEXTHOP.size, pos + length),
               {5: ("RTA_GATEWAY", _address)}, hop)
        out.append(hop)
        pos += (length + 3) & ~3
    return out


def decode_one(data: bytes, start: int, end: int) -> Decoded | None:
    """One link, address or route message (``data[start:end]``, header included) as a
    dict; None for any other type or a message too short for its header."""
    length, mtype, flags, seq, _pid = _NLMSGHDR.unpack_from(data, start)
    body = start + _NLMSGHDR.size
    msg: Decoded = {"header": {"length": length, "type": mtype, "flags": flags,
                               "sequence_number": seq}}
    if mtype in (RTM_NEWLINK, RTM_DELLINK) and body + _IFINFOMSG.size <= end:
        family, _ltype, index, lflags, _change = _IFINFOMSG.unpack_from(data, body)
        msg.update(family=family, index=index, flags=lflags)
        _named(_attrs(data, body + _IFINFOMSG.size, end), _LINK_ATTRS, msg)
    elif mtype in (RTM_NEWADDR, RTM_DELADDR) and body + _IFADDRMSG.size <= end:
        family, prefixlen, aflags, scope, index = _IFADDRMSG.unpack_from(data, body)
        msg.update(family=family, prefixlen=prefixlen, flags=aflags, scope=scope, index=index)
        _named(_attrs(data, body + _IFADDRMSG.size, end), _ADDR_ATTRS, msg)
    elif mtype in (RTM_NEWROUTE, RTM_DELROUTE) and body + _RTMSG.size <= end:
        (family, dst_len, _src_len, _tos, table, proto, scope, rtype,
         rflags) = _RTMSG.unpack_from(data, body)
        msg.update(family=family, dst_len=dst_len, table=table, proto=proto, scope=scope,
                   type=rtype, flags=rflags)
        raw = _attrs(data, body + _RTMSG.size, end)
        _named(raw, _ROUTE_ATTRS, msg)
        if RTA_MULTIPATH in raw:
            msg["RTA_MULTIPATH"] = _nexthops(raw[RTA_MULTIPATH])
    else:
        return None
    return msg


def decode(data: bytes, fallback: Callable[[bytes], list[Any]]) -> list[Any]:
    """Every message in one datagram, in order: links, addresses and routes decoded
    here, the rest by ``fallback`` (pyroute2)."""
    out: list[Any] = []
    pos = 0
    while pos + _NLMSGHDR.size <= len(data):
        length = _U32.unpack_from(data, pos)[0]
        if length < _NLMSGHDR.size or pos + length > len(data):
            break
        msg = decode_one(data, pos, pos + length)
        if msg is not None:
            out.append(msg)
        else:
            out.extend(fallback(data[pos:pos + length]))
        pos += (length + 3) & ~3
    return out
