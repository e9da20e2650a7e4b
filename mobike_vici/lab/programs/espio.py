"""ESP on the underlay, run inside a lab namespace as a script: `sniff` and `inject`.

`python espio.py sniff IFNAME OUT` appends one JSON line per IPv4 packet seen on
IFNAME to OUT until killed: src, dst, IP protocol, UDP ports (if UDP) and the
ESP packet in hex when it is ESP (IP protocol 50, or UDP 4500 without the
non-ESP marker and not a keepalive).

`python espio.py inject DST ENCAP FILE` sends every hex ESP packet in FILE
(one per line) to DST: inside UDP to port 4500 when ENCAP is `udp`, as IP
protocol 50 when it is `raw`. Paced, so no socket buffer overflows.

Standard library only: it runs under `ip netns exec` with no project imports.
"""

from __future__ import annotations

import json
import socket
import sys
import time

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
NATT_PORT = 4500
PACE = 0.005


def classify(packet: bytes) -> dict[str, object] | None:
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    proto = packet[9]
    info: dict[str, object] = {"src": socket.inet_ntoa(packet[12:16]),
                               "dst": socket.inet_ntoa(packet[16:20]), "proto": proto}
    body = packet[ihl:]
    if proto == 50:
        info["esp"] = body.hex()
    elif proto == 17 and len(body) >= 8:
        sport, dport = int.from_bytes(body[0:2], "big"), int.from_bytes(body[2:4], "big")
        info["sport"], info["dport"] = sport, dport
        data = body[8:]
        if NATT_PORT in (sport, dport) and data != b"\xff" and data[:4] != bytes(4):
            info["esp"] = data.hex()
    return info


def sniff(ifname: str, out_path: str) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sock.bind((ifname, ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    with open(out_path, "a", encoding="ascii") as out:
        while True:
            packet, addr = sock.recvfrom(65535)
            if addr[1] != ETH_P_IP:
                out.write(json.dumps({"ethertype": addr[1]}) + "\n")
                continue
            info = classify(packet)
            if info is not None:
                out.write(json.dumps(info) + "\n")
                out.flush()


def inject(dst: str, encap: str, path: str) -> None:
    with open(path, encoding="ascii") as f:
        packets = [bytes.fromhex(line.strip()) for line in f if line.strip()]
    if encap == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        target: tuple[str, int] = (dst, NATT_PORT)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
        target = (dst, 0)
    with sock:
        for packet in packets:
            sock.sendto(packet, target)
            time.sleep(PACE)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "sniff":
        sniff(argv[1], argv[2])
        return 0
    if len(argv) == 4 and argv[0] == "inject":
        inject(argv[1], argv[2], argv[3])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
