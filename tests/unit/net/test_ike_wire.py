"""IKE on port 4500 as the controller's packet socket sees it: the filter (run by the ESP
filter tests' classic-BPF interpreter), the parser, and the UDP segment sent again."""

from __future__ import annotations

import ipaddress
import struct

from mobike_vici.net.ike_wire import KEEP, MARKER, ike_filter, parse, udp_segment

from .test_esp_bpf import ipv4, ipv6, run

ME4, GW4 = "10.1.0.2", "192.0.2.2"
ME6, GW6 = "2001:db8:1::2", "2001:db8:ff::2"
SPI_I, SPI_R = 0x1BF9BB6DF98E4F6B, 0xFD931ED6FC98B689


def ike(mid: int, *, exchange: int = 37, response: bool = False, body: bytes = b"") -> bytes:
    flags = 0x08 | (0x20 if response else 0)
    header = struct.pack("!QQBBBBII", SPI_I, SPI_R, 46, 0x20, exchange, flags, mid,
                         28 + len(body))
    return MARKER + header + body


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def test_the_filter_passes_whole_ike_datagrams_of_port_4500_either_way() -> None:
    program = ike_filter()
    out = ipv4(ME4, GW4, 17, udp(4500, 4500, ike(2)))
    back = ipv4(GW4, ME4, 17, udp(4500, 4500, ike(2, response=True)))
    natted = ipv4(GW4, ME4, 17, udp(4500, 34567, ike(3)))
    out6 = ipv6(ME6, GW6, 17, udp(4500, 4500, ike(4)))
    for packet in (out, back, natted, out6):
        assert run(program, packet) == KEEP


def test_the_filter_refuses_esp_other_ports_other_protocols_and_later_fragments() -> None:
    program = ike_filter()
    esp_in_udp = udp(4500, 4500, b"\x12\x34\x56\x78" + b"\x00" * 40)
    assert run(program, ipv4(ME4, GW4, 17, esp_in_udp)) == 0
    assert run(program, ipv6(ME6, GW6, 17, esp_in_udp)) == 0
    assert run(program, ipv4(ME4, GW4, 17, udp(500, 500, ike(0)))) == 0
    assert run(program, ipv6(ME6, GW6, 17, udp(500, 500, ike(0)))) == 0
    assert run(program, ipv4(ME4, GW4, 6, udp(4500, 4500, ike(2)))) == 0
    assert run(program, ipv4(ME4, GW4, 17, udp(4500, 4500, ike(2)), frag=0x0010)) == 0
    assert run(program, b"\x00" * 60) == 0


def test_parse_reads_the_ike_header_and_keeps_the_payload_to_send_again() -> None:
    payload = ike(7, exchange=36, body=b"sk" * 20)
    got = parse(ipv4(ME4, GW4, 17, udp(4500, 4500, payload)))
    assert got is not None
    assert (str(got.src), str(got.dst), got.sport, got.dport) == (ME4, GW4, 4500, 4500)
    assert got.ike_spi == "1bf9bb6df98e4f6b_fd931ed6fc98b689"
    assert (got.message_id, got.response, got.exchange_name) == (7, False, "CREATE_CHILD_SA")
    assert got.payload == payload
    answer = parse(ipv6(GW6, ME6, 17, udp(4500, 4500, ike(7, response=True))))
    assert answer is not None and answer.response and str(answer.src) == GW6


def test_parse_refuses_a_truncated_datagram_and_esp() -> None:
    whole = ipv4(ME4, GW4, 17, udp(4500, 4500, ike(2, body=b"x" * 100)))
    assert parse(whole[:-1]) is None  # the first of IP fragments: shorter than UDP says
    assert parse(ipv4(ME4, GW4, 17, udp(4500, 4500, b"\x01\x02\x03\x04" + b"\x00" * 40))) is None
    assert parse(ipv4(ME4, GW4, 17, udp(4500, 4500, MARKER + b"\x00" * 10))) is None
    assert parse(b"") is None


def _sums_to_ffff(data: bytes) -> bool:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def test_the_udp_segment_checksum_covers_the_pseudo_header() -> None:
    payload = ike(9, body=b"odd")  # an odd length: the checksum pads it
    for src, dst in ((ME4, GW4), (ME6, GW6)):
        a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        segment = udp_segment(a, b, 4500, 4501, payload)
        sport, dport, length, checksum = struct.unpack("!HHHH", segment[:8])
        assert (sport, dport, length, segment[8:]) == (4500, 4501, 8 + len(payload), payload)
        assert checksum != 0
        if a.version == 4:
            pseudo = a.packed + b.packed + struct.pack("!BBH", 0, 17, length)
        else:
            pseudo = a.packed + b.packed + struct.pack("!I3xB", length, 17)
        assert _sums_to_ffff(pseudo + segment)
