"""A classic BPF program that passes only ESP to or from given peers, for a packet socket.

Built for ``AF_PACKET``/``SOCK_DGRAM`` sockets, whose filter sees the packet from
its network header on: IPv4 or IPv6 (no extension headers), from or to one of the
peer addresses, carrying either ESP (protocol 50) or UDP-encapsulated ESP (port 4500
at either end, a non-zero first word: RFC 3948 puts IKE behind a zero marker, and a
1-byte NAT keepalive is too short to load that word, which rejects it). Non-first
fragments are refused. An accepted packet is cut to ``SNAP`` bytes: headers only.

Pure: ``esp_filter(peers)`` returns the instructions, ``pack`` the bytes for
``SO_ATTACH_FILTER``. ``MAX_PEERS`` bounds the program (classic BPF allows 4096
instructions; short jumps reach 255 ahead, long ones go through ``ja``).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ..types import IPAddress

MAX_PEERS = 64
SNAP = 96  # IPv6 (40) + UDP (8) + SPI and sequence number (8), with room to spare
ESP_PROTO = 50
UDP_PROTO = 17
NATT_PORT = 4500

# Opcodes (linux/filter.h, linux/bpf_common.h).
LD_W_ABS = 0x20
LD_H_ABS = 0x28
LD_B_ABS = 0x30
LD_W_IND = 0x40
LD_H_IND = 0x48
LDX_B_MSH = 0xB1
ALU_RSH_K = 0x74
JMP_JA = 0x05
JMP_JEQ_K = 0x15
JMP_JSET_K = 0x45
RET_K = 0x06


@dataclass(frozen=True, slots=True)
class Insn:
    code: int
    jt: int
    jf: int
    k: int


@dataclass(frozen=True, slots=True)
class _Op:
    """An instruction whose jump targets are labels (None: the next one) until resolved."""

    code: int
    k: int = 0
    jt: str | None = None
    jf: str | None = None


@dataclass(frozen=True, slots=True)
class _Label:
    """Names the instruction that follows it."""

    name: str


def esp_filter(peers: Iterable[IPAddress]) -> list[Insn]:
    """The program: ESP between us and any of ``peers`` passes (SNAP bytes), nothing else.

    No peers: a program that refuses everything. More than ``MAX_PEERS``: ValueError.
    """
    v4 = sorted({p for p in peers if isinstance(p, ipaddress.IPv4Address)})
    v6 = sorted({p for p in peers if isinstance(p, ipaddress.IPv6Address)})
    if len(v4) + len(v6) > MAX_PEERS:
        raise ValueError(f"at most {MAX_PEERS} peer addresses, got {len(v4) + len(v6)}")
    ops: list[_Op | _Label] = [
        _Op(LD_B_ABS, 0), _Op(ALU_RSH_K, 4),
        _Op(JMP_JEQ_K, 4, jt="v4"),
        _Op(JMP_JEQ_K, 6, jf="drop0"), _Op(JMP_JA, jt="v6"),
        _Label("drop0"), _Op(RET_K, 0),
        # IPv4: not a non-first fragment, source (12) or destination (16) a peer.
        _Label("v4"), _Op(LD_H_ABS, 6), _Op(JMP_JSET_K, 0x1FFF, jt="drop4"),
    ]
    for offset in (12, 16):
        ops.append(_Op(LD_W_ABS, offset))
        ops += [_Op(JMP_JEQ_K, int(addr), jt="v4proto") for addr in v4]
    ops += [
        _Op(JMP_JA, jt="drop4"),
        _Label("v4proto"), _Op(LD_B_ABS, 9),
        _Op(JMP_JEQ_K, ESP_PROTO, jt="accept4"),
        _Op(JMP_JEQ_K, UDP_PROTO, jf="drop4"),
        _Op(LDX_B_MSH, 0),  # X = IPv4 header length
        _Op(LD_H_IND, 0), _Op(JMP_JEQ_K, NATT_PORT, jt="v4marker"),
        _Op(LD_H_IND, 2), _Op(JMP_JEQ_K, NATT_PORT, jf="drop4"),
        _Label("v4marker"), _Op(LD_W_IND, 8), _Op(JMP_JEQ_K, 0, jt="drop4", jf="accept4"),
        _Label("accept4"), _Op(RET_K, SNAP),
        _Label("drop4"), _Op(RET_K, 0),
        # IPv6 (no extension headers): source (8..24) or destination (24..40) a peer.
        _Label("v6"),
    ]
    n = 0
    for base in (8, 24):
        for addr in v6:
            n += 1
            for i, word in enumerate(struct.unpack("!4I", addr.packed)):
                ops += [_Op(LD_W_ABS, base + 4 * i), _Op(JMP_JEQ_K, word, jf=f"v6miss{n}")]
            ops += [_Op(JMP_JA, jt="v6proto"), _Label(f"v6miss{n}")]
    ops += [
        _Op(JMP_JA, jt="drop"),
        _Label("v6proto"), _Op(LD_B_ABS, 6),
        _Op(JMP_JEQ_K, ESP_PROTO, jt="accept"),
        _Op(JMP_JEQ_K, UDP_PROTO, jf="drop"),
        _Op(LD_H_ABS, 40), _Op(JMP_JEQ_K, NATT_PORT, jt="v6marker"),
        _Op(LD_H_ABS, 42), _Op(JMP_JEQ_K, NATT_PORT, jf="drop"),
        _Label("v6marker"), _Op(LD_W_ABS, 48), _Op(JMP_JEQ_K, 0, jt="drop", jf="accept"),
        _Label("accept"), _Op(RET_K, SNAP),
        _Label("drop"), _Op(RET_K, 0),
    ]
    return _resolve(ops)


def _resolve(ops: list[_Op | _Label]) -> list[Insn]:
    where: dict[str, int] = {}
    real: list[_Op] = []
    for op in ops:
        if isinstance(op, _Label):
            where[op.name] = len(real)  # the next real instruction
        else:
            real.append(op)
    out: list[Insn] = []
    for i, op in enumerate(real):
        if op.code == JMP_JA:
            assert op.jt is not None
            out.append(Insn(op.code, 0, 0, where[op.jt] - i - 1))
            continue
        jt = 0 if op.jt is None else where[op.jt] - i - 1
        jf = 0 if op.jf is None else where[op.jf] - i - 1
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise ValueError(f"jump out of reach at instruction {i}")  # a bug, not input
        out.append(Insn(op.code, jt, jf, op.k))
    return out


def pack(program: list[Insn]) -> bytes:
    """The ``struct sock_filter`` array, native byte order, for ``SO_ATTACH_FILTER``."""
    return b"".join(struct.pack("=HBBI", i.code, i.jt, i.jf, i.k & 0xFFFFFFFF)
                    for i in program)


def parse_addresses(packet: bytes) -> tuple[IPAddress, IPAddress] | None:
    """(source, destination) of an IPv4 or IPv6 packet (a capture of at least the
    header); None when it is neither or too short."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        return (ipaddress.IPv4Address(packet[12:16]), ipaddress.IPv4Address(packet[16:20]))
    if version == 6 and len(packet) >= 40:
        return (ipaddress.IPv6Address(packet[8:24]), ipaddress.IPv6Address(packet[24:40]))
    return None


def parse_spi(packet: bytes) -> int | None:
    """The SPI of an ESP packet as the filter passes it (plain ESP, or ESP in UDP on port
    4500), from a capture of its headers; None when it is too short or neither."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        offset, proto = (packet[0] & 0x0F) * 4, packet[9]
    elif version == 6 and len(packet) >= 40:
        offset, proto = 40, packet[6]
    else:
        return None
    if proto == UDP_PROTO:
        offset += 8
    elif proto != ESP_PROTO:
        return None
    if len(packet) < offset + 4:
        return None
    spi: int = struct.unpack_from("!I", packet, offset)[0]
    return spi
