"""A steady, sequence-numbered UDP stream through the tunnel and its receiver.

Run as a script inside a namespace. ``send DEST PORT INTERVAL`` sends one 32-byte
datagram every INTERVAL seconds (seq, CLOCK_MONOTONIC send time) until killed;
``recv ADDR PORT OUT`` appends ``seq sent received`` per datagram to OUT (flushed),
prints ``listening`` once bound. Both ends share CLOCK_MONOTONIC (one kernel), so
the lab can compare arrival times with the moment it injected a fault.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import time

_FMT = struct.Struct("!Qd16x")


def send(dest: str, port: int, interval: float) -> None:
    family = socket.AF_INET6 if ":" in dest else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    seq = 0
    start = time.monotonic()
    while True:
        seq += 1
        # No route for a moment: the handover is what we measure.
        with contextlib.suppress(OSError):
            sock.sendto(_FMT.pack(seq, time.monotonic()), (dest, port))
        # Paced against the start, so a slow send does not drift the rate.
        delay = start + seq * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def recv(addr: str, port: int, out: str) -> None:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((addr, port))
    print("listening", flush=True)
    with open(out, "a", encoding="ascii") as f:
        while True:
            data = sock.recv(64)
            now = time.monotonic()
            if len(data) != _FMT.size:
                continue
            seq, sent = _FMT.unpack(data)
            f.write(f"{seq} {sent:.6f} {now:.6f}\n")
            f.flush()


def main(argv: list[str]) -> int:
    if argv[:1] == ["send"] and len(argv) == 4:
        send(argv[1], int(argv[2]), float(argv[3]))
    elif argv[:1] == ["recv"] and len(argv) == 4:
        recv(argv[1], int(argv[2]), argv[3])
    else:
        print("usage: stream.py send DEST PORT INTERVAL | recv ADDR PORT OUT", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
