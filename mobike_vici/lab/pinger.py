"""A 10 Hz ICMP echo stream whose source address the kernel picks for every packet.

``ping`` may fix its source at start; a client redirected to another gateway gets a new
virtual IP, and a stream bound to the old one would call a working tunnel dead. This one
leaves the raw socket unbound and logs each reply's arrival (``time seq`` per line, the
time from ``time.monotonic``) for ``outages``.

Run in a namespace: ``python -m mobike_vici.lab.pinger DEST INTERVAL LOGFILE``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import socket
import struct
import sys
import time
from pathlib import Path

_ECHO = struct.Struct("!BBHHH")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def _echo(ident: int, seq: int) -> bytes:
    payload = b"mobike-vici-lab".ljust(32, b".")
    header = _ECHO.pack(8, 0, 0, ident, seq)
    return _ECHO.pack(8, 0, _checksum(header + payload), ident, seq) + payload


def run(dest: str, interval: float, log: Path) -> None:
    ident = os.getpid() & 0xFFFF
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    seq = 0
    next_send = time.monotonic()
    with open(log, "a", buffering=1) as out:
        while True:
            now = time.monotonic()
            if now >= next_send:
                seq = (seq + 1) & 0xFFFF
                # No route yet (no tunnel): a lost probe like any other.
                with contextlib.suppress(OSError):
                    sock.sendto(_echo(ident, seq), (dest, 0))
                next_send += interval
                continue
            ready, _, _ = select.select([sock], [], [], next_send - now)
            if not ready:
                continue
            packet = sock.recv(2048)
            ihl = (packet[0] & 0x0F) * 4
            kind, _code, _sum, rid, rseq = _ECHO.unpack_from(packet, ihl)
            if kind == 0 and rid == ident:
                out.write(f"{time.monotonic():.4f} {rseq}\n")


def replies(log: Path) -> list[float]:
    """The arrival times of the replies in a pinger's log."""
    if not log.exists():
        return []
    return [float(line.split()[0]) for line in log.read_text().splitlines() if line.strip()]


def outage(times: list[float], start: float, end: float) -> float:
    """The longest stretch without a reply between ``start`` and ``end`` (monotonic)."""
    inside = [start, *(t for t in times if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(inside))


if __name__ == "__main__":
    run(sys.argv[1], float(sys.argv[2]), Path(sys.argv[3]))
