"""Fuzz target: the probe wire formats (authenticated UDP echo, ICMP and ICMPv6 echo).

Input layout, by the first byte ``mode``: bit 0 picks the UDP echo (else ICMP
echo, bit 1 with the IPv4 header first); for the UDP echo, bit 2 re-signs the
first 40 bytes with the key so that mutations behind the MAC are reached.

Only the probe DecodeError may escape.
"""

from __future__ import annotations

import atheris

from .harness import main

with atheris.instrument_imports(include=["mobike_vici"]):
    from mobike_vici.net.probes import wire

KEY = bytes(range(32))


ALLOWED: tuple[type[BaseException], ...] = (wire.DecodeError,)
"""What may escape the target for bad input; anything else is a crash."""


def target(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    if mode & 1:
        if mode & 4 and len(body) >= wire.UDP_ECHO_LEN - wire.MAC_LEN:
            head = body[:wire.UDP_ECHO_LEN - wire.MAC_LEN]
            body = head + wire._mac(KEY, head) + body[len(head) + wire.MAC_LEN:]
        msg = wire.decode_udp_echo(body, KEY)
        # What verifies re-encodes to a message that decodes the same (reserved bits aside).
        assert wire.decode_udp_echo(wire.encode_udp_echo(msg, KEY), KEY) == msg
    else:
        wire.decode_icmp_echo(body, ipv4_header=bool(mode & 2))


def seeds() -> list[bytes]:
    request = wire.UdpEcho(wire.Kind.REQUEST, 7, 123456789, bytes(range(16)))
    out = [b"\x01" + wire.encode_udp_echo(request, KEY),
           b"\x05" + wire.encode_udp_echo(wire.response_to(request), KEY)]
    echo = wire.encode_icmp_echo(wire.IcmpEcho(wire.ICMP_ECHO_REQUEST, 1, 2, bytes(16)))
    ipv4 = bytes((0x45, 0, 0, 20 + len(echo))) + bytes(16)
    out += [b"\x00" + echo, b"\x02" + ipv4 + echo]
    return out


if __name__ == "__main__":
    main("udp_echo", target, ALLOWED, seeds)
