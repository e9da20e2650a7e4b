"""IKE on UDP port 4500 as a packet socket sees it, and a copy of it sent from elsewhere.

- ``ike_filter()``: a classic BPF program for an ``AF_PACKET``/``SOCK_DGRAM`` socket
  (the packet from its network header on) that passes whole IPv4 or IPv6 (no extension
  headers) UDP datagrams to or from port 4500 behind the non-ESP marker (RFC 3948: four
  zero bytes, then the IKE message). Non-first fragments are refused.
- ``parse(packet)``: the addresses, ports and IKE header (SPIs, exchange, flags, message
  ID) of such a datagram, and its UDP payload (marker included) to send again as is.
- ``udp_segment(...)``: a UDP header and payload, checksummed, for a raw IP socket.

Pure: no sockets here (``daemon.ike_relay`` owns them).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ..types import IPAddress
from .esp_bpf import (
    ALU_RSH_K,
    JMP_JEQ_K,
    JMP_JSET_K,
    LD_B_ABS,
    LD_H_ABS,
    LD_H_IND,
    LD_W_ABS,
    LD_W_IND,
    LDX_B_MSH,
    NATT_PORT,
    RET_K,
    UDP_PROTO,
    Insn,
)

KEEP = 0xFFFF  # the whole datagram: it is sent again
MARKER = b"\x00\x00\x00\x00"
IKE_HEADER = 28
FLAG_RESPONSE = 0x20
EXCHANGES = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL"}


def ike_filter() -> list[Insn]:
    """The program: UDP to or from port 4500 whose payload starts with the zero marker.
    Jumps count from the next instruction; the comments give each one's index."""
    return [
        Insn(LD_B_ABS, 0, 0, 0),             # 0: the IP version
        Insn(ALU_RSH_K, 0, 0, 4),            # 1
        Insn(JMP_JEQ_K, 1, 0, 4),            # 2: IPv4 -> 4
        Insn(JMP_JEQ_K, 13, 12, 6),          # 3: IPv6 -> 17, else 16 drop
        *_v4(),
        *_v6(),
    ]


def _v4() -> list[Insn]:
    # Starts at 4; jumps counted from the next instruction.
    return [
        Insn(LD_H_ABS, 0, 0, 6),             # 4
        Insn(JMP_JSET_K, 10, 0, 0x1FFF),     # 5: non-first fragment -> 16 drop
        Insn(LD_B_ABS, 0, 0, 9),             # 6
        Insn(JMP_JEQ_K, 0, 8, UDP_PROTO),    # 7: not UDP -> 16 drop
        Insn(LDX_B_MSH, 0, 0, 0),            # 8: X = IPv4 header length
        Insn(LD_H_IND, 0, 0, 0),             # 9: source port
        Insn(JMP_JEQ_K, 2, 0, NATT_PORT),    # 10: -> 13 marker
        Insn(LD_H_IND, 0, 0, 2),             # 11: destination port
        Insn(JMP_JEQ_K, 0, 3, NATT_PORT),    # 12: not 4500 -> 16 drop
        Insn(LD_W_IND, 0, 0, 8),             # 13: the marker
        Insn(JMP_JEQ_K, 0, 1, 0),            # 14: zero -> 15 accept, else 16 drop
        Insn(RET_K, 0, 0, KEEP),             # 15
        Insn(RET_K, 0, 0, 0),                # 16
    ]


def _v6() -> list[Insn]:
    # Starts at 17 (after _v4's 13 instructions from 4).
    return [
        Insn(LD_B_ABS, 0, 0, 6),             # 17: next header
        Insn(JMP_JEQ_K, 0, 7, UDP_PROTO),    # 18: not UDP -> 26 drop
        Insn(LD_H_ABS, 0, 0, 40),            # 19: source port
        Insn(JMP_JEQ_K, 2, 0, NATT_PORT),    # 20: -> 23 marker
        Insn(LD_H_ABS, 0, 0, 42),            # 21: destination port
        Insn(JMP_JEQ_K, 0, 3, NATT_PORT),    # 22: not 4500 -> 26 drop
        Insn(LD_W_ABS, 0, 0, 48),            # 23: the marker
        Insn(JMP_JEQ_K, 0, 1, 0),            # 24: zero -> 25 accept, else 26 drop
        Insn(RET_K, 0, 0, KEEP),             # 25
        Insn(RET_K, 0, 0, 0),                # 26
    ]


@dataclass(frozen=True, slots=True)
class IkeDatagram:
    """One IKE message on port 4500, as captured."""

    src: IPAddress
    dst: IPAddress
    sport: int
    dport: int
    ike_spi: str  # initiator_responder, in hex: how VICI and the event log spell it
    exchange: int
    response: bool
    message_id: int
    payload: bytes  # the UDP payload: marker and IKE message, to send again unchanged

    @property
    def exchange_name(self) -> str:
        return EXCHANGES.get(self.exchange, str(self.exchange))


def parse(packet: bytes) -> IkeDatagram | None:
    """The IKE message in an IPv4 or IPv6 datagram the filter passed; None for anything
    else (not UDP, no marker, shorter than its UDP length or than an IKE header)."""
    if not packet:
        return None
    version = packet[0] >> 4
    src: IPAddress
    dst: IPAddress
    if version == 4 and len(packet) >= 20 and packet[9] == UDP_PROTO:
        start = 4 * (packet[0] & 0xF)
        src, dst = ipaddress.IPv4Address(packet[12:16]), ipaddress.IPv4Address(packet[16:20])
    elif version == 6 and len(packet) >= 40 and packet[6] == UDP_PROTO:
        start = 40
        src, dst = ipaddress.IPv6Address(packet[8:24]), ipaddress.IPv6Address(packet[24:40])
    else:
        return None
    udp = packet[start:start + 8]
    if len(udp) < 8:
        return None
    sport, dport, length = struct.unpack("!HHH", udp[:6])
    payload = packet[start + 8:start + length]
    if len(payload) < max(length - 8, len(MARKER) + IKE_HEADER) or payload[:4] != MARKER:
        return None  # short, or the first of IP fragments: not a datagram to send again
    spi_i, spi_r, _next, _ver, exchange, flags, mid = struct.unpack(
        "!QQBBBBI", payload[4:4 + 24])
    return IkeDatagram(src, dst, sport, dport, f"{spi_i:016x}_{spi_r:016x}", exchange,
                       bool(flags & FLAG_RESPONSE), mid, bytes(payload))


def udp_segment(src: IPAddress, dst: IPAddress, sport: int, dport: int,
                payload: bytes) -> bytes:
    """The UDP header and payload, with the checksum over the pseudo-header of ``src``
    and ``dst`` (one family), for a raw socket that adds the IP header itself."""
    if src.version != dst.version:
        raise ValueError(f"{src} and {dst} are of different families")
    length = 8 + len(payload)
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, UDP_PROTO, length)
    else:
        pseudo = src.packed + dst.packed + struct.pack("!I3xB", length, UDP_PROTO)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    checksum = _checksum(pseudo + header + payload) or 0xFFFF  # 0 means "none" in UDP
    return struct.pack("!HHHH", sport, dport, length, checksum) + payload


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
