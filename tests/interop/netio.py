"""Packet tools run inside a lab namespace as a script: `sniff` and `blast`.

`python netio.py sniff IFNAME OUT` appends every IPv4 UDP datagram to or from
port 500/4500 seen on IFNAME to OUT as JSON lines (src, dst, sport, dport, hex
payload) until killed: real messages of a live exchange, for mutation.

`python netio.py blast SPEC` sends the datagrams listed in SPEC (JSON lines:
dst, dport, hex data, and optionally src and sport). With `src`, the datagram
is built by hand (IPv4 + UDP header on a raw socket), so it can carry another
host's address and port; without, it leaves an ordinary UDP socket bound to
`sport`. Paced, so the receiver's socket buffer never overflows.

Standard library only: it runs under `ip netns exec` with no project imports.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

IKE_PORTS = (500, 4500)
ETH_P_IP = 0x0800
ETH_P_ALL = 0x0003
PACE = 0.002


def sniff(ifname: str, out_path: str) -> None:
    # ETH_P_ALL: only taps of every protocol see outgoing packets too.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sock.bind((ifname, ETH_P_ALL))
    with open(out_path, "a", encoding="ascii") as out:
        while True:
            packet, addr = sock.recvfrom(65535)
            if addr[1] != ETH_P_IP or len(packet) < 28 or packet[0] >> 4 != 4:
                continue
            if packet[9] != socket.IPPROTO_UDP:
                continue
            ihl = (packet[0] & 0x0F) * 4
            sport, dport, length = struct.unpack("!HHH", packet[ihl:ihl + 6])
            if sport not in IKE_PORTS and dport not in IKE_PORTS:
                continue
            record = {
                "src": socket.inet_ntoa(packet[12:16]),
                "dst": socket.inet_ntoa(packet[16:20]),
                "sport": sport,
                "dport": dport,
                "data": packet[ihl + 8:ihl + length].hex(),
            }
            out.write(json.dumps(record) + "\n")
            out.flush()


def _ipv4_udp(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data  # checksum 0: none
    total = 20 + len(udp)
    # The kernel fills in the IP checksum and the ID when they are 0 (IP_HDRINCL).
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, socket.IPPROTO_UDP, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header + udp


def blast(spec_path: str) -> int:
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    plain: dict[int, socket.socket] = {}
    sent = 0
    with open(spec_path, encoding="ascii") as spec:
        for line in spec:
            item = json.loads(line)
            data = bytes.fromhex(item["data"])
            dst, dport = item["dst"], int(item["dport"])
            sport = int(item.get("sport") or 0)
            if item.get("src"):
                raw.sendto(_ipv4_udp(item["src"], dst, sport, dport, data), (dst, 0))
            else:
                sock = plain.get(sport)
                if sock is None:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sock.bind(("0.0.0.0", sport))
                    plain[sport] = sock
                sock.sendto(data, (dst, dport))
            sent += 1
            time.sleep(PACE)
    print(sent)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "sniff":
        sniff(argv[1], argv[2])
        return 0
    if len(argv) == 2 and argv[0] == "blast":
        return blast(argv[1])
    print("usage: netio.py sniff IFNAME OUT | blast SPEC", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
