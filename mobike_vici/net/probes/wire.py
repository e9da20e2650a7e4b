"""Pure wire formats of the probes: ICMP/ICMPv6 echo and the authenticated UDP echo.

UDP echo (all integers big-endian, 56 bytes)::

    magic "MVPR" | version u8 | kind u8 (1 request, 2 response) | reserved u16
    | probe id u64 | timestamp u64 | nonce 16 | HMAC-SHA256(key, all before)[:16]

The response repeats id, timestamp and nonce under its own MAC; ``kind`` is inside
the MAC, so a captured request cannot be reflected as a response. The prober only
accepts a response whose nonce it is still waiting for (replays of old responses
and answers to probes it never sent are dropped).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from enum import IntEnum

MAGIC = b"MVPR"
VERSION = 1
NONCE_LEN = 16
MAC_LEN = 16
TOKEN_LEN = 16
_UDP_HEAD = struct.Struct("!4sBBHQQ16s")
UDP_ECHO_LEN = _UDP_HEAD.size + MAC_LEN
_ICMP_HEAD = struct.Struct("!BBHHH")

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129


class DecodeError(ValueError):
    """Not a probe packet of ours (or not intact)."""


class Kind(IntEnum):
    REQUEST = 1
    RESPONSE = 2


@dataclass(frozen=True, slots=True)
class UdpEcho:
    kind: Kind
    probe_id: int
    timestamp: int
    nonce: bytes


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()[:MAC_LEN]


def encode_udp_echo(msg: UdpEcho, key: bytes) -> bytes:
    if len(msg.nonce) != NONCE_LEN:
        raise ValueError("nonce must be 16 bytes")
    head = _UDP_HEAD.pack(MAGIC, VERSION, msg.kind, 0, msg.probe_id, msg.timestamp, msg.nonce)
    return head + _mac(key, head)


def decode_udp_echo(data: bytes, key: bytes) -> UdpEcho:
    """Parse and authenticate; raises DecodeError for anything not intact under `key`."""
    if len(data) != UDP_ECHO_LEN:
        raise DecodeError("length")
    head, mac = data[: _UDP_HEAD.size], data[_UDP_HEAD.size:]
    magic, version, kind, _reserved, probe_id, timestamp, nonce = _UDP_HEAD.unpack(head)
    if magic != MAGIC or version != VERSION:
        raise DecodeError("magic or version")
    if not hmac.compare_digest(mac, _mac(key, head)):
        raise DecodeError("mac")
    try:
        k = Kind(kind)
    except ValueError as exc:
        raise DecodeError("kind") from exc
    return UdpEcho(kind=k, probe_id=probe_id, timestamp=timestamp, nonce=nonce)


def response_to(request: UdpEcho) -> UdpEcho:
    return UdpEcho(kind=Kind.RESPONSE, probe_id=request.probe_id,
                   timestamp=request.timestamp, nonce=request.nonce)


@dataclass(frozen=True, slots=True)
class IcmpEcho:
    """An echo request or reply; ``token`` is the random payload that ties a reply to its probe."""

    type: int
    ident: int
    seq: int
    token: bytes


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def encode_icmp_echo(msg: IcmpEcho) -> bytes:
    """The ICMP message; the checksum is filled in (the kernel redoes it for ICMPv6)."""
    body = _ICMP_HEAD.pack(msg.type, 0, 0, msg.ident, msg.seq) + msg.token
    csum = inet_checksum(body)
    return body[:2] + struct.pack("!H", csum) + body[4:]


def decode_icmp_echo(data: bytes, *, ipv4_header: bool = False) -> IcmpEcho:
    """Parse an echo message; raw IPv4 sockets deliver the IP header first (`ipv4_header`)."""
    if ipv4_header:
        if len(data) < 20 or data[0] >> 4 != 4:
            raise DecodeError("ipv4 header")
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < _ICMP_HEAD.size + TOKEN_LEN:
        raise DecodeError("short")
    type_, code, _csum, ident, seq = _ICMP_HEAD.unpack_from(data)
    if code != 0:
        raise DecodeError("code")
    return IcmpEcho(type=type_, ident=ident, seq=seq,
                    token=data[_ICMP_HEAD.size:_ICMP_HEAD.size + TOKEN_LEN])
