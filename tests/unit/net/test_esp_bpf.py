"""The ESP filter for the controller's packet socket, run by a small classic-BPF interpreter
(the opcodes the builder uses, with the kernel's rule that a load past the end rejects)."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from mobike_vici.net import esp_bpf
from mobike_vici.net.esp_bpf import (
    MAX_PEERS,
    SNAP,
    Insn,
    esp_filter,
    pack,
    parse_addresses,
    parse_spi,
)

GW4 = ipaddress.ip_address("192.0.2.2")
GW6 = ipaddress.ip_address("2001:db8:ff::2")
ME4 = ipaddress.ip_address("10.1.0.2")
ME6 = ipaddress.ip_address("2001:db8:1::2")
OTHER4 = ipaddress.ip_address("198.51.100.7")
OTHER6 = ipaddress.ip_address("2001:db8:77::7")


class _OutOfBounds(Exception):
    pass


def run(program: list[Insn], pkt: bytes) -> int:
    """What the kernel returns for ``pkt``: bytes to keep (0: dropped)."""
    a = x = 0
    pc = 0

    def load(offset: int, size: int) -> int:
        if offset < 0 or offset + size > len(pkt):
            raise _OutOfBounds
        return int.from_bytes(pkt[offset:offset + size], "big")

    try:
        for _ in range(10_000):
            i = program[pc]
            pc += 1
            match i.code:
                case esp_bpf.LD_W_ABS:
                    a = load(i.k, 4)
                case esp_bpf.LD_H_ABS:
                    a = load(i.k, 2)
                case esp_bpf.LD_B_ABS:
                    a = load(i.k, 1)
                case esp_bpf.LD_W_IND:
                    a = load(x + i.k, 4)
                case esp_bpf.LD_H_IND:
                    a = load(x + i.k, 2)
                case esp_bpf.LDX_B_MSH:
                    x = 4 * (load(i.k, 1) & 0xF)
                case esp_bpf.ALU_RSH_K:
                    a = (a >> i.k) & 0xFFFFFFFF
                case esp_bpf.JMP_JA:
                    pc += i.k
                case esp_bpf.JMP_JEQ_K:
                    pc += i.jt if a == i.k else i.jf
                case esp_bpf.JMP_JSET_K:
                    pc += i.jt if a & i.k else i.jf
                case esp_bpf.RET_K:
                    return i.k
                case _:
                    raise AssertionError(f"opcode {i.code:#x} not interpreted")
    except _OutOfBounds:
        return 0
    raise AssertionError("program did not end")


def ipv4(src: object, dst: object, proto: int, payload: bytes, frag: int = 0) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, frag, 64, proto, 0,
                         ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return header + payload


def ipv6(src: object, dst: object, nh: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, 64,
                       ipaddress.ip_address(src).packed,
                       ipaddress.ip_address(dst).packed) + payload


def udp(sport: int, dport: int, body: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body


ESP_BODY = struct.pack("!II", 0xC0FFEE01, 7) + b"\x00" * 32
IKE_BODY = b"\x00\x00\x00\x00" + b"\x11" * 28  # non-ESP marker, then an IKE header


@pytest.fixture(scope="module")
def prog() -> list[Insn]:
    return esp_filter([GW4, GW6])


@pytest.mark.parametrize("pkt", [
    ipv4(GW4, ME4, 17, udp(4500, 4500, ESP_BODY)),       # inbound, UDP-encapsulated
    ipv4(ME4, GW4, 17, udp(4500, 4500, ESP_BODY)),       # outbound
    ipv4(GW4, ME4, 17, udp(4500, 36001, ESP_BODY)),      # NATed port on our side
    ipv4(GW4, ME4, 50, ESP_BODY),                        # plain ESP
    ipv6(GW6, ME6, 17, udp(4500, 4500, ESP_BODY)),
    ipv6(ME6, GW6, 50, ESP_BODY),
])
def test_esp_to_and_from_the_peer_passes_cut_to_its_headers(prog: list[Insn],
                                                             pkt: bytes) -> None:
    assert run(prog, pkt) == SNAP


@pytest.mark.parametrize("pkt", [
    ipv4(GW4, ME4, 17, udp(4500, 4500, IKE_BODY)),       # IKE behind the zero marker
    ipv4(GW4, ME4, 17, udp(4500, 4500, b"\xff")),        # NAT keepalive: too short
    ipv4(GW4, ME4, 17, udp(500, 500, ESP_BODY)),         # IKE port 500
    ipv4(GW4, ME4, 1, b"\x08\x00" + b"\x00" * 30),       # a probe
    ipv4(OTHER4, ME4, 50, ESP_BODY),                     # ESP of someone else
    ipv4(ME4, OTHER4, 17, udp(4500, 4500, ESP_BODY)),
    ipv4(GW4, ME4, 50, ESP_BODY, frag=0x2005),           # a later fragment
    ipv6(GW6, ME6, 17, udp(4500, 4500, IKE_BODY)),
    ipv6(OTHER6, ME6, 50, ESP_BODY),
    ipv6(GW6, ME6, 58, b"\x80" + b"\x00" * 30),
    b"\x45\x00",                                          # truncated
    b"",
    b"\x60" + b"\x00" * 10,
])
def test_everything_else_is_refused(prog: list[Insn], pkt: bytes) -> None:
    assert run(prog, pkt) == 0


def test_a_v4_only_peer_list_refuses_ipv6_and_no_peers_refuses_all() -> None:
    v4only = esp_filter([GW4])
    assert run(v4only, ipv4(GW4, ME4, 50, ESP_BODY)) == SNAP
    assert run(v4only, ipv6(GW6, ME6, 50, ESP_BODY)) == 0
    nobody = esp_filter([])
    assert run(nobody, ipv4(GW4, ME4, 50, ESP_BODY)) == 0
    assert run(nobody, ipv6(GW6, ME6, 50, ESP_BODY)) == 0


def test_the_largest_peer_list_still_resolves_every_jump_and_matches_the_last_peer() -> None:
    peers = [ipaddress.ip_address(f"10.9.0.{n}") for n in range(1, 33)] + \
            [ipaddress.ip_address(f"2001:db8:9::{n:x}") for n in range(1, 33)]
    prog = esp_filter(peers)
    assert len(prog) < 4096
    assert run(prog, ipv4(ME4, peers[31], 50, ESP_BODY)) == SNAP
    assert run(prog, ipv6(peers[-1], ME6, 50, ESP_BODY)) == SNAP
    assert run(prog, ipv6(ipaddress.ip_address("2001:db8:9::21"), ME6, 50, ESP_BODY)) == 0
    with pytest.raises(ValueError):
        esp_filter([*peers, ipaddress.ip_address("10.9.1.1")][:MAX_PEERS + 1])


def test_pack_writes_one_sock_filter_per_instruction() -> None:
    prog = esp_filter([GW4])
    raw = pack(prog)
    assert len(raw) == 8 * len(prog)
    assert struct.unpack("=HBBI", raw[-8:]) == (esp_bpf.RET_K, 0, 0, 0)


def test_parse_addresses_reads_both_families_and_refuses_short_input() -> None:
    assert parse_addresses(ipv4(GW4, ME4, 50, ESP_BODY)) == (GW4, ME4)
    assert parse_addresses(ipv6(ME6, GW6, 50, ESP_BODY)) == (ME6, GW6)
    assert parse_addresses(b"\x45" * 10) is None
    assert parse_addresses(b"") is None
    assert parse_addresses(b"\x20" * 60) is None


def test_parse_spi_reads_plain_and_udp_encapsulated_esp_of_both_families() -> None:
    assert parse_spi(ipv4(GW4, ME4, 50, ESP_BODY)) == 0xC0FFEE01
    assert parse_spi(ipv4(GW4, ME4, 17, udp(4500, 4500, ESP_BODY))) == 0xC0FFEE01
    assert parse_spi(ipv6(GW6, ME6, 17, udp(4500, 4500, ESP_BODY))) == 0xC0FFEE01
    assert parse_spi(ipv6(GW6, ME6, 50, ESP_BODY)) == 0xC0FFEE01
    assert parse_spi(ipv4(GW4, ME4, 6, ESP_BODY)) is None  # not ESP
    assert parse_spi(ipv4(GW4, ME4, 17, b"\x11\x94")) is None  # cut short
    assert parse_spi(b"") is None and parse_spi(b"\x45" * 10) is None
